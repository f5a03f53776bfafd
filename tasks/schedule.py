"""Adapters of scheduled replication: read what the decision needs (items, held item
locks, live runs of the cycle deployment) and start a cycle as a deployment run. The rule
is drbook.replication.schedule's; these only read and start."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable


from drbook.adapters.blobstore import map_blob_errors
from drbook.config import default_site_path
from drbook.errors import NotFoundError
from drbook.models import ProtectedItem, ReplicationGroup
from drbook.replication.schedule import ActiveRun, DueCycle, FinishedRun
from drbook.site import Site
from drbook.vault import group_key, lock_key

# The deployment of flows/replication.py's replicate_flow (deployments/prefect.yaml).
CYCLE_DEPLOYMENT = "replicate-cycle/replicate"
LIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING")


def held_item_locks(site: Site, names: list[str]) -> dict[str, str]:
    """item -> holder, for items whose lock is leased right now: `locks/item-<name>` (taken by
    every cycle) or `locks/failover-<name>` (held by a failover from before its approval to
    its end: a scheduled cycle then would take the item from under the failover's final
    cycle). An expired lease (its holder died) reads as free."""
    held = {}
    for name in names:
        for lock in (f"item-{name}", f"failover-{name}"):
            blob = site.vault.container.get_blob_client(lock_key(lock))
            try:
                with map_blob_errors(f"read lock {lock}"):
                    props = blob.get_blob_properties()
            except NotFoundError:
                continue  # never locked
            if props.lease.state == "leased":
                held[name] = (props.metadata or {}).get("holder") or "a holder that did not record itself"
                break
    return held


def _same_site(run_site: Any, site: Site) -> bool:
    path = Path(run_site) if run_site else default_site_path()
    try:
        return path.resolve() == site.path.resolve()
    except OSError:
        return False


def _run_items(params: dict, groups: Callable[[str], list[str]], everything: list[str]) -> list[str]:
    if params.get("all_items"):
        return everything
    if params.get("group"):
        return sorted(set(params.get("machines") or []) | set(groups(params["group"])))
    return list(params.get("machines") or [])


def _site_cycle_runs(site: Site, items: list[ProtectedItem], states: tuple[str, ...], deployment: str,
                     limit: int) -> list[tuple[Any, list[str]]]:
    """(run, its items) for this site's runs of the cycle deployment in `states`, newest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    def members(group: str) -> list[str]:
        doc = site.vault.find(group_key(group), ReplicationGroup)
        return doc.members if doc else []

    everything = [i.name for i in items]
    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            return []
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in states]))),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit,
        )
    return [(run, _run_items(run.parameters or {}, members, everything)) for run in runs
            if _same_site((run.parameters or {}).get("site_path"), site)]


def active_cycle_runs(site: Site, items: list[ProtectedItem], deployment: str = CYCLE_DEPLOYMENT) -> list[ActiveRun]:
    """Runs of the cycle deployment for this site that are scheduled, pending or running,
    whoever started them (this dispatcher, the UI, the CLI)."""
    out = []
    for run, run_items in _site_cycle_runs(site, items, LIVE_STATES, deployment, limit=200):
        state = run.state.type.value if run.state else "SCHEDULED"
        if state == "RUNNING":
            since = run.start_time or (run.state.timestamp if run.state else None)
        else:
            since = run.next_scheduled_start_time or run.expected_start_time or (run.state.timestamp if run.state else None)
        out.append(ActiveRun(run_id=str(run.id), state=state, since=since or dt.datetime.now(dt.timezone.utc),
                             items=run_items, queue=run.work_queue_name))
    return out


def finished_cycle_runs(site: Site, items: list[ProtectedItem], deployment: str = CYCLE_DEPLOYMENT,
                        limit: int = 100) -> list[FinishedRun]:
    """The newest completed runs of the cycle deployment for this site: when each was asked
    for (its expected start: a started run's creation) and when it ended."""
    out = []
    for run, run_items in _site_cycle_runs(site, items, ("COMPLETED",), deployment, limit=limit):
        if run.expected_start_time and run.end_time:
            out.append(FinishedRun(run_id=str(run.id), requested=run.expected_start_time, ended=run.end_time,
                                   items=run_items))
    return out


def dispatcher_tick_s() -> float:
    """The interval of the deployment this run came from (its shortest active interval
    schedule), 0 when run outside a deployment or on another kind of schedule."""
    from prefect import get_client
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.runtime import deployment

    if not deployment.id:
        return 0.0
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment.id)
    intervals = [s.schedule.interval.total_seconds() for s in dep.schedules or []
                 if s.active and isinstance(s.schedule, IntervalSchedule)]
    return min(intervals, default=0.0)


def start_cycle_run(cycle: DueCycle, site_path: str, work_queue: str | None = None,
                    deployment: str = CYCLE_DEPLOYMENT) -> dict:
    """Start one cycle as its own run of the cycle deployment, in `work_queue` (its process
    server's; None: the deployment's own); do not wait."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment, parameters={**cycle.parameters(), "site_path": site_path}, timeout=0, as_subflow=False,
        tags=["drbook", "scheduled-cycle"], flow_run_name=f"cycle-{cycle.label.replace(' ', '-')}-{cycle.want}",
        work_queue_name=work_queue,
    )
    return {"run_id": str(run.id), "name": run.name}

