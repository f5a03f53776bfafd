"""The lab's Azure Resource Manager emulator (see README.md): `python -m lab.arm`, or
`lab.arm.server.ArmServer` in-process, driven by the real azure-mgmt-* SDKs."""
