"""The RPO monitor: each item's RPO (the age of its newest point) against its policy's
threshold; `drbook.rpo.breached` / `drbook.rpo.recovered` on a crossing only (the item's
`rpo_breached` in the vault remembers). The alert automations (drbook.alerts) turn those
events into notifications."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from drbook.replication.monitor import check_rpo, rpo_row
from drbook.site import open_site


@flow(name="rpo-monitor", log_prints=True)
def rpo_monitor_flow(site_path: str | None = None) -> list[dict]:
    """Compute every protected item's RPO and emit an event when it crosses the threshold.

    Args:
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    rows = [rpo_row(d) for d in check_rpo(site.vault, site=site.cfg.site)]
    log = get_run_logger()
    for row in rows:
        if row["event"]:
            log.warning("%s: %s (RPO %ss, threshold %ss)", row["item"], row["event"], row["rpo_seconds"],
                        row["threshold_seconds"])
    create_table_artifact(rows, key="rpo-monitor", description="RPO of every item (age of its newest point)")
    return rows
