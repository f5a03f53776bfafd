"""What `drbook process-server list` shows: each process server, whether it polls, what it runs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from pydantic import BaseModel

from drbook.config import SiteConfig
from drbook.scaleout.assign import Assignment
from drbook.scaleout.queues import QueueState


class ServerRow(BaseModel):
    name: str
    queue: str
    address: str | None
    status: str  # online, lost, returning, or unknown (no dispatcher tick has judged it yet)
    last_polled_s: float | None  # seconds since its queue was last polled
    max_cycles: int
    runs_stages: bool
    items: list[str]  # what it runs the cycles of now
    taken_over: list[str]  # of those, items whose home is another (lost) server
    away: list[str]  # items whose home it is, run by another server now


def server_rows(cfg: SiteConfig, assignment: Assignment | None, queues: Mapping[str, QueueState],
                now: dt.datetime) -> list[ServerRow]:
    assignment = assignment or Assignment()
    rows = []
    for ps in cfg.process_servers:
        q = queues.get(ps.queue)
        state = assignment.servers.get(ps.name)
        status = "unknown" if state is None else ("returning" if state.back_since else state.status)
        polled = q.last_polled if q else None
        if polled is not None and polled.tzinfo is None:
            polled = polled.replace(tzinfo=dt.timezone.utc)
        runs = [p for p in assignment.units.values() if p.server == ps.name]
        rows.append(ServerRow(
            name=ps.name, queue=ps.queue, address=ps.address, status=status,
            last_polled_s=None if polled is None else round((now - polled).total_seconds(), 1),
            max_cycles=ps.max_cycles, runs_stages=ps.runs_stages,
            items=sorted(m for p in runs for m in p.members),
            taken_over=sorted(m for p in runs if p.home != ps.name for m in p.members),
            away=sorted(m for p in assignment.units.values() if p.home == ps.name and p.server != ps.name
                        for m in p.members),
        ))
    return rows
