"""Cycle runs that will never do anything, and hold their queue's slots (pure).

A process server's queue admits `max_cycles` runs at once, counting the pending and running
ones: a run whose process is gone, left "Running" or "Pending" in Prefect, holds a slot for
good, and a few of them stop that server's cycles altogether. The dispatcher settles them:

  - in the queue of a lost process server: a run waiting (scheduled, or pending: its worker
    took it and died) is cancelled: it would never start, or start late and stale when the
    server returns; a run it was running whose items' leases are all free is marked crashed
    (a cycle holds its items' leases while it runs, renewed every few seconds, so no live
    process is behind it). A run whose lease is still held is left alone: its process lives
    on (the worker died, not the host) and the lease keeps any other cycle of those items out
    until it ends;
  - in any queue: a run pending longer than `pending_s` never got its process (its worker
    stopped while submitting it): cancelled; a run running longer than `running_grace_s`
    with every item's lease free and no point of its items in the last `RECENT_POINT_S` is
    dead (a worker stopped or restarted under it): crashed. The recent-point condition
    spares a live run between the end of its cycle (lease released) and its own end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping

from pydantic import BaseModel

from drbook.replication.schedule import ActiveRun, ScheduleBounds

RECENT_POINT_S = 60.0


class LeftBehind(BaseModel):
    cancel: list[ActiveRun] = []
    crash: list[ActiveRun] = []
    why: dict[str, str] = {}  # run id -> why

    @property
    def run_ids(self) -> set[str]:
        return {r.run_id for r in [*self.cancel, *self.crash]}


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def left_behind(runs: Iterable[ActiveRun], lost_queues: Collection[str], held: Mapping[str, str],
                now: dt.datetime | None = None, last_points: Mapping[str, dt.datetime | None] | None = None,
                bounds: ScheduleBounds = ScheduleBounds()) -> LeftBehind:
    out = LeftBehind()
    points = last_points or {}
    for run in runs:
        leased = any(item in held for item in run.items)
        age = (now - _aware(run.since)).total_seconds() if now else 0.0
        if run.queue is not None and run.queue in lost_queues:
            if run.state in ("SCHEDULED", "PENDING"):
                out.cancel.append(run)
                out.why[run.run_id] = f"its process server (queue {run.queue}) is lost"
            elif not leased:
                out.crash.append(run)
                out.why[run.run_id] = f"its process server (queue {run.queue}) is lost and no cycle holds its lease"
        elif now is None:
            continue
        elif run.state == "PENDING" and age > bounds.pending_s:
            out.cancel.append(run)
            out.why[run.run_id] = f"pending {age:.0f}s: its process never started"
        elif run.state == "RUNNING" and age > bounds.running_grace_s and not leased and not any(
                points.get(i) and (now - _aware(points[i])).total_seconds() < RECENT_POINT_S for i in run.items):
            out.crash.append(run)
            out.why[run.run_id] = f"running {age:.0f}s with no lease held and no recent point: its process is gone"
    return out
