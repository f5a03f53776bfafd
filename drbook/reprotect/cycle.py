"""One reverse cycle: an incremental snapshot of every disk of the Azure VM, the changed
ranges since the target's baseline snapshot, those blocks read through a SAS and written by
the master target, then the new baseline recorded.

Only the changed ranges cross the wire (not whole blocks: a 4 KiB write moves 4 KiB). Crash
safety without staging: the baseline stays the old snapshot until the cycle is recorded, and
the ranges a cycle starts writing are recorded first (`in_flight`), so a cycle run again after
any failure writes them again whatever the next diff says."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from drbook.adapters.recovery_site import SNAPSHOT, RecoverySite
from drbook.errors import DRError
from drbook.failover.build import TAG_RUN
from drbook.models import utcnow
from drbook.replication.manifest import Manifest
from drbook.reprotect import blocks as blk
from drbook.reprotect.master import TargetDisk, apply_session, drift
from drbook.reprotect.model import (
    CYCLE_PURPOSE, ITEM_TAG, KEPT_CYCLES, PURPOSE_TAG, ReprotectRecord, ReverseCycle, ReverseDisk, reprotect_key,
)

log = logging.getLogger("drbook.reprotect")

SAS_SECONDS = 4 * 3600
READ_WORKERS = 4
Fault = Callable[[str], None]
Progress = Callable[[str, int, int], None]  # (disk, bytes done, bytes total)


def _no_fault(phase: str) -> None:
    return None


def snapshot_tags(record: ReprotectRecord, purpose: str) -> dict[str, str]:
    return {TAG_RUN: record.failover_run_id, PURPOSE_TAG: purpose, ITEM_TAG: record.item}


def target_disks(record: ReprotectRecord) -> list[TargetDisk]:
    return [TargetDisk(d.disk, d.target_path, d.size) for d in record.disks]


def point_manifest(site, record: ReprotectRecord, d: ReverseDisk) -> Manifest:  # noqa: ANN001 - Site
    """The failover point's manifest of `d`: what the target holds unless it drifted."""
    found = site.engine.points.manifest(record.item, record.point_id, d.disk)
    if found is None:
        raise DRError(f"{record.item}: the manifest of the failover point {record.point_id} disk {d.disk} is missing")
    return found


def sweep_leftovers(azure: RecoverySite, record: ReprotectRecord) -> list[str]:
    """Snapshots of this reprotect that no disk's baseline names: a torn cycle's."""
    keep = {d.baseline.lower() for d in record.disks if d.baseline}
    gone = []
    for r in azure.list_tagged(ITEM_TAG, record.item):
        if r.type.lower() == SNAPSHOT.lower() and r.name.lower() not in keep:
            release_snapshot(azure, r.resource_group, r.name)
            gone.append(r.name)
    return gone


def release_snapshot(azure: RecoverySite, resource_group: str, name: str) -> None:
    try:
        azure.revoke_snapshot_access(resource_group, name)
    except DRError:
        pass  # not granted, or already gone
    azure.delete_resource(SNAPSHOT, resource_group, name)


def _grant(azure: RecoverySite, resource_group: str, name: str) -> str:
    # A torn cycle may have left the grant active: start from a revoked snapshot.
    azure.revoke_snapshot_access(resource_group, name)
    return azure.grant_snapshot_access(resource_group, name, SAS_SECONDS)


def run_cycle(site, record: ReprotectRecord, *, final: bool = False, fault: Fault = _no_fault,  # noqa: ANN001, C901
              progress: Progress | None = None) -> ReprotectRecord:
    """Run one cycle for `record`'s item and return the record as saved after it."""
    azure: RecoverySite = site.azure
    started = utcnow()
    t0 = time.monotonic()
    sweep_leftovers(azure, record)
    number = record.cycle_count + 1
    first = record.cycle_count == 0
    tag = uuid.uuid4().hex[:6]
    snap_time = utcnow()
    current: dict[str, str] = {}
    for d in record.disks:
        name = f"{d.managed_disk}-r{number}-{tag}"[:80]
        azure.create_incremental_snapshot(d.resource_group, name, d.disk_id, record.location,
                                          snapshot_tags(record, CYCLE_PURPOSE))
        current[d.disk] = name
    fault("snapshotted")

    target_cfg = site.machine(record.target)
    drifted: dict[str, set[int]] = {}
    if any(d.baseline_is_point for d in record.disks):
        # The first cycle's baseline is the failover point: what the target changed since
        # (an unplanned failover's source kept running; another VM holds other bytes) moves too.
        shell = site.shell_for(target_cfg)
        try:
            drifted = drift(shell, target_cfg, target_disks(record), [point_manifest(site, record, d) for d in record.disks])
        finally:
            shell.close()

    plans: dict[str, tuple[str, list[blk.Span], int]] = {}
    for d in record.disks:
        sas = _grant(azure, d.resource_group, current[d.disk])
        if d.baseline:
            diff = blk.of_ranges(azure.page_diff(sas, _grant(azure, d.resource_group, d.baseline)), d.size)
            changed = blk.total(diff)
        else:  # no baseline snapshot (a failover before S0 existed): the whole disk moves, a resync
            diff, changed = [(0, d.size)], d.size
        spans = diff + blk.of_blocks(drifted.get(d.disk, ()), d.block_size, d.size) + blk.of_extents(d.in_flight)
        plans[d.disk] = (sas, blk.merge(spans, gap=blk.JOIN_GAP), changed)

    def mark_in_flight(r: ReprotectRecord) -> ReprotectRecord:
        for x in r.disks:
            x.in_flight = blk.to_extents(plans[x.disk][1] + blk.of_extents(x.in_flight))
        r.updated = utcnow()
        return r
    record = site.vault.update(reprotect_key(record.item), ReprotectRecord, mark_in_flight)
    fault("planned")

    moved = zeros = 0
    with apply_session(site.shell_for, target_cfg, target_disks(record)) as session:
        for index, d in enumerate(record.disks):
            sas, spans, _ = plans[d.disk]
            done, todo = 0, blk.total(spans)
            reads = list(blk.reads(spans))
            with ThreadPoolExecutor(READ_WORKERS) as pool:
                for (offset, length), data in zip(reads, pool.map(lambda r: azure.read_range(sas, *r), reads)):
                    if len(data) != length:
                        raise DRError(f"{record.item}: read {len(data)} of {length} bytes at {offset} of "
                                      f"{current[d.disk]}")
                    if data.count(0) == length:
                        session.zeros(index, offset, length)
                        zeros += length
                    else:
                        session.block(index, offset, data)
                        moved += length
                    done += length
                    if progress:
                        progress(d.disk, done, todo)
                    if done == length:
                        fault("applying")
            session.end_disk(index)
        session.close()
    fault("applied")

    old = {d.disk: d.baseline for d in record.disks}
    cycle = ReverseCycle(number=number, started=started, finished=utcnow(), snapshot_time=snap_time, final=final,
                         first=first, ranges=sum(len(sp) for _, sp, _ in plans.values()),
                         bytes_changed=sum(c for _, _, c in plans.values()), bytes_moved=moved, zero_bytes=zeros,
                         seconds=round(time.monotonic() - t0, 3))

    def commit(r: ReprotectRecord) -> ReprotectRecord:
        for x in r.disks:
            x.baseline, x.baseline_is_point, x.in_flight = current[x.disk], False, []
        r.cycle_count = number
        r.cycles = (r.cycles + [cycle])[-KEPT_CYCLES:]
        r.updated = utcnow()
        return r
    record = site.vault.update(reprotect_key(record.item), ReprotectRecord, commit)
    fault("recorded")

    # The old baselines are no longer needed; what fails here is swept by the next cycle.
    for d in record.disks:
        before = old[d.disk]
        try:
            azure.revoke_snapshot_access(d.resource_group, current[d.disk])
            if before and before.lower() != current[d.disk].lower():
                release_snapshot(azure, d.resource_group, before)
        except DRError as exc:
            log.warning("%s: could not remove the old baseline %s yet (%s); the next cycle will", record.item, before, exc)
    return record


def cycle_lag(record: ReprotectRecord, now: dt.datetime | None = None) -> float | None:
    """Seconds since the last cycle's snapshot: how far the target trails the Azure VM."""
    last = record.last_cycle()
    return None if last is None else ((now or utcnow()) - last.snapshot_time).total_seconds()
