"""The RPO kept by scheduled replication, with the workload writer running and no command typed.

    .venv/bin/python bench/bench_continuous.py [--minutes 10] [--frequency 60] [--dispatch-every 10]
                                               [--sample 5] [--machine app02] [--rate 4]

Needs the lab up with its worker and deployments (`drbook-lab up`). A site of its own (own
vault and containers) protects one lab machine with a policy of `--frequency` seconds; a
dispatcher deployment of that site (a copy of the lab's continuous-replication with a
`--dispatch-every` interval) runs on the lab's worker and starts each due cycle as a run
of replicate-cycle/replicate; the workload writer writes to the machine's disks. Every
`--sample` seconds the RPO (now - the item's newest point) is sampled from the vault.

Goal (issue 11): the RPO never above twice the policy's frequency. Measured from the first
scheduled point on (the warm-up before it, a new dispatcher's first tick and first cycle,
is reported apart).

Prints one result line; writes bench/results/continuous.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scan import lab_control as bench_lab, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--frequency", type=float, default=60, help="the policy's crash frequency, seconds")
    ap.add_argument("--dispatch-every", type=float, default=10, help="the dispatcher's interval, seconds")
    ap.add_argument("--sample", type=float, default=5, help="seconds between RPO samples")
    ap.add_argument("--machine", default="app02")
    ap.add_argument("--rate", type=float, default=4, help="the workload writer's writes per second")
    args = ap.parse_args()

    import yaml

    lab_control = bench_lab()

    from drbook.flows.replication import enable_replication_flow
    from drbook.site import forget_sites, open_site
    from tests.conftest import make_site
    from tests.dispatcher_deployment import cycle_runs, dispatcher_deployment, lab_schedules_paused
    from tests.lab_site import start_writer

    lab = lab_control.status()
    if not lab["up"]:
        raise SystemExit("the lab is not up: run `drbook-lab up`")
    work = Path(tempfile.mkdtemp(prefix="bench-continuous-"))
    site_path = make_site(lab, work)
    doc = yaml.safe_load(Path(site_path).read_text())
    freq_min = args.frequency / 60
    doc["policies"] = [{"name": "default"}, {"name": "bench", "crash_frequency_minutes": freq_min,
                                             "app_frequency_minutes": 60, "rpo_threshold_minutes": 2 * freq_min}]
    Path(site_path).write_text(yaml.safe_dump(doc, sort_keys=False))
    forget_sites()

    t_enable = time.monotonic()
    enable_replication_flow([args.machine], policy="bench", site_path=site_path)
    print(f"initial copy of {args.machine}: {time.monotonic() - t_enable:.1f}s", file=sys.stderr)
    site = open_site(site_path)
    writer = start_writer(lab, args.machine, work, rate=args.rate, seconds=args.minutes * 60 + 120, seed=57)
    samples: list[tuple[float, float]] = []
    try:
        # the lab's own 30 s dispatcher and RPO monitor (of a site with nothing protected) would
        # only take CPU from the one process server this measures
        with lab_schedules_paused(), dispatcher_deployment(site_path, args.dispatch_every):
            # Warm-up, not measured: a dispatcher deployment made just now has no tick behind it
            # and no finished cycle to take its lead from (a real site's dispatcher runs all the
            # time). The measurement starts at the first scheduled point.
            first_point = site.vault.item(args.machine).last_point_id
            t_made = time.monotonic()
            while site.vault.item(args.machine).last_point_id == first_point:
                if time.monotonic() - t_made > 300:
                    raise SystemExit("no scheduled point within 5 minutes of the dispatcher deployment")
                time.sleep(1)
            warmup_s = time.monotonic() - t_made
            print(f"first scheduled point {warmup_s:.1f}s after the dispatcher deployment was made", file=sys.stderr)
            t0 = site.vault.item(args.machine).last_point_time
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                item = site.vault.item(args.machine)
                now = dt.datetime.now(dt.timezone.utc)
                samples.append(((now - t0).total_seconds(), (now - item.last_point_time).total_seconds()))
                time.sleep(args.sample)
            runs = cycle_runs(site_path)
    finally:
        writer.stop()
    points = sorted((p for p in site.engine.points.points(args.machine) if p.time >= t0), key=lambda p: p.time)
    gaps = [(b.time - a.time).total_seconds() for a, b in zip(points, points[1:])]
    rpos = [r for _, r in samples]
    done = [r for r in runs if r.start_time and r.end_time]
    spans = sorted((r.start_time, r.end_time) for r in done)
    overlaps = sum(1 for (_, a_end), (b_start, _) in zip(spans, spans[1:]) if b_start < a_end)
    states: dict[str, int] = {}
    for r in runs:
        states[r.state.type.value] = states.get(r.state.type.value, 0) + 1
    result = {
        "minutes": args.minutes, "frequency_s": args.frequency, "dispatch_every_s": args.dispatch_every,
        "machine": args.machine, "writer_rate": args.rate, "samples": len(rpos), "warmup_s": round(warmup_s, 1),
        "rpo_max_s": round(max(rpos), 1), "rpo_mean_s": round(statistics.mean(rpos), 1),
        "rpo_p95_s": round(sorted(rpos)[int(0.95 * (len(rpos) - 1))], 1),
        "goal_s": 2 * args.frequency, "goal_met": max(rpos) <= 2 * args.frequency,
        "points": len(points), "gap_mean_s": round(statistics.mean(gaps), 1) if gaps else None,
        "gap_max_s": round(max(gaps), 1) if gaps else None,
        "cycle_run_seconds_mean": round(statistics.mean((e - s).total_seconds() for s, e in spans), 1) if spans else None,
        "cycle_runs": states, "overlapping_cycles": overlaps,
    }
    write_result("continuous", result)
    print(f"RPO over {args.minutes:g} min (policy {args.frequency:g}s, dispatcher every {args.dispatch_every:g}s): "
          f"max {result['rpo_max_s']}s, p95 {result['rpo_p95_s']}s, mean {result['rpo_mean_s']}s "
          f"(goal <= {2 * args.frequency:g}s: {'met' if result['goal_met'] else 'MISSED'}); {len(points)} points, "
          f"gaps mean {result['gap_mean_s']}s max {result['gap_max_s']}s; cycle runs {states}, overlaps {overlaps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
