"""Apply the RPO decision (drbook.replication.rpo) to the vault: the one place that checks
items' RPO, emits an event on a crossing and remembers the crossing in the item
(`rpo_breached`), so an alert fires once per breach and once per recovery. Used after
every replication cycle (flows/replication.py) and by the RPO monitor (flows/rpo_monitor.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from drbook.models import ProtectedItem, utcnow
from drbook.replication.events import emit_rpo_event
from drbook.replication.rpo import RpoDecision, decide_rpo
from drbook.vault import Vault, item_key


def check_rpo(vault: Vault, names: Iterable[str] | None = None, *, site: str | None = None,
              now: dt.datetime | None = None,
              emit: Callable[[RpoDecision, str | None], object] = emit_rpo_event) -> list[RpoDecision]:
    """Decide every named item's RPO (default: every item in the vault); for a decision that
    crossed the threshold, record the new `rpo_breached` under the item's ETag first and
    emit the event only when this writer made the change (two monitors racing emit once)."""
    now = now or utcnow()
    items = vault.items() if names is None else [vault.item(n) for n in names]
    decisions = []
    for item in items:
        decision = decide_rpo(item, item.last_point_time, item.policy, now)
        if decision.changed:
            flipped: dict[str, bool] = {}

            def remember(current: ProtectedItem, want: bool = decision.breached) -> ProtectedItem:
                flipped["by_us"] = current.rpo_breached != want
                return current.model_copy(update={"rpo_breached": want})

            vault.update(item_key(item.name), ProtectedItem, remember)
            if flipped.get("by_us"):
                emit(decision, site)
        decisions.append(decision)
    return decisions


def rpo_row(decision: RpoDecision) -> dict:
    """A row of the RPO table (the monitor's artifact and return value)."""
    lag = decision.lag_seconds
    return {
        "item": decision.item,
        "rpo_seconds": None if lag is None else round(lag, 1),
        "threshold_seconds": round(decision.threshold_minutes * 60, 1),
        "breached": decision.breached,
        "event": None if decision.status == "unchanged" else f"drbook.rpo.{decision.status}",
        "monitored": decision.monitored,
        "last_point_time": decision.last_point_time.isoformat() if decision.last_point_time else None,
    }
