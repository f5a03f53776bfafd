"""RPO alerts: Prefect automations that turn this site's `drbook.rpo.breached` /
`drbook.rpo.recovered` events (drbook.replication.events, emitted by the RPO monitor and
after every cycle) into a notification to the site's alert webhook.

    RPO monitor --emit_event--> Prefect server --automation (EventTrigger)--> SendNotification
        --> CustomWebhookNotificationBlock --HTTPS POST (JSON)--> alerts.webhook_url

The Prefect server runs the trigger and the action (its triggers and actions services), so
the server's process must reach the webhook and trust its certificate (SSL_CERT_FILE).
`ensure_alerts` is idempotent: it saves the block under a fixed name and creates or updates
the automations by their fixed names; `drbook deploy` and `drbook-lab up` call it.
"""

from __future__ import annotations

import re

from drbook.config import SiteConfig
from drbook.replication.events import BREACHED, RECOVERED, SITE_LABEL

EVENTS = {"breached": BREACHED, "recovered": RECOVERED}

# What the receiver gets: {"site", "subject", "body"}; body is JSON text rendered by the
# server from the event (Jinja, no autoescape), so a receiver can parse it.
BODY = (
    '{"event": {{ event.event | tojson }}, "id": "{{ event.id }}", "occurred": "{{ event.occurred }}", '
    '"item": {{ event.resource.name | tojson }}, "payload": {{ event.payload | tojson }}}'
)


def block_name(site: str) -> str:
    """Block names are lowercase letters, digits and dashes."""
    return "drbook-rpo-alerts-" + (re.sub(r"[^a-z0-9-]+", "-", site.lower()).strip("-") or "site")


def automation_name(site: str, kind: str) -> str:
    return f"drbook rpo {kind} ({site})"


def ensure_alerts(cfg: SiteConfig) -> list[str]:
    """Create or update this site's alert automations (and their webhook block); return
    their names. A site without `alerts:` gets none, and any it had are deleted."""
    from prefect import get_client
    from prefect.automations import Automation, EventTrigger, SendNotification
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    site = cfg.site
    wanted: dict[str, str] = {}
    if cfg.alerts is not None:
        headers = {"Content-Type": "application/json"}
        secrets: dict[str, str] = {}
        if cfg.alerts.token:
            from drbook.secrets import resolve_secret

            secrets["token"] = resolve_secret(cfg.alerts.token).get_secret_value()
            headers["Authorization"] = "Bearer {{token}}"
        block = CustomWebhookNotificationBlock(
            name=f"drbook RPO alerts of {site}", url=cfg.alerts.webhook_url, method="POST",
            json_data={"site": site, "subject": "{{subject}}", "body": "{{body}}"},
            headers=headers, secrets=secrets, timeout=10,
        )
        block_id = block.save(block_name(site), overwrite=True)
        wanted = {automation_name(site, k): k for k in cfg.alerts.events}

    names = []
    with get_client(sync_client=True) as client:
        for kind in EVENTS:
            name = automation_name(site, kind)
            existing = client.read_automations_by_name(name=name)
            if name not in wanted:
                for a in existing:
                    client.delete_automation(a.id)
                continue
            automation = Automation(
                name=name,
                description=f"drbook: notify the alert webhook of site {site} when an item's RPO is {kind}",
                trigger=EventTrigger(
                    expect={EVENTS[kind]},
                    match={"prefect.resource.id": "drbook.item.*", SITE_LABEL: site},
                    posture="Reactive", threshold=1, within=0,
                ),
                actions=[SendNotification(
                    block_document_id=block_id,
                    subject=f"drbook {site}: RPO {kind} on {{{{ event.resource.name }}}}",
                    body=BODY,
                )],
            )
            if existing:
                automation.id = existing[0].id
                automation.update()
                for extra in existing[1:]:  # a racing earlier call made a second one
                    client.delete_automation(extra.id)
            else:
                automation.create()
            names.append(name)
    return names
