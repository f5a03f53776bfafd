"""The highest steady write rate on one disk at which recovery points still come on time.

    .venv/bin/python bench/bench_rate.py [--disk-gib 2] [--interval 20] [--cycles 3]
                                         [--rates 2,5,10,20,40,70,100] [--via ssh|local]

The lab's workload writer (random 4-256 KiB writes) writes to one disk at a target rate
while the engine runs crash-consistent cycles (the writer's pause hook) every `interval`
seconds: agent over SSH (a throwaway sshd on 127.0.0.1) or the local shell, segments to
a fresh Azurite's cache container, page writes, snapshot, point in the vault. A rate
passes when every cycle ends before the next one is due. Rates are tried upwards until
one fails.

Shortened horizon: points every `interval` (default 20 s) instead of 60 s. This is the
harder test: a cycle's fixed cost (reading the whole disk, the hooks, the vault writes)
is spread over a third of the changes, and fewer writes overlap. The write rate reported
is what the writer achieved (its log), which is lower than its target because it is
paused while the agent reads (crash consistency).

Each cycle records its phases' wall time and the CPU seconds the process server (this
process, all threads) and Azurite's node process used: that is where the time goes.

Prints one result line; writes bench/results/rate.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_delta import Sshd  # noqa: E402
from bench_scan import GIB, RESULTS, make_image, write_result  # noqa: E402

from lab import workload  # noqa: E402


def start_azurite(base: Path):  # noqa: ANN201
    import socket

    from tests.blob_fixtures import ACCOUNT, AZURITE_BLOB, KEY

    from drbook.adapters.blobstore import blob_service_from
    from lab.ca import ensure_certs
    from lab.procs import Managed, wait_for_port

    certs = ensure_certs(base / "certs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    az = Managed("azurite-rate", base)
    az.start([str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(base / "data"),
              "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--cert", str(certs.server_cert),
              "--key", str(certs.server_key)])
    wait_for_port(az, "127.0.0.1", port, 30)
    endpoint = f"https://127.0.0.1:{port}/{ACCOUNT}"
    return az, endpoint, blob_service_from(endpoint, ACCOUNT, KEY, certs.ca_cert)


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _node_pid(managed) -> int:  # noqa: ANN001
    """Azurite's node process (the pid file holds the launcher, which may be a shell)."""
    pid = managed.pid()
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    children = kids.read_text().split() if kids.exists() else []
    return int(children[0]) if children else pid


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--disk-gib", type=float, default=2)
    ap.add_argument("--interval", type=float, default=20)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--rates", default="2,5,10,20,40,70,100")
    ap.add_argument("--via", choices=("ssh", "local"), default="ssh")
    ap.add_argument("--verify", action="store_true", help="check the last point of each rate against the log")
    ap.add_argument("--staging", choices=("cache", "local"), default="cache",
                    help="the policy's staging: segments through the cache container or the local spool only")
    ap.add_argument("--bridge-gap", type=int, default=None,
                    help="bytes of unchanged data the agent may send to join two changes (default: CycleSettings')")
    args = ap.parse_args()

    from drbook.adapters.ssh import ssh_shell_for
    from drbook.config import AzureConfig, ContainerNames, DiskConfig, SiteConfig
    from drbook.models import Policy
    from drbook.replication.cycle import CycleSettings
    from drbook.replication.engine import ReplicationEngine
    from drbook.replication.local_shell import LocalShell
    from drbook.vault import Vault

    work = Path(tempfile.mkdtemp(prefix="rate-", dir=RESULTS))
    disk = work / "disk0.img"
    make_image(disk, int(args.disk_gib * GIB), seed=3)
    control = work / "control"
    sshd = Sshd(work / "sshd") if args.via == "ssh" else None
    az, endpoint, service = start_azurite(work / "azurite")
    hook = f"{sys.executable} -m lab.workload"
    kw = dict(crash_hooks=[f"{hook} pause --control {control}"], crash_thaw_hooks=[f"{hook} resume --control {control}"],
              disks=[DiskConfig(name="disk0", path=str(disk))])
    if sshd:
        machine = sshd.machine("rate01", **kw)
        shell_for = ssh_shell_for
    else:
        from drbook.config import MachineConfig

        machine = MachineConfig(name="rate01", address="127.0.0.1", python=sys.executable,
                                agent_dir=str(Path(__file__).resolve().parents[1] / "drbook" / "agent"), **kw)
        shell_for = lambda m: LocalShell()  # noqa: E731
    uid = uuid.uuid4().hex[:8]
    names = ContainerNames(cache=f"cache-{uid}", replicas=f"replicas-{uid}", vault=f"vault-{uid}")
    site = SiteConfig(site="bench", azure=AzureConfig(
        subscription_id="x", resource_group="rg", location="westeurope", storage_account="devstoreaccount1",
        blob_endpoint=endpoint, encryption_key="env:UNUSED", containers=names), machines=[machine])
    vault = Vault(service.get_container_client(names.vault))
    vault.ensure()
    marks: list[tuple[str, float]] = []
    settings = CycleSettings() if args.bridge_gap is None else CycleSettings(bridge_gap=args.bridge_gap)
    engine = ReplicationEngine(site, vault, service, shell_for, os.urandom(32), settings=settings,
                               fault=lambda phase: marks.append((phase, time.perf_counter())))
    engine.ensure_containers()
    doc: dict = {"disk_bytes": disk.stat().st_size, "interval_s": args.interval, "cycles_per_rate": args.cycles,
                 "via": args.via, "staging": args.staging,
                 "bridge_gap": settings.bridge_gap, "rates": []}
    try:
        started = time.perf_counter()
        engine.enable_replication(machine, Policy(staging=args.staging))
        doc["initial_copy_s"] = round(time.perf_counter() - started, 2)
        print(f"initial copy of {args.disk_gib} GiB: {doc['initial_copy_s']} s", flush=True)
        best = None
        for seed, rate in enumerate(float(r) for r in args.rates.split(",")):
            log = work / f"workload-{rate:g}.jsonl"
            initial = work / "initial.img"
            if args.verify:  # a copy on disk: a 6 GiB disk and its replay do not fit in memory twice
                shutil.copyfile(disk, initial)
            writer = subprocess.Popen([sys.executable, "-m", "lab.workload", "run", "--disk", f"disk0={disk}",
                                       "--log", str(log), "--control", str(control), "--rate", str(rate),
                                       "--seconds", "3600", "--seed", str(seed + 1)])
            cycles, ok = [], True
            try:
                time.sleep(args.interval)  # the first interval's writes
                t0 = time.perf_counter()
                for k in range(args.cycles):
                    due = t0 + k * args.interval
                    time.sleep(max(0.0, due - time.perf_counter()))
                    marks.clear()
                    cpu0, az0 = time.process_time(), _cpu_of(_node_pid(az))
                    begin = time.perf_counter()
                    point = engine.run_cycle("rate01")
                    end = time.perf_counter()
                    cpu = {"process_server": round(time.process_time() - cpu0, 2),
                           "azurite": round(_cpu_of(_node_pid(az)) - az0, 2)}
                    phases, prev = {}, begin
                    for phase, t in marks:
                        phases[phase] = round(t - prev, 2)
                        prev = t
                    st = engine.last_stats["rate01"]["disks"]["disk0"]
                    on_time = end <= t0 + (k + 1) * args.interval
                    ok = ok and on_time
                    cycles.append({"start_late_s": round(begin - due, 2), "seconds": round(end - begin, 2),
                                   "on_time": on_time, "bytes_sent": st["bytes_sent"], "blocks": st["changed"],
                                   "phases_s": phases, "cpu_s": cpu, "point": point.id, "consistency": point.consistency})
                    print(f"  rate {rate:g} MB/s cycle {k}: {end - begin:5.1f} s, sent {st['bytes_sent'] / 1e6:7.1f} MB, "
                          f"{'on time' if on_time else 'LATE'} {phases} cpu {cpu}", flush=True)
                window = time.perf_counter() - t0 + args.interval
            finally:
                writer.send_signal(signal.SIGTERM)
                writer.wait(30)
            entries = workload.read_log(log)
            written = sum(e["length"] for e in entries if "event" not in e)
            span = entries[-1]["time"] - entries[0]["time"]
            result = {"target_mb_s": rate, "achieved_mb_s": round(written / 1e6 / span, 2), "written_bytes": written,
                      "ok": ok, "cycles": cycles, "window_s": round(window, 1)}
            if args.verify:
                from drbook.replication.store import PointStore

                last = PointStore(vault).get("rate01", cycles[-1]["point"])
                seq = workload.paused_seq("\n".join(last.freeze_evidence))
                d = last.disks[0]
                workload.replay_onto(log, "disk0", initial, seq)
                blob = service.get_blob_client(d.container, d.blob, snapshot=d.snapshot)
                step, same = 64 * 1024 * 1024, True
                with open(initial, "rb") as want:
                    for off in range(0, d.size_bytes, step):
                        n = min(step, d.size_bytes - off)
                        same = same and blob.download_blob(offset=off, length=n, max_concurrency=4).readall() == want.read(n)
                result["verified"] = same
                initial.unlink()
            doc["rates"].append(result)
            print(f"rate {rate:g} MB/s (achieved {result['achieved_mb_s']} MB/s): {'OK' if ok else 'MISSED'}", flush=True)
            if not ok:
                break
            best = result
        doc["highest_ok_target_mb_s"] = best["target_mb_s"] if best else None
        doc["highest_ok_achieved_mb_s"] = best["achieved_mb_s"] if best else None
    finally:
        az.stop()
        if sshd:
            sshd.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = write_result("rate", doc)
    print(f"rate: points every {args.interval:g} s held up to a target of {doc['highest_ok_target_mb_s']} MB/s "
          f"(achieved {doc['highest_ok_achieved_mb_s']} MB/s of random 4-256 KiB writes) on a {args.disk_gib:g} GiB disk, "
          f"agent via {args.via}, staging {args.staging}, into Azurite -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
