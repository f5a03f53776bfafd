"""Commit: the failed-over point becomes final. Which points go is decided by
`commit_reasons` (drbook.replication.retention), deleted by the same `delete_point`
retention uses, and `dry_run` says "Would delete" without touching anything."""

from __future__ import annotations

from pydantic import BaseModel

from drbook import state as statelib
from drbook.models import FailoverRecord, ItemState
from drbook.replication.retention import commit_reasons, delete_point, describe_point
from drbook.vault import failover_key


class CommitResult(BaseModel):
    item: str
    dry_run: bool
    kept_point: str | None
    deleted_points: list[str] = []
    actions: list[str] = []


def require_committable(site, names: list[str]) -> None:  # noqa: ANN001 - drbook.site.Site
    """Refuse before anything is touched when any machine cannot be committed."""
    for name in names:
        statelib.require(site.vault.item(name), "commit")


def commit_item(site, name: str, *, run_id: str, dry_run: bool = False) -> CommitResult:  # noqa: ANN001 - Site
    """Under the failover lease: delete every other point, then move the item to committed
    and mark its failover record. A crash between leaves the item failed-over with fewer
    points: commit runs again and finishes."""
    vault = site.vault
    with vault.lease(f"failover-{name}", holder=f"commit {run_id}", duration_s=30):
        item = vault.item(name)
        statelib.require(item, "commit")
        points = site.engine.points.points(name)
        reasons = commit_reasons(points, item.failover_point_id)
        dropped = [p for p in points if reasons[p.id].startswith("purge")]
        verb = "Would delete" if dry_run else "Deleted"
        result = CommitResult(item=name, dry_run=dry_run, kept_point=item.failover_point_id,
                              deleted_points=[p.id for p in dropped],
                              actions=[f"{verb} {describe_point(p)}" for p in dropped])
        if dry_run:
            return result
        for point in dropped:
            delete_point(site.engine.points, site.blob_service, point)
        vault.transition(name, ItemState.COMMITTED, flow_run_id=run_id, reason=f"commit of failover {item.failover_run_id}")
        if item.failover_run_id:
            vault.update(failover_key(item.failover_run_id), FailoverRecord,
                         lambda r: r.model_copy(update={"status": "committed"}))
        return result
