"""Discovery of ~1,000 VMs in a simulated vCenter: drbook's one retrieval vs. the per-VM peer.

    .venv/bin/python bench/bench_discovery.py [--vms-per-pool 500] [--repeat 5] [--peer-sample 200]

The simulator (lab/vcsim, lab certificates, verified TLS) makes `--vms-per-pool` VMs in each
of its two resource pools (the standalone host's and the cluster's), powered on with guest
IPs and running tools, and `lab.vcenter.populate` adds the lab's three VMs. The peer is
the usual pyVmomi script: list the VMs through a view, then read each VM's config,
runtime and guest (one round trip per VM and property); it is timed on `--peer-sample`
VMs and its per-VM cost is reported alongside.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyVmomi import vim  # noqa: E402

from drbook.discovery import build_inventory, discover  # noqa: E402
from lab.spec import load_spec  # noqa: E402
from lab.vcenter import populate, simulator  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def timed_retrieve(conn) -> tuple[list[float], Callable[[], None]]:
    """Time every RetrievePropertiesEx SOAP call (request, server, and pyVmomi's parsing)."""
    stub = conn.service_instance._stub
    original = stub.InvokeMethod
    spent: list[float] = []

    def invoke(mo, info, args, *rest):
        if info.wsdlName != "RetrievePropertiesEx":
            return original(mo, info, args, *rest)
        t = time.perf_counter()
        try:
            return original(mo, info, args, *rest)
        finally:
            spent.append(time.perf_counter() - t)

    stub.InvokeMethod = invoke
    return spent, lambda: setattr(stub, "InvokeMethod", original)


def peer(conn, sample: int) -> tuple[float, int]:
    """Per-VM property reads, as most pyVmomi scripts do; returns (seconds, VMs read)."""
    content = conn.content
    t = time.perf_counter()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        vms = list(view.view)[:sample]
        for vm in vms:
            name = vm.name
            config, runtime, guest = vm.config, vm.runtime, vm.guest
            disks = [d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
            _ = (name, runtime.powerState, runtime.host.name, guest.ipAddress, guest.toolsStatus, len(disks))
    finally:
        view.DestroyView()
    return time.perf_counter() - t, len(vms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms-per-pool", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--peer-sample", type=int, default=200, help="VMs the per-VM peer reads (0: skip)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="drbook-bench-vcsim-") as tmp:
        t0 = time.perf_counter()
        with simulator(Path(tmp), vms_per_pool=args.vms_per_pool, running=True) as sim:
            start_s = time.perf_counter() - t0
            populate(sim.url, sim.user, sim.password, str(sim.ca_bundle), load_spec())
            with sim.connect() as conn:
                spent, restore = timed_retrieve(conn)
                totals, builds = [], []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    inv = discover(conn)
                    totals.append(time.perf_counter() - t)
                records = conn.inventory()
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    build_inventory(records)
                    builds.append(time.perf_counter() - t)
                restore()
                retrievals = spent[: args.repeat]
                peer_s, peer_n = peer(conn, args.peer_sample) if args.peer_sample else (0.0, 0)

    vms = len(inv.vms)
    result = {
        "benchmark": "discovery",
        "time": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "vcenter": "govmomi vcsim (Debian golang-github-vmware-govmomi-dev 0.24.2), HTTPS, verified",
        "vms": vms,
        "hosts": len(inv.hosts),
        "simulator_start_s": round(start_s, 2),
        "repeat": args.repeat,
        "discover_s": {"min": round(min(totals), 3), "median": round(statistics.median(totals), 3)},
        "retrieve_properties_s": {"min": round(min(retrievals), 3), "median": round(statistics.median(retrievals), 3)},
        "build_inventory_s": {"min": round(min(builds), 3), "median": round(statistics.median(builds), 3)},
        "soap_calls_per_discovery": 3,
        "peer_per_vm_reads": {
            "vms_read": peer_n,
            "seconds": round(peer_s, 3),
            "per_vm_ms": round(1000 * peer_s / peer_n, 2) if peer_n else None,
            "extrapolated_s_for_all": round(peer_s / peer_n * vms, 1) if peer_n else None,
        },
        "goal_s": 10,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "discovery.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"discovery of {vms} VMs ({len(inv.hosts)} hosts): median {result['discover_s']['median']} s, "
          f"min {result['discover_s']['min']} s over {args.repeat} runs (goal < 10 s)")
    print(f"  RetrievePropertiesEx alone (one SOAP call incl. parsing): median {result['retrieve_properties_s']['median']} s")
    print(f"  building the Inventory from the records: median {result['build_inventory_s']['median']} s")
    if peer_n:
        p = result["peer_per_vm_reads"]
        print(f"  peer (per-VM property reads): {p['seconds']} s for {peer_n} VMs = {p['per_vm_ms']} ms/VM, "
              f"~{p['extrapolated_s_for_all']} s for all {vms}")
    print(f"  written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
