"""The api-versions the emulator accepts, per resource-provider family.

The first entry of each list is the one the installed SDK sends (read from the request
builders in ``azure/mgmt/*/operations/_operations.py``); the others are what recent
SDK releases in pyproject's ranges send. Anything else is refused as ARM refuses it.
"""

from __future__ import annotations

from .exceptions import ArmError

SUPPORTED: dict[str, tuple[str, ...]] = {
    # azure-mgmt-resource 26.0.0 (ResourceManagementClient)
    "resources": ("2025-04-01", "2025-03-01", "2024-11-01", "2024-07-01", "2024-03-01",
                  "2023-07-01", "2022-09-01", "2021-04-01"),
    # azure-mgmt-compute 39.0.0: virtual machines, sizes, run command (Compute RP)
    "compute": ("2026-04-01", "2025-11-01", "2025-04-01", "2024-11-01", "2024-07-01",
                "2024-03-01", "2023-09-01", "2023-07-01"),
    # azure-mgmt-compute 39.0.0: disks and snapshots (Disk RP)
    "disks": ("2026-03-02", "2025-01-02", "2024-03-02", "2023-10-02", "2023-04-02"),
    # azure-mgmt-network 33.1.0
    "network": ("2026-03-01", "2025-07-01", "2025-05-01", "2025-03-01", "2025-01-01",
                "2024-10-01", "2024-07-01", "2024-05-01", "2024-03-01", "2024-01-01"),
    # azure-mgmt-storage 25.3.0
    "storage": ("2026-09-01", "2026-06-01", "2026-04-01", "2025-08-01", "2025-06-01",
                "2025-01-01", "2024-01-01", "2023-05-01", "2023-01-01"),
}

FAMILY_TYPES = {
    "resources": "resourceGroups",
    "compute": "virtualMachines",
    "disks": "disks",
    "network": "virtualNetworks",
    "storage": "storageAccounts",
}


def check(family: str, version: str) -> None:
    if version in SUPPORTED[family]:
        return
    supported = ", ".join(SUPPORTED[family])
    if family == "resources":
        raise ArmError(
            f"The api-version '{version}' is invalid. The supported versions are '{supported}'.",
            code="InvalidApiVersionParameter", status=400)
    raise ArmError(
        f"No registered resource provider found for location 'global' and API version '{version}' "
        f"for type '{FAMILY_TYPES[family]}'. The supported api-versions are '{supported}'.",
        code="NoRegisteredProviderFound", status=400)
