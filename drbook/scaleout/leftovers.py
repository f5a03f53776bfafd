"""The cycle runs a lost process server left behind (pure).

A run waiting in a lost server's queue (scheduled, or pending: its worker took it and died)
would never start, or start late and stale when the server returns: it is cancelled. A run
the lost server was running whose items' leases are all free has no live process behind it
(a cycle holds its items' leases while it runs, renewed every few seconds): it is marked
crashed. A run whose lease is still held is left alone: its process lives on (the worker died,
not the host) and the lease keeps any other cycle of those items out until it ends. Either
way the dispatcher no longer counts these runs as busy, so the items' next cycles start on the
server that took them over."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from pydantic import BaseModel

from drbook.replication.schedule import ActiveRun


class LeftBehind(BaseModel):
    cancel: list[ActiveRun] = []
    crash: list[ActiveRun] = []

    @property
    def run_ids(self) -> set[str]:
        return {r.run_id for r in [*self.cancel, *self.crash]}


def left_behind(runs: Iterable[ActiveRun], lost_queues: Collection[str], held: Mapping[str, str]) -> LeftBehind:
    out = LeftBehind()
    for run in runs:
        if run.queue is None or run.queue not in lost_queues:
            continue
        if run.state in ("SCHEDULED", "PENDING"):
            out.cancel.append(run)
        elif not any(item in held for item in run.items):
            out.crash.append(run)
    return out
