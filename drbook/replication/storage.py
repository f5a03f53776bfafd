"""Where a cycle's data goes: the vault (items, points, manifests), the cache container
(segments, new manifests, commit markers) and the replica container (page blobs), with the
key that seals the segments. One value, so the cycle's steps take their handles explicitly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from drbook.models import ProtectedItem, utcnow
from drbook.replication.blobs import Cache, Replicas
from drbook.replication.manifest import Manifest, SubMap
from drbook.replication.mapfile import spooled
from drbook.replication.store import PointStore
from drbook.vault import Vault, item_key

M = TypeVar("M", Manifest, SubMap)


@dataclass(frozen=True)
class CycleStorage:
    vault: Vault
    points: PointStore
    cache: Cache
    replicas: Replicas
    key: bytes
    map_dir: str | None = None  # where the maps of a large disk go (drbook.replication.mapfile)

    # A map goes into the cache and comes back packed through a temporary file in map_dir, a
    # piece at a time: a large disk's is never whole in memory (drbook.replication.mapfile).

    def put_map(self, name: str, m: Manifest | SubMap) -> None:
        with m.packed(self.map_dir) as (packed, length):
            self.cache.put_stream(name, packed, length)

    def get_map(self, name: str, read: Callable[[BinaryIO], M]) -> M:
        """`read` (e.g. Manifest.read) of the packed map `name` of the cache."""
        with spooled(self.map_dir) as packed:
            self.cache.download(name, packed)
            packed.seek(0)
            return read(packed)

    def flag_resync(self, item: str, reasons: dict[str, str | None]) -> None:
        """Mark disks of the item as needing a whole resync, each with its reason."""
        def mutate(doc: ProtectedItem) -> None:
            for disk in doc.disks:
                if disk.name in reasons:
                    disk.resync_required = True
                    disk.resync_reason = reasons[disk.name] or "resynchronization required"
            doc.updated = utcnow()

        self.vault.update(item_key(item), ProtectedItem, mutate)
