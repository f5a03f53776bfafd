"""Prefect tasks over the replication engine (drbook.replication)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from prefect import get_run_logger, task

from drbook.errors import ConnectError, LeaseHeldError, RemoteExecError
from drbook.models import RecoveryPoint
from drbook.replication.selection import plan_final_cycles
from drbook.site import Site, open_site
from drbook.tasks.policy import ONCE, REMOTE

T = TypeVar("T")


def points_of(site: Site, item: str) -> list[RecoveryPoint]:
    """Recovery points of an item, newest first."""
    return sorted(site.engine.points.points(item), key=lambda p: p.time, reverse=True)


def points_of_each(site: Site, items: list[str]) -> dict[str, list[RecoveryPoint]]:
    """points_of for many items at once (a 100-machine plan reads them in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(items)))) as pool:
        return dict(zip(items, pool.map(lambda i: points_of(site, i), items)))


# A final cycle that finds a cycle of its item running (one the schedule started before the
# failover took its locks) waits for it, up to this long, instead of failing the failover.
RUNNING_CYCLE_WAIT_S = 180.0


def _after_running_cycle(what: str, cycle: Callable[[], T]) -> T:
    deadline = time.monotonic() + RUNNING_CYCLE_WAIT_S
    while True:
        try:
            return cycle()
        except LeaseHeldError as exc:
            if time.monotonic() > deadline:
                raise
            get_run_logger().info("%s waits for the cycle running now (%s)", what, exc)
            time.sleep(2)


@task(name="replicate-group-cycle", **REMOTE)
def run_group_cycle(site_path: str, group: str, items: list[str], want: str = "crash") -> list[RecoveryPoint]:
    return open_site(site_path).engine.run_group_cycle(group, items, want=want)


@task(name="final-cycle", **ONCE)
def final_cycle(site_path: str, item: str) -> RecoveryPoint | None:
    """The last cycle before a failover to `latest`; a source that does not answer is not an
    error (an unplanned failover goes on with the newest point it has)."""
    try:
        return _after_running_cycle(f"the final cycle of {item}",
                                    lambda: open_site(site_path).engine.run_cycle(item, want="crash"))
    except (ConnectError, RemoteExecError) as exc:
        get_run_logger().warning("%s: no final cycle, the source does not answer (%s); using the newest point", item, exc)
        return None


def final_cycles(site_path: str, items: list[str]) -> list[RecoveryPoint | None]:
    """Members of one replication group get one shared final point."""
    site = open_site(site_path)
    results: list[RecoveryPoint | None] = []
    for plan in plan_final_cycles({n: site.vault.item(n) for n in items}, items):
        if plan.group is None:
            results.append(final_cycle(site_path, plan.members[0]))
            continue
        try:
            results.extend(_after_running_cycle(f"the final cycle of group {plan.group}",
                                                lambda: run_group_cycle(site_path, plan.group, plan.members)))
        except (ConnectError, RemoteExecError) as exc:
            get_run_logger().warning("group %s: no final cycle (%s)", plan.group, exc)
    return results
