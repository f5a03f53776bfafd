"""From a Run click to the flow's first step on the process-server worker.

    eval "$(.venv/bin/drbook-lab env)"; .venv/bin/python bench/bench_run_latency.py [--runs 5] [--deployment discover/discover]

A Run click in the UI, a schedule tick and the CLI all do what `run_deployment(...)` does:
create a flow run of the deployment, scheduled now. The lab's worker (`drbook-lab up`) polls
for it, spawns a process for it, and that process runs the flow. Runs go one after another
(each waits for the previous to end). For each run, from the moment run_deployment was
called: the worker took it (Pending), the flow started in its process (Running), its first
task started, and it ended. Prints one result line per run and a summary; writes
bench/results/run_latency.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import write_result  # noqa: E402


def _one(client, deployment: str, timeout: float) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    clicked = datetime.now(timezone.utc)
    run = run_deployment(deployment, timeout=0)
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run.id)
        if run.state.is_final():
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run.id} did not end within {timeout:.0f}s (is the worker up? drbook-lab status)")
        time.sleep(0.2)
    states = {s.type.value: s.timestamp for s in reversed(client.read_flow_run_states(run.id))}  # the first of each
    # Task runs reach the server as events, a moment after the flow run's own state.
    for _ in range(50):
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        if any(t.start_time for t in tasks):
            break
        time.sleep(0.2)
    first_task = min((t.start_time for t in tasks if t.start_time), default=None)

    def since(ts) -> float | None:
        return round((ts - clicked).total_seconds(), 2) if ts else None

    return {"flow_run_id": str(run.id), "state": run.state.type.value,
            "pending_s": since(states.get("PENDING")), "running_s": since(states.get("RUNNING")),
            "first_task_s": since(first_task), "ended_s": since(run.end_time)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--deployment", default="discover/discover")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()

    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool("drbook-process-server")
        rows = []
        for i in range(args.runs):
            row = _one(client, args.deployment, args.timeout)
            rows.append(row)
            print(f"run {i + 1}: taken by the worker {row['pending_s']} s, flow running {row['running_s']} s, "
                  f"first task {row['first_task_s']} s, ended {row['ended_s']} s ({row['state']})", flush=True)

    def stats(key: str) -> dict:
        values = [r[key] for r in rows if r[key] is not None]
        return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)} if values else {}

    summary = {k: stats(k) for k in ("pending_s", "running_s", "first_task_s", "ended_s")}
    out = write_result("run_latency", {
        "benchmark": "run_latency", "deployment": args.deployment, "runs": rows, "summary": summary,
        "api_url": get_current_settings().api.url, "workers": [w.name for w in workers],
    })
    ft = summary["first_task_s"]
    print(f"run_deployment -> first task on the worker: median {ft.get('median')} s (min {ft.get('min')}, "
          f"max {ft.get('max')}) over {len(rows)} runs of {args.deployment}")
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
