"""Continuous replication with no one typing: the dispatcher, a deployment on a short
interval, starts a run of the cycle deployment for every item or group whose policy says a
point is due. The rule (due, want, busy) is drbook.replication.schedule's."""

from __future__ import annotations

import socket
from typing import Callable

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from drbook.errors import LeaseHeldError
from drbook.models import utcnow
from drbook.replication.schedule import DueCycle, ScheduleBounds, busy_items, decide_schedule, start_leads
from drbook.site import Site, open_site
from drbook.tasks.schedule import (active_cycle_runs, dispatcher_tick_s, finished_cycle_runs, held_item_locks,
                                   start_cycle, start_cycle_run)

# Two dispatcher runs at once (a slow tick overlapping the next) would both see an item
# free and start it twice: the dispatcher holds this lock while it decides and starts.
DISPATCHER_LOCK = "replication-dispatcher"


def dispatch(site: Site, start: Callable[[DueCycle, str], dict] = start_cycle_run,
             bounds: ScheduleBounds = ScheduleBounds(), tick_s: float = 0.0) -> list[dict]:
    """One tick: read the items, their locks, the live and the recently finished cycle runs;
    decide; start each due cycle with `start(cycle, site_path)`. `tick_s`: the dispatcher's
    interval. A row per item: its status, why, and the run started."""
    now = utcnow()
    items = site.vault.items()
    protected = [i.name for i in items if i.state.value == "protected"]
    busy = busy_items(held_item_locks(site, protected), active_cycle_runs(site, items), now, bounds)
    leads = start_leads(protected, finished_cycle_runs(site, items), tick_s)
    app_capable = {m.name for m in site.cfg.machines if m.quiesce_hooks}
    schedule = decide_schedule(items, now, busy=busy, app_capable=app_capable, leads=leads)
    started: dict[str, dict] = {}
    for cycle in schedule.cycles:
        run = start(cycle, str(site.path))
        for member in cycle.members:
            started[member] = run
    return [{**r.model_dump(mode="json", include={"item", "group", "status", "want", "why"}),
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
            rows = dispatch(site, start=lambda cycle, sp: start_cycle(cycle, sp), tick_s=dispatcher_tick_s())
    except LeaseHeldError as exc:
        log.info("another dispatcher is deciding right now; this tick does nothing (%s)", exc)
        return []
    for row in rows:
        log.info("%s: %s%s", row["item"], row["why"], f" -> started {row['run']}" if row["run"] else "")
    create_table_artifact(rows, key="replication-dispatcher", description="scheduled replication: each item, why")
    return rows
