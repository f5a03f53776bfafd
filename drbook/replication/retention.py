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

import contextlib
import datetime as dt
from typing import Iterable

from pydantic import BaseModel

from drbook.config import ContainerNames
from drbook.errors import NotFoundError, StateTransitionError
from drbook.models import Policy, ProtectedItem, RecoveryPoint, utcnow


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


def apply_retention(
    vault,  # noqa: ANN001 - drbook.vault.Vault
    blob_service,  # noqa: ANN001 - azure.storage.blob.BlobServiceClient
    containers: ContainerNames,
    item: str,
    now: dt.datetime | None = None,
    *,
    dry_run: bool = False,
    pinned: Iterable[str] = (),
    holder: str = "drbook:retention",
) -> RetentionResult:
    """Purge the points the item's policy does not keep, under the item's lease; with
    dry_run only say what would go ("Would delete ..."). The point document goes first,
    then its manifests, then its snapshots: a crash leaves at worst an unlisted snapshot,
    never a listed point without its data. Such orphan snapshots (also those of a cycle
    that died between taking its snapshots and recording them) are swept here too."""
    from drbook.replication.blobs import Cache, Replicas
    from drbook.replication.store import PointStore

    now = now or utcnow()
    store = PointStore(vault)
    with vault.lease(f"item-{item}", holder=holder):
        doc = vault.item(item)
        # The last point's manifest is the next cycle's block map: never purge it.
        pins = set(pinned) | {x for x in (doc.failover_point_id, doc.last_point_id) if x}
        points = store.points(item)
        keep, purge = decide_retention(points, doc.policy, now, pins)
        result = RetentionResult(item=item, dry_run=dry_run, kept=[x.id for x in keep], purged=[x.id for x in purge],
                                 reasons=retention_reasons(points, doc.policy, now, pins))
        verb = "Would delete" if dry_run else "Deleted"
        for point in purge:
            result.actions.append(f"{verb} {describe_point(point)}")
            if not dry_run:
                delete_point(store, blob_service, point)
        replicas = Replicas(blob_service, containers.replicas)
        for blob, snapshot in orphan_snapshots(doc, points, replicas, Cache(blob_service, containers.cache)):
            result.actions.append(f"{verb} orphan snapshot {blob}@{snapshot}")
            if not dry_run:
                replicas.delete_snapshot(blob, snapshot)
        return result


def describe_point(point: RecoveryPoint) -> str:
    snaps = ", ".join(f"{d.blob}@{d.snapshot}" for d in point.disks)
    return f"recovery point {point.id} ({point.time.isoformat()}, {point.consistency}): {snaps}"


def delete_point(store, blob_service, point: RecoveryPoint) -> None:  # noqa: ANN001 - PointStore, BlobServiceClient
    """The one way a point is deleted (retention, commit). The document and its manifests
    go first, then the snapshots: a crash between leaves at worst an unlisted snapshot,
    which retention sweeps as an orphan, never a listed point without its data."""
    from drbook.replication.blobs import Replicas

    store.delete(point.item, point.id)
    for d in point.disks:
        Replicas(blob_service, d.container).delete_snapshot(d.blob, d.snapshot)


def commit_reasons(points: Iterable[RecoveryPoint], failed_over_point: str | None) -> dict[str, str]:
    """Commit makes the failed-over point final: it alone is kept, every other point goes
    (the Azure VMs now run on its bytes; the source's later changes are not wanted). Without
    that point among `points` nothing is decided: every point would go."""
    points = list(points)
    if failed_over_point is None or failed_over_point not in {p.id for p in points}:
        raise StateTransitionError(
            f"commit refused: the failed-over point {failed_over_point or '(none recorded)'} is not among the "
            f"{len(points)} recovery points, and commit keeps only that point; nothing was deleted")
    return {p.id: "keep: the point the machine failed over to" if p.id == failed_over_point
            else "purge: commit keeps only the failed-over point" for p in points}


def orphan_snapshots(doc: ProtectedItem, points: list[RecoveryPoint], replicas, cache) -> list[tuple[str, str]]:  # noqa: ANN001
    """Snapshots of the item's replicas that no point and no pending cycle (its SNAPSHOTS
    marker in the cache) refers to. Call it under the item's lease, so that no cycle is
    taking snapshots meanwhile."""
    from drbook.replication import cycle as cy
    from drbook.replication.blobs import replica_blob_name

    referenced = {(d.blob, d.snapshot) for x in points for d in x.disks}
    for cycle_id in cache.cycles(doc.name):
        taken = cache.get_json(cy.cycle_prefix(doc.name, cycle_id) + cy.SNAPSHOTS) or {}
        referenced |= {(replica_blob_name(doc.name, disk), snap) for disk, snap in taken.items()}
    orphans = []
    for disk in doc.disks:
        blob = replica_blob_name(doc.name, disk.name)
        with contextlib.suppress(NotFoundError):
            orphans += [(blob, snap) for snap in replicas.snapshots(blob) if (blob, snap) not in referenced]
    return orphans
