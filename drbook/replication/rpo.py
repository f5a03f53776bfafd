"""RPO decisions: is an item's newest recovery point older than its RPO threshold, and
which kind of cycle is due next. Pure; the monitor flow applies them and emits events
(drbook.replication.events)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel

from drbook.models import ItemState, Policy, ProtectedItem

# Only these states replicate from the source; in the others an RPO means nothing.
MONITORED = frozenset({ItemState.INITIAL_REPLICATION, ItemState.PROTECTED})


class RpoDecision(BaseModel):
    item: str
    status: Literal["breached", "recovered", "unchanged"]
    breached: bool
    monitored: bool
    lag_seconds: float | None
    threshold_minutes: float
    last_point_time: dt.datetime | None
    checked_at: dt.datetime

    @property
    def changed(self) -> bool:
        return self.status != "unchanged"


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def decide_rpo(
    item: ProtectedItem,
    last_point_time: dt.datetime | None,
    policy: Policy,
    now: dt.datetime,
) -> RpoDecision:
    """Breached when the newest point (or, before the first one, the enabling of
    replication) is older than the threshold. `status` is the edge against what the item
    last recorded (`item.rpo_breached`): breached / recovered / unchanged."""
    now = _aware(now)
    monitored = item.state in MONITORED
    since = last_point_time or item.created
    lag = (now - _aware(since)).total_seconds() if since else None
    breached = monitored and lag is not None and lag > policy.rpo_threshold_minutes * 60
    if breached and not item.rpo_breached:
        status = "breached"
    elif not breached and item.rpo_breached:
        status = "recovered"
    else:
        status = "unchanged"
    return RpoDecision(
        item=item.name, status=status, breached=breached, monitored=monitored, lag_seconds=lag,
        threshold_minutes=policy.rpo_threshold_minutes, last_point_time=last_point_time, checked_at=now,
    )


def next_cycle(item: ProtectedItem, policy: Policy, now: dt.datetime) -> Literal["app", "crash"] | None:
    """Which cycle is due: an app-consistent one when the last app point is older than
    `app_frequency_minutes`, else a crash-consistent one when the last point is older than
    `crash_frequency_minutes`, else none."""
    now = _aware(now)
    if item.state not in MONITORED:
        return None
    if item.last_app_point_time is None or now - _aware(item.last_app_point_time) >= dt.timedelta(minutes=policy.app_frequency_minutes):
        return "app"
    if item.last_point_time is None or now - _aware(item.last_point_time) >= dt.timedelta(minutes=policy.crash_frequency_minutes):
        return "crash"
    return None
