"""What 10 failovers waiting for approval hold: pause (a live process each) or suspend?

    .venv/bin/python bench/bench_approvals.py [--runs 10] [--seconds 60]

On the lab (`drbook-lab up`): one site of its own per failover (each with db01 protected,
because a failover holds its machine's lease from before the approval to its end, and a
second failover of the same machine is refused), then `--runs` failovers, each in a fresh
Python process as a process worker starts a flow run, each paused at its approval. Over
`--seconds` it measures what they hold: RSS and threads per process, CPU of the paused
processes, of the Prefect server and of Azurite (the vault's lease renewals), each against
the same window with no failover waiting; and whether the process-server work pool has a
concurrency limit (worker slots). Then it rejects them all (nothing changes) and checks
that every process ended.

Prints one result line; writes bench/results/approvals.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import lab_control as bench_lab  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
POOL = "drbook-process-server"
CLK = os.sysconf("SC_CLK_TCK")

FAILOVER = """
import sys
from drbook.flows.failover import failover_flow
try:
    failover_flow(["db01"], point="latest-processed", approval_timeout=3600, site_path=sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def window(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(seconds)
    return {k: round(cpu_seconds(p) - before[k], 2) for k, p in pids.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()

    lab_control = bench_lab()
    from prefect import get_client

    from drbook.approvals import answer, waiting_approvals
    from drbook.flows.prepare_azure import prepare_azure_flow
    from drbook.flows.replication import enable_replication_flow
    from tests.conftest import make_site

    lab = lab_control.status()
    services = {"prefect server": lab_control.managed("prefect").pid(), "azurite": lab_control.managed("azurite").pid()}
    cpu_seconds(services["prefect server"]), cpu_seconds(services["azurite"])  # fail now, not after the set-up
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(POOL)
    pool_limit = pool.concurrency_limit

    base = Path(tempfile.mkdtemp(prefix="bench-approvals-"))
    t = time.monotonic()
    sites = []
    for _ in range(args.runs):
        sp = make_site(lab, base)
        prepare_azure_flow(site_path=sp)
        enable_replication_flow(["db01"], site_path=sp)
        sites.append(sp)
    print(f"set up {args.runs} sites with db01 protected in {time.monotonic() - t:.0f} s", file=sys.stderr)

    idle = window(services, args.seconds)

    before = {w["run_id"] for w in waiting_approvals()}
    procs = [subprocess.Popen([sys.executable, "-c", FAILOVER, sp], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for sp in sites]
    t = time.monotonic()
    while True:
        mine = [w for w in waiting_approvals() if w["run_id"] not in before and w["flow"] == "failover"]
        if len(mine) == args.runs:
            break
        if any(p.poll() is not None for p in procs) or time.monotonic() - t > 300:
            raise SystemExit(f"only {len(mine)} of {args.runs} failovers paused: "
                             + "; ".join(p.stdout.read() for p in procs if p.poll() is not None))
        time.sleep(1)
    to_pause = time.monotonic() - t
    time.sleep(5)  # let start-up settle: measure the waiting, not the imports

    rss_kib = [status_field(p.pid, "VmRSS") for p in procs]
    threads = [status_field(p.pid, "Threads") for p in procs]
    busy = window({**services, **{f"failover-{i}": p.pid for i, p in enumerate(procs)}}, args.seconds)
    paused_cpu = sum(v for k, v in busy.items() if k.startswith("failover-"))

    for w in mine:
        answer(w["run_id"], approve=False, comment="benchmark done")
    for p in procs:
        p.wait(timeout=120)
    left = [w for w in waiting_approvals() if w["run_id"] not in before]

    result = {
        "runs": args.runs,
        "seconds": args.seconds,
        "time_to_all_paused_s": round(to_pause, 1),
        "rss_mib_per_process": {"min": round(min(rss_kib) / 1024), "max": round(max(rss_kib) / 1024),
                                "mean": round(sum(rss_kib) / len(rss_kib) / 1024)},
        "rss_mib_total": round(sum(rss_kib) / 1024),
        "threads_per_process": max(threads),
        "cpu_s_all_paused_processes": round(paused_cpu, 2),
        "cpu_percent_of_one_core_per_process": round(100 * paused_cpu / args.runs / args.seconds, 2),
        "prefect_server_cpu_s": {"idle": idle["prefect server"], "with_paused": busy["prefect server"]},
        "azurite_cpu_s": {"idle": idle["azurite"], "with_paused": busy["azurite"]},
        "work_pool": POOL,
        "work_pool_concurrency_limit": pool_limit,
        "still_paused_after_reject": len(left),
        "exit_codes": sorted({p.returncode for p in procs}),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "approvals.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
