"""The process servers' work queues on the Prefect server: made with their concurrency limit
(a burst of due cycles waits in the queue instead of overloading a process server), and read
for when each was last polled (a process server's sign of life)."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from drbook.config import ProcessServerConfig
from drbook.deploy import POOL


class QueueState(BaseModel):
    name: str
    concurrency_limit: int | None
    last_polled: dt.datetime | None
    paused: bool = False


def read_queues(pool: str = POOL) -> dict[str, QueueState]:
    """Every work queue of the pool (none when the pool does not exist yet)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            queues = client.read_work_queues(work_pool_name=pool)
        except ObjectNotFound:
            return {}
    return {q.name: QueueState(name=q.name, concurrency_limit=q.concurrency_limit, last_polled=q.last_polled,
                               paused=bool(q.is_paused)) for q in queues}


def queue_polls(pool: str = POOL) -> dict[str, dt.datetime | None]:
    return {name: q.last_polled for name, q in read_queues(pool).items()}


def queues_off(servers: list[ProcessServerConfig], existing: dict[str, QueueState]) -> bool:
    """A process server's queue is missing, or its limit is not its max_cycles."""
    return any(ps.queue not in existing or existing[ps.queue].concurrency_limit != ps.max_cycles for ps in servers)


def ensure_queues(servers: list[ProcessServerConfig], pool: str = POOL,
                  existing: dict[str, QueueState] | None = None) -> list[str]:
    """Each process server's queue, with its concurrency limit (max_cycles); what changed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    existing = read_queues(pool) if existing is None else existing
    changed = []
    with get_client(sync_client=True) as client:
        for ps in servers:
            q = existing.get(ps.queue)
            if q is None:
                try:
                    client.create_work_queue(name=ps.queue, work_pool_name=pool, concurrency_limit=ps.max_cycles,
                                             description=f"drbook process server {ps.name}: its machines' cycles")
                    changed.append(f"created queue {ps.queue} (at most {ps.max_cycles} cycles at once)")
                    continue
                except ObjectAlreadyExists:  # its worker made it a moment ago
                    q = read_queues(pool)[ps.queue]
            if q.concurrency_limit != ps.max_cycles:
                queue_id = client.read_work_queue_by_name(ps.queue, work_pool_name=pool).id
                client.update_work_queue(queue_id, concurrency_limit=ps.max_cycles)
                changed.append(f"queue {ps.queue}: at most {ps.max_cycles} cycles at once (was {q.concurrency_limit})")
    return changed
