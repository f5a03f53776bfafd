"""Scale-out: N protected machines replicated by 1, 2 and 3 process servers, and a process
server's death, on the lab.

    drbook-lab up     # first: the lab's Azurite, Prefect server and worker ps1
    .venv/bin/python bench/bench_scaleout.py [--machines 100] [--servers 1,2,3] [--minutes 4]
        [--frequency-s 120] [--churn-kib-s 400] [--max-cycles 4] [--disk-mib 4] [--takeover] [--keep]

The machines: N physical servers of the bench's own (bs001..bsN), each a real sshd on a
loopback address of its own (127.0.3.x) with one disk file of --disk-mib MiB, protected on a
site of the bench's own (own vault and containers) with one policy: a crash point every
--frequency-s seconds. A churn thread writes random 4 KiB blocks over all the disks at
--churn-kib-s KiB/s in total, the same in every pass.

For each K in --servers: the site lists process servers ps1..psK (the lab's workers: ps1 is
`drbook-lab up`'s, ps2 and ps3 started by `drbook-lab process-server start`; each polling its
own queue, --max-cycles cycles at once), the machines are spread over them (`drbook
process-server rebalance`), and a dispatcher deployment of the site (every 10 s, on ps1, as
in production) starts the due cycles for --minutes after a warm-up of one frequency. Measured
over the window: cycles per minute (points made), per server; the RPO of every machine sampled
every 10 s (now - newest point: mean, p95, max); each cycle run's wait in its queue (created
-> running) and its run time; runs that failed or crashed; the CPU busy share of the machine.

--takeover (with K = 2): after the window, ps2's host dies (its worker and every process under
it SIGKILLed); measured: from the kill to the first point of one of ps2's machines on ps1,
and to every one of them having one.

Demand is N / frequency cycles per minute; when it exceeds what the process servers can do,
the RPO grows and cycles per minute is the capacity. Prints a table; writes
bench/results/scaleout.json. Exit 0, 1 when a check failed (a point torn or lost is not
checked here: tests/test_e2e_scaleout.py holds every point to the workload log), 2 when the
lab is not up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scan import lab_control as bench_lab, write_result  # noqa: E402

DISPATCH_EVERY_S = 10
SAMPLE_S = 10


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def cpu_times() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Churn(threading.Thread):
    """Random 4 KiB writes over every disk, at a fixed total rate."""

    def __init__(self, disks: list[Path], kib_s: float, seed: int = 7) -> None:
        super().__init__(daemon=True, name="churn")
        self.disks, self.rate = disks, kib_s / 4
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        self.written = 0

    def run(self) -> None:
        fds = [os.open(p, os.O_WRONLY) for p in self.disks]
        sizes = [p.stat().st_size for p in self.disks]
        try:
            t0 = time.monotonic()
            while not self.stop.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                while self.written < due:
                    i = self.rng.randrange(len(fds))
                    os.pwrite(fds[i], self.rng.randbytes(4096), self.rng.randrange(sizes[i] // 4096) * 4096)
                    self.written += 1
                time.sleep(0.05)
        finally:
            for fd in fds:
                os.close(fd)


def make_machines(lab_dir: Path, n: int, disk_mib: int) -> list[dict]:
    from lab.machines import ensure_client_key, ensure_machine, machine_status
    from lab.spec import DiskSpec, MachineSpec

    keys = ensure_client_key(lab_dir / "ssh")
    specs = [MachineSpec(name=f"bs{i:03}", address=f"127.0.3.{i}", ip=f"10.10.1.{100 + i % 150}", network="app-net",
                         disks=[DiskSpec(name="disk0", size_mib=disk_mib)], vmware=False) for i in range(1, n + 1)]
    for spec in specs:  # one after another: each adds its host key to the lab's known_hosts
        ensure_machine(lab_dir, spec, keys)
    return [machine_status(lab_dir, s, keys) for s in specs]


def remove_machines(lab_dir: Path, machines: list[dict]) -> None:
    from lab.machines import machine_dir
    from lab.procs import Managed

    for m in machines:
        Managed(f"sshd-{m['name']}", lab_dir / "run").stop()
        shutil.rmtree(machine_dir(lab_dir, m["name"]), ignore_errors=True)


def write_site(lab: dict, work: Path, machines: list[dict], frequency_s: float, servers: int, max_cycles: int,
               path: Path | None = None) -> Path:
    import yaml

    from drbook.site import forget_sites
    from tests.conftest import make_site

    if path is None:
        path = Path(make_site(lab, work))
    doc = yaml.safe_load(path.read_text())
    doc["machines"] = [{
        "name": m["name"], "vm_name": None, "os": "linux", "address": m["address"], "port": 22, "user": "root",
        "key_file": m["key_file"], "known_hosts": m["known_hosts"], "agent_dir": m["agent_dir"],
        "network": m["network"], "ip": m["ip"], "cpus": 1, "memory_mb": 1024,
        "disks": [{"name": d["name"], "path": d["path"], "size_bytes": d["size_bytes"]} for d in m["disks"]],
    } for m in machines]
    doc["policies"] = [{"name": "default", "crash_frequency_minutes": frequency_s / 60, "app_frequency_minutes": 1440,
                        "rpo_threshold_minutes": 60}]
    doc["process_servers"] = [{"name": f"ps{k}", "address": f"127.0.2.{k}", "max_cycles": max_cycles,
                               "runs_stages": k == 1} for k in range(1, servers + 1)]
    doc["takeover"] = {"after_s": 30, "return_after_s": 20}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    forget_sites()
    return path


def protect(site, names: list[str]) -> float:
    from drbook.mobility import ensure_agent

    t0 = time.monotonic()
    site.create_vault()
    site.engine.ensure_containers()

    def one(name: str) -> None:
        cfg = site.machine(name)
        ensure_agent(site.vault, cfg)
        site.engine.enable_replication(cfg, site.cfg.policy("default"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return time.monotonic() - t0


def set_workers(lab_control, k: int) -> None:
    """ps1..psK running and polling their queues (a rebalance before a first poll calls it lost)."""
    from drbook.scaleout.queues import read_queues

    since = now()
    for name in ("ps2", "ps3"):
        if int(name[2:]) <= k:
            lab_control.start_process_server(name)
        else:
            lab_control.stop_process_server(name)
    wanted = [f"ps{i}" for i in range(1, k + 1)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        queues = read_queues()
        if all(queues.get(q) and queues[q].last_polled and queues[q].last_polled >= since for q in wanted):
            return
        time.sleep(0.5)
    raise SystemExit(f"process servers {wanted} did not all poll their queues within 60 s")


def rebalance(site) -> dict:
    from drbook.tasks.scaleout import dispatcher_lease, place

    with dispatcher_lease(site, "bench", wait_s=300):  # a tick of the pass before may still run
        decision = place(site, site.vault.items(), now(), rebalance=True)
    return {ps.name: sum(len(p.members) for p in decision.assignment.units.values() if p.server == ps.name)
            for ps in site.cfg.process_servers}


def site_runs(site_path: str, since: dt.datetime | None = None) -> list:
    """The site's runs of the cycle deployment (created since `since`), every page of them."""
    from prefect import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime)

    from tests.dispatcher_deployment import CYCLE_DEPLOYMENT

    out = []
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(CYCLE_DEPLOYMENT)
        flt = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)) if since else None
        offset = 0
        while True:
            page = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                                         flow_run_filter=flt, limit=200, offset=offset)
            out += [r for r in page if (r.parameters or {}).get("site_path") == site_path]
            if len(page) < 200:
                return out
            offset += 200


def drain(site_path: str, timeout: float = 180) -> None:
    """Wait for the live cycle runs of the site to end (cancel what still waits after timeout)."""
    from prefect import get_client
    from prefect.states import Cancelled

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [r for r in site_runs(site_path, now() - dt.timedelta(hours=1))
                if r.state and r.state.type.value in ("SCHEDULED", "PENDING", "RUNNING")]
        if not live:
            return
        time.sleep(2)
    with get_client(sync_client=True) as client:
        for r in live:
            client.set_flow_run_state(r.id, Cancelled(message="bench pass over"), force=True)


def measure(site, site_path: str, names: list[str], minutes: float, warmup_s: float) -> dict:
    from tests.dispatcher_deployment import dispatcher_deployment

    rpo: list[float] = []
    with dispatcher_deployment(site_path, DISPATCH_EVERY_S):
        time.sleep(warmup_s)
        w0 = now()
        c0 = cpu_times()
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            t = now()
            for item in site.vault.items():
                if item.last_point_time:
                    rpo.append((t - item.last_point_time).total_seconds())
            time.sleep(SAMPLE_S)
        w1 = now()
        c1 = cpu_times()
    points = [p for n in names for p in site.engine.points.points(n) if w0 <= p.time < w1]
    runs = [r for r in site_runs(site_path, w0 - dt.timedelta(minutes=30)) if r.start_time and w0 <= r.start_time < w1]
    waits = [(r.start_time - r.expected_start_time).total_seconds() for r in runs if r.expected_start_time]
    spans = [(r.end_time - r.start_time).total_seconds() for r in runs if r.end_time]
    states: dict[str, int] = {}
    for r in runs:
        states[r.state.type.value] = states.get(r.state.type.value, 0) + 1
    per_server: dict[str, int] = {}
    for p in points:
        per_server[p.process_server or "?"] = per_server.get(p.process_server or "?", 0) + 1
    minutes_measured = (w1 - w0).total_seconds() / 60
    rpo.sort()
    return {
        "window_s": round((w1 - w0).total_seconds(), 1),
        "cycles_per_min": round(len(points) / minutes_measured, 1),
        "per_server_per_min": {k: round(v / minutes_measured, 1) for k, v in sorted(per_server.items())},
        "rpo_mean_s": round(statistics.fmean(rpo), 1) if rpo else None,
        "rpo_p95_s": round(rpo[int(0.95 * (len(rpo) - 1))], 1) if rpo else None,
        "rpo_max_s": round(rpo[-1], 1) if rpo else None,
        "queue_wait_median_s": round(statistics.median(waits), 1) if waits else None,
        "run_median_s": round(statistics.median(spans), 1) if spans else None,
        "runs": states,
        "cpu_busy": round((c1[0] - c0[0]) / max(1e-9, c1[1] - c0[1]), 3),
        "load": os.getloadavg()[0],
    }


def takeover(lab_control, site, site_path: str, names: list[str]) -> dict:
    from drbook.tasks.scaleout import read_assignment
    from tests.dispatcher_deployment import dispatcher_deployment

    with dispatcher_deployment(site_path, DISPATCH_EVERY_S):
        time.sleep(2 * DISPATCH_EVERY_S)
        placed = read_assignment(site)
        mine = sorted(m for p in placed.units.values() if p.server == "ps2" for m in p.members)
        killed = now()
        lab_control.kill_process_server("ps2")
        firsts: dict[str, float] = {}
        deadline = time.monotonic() + 900
        while len(firsts) < len(mine) and time.monotonic() < deadline:
            for n in mine:
                if n not in firsts:
                    p = next((p for p in site.engine.points.points(n) if p.time >= killed and p.process_server == "ps1"), None)
                    if p:
                        firsts[n] = (p.time - killed).total_seconds()
            time.sleep(2)
        lost_seen = read_assignment(site).servers["ps2"]
    took = sorted(firsts.values())
    return {"machines_on_ps2": len(mine), "moved_with_a_point": len(firsts),
            "first_point_s": took[0] if took else None, "median_s": statistics.median(took) if took else None,
            "all_s": took[-1] if len(took) == len(mine) and took else None,
            "lost_at_s": round((lost_seen.lost_at - killed).total_seconds(), 1) if lost_seen.lost_at else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--servers", default="1,2,3")
    ap.add_argument("--minutes", type=float, default=4)
    ap.add_argument("--frequency-s", type=float, default=120)
    ap.add_argument("--churn-kib-s", type=float, default=400)
    ap.add_argument("--max-cycles", type=int, default=4)
    ap.add_argument("--disk-mib", type=int, default=4)
    ap.add_argument("--takeover", action="store_true", help="then kill ps2 (with 2 servers) and time the takeover")
    ap.add_argument("--keep", action="store_true", help="keep the machines and the site")
    args = ap.parse_args()

    lab_control = bench_lab()
    lab = lab_control.status()
    if not lab["up"]:
        print("the lab is not up: run `drbook-lab up`", file=sys.stderr)
        return 2
    from drbook.site import open_site
    from tests.dispatcher_deployment import lab_schedules_paused

    lab_dir = Path(lab["lab_dir"])
    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-", dir=lab_dir))
    counts = [int(x) for x in args.servers.split(",")]
    print(f"making {args.machines} machines ({args.disk_mib} MiB disk each) ...", flush=True)
    machines = make_machines(lab_dir, args.machines, args.disk_mib)
    names = [m["name"] for m in machines]
    result: dict = {"args": vars(args), "passes": []}
    churn = None
    try:
        with lab_schedules_paused():
            site_path = write_site(lab, work, machines, args.frequency_s, max(counts), args.max_cycles)
            site = open_site(site_path)
            print(f"protecting {len(names)} machines ...", flush=True)
            result["protect_s"] = round(protect(site, names), 1)
            print(f"protected in {result['protect_s']} s", flush=True)
            churn = Churn([Path(m["disks"][0]["path"]) for m in machines], args.churn_kib_s)
            churn.start()
            for k in counts:
                write_site(lab, work, machines, args.frequency_s, k, args.max_cycles, path=site_path)
                site = open_site(site_path)
                set_workers(lab_control, k)
                spread = rebalance(site)
                print(f"{k} process server(s): {spread}; measuring {args.minutes} min ...", flush=True)
                row = {"servers": k, "spread": spread,
                       **measure(site, str(site_path), names, args.minutes, warmup_s=min(args.frequency_s, 60))}
                print(json.dumps(row), flush=True)
                result["passes"].append(row)
                drain(str(site_path))
            if args.takeover:
                write_site(lab, work, machines, args.frequency_s, 2, args.max_cycles, path=site_path)
                site = open_site(site_path)
                set_workers(lab_control, 2)
                rebalance(site)
                result["takeover"] = takeover(lab_control, site, str(site_path), names)
                print(json.dumps(result["takeover"]), flush=True)
                drain(str(site_path))
    finally:
        if churn is not None:
            churn.stop.set()
            churn.join()
            result["churn_bytes"] = churn.written * 4096
        lab_control.stop_process_server("ps2")
        lab_control.stop_process_server("ps3")
        if not args.keep:
            remove_machines(lab_dir, machines)
            shutil.rmtree(work, ignore_errors=True)
    demand = args.machines * 60 / args.frequency_s
    print(f"\n{args.machines} machines, a point every {args.frequency_s:.0f} s each (demand {demand:.0f} cycles/min), "
          f"churn {args.churn_kib_s:.0f} KiB/s, {args.max_cycles} cycles at once per process server")
    print(f"{'servers':>7} {'cycles/min':>10} {'per server':>28} {'RPO mean':>9} {'p95':>7} {'max':>7} "
          f"{'queue wait':>10} {'run':>6} {'CPU busy':>8}  runs")
    for r in result["passes"]:
        print(f"{r['servers']:>7} {r['cycles_per_min']:>10} {json.dumps(r['per_server_per_min']):>28} "
              f"{r['rpo_mean_s']:>9} {r['rpo_p95_s']:>7} {r['rpo_max_s']:>7} {r['queue_wait_median_s']:>10} "
              f"{r['run_median_s']:>6} {r['cpu_busy']:>8}  {r['runs']}")
    if "takeover" in result:
        print(f"takeover: {result['takeover']}")
    print(f"wrote {write_result('scaleout', result)}")
    failed = any(r["runs"].get("FAILED") for r in result["passes"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
