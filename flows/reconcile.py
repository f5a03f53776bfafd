"""reconcile: find what runs of this site that crashed or failed left in Azure (by their
tags: drbook-site, drbook-run) and remove it.

A run's resources are kept while its Prefect flow run is live (running, paused, pending)
or when it completed (a drill awaiting cleanup, a failed-over production VM)."""

from __future__ import annotations

from prefect import flow, get_client
from prefect.client.schemas.objects import StateType

from drbook.adapters.azure import map_azure_errors
from drbook.failover.build import TAG_RUN, TAG_SITE, sweep_run
from drbook.site import open_site

KEEP = {StateType.RUNNING, StateType.PAUSED, StateType.PENDING, StateType.SCHEDULED, StateType.COMPLETED}


def _run_states(run_ids: set[str]) -> dict[str, StateType | None]:
    from uuid import UUID

    out: dict[str, StateType | None] = {}
    with get_client(sync_client=True) as client:
        for rid in run_ids:
            try:
                out[rid] = client.read_flow_run(UUID(rid)).state_type
            except Exception:  # unknown id or not a UUID: no live run owns these resources
                out[rid] = None
    return out


@flow(name="reconcile", log_prints=True)
def reconcile_flow(dry_run: bool = False, site_path: str | None = None) -> dict:
    site = open_site(site_path)
    with map_azure_errors("list tagged resources"):
        tagged = [r for r in site.azure.resource.resources.list(filter=f"tagName eq '{TAG_SITE}' and tagValue eq '{site.cfg.site}'")
                  if (r.tags or {}).get(TAG_RUN)]
    runs = {r.tags[TAG_RUN] for r in tagged}
    states = _run_states(runs)
    orphans = sorted(rid for rid, st in states.items() if st not in KEEP)
    removed: dict[str, list[str]] = {}
    for rid in orphans:
        removed[rid] = [r.id for r in tagged if r.tags[TAG_RUN] == rid] if dry_run else sweep_run(site.azure, rid)
    return {"dry_run": dry_run, "runs_seen": len(runs), "orphan_runs": orphans, "removed": removed}
