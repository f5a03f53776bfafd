"""Recovery points and their manifests in the vault (key layout: drbook.models)."""

from __future__ import annotations

from drbook.errors import ConflictError, NotFoundError
from drbook.models import RecoveryPoint
from drbook.replication.manifest import Manifest, SubMap
from drbook.vault import Vault, manifest_key, manifests_prefix, point_key, points_prefix, submap_key


class PointStore:
    def __init__(self, vault: Vault) -> None:
        self.vault = vault

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

    def put_manifest(self, item: str, point_id: str, disk: str, manifest: Manifest) -> str:
        key = manifest_key(item, point_id, disk)
        self.vault.put_bytes(key, manifest.to_bytes())
        return key

    def manifest(self, item: str, point_id: str, disk: str) -> Manifest | None:
        key = manifest_key(item, point_id, disk)
        try:
            return Manifest.from_bytes(self.vault.get_bytes(key), what=key)
        except NotFoundError:
            return None

    def put_submap(self, item: str, point_id: str, disk: str, subs: SubMap) -> None:
        self.vault.put_bytes(submap_key(item, point_id, disk), subs.to_bytes())

    def submap(self, item: str, point_id: str, disk: str) -> SubMap | None:
        key = submap_key(item, point_id, disk)
        try:
            return SubMap.from_bytes(self.vault.get_bytes(key), what=key)
        except NotFoundError:
            return None

    def drop_submaps(self, item: str, point_id: str) -> None:
        """Sub-block maps are needed only for the newest point; older ones go."""
        for key in self.vault.keys(manifests_prefix(item, point_id)):
            if key.endswith(".sub"):
                self.vault.delete(key)

    def delete(self, item: str, point_id: str) -> None:
        """The document first, so a crash never leaves a listed point without its manifest."""
        self.vault.delete(point_key(item, point_id))
        self.vault.delete_prefix(manifests_prefix(item, point_id))
