"""Prefect events for replication: an RPO breach and its recovery, for automations and
notifications to act on."""

from __future__ import annotations

from typing import Any

from drbook.replication.rpo import RpoDecision

BREACHED = "drbook.rpo.breached"
RECOVERED = "drbook.rpo.recovered"


SITE_LABEL = "drbook.site"


def item_resource(item: str, site: str | None = None) -> dict[str, str]:
    """The event's resource: the item, labelled with its site (automations of one site
    match on the label, drbook.alerts)."""
    resource = {"prefect.resource.id": f"drbook.item.{item}", "prefect.resource.name": item}
    if site:
        resource[SITE_LABEL] = site
    return resource


def emit_rpo_event(decision: RpoDecision, site: str | None = None) -> Any:
    """Emit drbook.rpo.breached / drbook.rpo.recovered for a decision that changed; return
    the Event (None when nothing changed or no events client is configured)."""
    if decision.status == "unchanged":
        return None
    from prefect.events import emit_event

    return emit_event(
        event=BREACHED if decision.status == "breached" else RECOVERED,
        resource=item_resource(decision.item, site),
        occurred=decision.checked_at,
        payload={
            "site": site,
            "item": decision.item,
            "lag_seconds": decision.lag_seconds,
            "threshold_minutes": decision.threshold_minutes,
            "last_point_time": decision.last_point_time.isoformat() if decision.last_point_time else None,
        },
    )
