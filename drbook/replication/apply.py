"""A cycle after its commit marker: apply the segments to the replica page blobs, snapshot
every disk, record the recovery point and its manifests in the vault, update the item, and
only then delete the cycle's cache. The same steps finish a fresh cycle (segments from the
local spool) and replay a crashed one (segments from the cache); each step is safe to
repeat, so a crash anywhere in here is replayed by the next cycle."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable

from drbook.errors import DRError, NotFoundError
from drbook.models import PointDisk, ProtectedItem, RecoveryPoint, utcnow
from drbook.replication import cycle as cy
from drbook.replication import segments
from drbook.replication.blobs import replica_blob_name
from drbook.replication.manifest import Manifest, SubMap
from drbook.replication.storage import CycleStorage
from drbook.vault import item_key

log = logging.getLogger("drbook.replication")

Fault = Callable[[str], None]
"""A test hook called at each phase boundary (see ReplicationEngine); None in production."""


def finish_cycle(storage: CycleStorage, marker: cy.CommitMarker, spool: cy.Spool | None,
                 fault: Fault | None = None) -> RecoveryPoint:
    """Apply, snapshot, record, clean up: everything after the commit marker."""
    name, prefix = marker.item, cy.cycle_prefix(marker.item, marker.cycle_id)
    existing = storage.points.find(name, marker.point_id)
    if existing is not None:
        _update_item(storage, existing, marker)
        _cleanup(storage, marker)
        return existing
    snapshots = _snapshots_taken(storage, marker)
    if snapshots is None:
        _apply(storage, marker, spool, fault)
        _at(fault, "after-apply")
        snapshots = {}
        for d in marker.disks:
            snapshots[d.name] = storage.replicas.snapshot(replica_blob_name(name, d.name),
                                                          metadata={"point": marker.point_id, "cycle": marker.cycle_id})
        storage.cache.put(prefix + cy.SNAPSHOTS, _json(snapshots))
        _at(fault, "after-snapshot")
    point = _record(storage, marker, snapshots)
    _at(fault, "after-point-recorded")
    _cleanup(storage, marker)
    return point


def _at(fault: Fault | None, phase: str) -> None:
    if fault is not None:
        fault(phase)


def _snapshots_taken(storage: CycleStorage, marker: cy.CommitMarker) -> dict[str, str] | None:
    """Snapshots a crashed run took after a whole apply (reused rather than taken again)."""
    taken = storage.cache.get_json(cy.cycle_prefix(marker.item, marker.cycle_id) + cy.SNAPSHOTS)
    if not taken or set(taken) != {d.name for d in marker.disks}:
        return None
    if all(storage.replicas.snapshot_exists(replica_blob_name(marker.item, d), s) for d, s in taken.items()):
        return taken
    return None


def _apply(storage: CycleStorage, marker: cy.CommitMarker, spool: cy.Spool | None, fault: Fault | None) -> None:
    name, replicas = marker.item, storage.replicas
    for d in marker.disks:
        replicas.ensure(replica_blob_name(name, d.name), d.size)
    for i, seg in enumerate(marker.segments):
        if spool is not None:
            raw = spool.get(seg.seq)
        else:
            raw = segments.open_segment(storage.cache.get(seg.name), storage.key, name, marker.cycle_id, seg.seq,
                                          raw_bytes=seg.raw_bytes)
        plans = cy.plan_segment(raw)
        for disk, plan in plans.items():
            blob = replica_blob_name(name, disk)
            if i == 0 and fault is not None:
                # Under test, the first segment is written in two halves around the
                # mid-apply fault, so a crash there leaves a replica half-applied.
                half_w, half_c = len(plan.writes) // 2, len(plan.clears) // 2
                replicas.write(blob, plan.writes[:half_w], plan.clears[:half_c])
                fault("mid-apply")
                replicas.write(blob, plan.writes[half_w:], plan.clears[half_c:])
            else:
                replicas.write(blob, plan.writes, plan.clears)
    if not marker.segments:
        _at(fault, "mid-apply")


def _record(storage: CycleStorage, marker: cy.CommitMarker, snapshots: dict[str, str]) -> RecoveryPoint:
    name, points = marker.item, storage.points
    prefix = cy.cycle_prefix(name, marker.cycle_id)
    disks = []
    for d in marker.disks:
        manifest = storage.get_map(d.manifest, lambda packed, d=d: Manifest.read(
            packed, what=d.manifest, disk_size=d.size, directory=storage.map_dir))
        key = points.put_manifest(name, marker.point_id, d.name, manifest)
        manifest.close()
        if d.submap:
            with contextlib.suppress(NotFoundError):
                subs = storage.get_map(d.submap, lambda packed: SubMap.read(packed, directory=storage.map_dir))
                points.put_submap(name, marker.point_id, d.name, subs)
                subs.close()
        disks.append(PointDisk(disk=d.name, container=storage.replicas.container_name,
                               blob=replica_blob_name(name, d.name), snapshot=snapshots[d.name], size_bytes=d.size,
                               block_size=marker.block_size, manifest_key=key, blocks_changed=d.blocks_changed,
                               bytes_sent=d.bytes_sent))
    point = RecoveryPoint(id=marker.point_id, item=name, time=marker.time, consistency=marker.consistency,
                          group=marker.group, disks=disks, cycle_id=marker.cycle_id, resync=marker.resync,
                          freeze_evidence=marker.freeze_evidence, process_server=marker.process_server)
    if not points.record(point):
        point = points.get(name, marker.point_id)
    log.info("%s: recovery point %s (%s) recorded from %s", name, point.id, point.consistency, prefix)
    _update_item(storage, point, marker)
    return point


def _update_item(storage: CycleStorage, point: RecoveryPoint, marker: cy.CommitMarker) -> None:
    previous: list[str] = []

    def mutate(doc: ProtectedItem) -> None:
        previous.clear()
        if doc.last_point_time is None or point.time >= doc.last_point_time:
            if doc.last_point_id and doc.last_point_id != point.id:
                previous.append(doc.last_point_id)
            doc.last_point_id = point.id
            doc.last_point_time = point.time
            by_name = {d.name: d for d in marker.disks}
            for disk in doc.disks:
                if disk.name in by_name:
                    disk.size_bytes = by_name[disk.name].size
                    disk.block_size = marker.block_size
                    disk.resync_required = False
                    disk.resync_reason = None
                    disk.replica_container = storage.replicas.container_name
                    disk.replica_blob = replica_blob_name(doc.name, disk.name)
        if point.consistency == "app" and (doc.last_app_point_time is None or point.time > doc.last_app_point_time):
            doc.last_app_point_time = point.time
        doc.updated = utcnow()

    storage.vault.update(item_key(point.item), ProtectedItem, mutate)
    for old in previous:
        with contextlib.suppress(DRError):
            storage.points.drop_submaps(point.item, old)


def _cleanup(storage: CycleStorage, marker: cy.CommitMarker) -> None:
    prefix = cy.cycle_prefix(marker.item, marker.cycle_id)
    names = storage.cache.names(prefix)
    # The marker goes last: until it is gone, a crash here replays (finding the point).
    storage.cache.delete([n for n in names if not n.endswith("/" + cy.MARKER)])
    storage.cache.delete([n for n in names if n.endswith("/" + cy.MARKER)])


def _json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()
