"""A cycle up to its commit marker: prepare each item's run (the block maps to send, the
spool, the uploader), put the received segments and new manifests in the cache, write the
commit marker; or abandon a run that did not commit."""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from drbook.adapters.shell import RemoteProcess, RemoteShell
from drbook.config import MachineConfig, SiteConfig
from drbook.errors import DRError, PreflightError
from drbook.models import ItemState, ProtectedItem, new_id, utcnow
from drbook.replication import cycle as cy
from drbook.replication import segments
from drbook.replication.blobs import replica_blob_name
from drbook.replication.consistency import Want, judge
from drbook.replication.storage import CycleStorage

REPLICATING = frozenset({ItemState.INITIAL_REPLICATION, ItemState.PROTECTED})


@dataclass
class ItemRun:
    """One item's part of a running cycle."""

    item: ProtectedItem
    machine: MachineConfig
    cycle_id: str
    disks: list[cy.DiskCycle]
    receiver: cy.Receiver
    writer: cy.SegmentWriter
    uploader: cy.Uploader
    spool: cy.Spool
    direct_writer: cy.SegmentWriter
    direct: cy.DirectApplier
    shell: RemoteShell | None = None
    proc: RemoteProcess | None = None
    error: BaseException | None = None
    committed: bool = False
    last_activity: float = 0.0
    stream_bytes: int = 0


def prepare_run(storage: CycleStorage, site: SiteConfig, settings: cy.CycleSettings, name: str,
                progress: cy.Progress | None) -> ItemRun:
    item = storage.vault.item(name)
    if item.state not in REPLICATING:
        raise PreflightError(f"item {name!r} is {item.state.value}; cycles run only while initial-replication or protected")
    if not item.disks:
        raise PreflightError(f"item {name!r} has no disks to replicate")
    machine = site.machine(item.machine)
    layout = settings.layout
    points, replicas = storage.points, storage.replicas
    configured = {d.name: d.size_bytes or 0 for d in machine.disks}
    disks = []
    for disk in item.disks:
        old = old_subs = None
        if item.last_point_id and not disk.resync_required:
            old = points.manifest(name, item.last_point_id, disk.name)
            if old is not None and old.block_size != layout.block_size:
                old = None  # another block size: resync rather than guess
            if old is not None and layout.sub_on:
                old_subs = points.submap(name, item.last_point_id, disk.name)
                if old_subs is not None and (old_subs.layout != layout or old_subs.disk_size != old.disk_size):
                    old_subs = None
        disks.append(cy.DiskCycle(disk=disk, layout=layout, old=old, old_subs=old_subs,
                                  force_resync=disk.resync_required, configured_size=configured.get(disk.name, 0),
                                  map_dir=storage.map_dir))
    for d in disks:
        d.direct = d.request_maps() == (b"", b"")
    unflagged = {d.disk.name: "no block map of the last point (lost manifest)"
                 for d in disks if d.direct and not d.disk.resync_required}
    if unflagged:
        # Written straight to the replica below: flag first, so a crash cannot leave a
        # half-written replica that a later delta cycle would trust.
        storage.flag_resync(name, unflagged)
    cycle_id = new_id("cy")
    spool = cy.Spool(settings.spool_dir)

    def upload(seq: int, raw: bytes) -> int:
        sealed = segments.seal(raw, storage.key, name, cycle_id, seq)
        storage.cache.put(cy.segment_name(name, cycle_id, seq), sealed)
        return len(sealed)

    uploader = cy.Uploader(None if item.policy.staging == "local" else upload, settings.upload_workers, spool)
    writer = cy.SegmentWriter(settings.segment_bytes, uploader.submit)
    direct = cy.DirectApplier(
        lambda disk, plan: replicas.write(replica_blob_name(name, disk), plan.writes, plan.clears),
        settings.upload_workers)
    direct_writer = cy.SegmentWriter(settings.segment_bytes, direct.submit)

    def report(done: int) -> None:
        total = sum(d.size if d.size else d.disk.size_bytes for d in disks)
        progress(done, max(total, done))  # type: ignore[misc]

    receiver = cy.Receiver(name, disks, layout, writer, report if progress else None, direct=direct_writer,
                           on_direct_disk=lambda d: replicas.ensure(replica_blob_name(name, d.disk.name), d.size))
    return ItemRun(item=item, machine=machine, cycle_id=cycle_id, disks=disks, receiver=receiver,
                   writer=writer, uploader=uploader, spool=spool, direct_writer=direct_writer, direct=direct)


def stage_run(storage: CycleStorage, run: ItemRun, point_id: str, group: str | None, want: Want, barrier: str | None,
              go_time: dt.datetime | None) -> cy.CommitMarker:
    """Wait for the segment uploads, put the new manifests in the cache, build the marker."""
    name, cycle_id = run.item.name, run.cycle_id
    uploaded = run.uploader.finish()
    run.direct.finish()
    consistency, evidence = judge(run.receiver.trailer or {}, want, barrier=barrier)
    disks = []
    for d in run.disks:
        mkey = f"{cy.cycle_prefix(name, cycle_id)}{d.disk.name}.manifest"
        storage.put_map(mkey, d.manifest)
        skey = None
        if d.subs is not None:
            skey = f"{cy.cycle_prefix(name, cycle_id)}{d.disk.name}.sub"
            storage.put_map(skey, d.subs)
        d.release_maps()
        disks.append(cy.MarkerDisk(name=d.disk.name, size=d.size, resync=d.resync, reason=d.reason, direct=d.direct,
                                   blocks_changed=d.changed, zero_blocks=d.zero_blocks, bytes_sent=d.bytes_sent,
                                   manifest=mkey, submap=skey))
    when = go_time or run.receiver.frozen_at_server or utcnow()
    return cy.CommitMarker(
        item=name, cycle_id=cycle_id, point_id=point_id, group=group, time=when, want=want,
        consistency=consistency, freeze_evidence=evidence, block_size=run.receiver.layout.block_size,
        sub_block_size=run.receiver.layout.sub_block_size, sub_hash_len=run.receiver.layout.sub_hash_len,
        disks=disks, agent_version=(run.receiver.hello or {}).get("version"), staging=run.item.policy.staging,
        segments=[cy.MarkerSegment(seq=seq, name=cy.segment_name(name, cycle_id, seq), raw_bytes=raw, sealed_bytes=sealed)
                  for seq, raw, sealed in uploaded],
    )


def write_marker(storage: CycleStorage, run: ItemRun, marker: cy.CommitMarker) -> None:
    prefix = cy.cycle_prefix(marker.item, marker.cycle_id)
    storage.cache.put(prefix + cy.MARKER, marker.model_dump_json().encode(), create_only=True)
    run.committed = True


def abandon_run(storage: CycleStorage, run: ItemRun) -> None:
    """A cycle that did not commit: stop its agent, drop its segments."""
    with contextlib.suppress(Exception):
        if run.proc is not None:
            run.proc.kill()
    run.uploader.abandon()
    run.direct.abandon()
    run.spool.close()
    if run.committed:
        return  # committed cycles are replayed by the next cycle, never discarded
    with contextlib.suppress(DRError):
        storage.cache.delete(storage.cache.names(cy.cycle_prefix(run.item.name, run.cycle_id)))
    resync = [d for d in run.disks if d.resync and not d.disk.resync_required]
    if resync:
        with contextlib.suppress(DRError):
            storage.flag_resync(run.item.name, {d.disk.name: d.reason for d in resync})
