"""Scale-out adapters: where each unit's cycles run (the vault's assignment, the queues' polls),
the runs a lost process server left behind, the events. The rules are drbook.scaleout's."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import time
from collections.abc import Iterable, Iterator

from drbook.errors import LeaseHeldError

from drbook.models import ProtectedItem
from drbook.replication.schedule import DISPATCHER_LOCK, ActiveRun
from drbook.scaleout.assign import ASSIGNMENT_KEY, GIB, Assignment, Decision, ServerEvent, decide, units_of
from drbook.scaleout.leftovers import LeftBehind
from drbook.scaleout.queues import ensure_queues, last_signs, queues_off, read_queues, worker_heartbeats
from drbook.site import Site

LOST = "drbook.process-server.lost"
RETURNED = "drbook.process-server.returned"
REBALANCED = "drbook.process-servers.rebalanced"
SITE_LABEL = "drbook.site"


@contextlib.contextmanager
def dispatcher_lease(site: Site, who: str, wait_s: float = 30.0) -> Iterator[None]:
    """The dispatcher's lease, so a tick and a rebalance never write the assignment at once.
    A tick holds it for a second or two: wait up to `wait_s` for it, then LeaseHeldError (exit 6)."""
    deadline = time.monotonic() + wait_s
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(site.vault.lease(DISPATCHER_LOCK, holder=f"{who}@{socket.gethostname()}"))
                break
            except LeaseHeldError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield


def read_assignment(site: Site) -> Assignment | None:
    return site.vault.find(ASSIGNMENT_KEY, Assignment)


def churn_gib_per_day(site: Site, items: Iterable[ProtectedItem], now: dt.datetime) -> dict[str, float]:
    """Each item's bytes sent by the cycles of the last day (its points), in GiB."""
    since = now - dt.timedelta(days=1)
    out = {}
    for item in items:
        sent = sum(d.bytes_sent for p in site.engine.points.points(item.name) if p.time >= since for d in p.disks)
        out[item.name] = sent / GIB
    return out


def place(site: Site, items: list[ProtectedItem], now: dt.datetime, *, rebalance: bool = False,
          dry_run: bool = False) -> Decision:
    """Decide every unit's process server now and record it (unless dry_run), with its events.
    The caller holds the dispatcher's lease: one writer of the assignment at a time."""
    churn = churn_gib_per_day(site, items, now) if rebalance else None
    queues = read_queues()
    if not dry_run and queues_off(site.cfg.process_servers, queues):
        ensure_queues(site.cfg.process_servers, existing=queues)
    polls = last_signs(site.cfg.process_servers, queues, worker_heartbeats())
    decision = decide(read_assignment(site), units_of(items, churn), site.cfg.process_servers, polls, now,
                      site.cfg.takeover, rebalance=rebalance)
    if not dry_run:
        site.vault.put(ASSIGNMENT_KEY, decision.assignment)
        for event in decision.events:
            emit_server_event(site, event)
        if rebalance and decision.moves:
            _emit(site, REBALANCED, "drbook.process-servers", {"moves": [m.model_dump() for m in decision.moves]})
    return decision


def emit_server_event(site: Site, event: ServerEvent) -> None:
    payload = {"process_server": event.server, "site": site.cfg.site,
               "last_polled": event.last_polled.isoformat() if event.last_polled else None,
               "moves": [m.model_dump() for m in event.moves]}
    _emit(site, LOST if event.kind == "lost" else RETURNED, f"drbook.process-server.{event.server}", payload,
          name=event.server)


def _emit(site: Site, event: str, resource_id: str, payload: dict, name: str | None = None) -> None:
    from prefect.events import emit_event

    resource = {"prefect.resource.id": resource_id, "prefect.resource.name": name or resource_id, SITE_LABEL: site.cfg.site}
    emit_event(event=event, resource=resource, payload=payload)


def settle_left_behind(left: LeftBehind) -> None:
    """Cancel the runs that will never start; mark crashed the runs with no process behind them
    (drbook.scaleout.leftovers), each with why."""
    from prefect import get_client
    from prefect.states import Cancelled, Crashed

    with get_client(sync_client=True) as client:
        for run in left.cancel:
            client.set_flow_run_state(run.run_id, Cancelled(message=f"drbook: {left.why[run.run_id]}"), force=True)
        for run in left.crash:
            client.set_flow_run_state(run.run_id, Crashed(message=f"drbook: {left.why[run.run_id]}"), force=True)


def without(runs: list[ActiveRun], left: LeftBehind) -> list[ActiveRun]:
    gone = left.run_ids
    return [r for r in runs if r.run_id not in gone]
