"""reconcile: find what runs of this site that crashed or failed left in Azure (by their
tags: drbook-site, drbook-run) and remove it. Which runs are orphans is decided in
drbook.failover.reconcile; this flow gathers the runs' Prefect states and applies it."""

from __future__ import annotations

from prefect import flow, get_client, get_run_logger

from drbook.failover.build import resources_of_site, sweep_run
from drbook.failover.reconcile import decide_orphans, resources_by_run
from drbook.site import open_site


def _run_states(run_ids: set[str]) -> dict[str, str | None]:
    """Each run's Prefect state type (RUNNING, FAILED, ...); None when Prefect has none for it."""
    from uuid import UUID

    out: dict[str, str | None] = {}
    with get_client(sync_client=True) as client:
        for rid in run_ids:
            try:
                state_type = client.read_flow_run(UUID(rid)).state_type
            except Exception:  # unknown id or not a UUID: no live run owns these resources
                state_type = None
            out[rid] = state_type.value if state_type is not None else None
    return out


@flow(name="reconcile", log_prints=True)
def reconcile_flow(dry_run: bool = False, site_path: str | None = None) -> dict:
    """Remove what crashed or failed runs of this site left in Azure (found by their tags).

    Args:
        dry_run: only say what would be removed
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    log = get_run_logger()
    site = open_site(site_path)
    runs = resources_by_run(resources_of_site(site.azure, site.cfg.site))
    orphans = decide_orphans(runs, _run_states(set(runs)))
    removed: dict[str, list[str]] = {}
    for orphan in orphans:
        log.info("%s the %d resources of run %s: %s", "Would delete" if dry_run else "Deleting", len(orphan.resources),
                 orphan.run_id, orphan.reason)
        removed[orphan.run_id] = orphan.resources if dry_run else sweep_run(site.azure, orphan.run_id)
    return {"dry_run": dry_run, "runs_seen": len(runs), "orphan_runs": [o.run_id for o in orphans], "removed": removed}
