"""Commit ends a failover: every recovery point but the one failed over to goes (pure
decision beside the I/O)."""

from __future__ import annotations

from drbook.adapters.blobstore import map_blob_errors
from drbook.errors import NotFoundError
from drbook.models import RecoveryPoint


def points_to_drop(points: list[RecoveryPoint], keep_id: str | None) -> list[RecoveryPoint]:
    return [p for p in points if p.id != keep_id]


def delete_point(vault, blob_service, point: RecoveryPoint) -> None:
    """Snapshots first, then manifests, then the point document: a crash half-way leaves a
    point whose document still exists, and the next commit or purge finishes it."""
    for d in point.disks:
        snap = blob_service.get_blob_client(d.container, d.blob, snapshot=d.snapshot)
        try:
            with map_blob_errors():
                snap.delete_blob()
        except NotFoundError:
            pass
    vault.delete_prefix(f"manifests/{point.item}/{point.id}/")
    vault.delete(f"points/{point.item}/{point.id}.json")
