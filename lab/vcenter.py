"""The lab's vCenter content: one VM per VMware lab machine (`vmware: false` is a physical
server, with no VM), made through pyVmomi as an admin would.

The simulator forgets everything when it restarts, so `lab up` calls `populate()` every
time; it creates only what is missing. Each VM gets the machine's CPUs, memory, one thin
disk per spec disk on an LSI Logic controller, a vmxnet3 NIC on a port group named after
the machine's network, and its guest IP through the simulator's `SET.guest.ipAddress`
extraConfig key (vcsim applies `SET.<property>` keys to the VM's properties).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pyVmomi import vim

from drbook.adapters.vsphere import VSphereConnection, connect, map_vsphere_errors
from lab.errors import LabError
from lab.ca import ensure_certs
from lab.procs import Managed, wait_for_port
from lab.spec import LabSpec, MachineSpec

GUEST_ID = "otherLinux64Guest"
CONTROLLER_KEY = 1000
VSWITCH = "vSwitch0"


def _secret(password: str | SecretStr) -> SecretStr:
    return password if isinstance(password, SecretStr) else SecretStr(password)


class Placement:
    """Where lab VMs go: the first datacenter's first cluster, its hosts and datastore."""

    def __init__(self, conn: VSphereConnection) -> None:
        with map_vsphere_errors("finding the lab's datacenter and cluster"):
            dcs = [e for e in conn.content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
            if not dcs:
                raise LabError(f"vCenter {conn.url} has no datacenter")
            self.datacenter = dcs[0]
            clusters = [e for e in self.datacenter.hostFolder.childEntity if isinstance(e, vim.ClusterComputeResource)]
            if not clusters or not clusters[0].host:
                raise LabError(f"datacenter {self.datacenter.name} has no cluster with hosts")
            self.cluster = clusters[0]
            self.hosts = list(self.cluster.host)
            self.pool = self.cluster.resourcePool
            self.datastore = self.hosts[0].datastore[0].name
            self.folder = self.datacenter.vmFolder

    def host_for(self, index: int) -> Any:
        return self.hosts[index % len(self.hosts)]


def ensure_port_groups(conn: VSphereConnection, placement: Placement, names: list[str]) -> list[str]:
    """A standard port group per network on every host of the cluster; returns those added."""
    added: list[str] = []
    with map_vsphere_errors("creating port groups"):
        existing = {n.name for n in placement.datacenter.network}
        for name in names:
            if name in existing:
                continue
            for host in placement.hosts:
                spec = vim.host.PortGroup.Specification(
                    name=name, vlanId=0, vswitchName=VSWITCH, policy=vim.host.NetworkPolicy()
                )
                try:
                    host.configManager.networkSystem.AddPortGroup(portgrp=spec)
                except vim.fault.AlreadyExists:
                    pass
                except vim.fault.DuplicateName:
                    # vcsim keeps one network object per datacenter: the first host made it.
                    pass
            added.append(name)
    return added


def vm_config(machine: MachineSpec, datastore: str, *, tools: bool = True) -> vim.vm.ConfigSpec:
    devices = [
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.VirtualLsiLogicController(key=CONTROLLER_KEY, busNumber=0, sharedBus="noSharing"),
        )
    ]
    for unit, disk in enumerate(machine.disks):
        devices.append(
            vim.vm.device.VirtualDeviceSpec(
                operation="add",
                fileOperation="create",
                device=vim.vm.device.VirtualDisk(
                    key=2000 + unit,
                    controllerKey=CONTROLLER_KEY,
                    unitNumber=unit if unit < 7 else unit + 1,  # unit 7 is the SCSI controller's own
                    capacityInKB=disk.size_mib * 1024,
                    backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                        fileName=f"[{datastore}] {machine.name}/{disk.name}.vmdk",
                        diskMode="persistent",
                        thinProvisioned=True,
                    ),
                ),
            )
        )
    devices.append(
        vim.vm.device.VirtualDeviceSpec(
            operation="add",
            device=vim.vm.device.VirtualVmxnet3(
                key=4000,
                backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=machine.network),
                connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                    startConnected=True, connected=True, allowGuestControl=True
                ),
            ),
        )
    )
    extra = [
        vim.option.OptionValue(key="SET.guest.ipAddress", value=machine.ip),
        vim.option.OptionValue(key="SET.guest.hostName", value=machine.name),
    ]
    if not tools:
        extra.append(vim.option.OptionValue(key="drbook.lab.tools", value="none"))
    return vim.vm.ConfigSpec(
        name=machine.name,
        numCPUs=machine.cpus,
        memoryMB=machine.memory_mb,
        guestId=GUEST_ID,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=devices,
        extraConfig=extra,
    )


def create_vm(conn: VSphereConnection, placement: Placement, machine: MachineSpec, index: int = 0,
              *, tools: bool = True, power_on: bool = True) -> Any:
    action = f"creating VM {machine.name!r}"
    with map_vsphere_errors(action):
        task = placement.folder.CreateVM_Task(
            config=vm_config(machine, placement.datastore, tools=tools),
            pool=placement.pool,
            host=placement.host_for(index),
        )
    vm = conn.wait_for_task(task, action)
    if power_on:
        conn.wait_for_task(vm.PowerOnVM_Task(), f"powering on {machine.name!r}")
    return vm


def populate(url: str, user: str, password: str | SecretStr, ca_bundle: str | None, spec: LabSpec) -> list[str]:
    """Create each VMware lab machine's VM that vCenter lacks (powered on, unless the spec
    says it stays off: a spare); returns the names created. Physical machines get none."""
    with connect(url, user, _secret(password), ca_bundle) as conn:
        existing = conn.vms_by_name()
        missing = [(i, m) for i, m in enumerate(spec.machines) if m.vmware and m.name not in existing]
        if not missing:
            return []
        placement = Placement(conn)
        ensure_port_groups(conn, placement, sorted({m.network for _, m in missing}))
        for index, machine in missing:
            create_vm(conn, placement, machine, index, power_on=machine.powered_on)
        return [m.name for _, m in missing]


def power_on_all(url: str, user: str, password: str | SecretStr, ca_bundle: str | None, spec: LabSpec) -> list[str]:
    """Power on every lab VM that is off and meant to run (spares stay off); returns the names powered on."""
    with connect(url, user, _secret(password), ca_bundle) as conn:
        return [m.name for m in spec.machines if m.vmware and m.powered_on and conn.power_on(m.name)]


# --- a private simulator for tests and benchmarks --------------------------------------------

BUILD_DIR = Path(os.environ.get("DRBOOK_VCSIM_BUILD", "/tmp/drbook-vcsim-build"))
GO_ENV = {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode"}


def build_simulator(build_dir: Path = BUILD_DIR) -> Path:
    """Build lab/vcsim into `build_dir` unless a binary newer than main.go is there."""
    source = Path(__file__).with_name("vcsim") / "main.go"
    binary = build_dir / "vcsim"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    build_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **GO_ENV, "GOCACHE": str(build_dir / "gocache")}
    tmp = build_dir / f"vcsim.{os.getpid()}"
    proc = subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=source.parent, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"building vcsim failed:\n{proc.stderr[-2000:]}")
    tmp.replace(binary)  # atomic: a concurrent build never leaves a half-written binary
    return binary


@dataclass(frozen=True)
class SimulatorInfo:
    url: str
    user: str
    password: SecretStr
    ca_bundle: Path

    def connect(self) -> VSphereConnection:
        return connect(self.url, self.user, self.password, self.ca_bundle)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def simulator(run_dir: Path, *, vms_per_pool: int = 0, running: bool = False,
              user: str = "administrator@vsphere.local") -> Iterator[SimulatorInfo]:
    """Start a simulator of our own on a free port (lab certificates), stop it on exit."""
    binary = build_simulator()
    run_dir.mkdir(parents=True, exist_ok=True)
    certs = ensure_certs(run_dir / "certs")
    pw_file = run_dir / "vcenter-password"
    pw_file.write_text(secrets.token_urlsafe(18))
    pw_file.chmod(0o600)
    port = _free_port()
    argv = [str(binary), "-listen", f"127.0.0.1:{port}", "-cert", str(certs.server_cert),
            "-key", str(certs.server_key), "-username", user, "-password", str(pw_file)]
    if vms_per_pool:
        argv += ["-vm", str(vms_per_pool)]
    if running:
        argv.append("-vm-running")
    proc = Managed(f"vcsim-{port}", run_dir)
    proc.start(argv)
    try:
        wait_for_port(proc, "127.0.0.1", port, timeout=60)
        yield SimulatorInfo(f"https://127.0.0.1:{port}/sdk", user, SecretStr(pw_file.read_text()), certs.ca_cert)
    finally:
        proc.stop()
