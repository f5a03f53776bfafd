"""Recovery points and their manifests in the vault (key layout: drbook.models)."""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO, TypeVar

from drbook.errors import ConflictError, NotFoundError
from drbook.models import RecoveryPoint
from drbook.replication.manifest import Manifest, SubMap
from drbook.replication.mapfile import spooled
from drbook.vault import Vault, manifest_key, manifests_prefix, point_key, points_prefix, submap_key

M = TypeVar("M", Manifest, SubMap)


class PointStore:
    """`map_dir`: where the maps of a large disk are kept while loaded (drbook.replication.mapfile)."""

    def __init__(self, vault: Vault, map_dir: str | None = None) -> None:
        self.vault = vault
        self.map_dir = map_dir

    def points(self, item: str) -> list[RecoveryPoint]:
        """Every recovery point of an item, oldest first."""
        return sorted(self.vault.list(points_prefix(item), RecoveryPoint), key=lambda p: (p.time, p.id))

    def find(self, item: str, point_id: str) -> RecoveryPoint | None:
        return self.vault.find(point_key(item, point_id), RecoveryPoint)

    def get(self, item: str, point_id: str) -> RecoveryPoint:
        point = self.find(item, point_id)
        if point is None:
            raise NotFoundError(f"no recovery point {point_id!r} for item {item!r}")
        return point

    def record(self, point: RecoveryPoint) -> bool:
        """Create the point's document; False when it exists already (a replayed cycle)."""
        try:
            self.vault.put(point_key(point.item, point.id), point, create_only=True)
            return True
        except ConflictError:
            return False

    # Maps go up and come down packed through a temporary file, a piece at a time: a large
    # disk's never sit whole in memory (drbook.replication.mapfile).

    def _put_map(self, key: str, m: Manifest | SubMap) -> None:
        with m.packed(self.map_dir) as (packed, length):
            self.vault.put_stream(key, packed, length)

    def _get_map(self, key: str, read: Callable[[BinaryIO], M]) -> M | None:
        with spooled(self.map_dir) as packed:
            try:
                self.vault.download(key, packed)
            except NotFoundError:
                return None
            packed.seek(0)
            return read(packed)

    def put_manifest(self, item: str, point_id: str, disk: str, manifest: Manifest) -> str:
        key = manifest_key(item, point_id, disk)
        self._put_map(key, manifest)
        return key

    def manifest(self, item: str, point_id: str, disk: str) -> Manifest | None:
        key = manifest_key(item, point_id, disk)
        return self._get_map(key, lambda packed: Manifest.read(packed, what=key, directory=self.map_dir))

    def put_submap(self, item: str, point_id: str, disk: str, subs: SubMap) -> None:
        self._put_map(submap_key(item, point_id, disk), subs)

    def submap(self, item: str, point_id: str, disk: str) -> SubMap | None:
        key = submap_key(item, point_id, disk)
        return self._get_map(key, lambda packed: SubMap.read(packed, what=key, directory=self.map_dir))

    def drop_submaps(self, item: str, point_id: str) -> None:
        """Sub-block maps are needed only for the newest point; older ones go."""
        for key in self.vault.keys(manifests_prefix(item, point_id)):
            if key.endswith(".sub"):
                self.vault.delete(key)

    def delete(self, item: str, point_id: str) -> None:
        """The document first, so a crash never leaves a listed point without its manifest."""
        self.vault.delete(point_key(item, point_id))
        self.vault.delete_prefix(manifests_prefix(item, point_id))
