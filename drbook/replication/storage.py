"""Where a cycle's data goes: the vault (items, points, manifests), the cache container
(segments, new manifests, commit markers) and the replica container (page blobs), with the
key that seals the segments. One value, so the cycle's steps take their handles explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from drbook.models import ProtectedItem, utcnow
from drbook.replication.blobs import Cache, Replicas
from drbook.replication.store import PointStore
from drbook.vault import Vault, item_key


@dataclass(frozen=True)
class CycleStorage:
    vault: Vault
    points: PointStore
    cache: Cache
    replicas: Replicas
    key: bytes

    def flag_resync(self, item: str, reasons: dict[str, str | None]) -> None:
        """Mark disks of the item as needing a whole resync, each with its reason."""
        def mutate(doc: ProtectedItem) -> None:
            for disk in doc.disks:
                if disk.name in reasons:
                    disk.resync_required = True
                    disk.resync_reason = reasons[disk.name] or "resynchronization required"
            doc.updated = utcnow()

        self.vault.update(item_key(item), ProtectedItem, mutate)
