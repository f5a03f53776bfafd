"""100 VMs with their disks and NICs through the real SDKs against the lab's ARM emulator.

    .venv/bin/python bench/bench_arm.py [--vms 100] [--workers 32] [--in-process]

Like a recovery plan failing over one group: a thread pool where each worker creates a VM's
OS disk (Empty) and NIC (dynamic IP) concurrently, then the VM, each through its SDK poller,
with the emulator's default operation time (0.05 s). The emulator runs as `python -m lab.arm`
(its own process, as in the lab) unless --in-process. Prints the wall time.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import azure.mgmt.compute.models as cm  # noqa: E402
import azure.mgmt.network.models as nm  # noqa: E402
from azure.mgmt.compute import ComputeManagementClient  # noqa: E402
from azure.mgmt.network import NetworkManagementClient  # noqa: E402
from azure.mgmt.resource.resources import ResourceManagementClient  # noqa: E402
from azure.mgmt.resource.resources.models import ResourceGroup  # noqa: E402

from lab.arm.credential import StaticTokenCredential  # noqa: E402
from lab.arm.server import ArmServer  # noqa: E402
from lab.ca import ensure_certs  # noqa: E402

LOCATION = "westeurope"
RG = "bench-rg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the emulator did not listen on {port}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--in-process", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-arm-"))
    certs = ensure_certs(tmp / "certs")
    sub = str(uuid.uuid4())
    proc = server = None
    if args.in_process:
        server = ArmServer(cert=certs.server_cert, key=certs.server_key, subscription_id=sub,
                           state_dir=tmp / "state").start()
        base_url = server.base_url
    else:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "lab.arm", "--port", str(port), "--cert", str(certs.server_cert),
                                 "--key", str(certs.server_key), "--state-dir", str(tmp / "state"),
                                 "--subscription-id", sub, "--log-level", "WARNING"], cwd=ROOT)
        _wait(port)
        base_url = f"https://127.0.0.1:{port}"
    try:
        cred = StaticTokenCredential()
        kw = {"base_url": base_url, "connection_verify": str(certs.ca_cert),
              "connection_pool_maxsize": args.workers * 2}
        rc = ResourceManagementClient(cred, sub, **kw)
        nc = NetworkManagementClient(cred, sub, **kw)
        cc = ComputeManagementClient(cred, sub, **kw)
        rc.resource_groups.create_or_update(RG, ResourceGroup(location=LOCATION))
        vnet = nc.virtual_networks.begin_create_or_update(RG, "vnet", nm.VirtualNetwork(
            location=LOCATION, address_space=nm.AddressSpace(address_prefixes=["10.10.0.0/16"]),
            subnets=[nm.Subnet(name="recovery", address_prefix="10.10.0.0/20")])).result()
        subnet_id = vnet.subnets[0].id

        def one(i: int, pool: ThreadPoolExecutor) -> str:
            name = f"vm{i:03d}"
            disk_f = pool.submit(lambda: cc.disks.begin_create_or_update(RG, f"{name}-os", cm.Disk(
                location=LOCATION, sku=cm.DiskSku(name="Premium_LRS"), os_type="Linux",
                creation_data=cm.CreationData(create_option="Empty"), disk_size_gb=32)).result())
            nic = nc.network_interfaces.begin_create_or_update(RG, f"{name}-nic", nm.NetworkInterface(
                location=LOCATION, ip_configurations=[nm.NetworkInterfaceIPConfiguration(
                    name="ipconfig1", subnet=nm.Subnet(id=subnet_id))])).result()
            disk = disk_f.result()
            vm = cc.virtual_machines.begin_create_or_update(RG, name, cm.VirtualMachine(
                location=LOCATION, hardware_profile=cm.HardwareProfile(vm_size="Standard_D2s_v3"),
                storage_profile=cm.StorageProfile(os_disk=cm.OSDisk(
                    create_option="Attach", os_type="Linux", managed_disk=cm.ManagedDiskParameters(id=disk.id))),
                network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(id=nic.id)]),
            )).result()
            return vm.provisioning_state

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool, ThreadPoolExecutor(args.workers) as disks:
            states = list(pool.map(lambda i: one(i, disks), range(args.vms)))
        wall = time.perf_counter() - t0
        running = sum(1 for v in cc.virtual_machines.list(RG)
                      if any(s.code == "PowerState/running" for s in
                             cc.virtual_machines.instance_view(RG, v.name).statuses))
        assert states.count("Succeeded") == args.vms, states
        print(f"{args.vms} VMs (+{args.vms} disks, +{args.vms} NICs) with {args.workers} workers, "
              f"emulator {'in-process' if args.in_process else 'as a subprocess'}: {wall:.2f} s wall "
              f"({running} running)")
    finally:
        if server:
            server.stop()
        if proc:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
