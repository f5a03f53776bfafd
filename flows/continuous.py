"""Continuous replication with no one typing: the dispatcher, a deployment on a short
interval, starts a run of the cycle deployment for every item or group whose policy says a
point is due, in the work queue of the process server that serves it. The rules are
drbook.replication.schedule's (due, want, busy) and drbook.scaleout's (which process server,
a lost one's machines taken over, the runs it left behind)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from drbook.errors import LeaseHeldError
from drbook.models import utcnow
from drbook.replication.schedule import DISPATCHER_LOCK, DueCycle, ScheduleBounds, busy_items, decide_schedule, start_leads
from drbook.scaleout.leftovers import left_behind
from drbook.site import Site, open_site
from drbook.tasks.scaleout import place, settle_left_behind, without
from drbook.tasks.schedule import (active_cycle_runs, dispatcher_tick_s, finished_cycle_runs, held_item_locks,
                                   start_cycle_run)



START_THREADS = 8


def dispatch(site: Site, start: Callable[[DueCycle, str, str], dict] = start_cycle_run,
             bounds: ScheduleBounds = ScheduleBounds(), tick_s: float = 0.0) -> list[dict]:
    """One tick: place every unit on a process server (taking a lost one's over); read the
    items, their locks, the live and the recently finished cycle runs; settle the runs a lost
    process server left behind; decide; start each due cycle with `start(cycle, site_path,
    work_queue)`. `tick_s`: the dispatcher's interval. A row per item: its status, why, its
    process server and the run started."""
    now = utcnow()
    items = site.vault.items()
    protected = [i.name for i in items if i.state.value == "protected"]
    placement = place(site, items, now)
    held = held_item_locks(site, protected)
    active = active_cycle_runs(site, items)
    lost = placement.lost()
    queues = {ps.name: ps.queue for ps in site.cfg.process_servers}
    left = left_behind(active, {queues[n] for n in lost}, held, now,
                       last_points={i.name: i.last_point_time for i in items}, bounds=bounds)
    if left.cancel or left.crash:
        settle_left_behind(left)
    live_queues = {q for n, q in queues.items() if n not in lost}
    busy = busy_items(held, without(active, left), now, bounds, live_queues=live_queues)
    leads = start_leads(protected, finished_cycle_runs(site, items), tick_s)
    app_capable = {m.name for m in site.cfg.machines if m.quiesce_hooks}
    schedule = decide_schedule(items, now, busy=busy, app_capable=app_capable, leads=leads)
    started: dict[str, dict] = {}
    servers = [placement.server_for(c.members, site.cfg.process_servers) for c in schedule.cycles]
    # Started side by side: one after another, a tick that found 50 cycles due took minutes
    # (bench_scaleout, 100 machines: ~4 s a start at load 6), and the dispatcher, not the
    # process servers, set the pace.
    with ThreadPoolExecutor(START_THREADS) as pool:
        runs = list(pool.map(lambda cs: start(cs[0], str(site.path), cs[1].queue), zip(schedule.cycles, servers)))
    for cycle, server, run in zip(schedule.cycles, servers, runs):
        for member in cycle.members:
            started[member] = {**run, "process_server": server.name}
    server_of = {m: p.server for p in placement.assignment.units.values() for m in p.members}
    return [{**r.model_dump(mode="json", include={"item", "group", "status", "want", "why"}),
             "process_server": server_of.get(r.item),
             "run": started.get(r.item, {}).get("name"), "run_id": started.get(r.item, {}).get("run_id")}
            for r in schedule.reasons]


@flow(name="replication-dispatcher", log_prints=True)
def dispatch_flow(site_path: str | None = None) -> list[dict]:
    """Start a replication cycle (a run of the deployment replicate-cycle/replicate) for every
    protected item or group whose policy says a point is due, skipping those busy with one.

    Args:
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    log = get_run_logger()
    try:
        with site.vault.lease(DISPATCHER_LOCK, holder=f"dispatcher@{socket.gethostname()}"):
            rows = dispatch(site, start=start_cycle_run, tick_s=dispatcher_tick_s())
    except LeaseHeldError as exc:
        log.info("another dispatcher is deciding right now; this tick does nothing (%s)", exc)
        return []
    for row in rows:
        log.info("%s: %s%s", row["item"], row["why"],
                 f" -> started {row['run']} on {row['process_server']}" if row["run"] else "")
    create_table_artifact(rows, key="replication-dispatcher", description="scheduled replication: each item, why")
    return rows
