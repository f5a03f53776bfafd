"""Retention: which recovery points to keep (like borg's prune).

`decide_retention` is pure and says what to keep and why; `apply_retention` deletes what
it decided (or, with dry_run, says what it would delete) and nothing else.

The rules, in order:
  - a pinned point is kept (a failover or a drill uses it);
  - the newest point is always kept, however old: an item is never left with nothing
    to fail over to because replication stalled;
  - a point younger than `policy.retention_hours` is kept;
  - every other point is purged.
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable

from pydantic import BaseModel

from drbook.models import Policy, RecoveryPoint


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def retention_reasons(
    points: Iterable[RecoveryPoint], policy: Policy, now: dt.datetime, pinned: Iterable[str] = ()
) -> dict[str, str]:
    """For every point id: why it is kept ("keep: ...") or purged ("purge: ...")."""
    ordered = sorted(points, key=lambda p: (_aware(p.time), p.id), reverse=True)
    pinned = set(pinned)
    cutoff = _aware(now) - dt.timedelta(hours=policy.retention_hours)
    reasons: dict[str, str] = {}
    for i, point in enumerate(ordered):
        if point.id in pinned:
            reasons[point.id] = "keep: pinned (in use by a failover or drill)"
        elif i == 0:
            reasons[point.id] = "keep: newest point"
        elif _aware(point.time) >= cutoff:
            reasons[point.id] = f"keep: within {policy.retention_hours:g} h retention"
        else:
            age = _aware(now) - _aware(point.time)
            reasons[point.id] = f"purge: {age.total_seconds() / 3600:.1f} h old, retention is {policy.retention_hours:g} h"
    return reasons


def decide_retention(
    points: Iterable[RecoveryPoint], policy: Policy, now: dt.datetime, pinned: Iterable[str] = ()
) -> tuple[list[RecoveryPoint], list[RecoveryPoint]]:
    """(keep, purge), each newest first."""
    points = sorted(points, key=lambda p: (_aware(p.time), p.id), reverse=True)
    reasons = retention_reasons(points, policy, now, pinned)
    keep = [p for p in points if reasons[p.id].startswith("keep")]
    purge = [p for p in points if reasons[p.id].startswith("purge")]
    return keep, purge


class RetentionResult(BaseModel):
    item: str
    dry_run: bool
    kept: list[str] = []
    purged: list[str] = []
    actions: list[str] = []
    reasons: dict[str, str] = {}
