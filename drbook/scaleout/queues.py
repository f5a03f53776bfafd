"""The process servers' work queues on the Prefect server: made with their concurrency limit
(a burst of due cycles waits in the queue instead of overloading a process server), and read
with the workers' heartbeats for a process server's last sign of life.

Two signs, the later wins: its worker's heartbeat (`drbook-NAME`, every 10 s: worker_env) and
its queue's last poll. Neither is enough alone in Prefect 3.8.8: the server records queue polls
in a background task deduplicated per *pool*, so with several workers in one pool a poll can
go unrecorded (measured: a worker polling every 2 s, its queue 10 s stale at idle and 30 s
under load); a worker started by hand under another name sends no heartbeat drbook knows."""

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


def worker_heartbeats(pool: str = POOL) -> dict[str, dt.datetime | None]:
    """worker name -> its last heartbeat, for every worker the pool has seen."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            workers = client.read_workers_for_work_pool(pool, limit=200)
        except ObjectNotFound:
            return {}
    return {w.name: w.last_heartbeat_time for w in workers}


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def last_signs(servers: list[ProcessServerConfig], queues: dict[str, QueueState],
               heartbeats: dict[str, dt.datetime | None]) -> dict[str, dt.datetime | None]:
    """queue -> the later of its last poll and its worker's last heartbeat."""
    from drbook.scaleout.worker import worker_name

    out = {}
    for ps in servers:
        signs = [_aware(queues[ps.queue].last_polled) if ps.queue in queues else None,
                 _aware(heartbeats.get(worker_name(ps)))]
        out[ps.queue] = max((s for s in signs if s is not None), default=None)
    return out


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
