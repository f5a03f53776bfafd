"""A dispatcher deployment of a test's (or benchmark's) own site, on the lab's worker: the
lab's registered `replication-dispatcher/continuous-replication` copied with this site as
its parameter and a short interval. Deleted on exit."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator

LAB_DISPATCHER = "replication-dispatcher/continuous-replication"
CYCLE_DEPLOYMENT = "replicate-cycle/replicate"


class NoDeployments(RuntimeError):
    pass


@contextlib.contextmanager
def dispatcher_deployment(site_path: str, every_s: float) -> Iterator[str]:
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            lab_dep = client.read_deployment_by_name(LAB_DISPATCHER)
            client.read_deployment_by_name(CYCLE_DEPLOYMENT)
        except ObjectNotFound:
            raise NoDeployments("the lab has no drbook deployments (drbook-lab up registers them)") from None
        dep_id = client.create_deployment(
            flow_id=lab_dep.flow_id, name=f"test-{uuid.uuid4().hex[:6]}", entrypoint=lab_dep.entrypoint,
            work_pool_name=lab_dep.work_pool_name, work_queue_name=lab_dep.work_queue_name,
            job_variables=lab_dep.job_variables, pull_steps=lab_dep.pull_steps, path=lab_dep.path,
            # the lab's limit and collision strategy (CANCEL_NEW): a tick that finds the last one
            # still running is dropped, never queued behind it
            parameters={"site_path": site_path}, concurrency_limit=1, concurrency_options=lab_dep.concurrency_options,
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=dt.timedelta(seconds=every_s)),
                                                active=True)],
        )
    try:
        yield str(dep_id)
    finally:
        _delete_with_its_runs(dep_id)


def _delete_with_its_runs(dep_id) -> None:
    """Deleting a deployment leaves its already-scheduled runs behind, and the worker would
    run them (a dispatcher of a site that no longer exists): pause, delete them, then it."""
    from prefect import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        client.pause_deployment(dep_id)
        waiting = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED, StateType.PENDING]))))
        for run in waiting:
            client.delete_flow_run(run.id)
        client.delete_deployment(dep_id)


def cycle_runs(site_path: str) -> list:
    """Runs of the cycle deployment for this site, in any state."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(CYCLE_DEPLOYMENT)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])), limit=200)
    return [r for r in runs if (r.parameters or {}).get("site_path") == site_path]


# The lab's own sub-minute schedules start a Python process on the worker every 30-60 s for
# the lab's site, which no test uses (test_e2e_continuous runs a dispatcher of its own site):
# on a 2-core machine that is CPU the tests (and benchmarks) wait for. Paused while they run,
# resumed after.
_FREQUENT = ("replication-dispatcher/continuous-replication", "rpo-monitor/rpo-monitor")


@contextlib.contextmanager
def lab_schedules_paused() -> Iterator[None]:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    paused = []
    with get_client(sync_client=True) as client:
        for name in _FREQUENT:
            try:
                dep = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue  # test_deployments fails on a missing deployment; nothing to pause here
            if not dep.paused:
                client.pause_deployment(dep.id)
                paused.append(dep.id)
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            for dep_id in paused:
                client.resume_deployment(dep_id)
