"""Recovering what crashed cycles of an item left in the cache: a cycle without a commit
marker is discarded; a committed one is replayed (drbook.replication.apply); a committed
cycle staged locally, whose segments died with its process server's spool, is rolled back
from the last point's snapshot; a replay that cannot be done flags the disks for resync."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from drbook.errors import NotFoundError, ProtocolError
from drbook.replication import cycle as cy
from drbook.replication import segments
from drbook.replication.apply import Fault, finish_cycle
from drbook.replication.blobs import replica_blob_name
from drbook.replication.manifest import Manifest
from drbook.replication.storage import CycleStorage

log = logging.getLogger("drbook.replication")


def recover_item(storage: CycleStorage, item: str, *, page_workers: int, fault: Fault | None = None) -> list[str]:
    """Replay or discard every leftover cycle of the item; returns one line per cycle.
    The caller holds the item's lease."""
    done = []
    cache = storage.cache
    for cycle_id, names in sorted(cache.cycles(item).items()):
        prefix = cy.cycle_prefix(item, cycle_id)
        raw = cache.get_json(prefix + cy.MARKER)
        if raw is None:
            cache.delete(names)
            done.append(f"discarded uncommitted cycle {cycle_id} ({len(names)} blob(s))")
            continue
        marker = cy.CommitMarker.model_validate(raw)
        if marker.staging == "local" and storage.points.find(item, marker.point_id) is None:
            # Its segments died with the spool of the process server that wrote it.
            done.append(_roll_back_local(storage, item, marker, names, page_workers))
            continue
        try:
            point = finish_cycle(storage, marker, spool=None, fault=fault)
        except (segments.SegmentError, ProtocolError, NotFoundError) as exc:
            # The replica may be half-applied and the cycle cannot be replayed: rewrite it whole.
            storage.flag_resync(item, {d.name: f"replay of cycle {cycle_id} failed: {exc}" for d in marker.disks})
            cache.delete(names)
            done.append(f"could not replay cycle {cycle_id} ({exc}); disks flagged for resync")
            continue
        done.append(f"replayed committed cycle {cycle_id} as point {point.id}")
    for line in done:
        log.warning("%s: %s", item, line)
    return done


def _roll_back_local(storage: CycleStorage, item: str, marker: cy.CommitMarker, names: list[str],
                     page_workers: int) -> str:
    """A locally staged cycle that cannot be replayed: put every block it may have
    written back from the last point's snapshot (the blocks whose hash differs between
    the two manifests), so the replica is that point again and the next cycle is an
    ordinary delta. Where that is impossible (no earlier point, another geometry, a
    lost manifest), the disk is flagged for resync instead."""
    cache, points, replicas = storage.cache, storage.points, storage.replicas
    prefix = cy.cycle_prefix(item, marker.cycle_id)
    for disk, snapshot in (cache.get_json(prefix + cy.SNAPSHOTS) or {}).items():
        replicas.delete_snapshot(replica_blob_name(item, disk), snapshot)
    doc = storage.vault.item(item)
    last = points.find(item, doc.last_point_id) if doc.last_point_id else None
    restored, flagged = 0, {}
    for d in marker.disks:
        blob = replica_blob_name(item, d.name)
        try:
            old = points.manifest(item, last.id, d.name) if last is not None else None
            new = storage.get_map(d.manifest, lambda packed, d=d: Manifest.read(packed, what=d.manifest,
                                                                               directory=storage.map_dir))
            source = next((x for x in last.disks if x.disk == d.name), None) if last is not None else None
        except NotFoundError:
            old = new = source = None
        if old is None or source is None or old.disk_size != new.disk_size or old.block_size != new.block_size:
            flagged[d.name] = (f"cycle {marker.cycle_id} was staged locally and its process server stopped before "
                               "the point was recorded")
            continue
        bs, size = old.block_size, old.disk_size

        def put_back(r: tuple[int, int], blob: str = blob, snapshot: str = source.snapshot) -> int:
            start, end = r[0] * bs, min(size, r[1] * bs)
            data = replicas.read(blob, snapshot, start, end - start)
            plan = cy.plan_segment_of_bytes(start, data)
            return replicas.write(blob, plan.writes, plan.clears)

        try:
            restored += _bounded_sum(put_back, _runs(old.changed(new), bs), max(1, page_workers // 2))
        except NotFoundError as exc:  # the last point's snapshot is gone
            flagged[d.name] = f"cycle {marker.cycle_id} could not be rolled back: {exc}"
        finally:
            old.close()
            new.close()
    if flagged:
        storage.flag_resync(item, flagged)
    cache.delete(names)
    what = f"put {restored} bytes back from point {last.id}" if last is not None and restored else "nothing to put back"
    return (f"rolled back locally staged cycle {marker.cycle_id} ({what})"
            + (f"; flagged for resync: {', '.join(flagged)}" if flagged else ""))


def _runs(changed: Iterator[int], block_size: int) -> Iterator[tuple[int, int]]:
    """Runs [first, end) of consecutive changed blocks, each at most MAX_PAGE_WRITE bytes long."""
    run: list[int] = []
    for i in changed:
        if run and run[1] == i and (run[1] - run[0]) * block_size < cy.MAX_PAGE_WRITE:
            run[1] = i + 1
        else:
            if run:
                yield run[0], run[1]
            run = [i, i + 1]
    if run:
        yield run[0], run[1]


def _bounded_sum(fn: Callable[[tuple[int, int]], int], items: Iterable[tuple[int, int]], workers: int) -> int:
    """sum(map(fn, items)) on `workers` threads, taking items only as fast as they are done (a
    large disk's changed runs are never all listed at once)."""
    total = 0
    with ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[Future] = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                total += pending.popleft().result()
        while pending:
            total += pending.popleft().result()
    return total
