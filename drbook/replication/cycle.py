"""One replication cycle's moving parts: receiving the agent's stream into segments and a
new manifest, the commit marker, and turning segments into page writes.

drbook.replication.staging and .apply wire these to blobs and the vault.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import BaseModel

from drbook.config import CycleConfig, SiteConfig
from drbook.errors import ProtocolError, ReplicationError
from drbook.models import ProtectedDisk
from drbook.replication import protocol as p
from drbook.replication.manifest import Manifest, SubMap
from drbook.replication.protocol import Layout

MAX_PAGE_WRITE = 4 * 1024 * 1024
PAGE = 512
MARKER = "COMMITTED"
SNAPSHOTS = "SNAPSHOTS"

Progress = Callable[[int, int], None]


class CycleSettings(CycleConfig):
    """A cycle's knobs: the site config's `cycle` of a process server (CycleConfig), plus
    what is derived from them."""

    @classmethod
    def from_site(cls, site: SiteConfig) -> "CycleSettings":
        """The `cycle` of the site's first process server (each process of the site takes
        those); the defaults when the site lists none."""
        servers = site.process_servers
        return cls.model_validate(servers[0].cycle.model_dump()) if servers else cls()

    @property
    def layout(self) -> Layout:
        return Layout(self.block_size, self.sub_block_size, self.sub_hash_len)


class MarkerDisk(BaseModel):
    name: str
    size: int
    resync: bool = False
    reason: str | None = None
    direct: bool = False
    blocks_changed: int = 0
    zero_blocks: int = 0
    bytes_sent: int = 0
    manifest: str
    submap: str | None = None


class MarkerSegment(BaseModel):
    seq: int
    name: str
    raw_bytes: int
    sealed_bytes: int


class CommitMarker(BaseModel):
    """Written to cache/<item>/<cycle_id>/COMMITTED once every segment and manifest of a
    cycle is in the cache: from then on the cycle is replayed, never discarded."""

    version: int = 1
    item: str
    cycle_id: str
    point_id: str
    group: str | None = None
    time: dt.datetime
    want: str
    consistency: str
    freeze_evidence: list[str] = []
    block_size: int
    sub_block_size: int
    sub_hash_len: int
    disks: list[MarkerDisk]
    segments: list[MarkerSegment]
    agent_version: str | None = None
    # "local": the segments are only in the spool of the process server that wrote this
    # marker (Policy.staging), so another process cannot replay the cycle.
    staging: str = "cache"

    @property
    def layout(self) -> Layout:
        return Layout(self.block_size, self.sub_block_size, self.sub_hash_len)

    @property
    def resync(self) -> bool:
        return any(d.resync for d in self.disks)


def cycle_prefix(item: str, cycle_id: str) -> str:
    return f"{item}/{cycle_id}/"


def segment_name(item: str, cycle_id: str, seq: int) -> str:
    return f"{item}/{cycle_id}/seg-{seq:06d}"


# -- receiving ----------------------------------------------------------------------------


class Spool:
    """Raw segments of the running cycle on local disk, so the apply step need not
    download what it just uploaded."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.file = tempfile.TemporaryFile(dir=directory)
        self.index: dict[int, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def put(self, seq: int, raw: bytes) -> None:
        with self.lock:
            try:
                self.file.seek(0, 2)
                self.index[seq] = (self.file.tell(), len(raw))
                self.file.write(raw)
            except OSError as exc:
                where = self.directory or tempfile.gettempdir()
                raise ReplicationError(f"the process server's spool in {where} could not take segment {seq} "
                                       f"({len(raw)} bytes): {exc.strerror or exc}; free space there, or point the site "
                                       "config's process_servers[0].cycle.spool_dir at another directory") from None

    def get(self, seq: int) -> bytes:
        with self.lock:
            off, n = self.index[seq]
            self.file.seek(off)
            return self.file.read(n)

    def close(self) -> None:
        self.file.close()


class Uploader:
    """Seals and uploads segments in the background. A segment is in the local spool before
    it is queued and is read back from there by the upload, so the agent's stream never
    waits for the cache: the source is frozen only as long as its read takes, not as long
    as the uploads (they go on after the thaw, before the commit marker). Without `upload`
    (Policy.staging "local") segments are only spooled."""

    def __init__(self, upload: Callable[[int, bytes], int] | None, workers: int, spool: Spool) -> None:
        self.upload = upload
        self.spool = spool
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="segment-upload")
        self.futures: list[tuple[int, int, Future]] = []

    def submit(self, seq: int, raw: bytes) -> None:
        self.spool.put(seq, raw)
        if self.upload is None:
            done: Future = Future()
            done.set_result(0)
            self.futures.append((seq, len(raw), done))
            return
        upload = self.upload
        self.futures.append((seq, len(raw), self.pool.submit(lambda: upload(seq, self.spool.get(seq)))))

    def finish(self) -> list[tuple[int, int, int]]:
        """(seq, raw bytes, sealed bytes) of every segment, once all are uploaded."""
        try:
            return [(seq, raw, fut.result()) for seq, raw, fut in self.futures]
        finally:
            self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DirectApplier:
    """Applies batches of a resyncing disk's frames to its replica in the background
    (bounded), while the agent's stream keeps flowing."""

    def __init__(self, write: Callable[[str, "PagePlan"], int], workers: int) -> None:
        self.write = write
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="direct-apply")
        self.slots = threading.BoundedSemaphore(workers + 1)
        self.futures: list[Future] = []
        self.bytes = 0

    def submit(self, seq: int, raw: bytes) -> None:
        self.slots.acquire()

        def run() -> int:
            try:
                return sum(self.write(disk, plan) for disk, plan in plan_segment(raw).items())
            finally:
                self.slots.release()

        self.futures.append(self.pool.submit(run))

    def finish(self) -> int:
        try:
            self.bytes = sum(f.result() for f in self.futures)
            return self.bytes
        finally:
            self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class SegmentWriter:
    """Batches block and zero frames into segments of about `limit` raw bytes; every
    segment starts with the disk frame of the disk its blocks belong to."""

    def __init__(self, limit: int, emit: Callable[[int, bytes], None]) -> None:
        self.limit = limit
        self.emit = emit
        self.buf = bytearray()
        self.seq = 0
        self.disk_frame: bytes | None = None
        self.has_data = False

    def begin_disk(self, doc: dict) -> None:
        self.disk_frame = p.json_frame(p.DISK, doc)
        self.buf += self.disk_frame

    def add(self, kind: int, payload: bytes) -> None:
        self.buf += p.FRAME.pack(kind, len(payload))
        self.buf += payload
        self.has_data = True
        if len(self.buf) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.has_data:
            self.seq += 1
            self.emit(self.seq, bytes(self.buf))
        self.buf = bytearray(self.disk_frame or b"")
        self.has_data = False


@dataclass
class DiskCycle:
    """One disk's state within a cycle: the old map sent, the new manifest being built.

    `direct`: the disk is resynced with no map (initial copy, forced resync), so the cycle
    writes every one of its blocks (data or clear) and does not depend on what the replica
    held. Its blocks then go straight to the replica as they arrive instead of through the
    cache, which halves the initial copy's traffic. That is safe because the item's disk
    stays flagged `resync_required` until the cycle's point is recorded: a cycle that dies
    half-way leaves a replica nobody reads, and the next cycle resyncs it whole again.
    """

    disk: ProtectedDisk
    layout: Layout
    old: Manifest | None
    old_subs: SubMap | None
    force_resync: bool = False
    direct: bool = False
    size: int = 0
    resync: bool = False
    reason: str | None = None
    manifest: Manifest | None = None
    subs: SubMap | None = None
    changed: int = 0
    zero_blocks: int = 0
    bytes_sent: int = 0
    read: int = 0
    ended: bool = False

    def request_maps(self) -> tuple[bytes, bytes]:
        if self.old is None or self.force_resync:
            return b"", b""
        subs = self.old_subs.hashes if self.old_subs is not None and self.old_subs.disk_size == self.old.disk_size else b""
        return bytes(self.old.hashes), bytes(subs)

    def request_disk(self) -> dict:
        return {"name": self.disk.name, "path": self.disk.path,
                "size": self.old.disk_size if self.old is not None and not self.force_resync else None}

    @property
    def sub_rebuild(self) -> bool:
        return self.layout.sub_on and self.old is not None and not self.force_resync and self.request_maps()[1] == b""

    def start(self, doc: dict) -> None:
        self.size = int(doc["size"])
        self.resync = bool(doc.get("resync"))
        self.reason = doc.get("reason")
        lay = self.layout
        if self.resync or self.old is None:
            self.manifest = Manifest.zeros(self.size, lay.block_size)
            self.subs = SubMap.zeros(self.size, lay) if lay.sub_on else None
        else:
            if self.old.disk_size != self.size or self.old.block_size != lay.block_size:
                raise ProtocolError(f"disk {self.disk.name}: the agent kept a map of another geometry without a resync")
            self.manifest = self.old.copy()
            if not lay.sub_on:
                self.subs = None
            elif self.old_subs is not None and self.request_maps()[1]:
                self.subs = SubMap(self.size, lay, self.old_subs.hashes)
            else:  # rebuilt from the agent's S and B frames
                self.subs = SubMap.zeros(self.size, lay)


class Receiver:
    """Consumes one agent's frames: builds segments and the new manifests, counts, checks."""

    def __init__(self, item: str, disks: list[DiskCycle], layout: Layout, segments: SegmentWriter,
                 progress: Callable[[int], None] | None = None, direct: SegmentWriter | None = None,
                 on_direct_disk: Callable[[DiskCycle], None] | None = None) -> None:
        self.item = item
        self.disks = disks
        self.layout = layout
        self.cached = segments
        self.direct = direct
        self.on_direct_disk = on_direct_disk
        self.segments = segments
        self.progress = progress
        self.hello: dict | None = None
        self.frozen: dict | None = None
        self.trailer: dict | None = None
        self.errors: list[dict] = []
        self.current: DiskCycle | None = None
        self.next_disk = 0
        self.frozen_event = threading.Event()
        self.frozen_at_server: dt.datetime | None = None

    def handle(self, kind: int, payload: bytes) -> bool:
        """Take one frame; True once the trailer arrived."""
        if kind == p.BLOCK:
            self._block(payload)
        elif kind == p.ZERO:
            self._zeros(payload)
        elif kind == p.SUBS:
            d = self._disk()
            index, subs = p.parse_subs(payload, self.layout)
            self._check_index(d, index, 1)
            if d.subs is not None:
                d.subs[index] = subs
        elif kind == p.PROGRESS_FRAME:
            index, done = p.parse_progress(payload)
            if self.current is not None:
                self.current.read = done
            if self.progress:
                self.progress(self.bytes_read())
        elif kind == p.DISK:
            self._disk_start(p.parse_json(kind, payload))
        elif kind == p.DISK_END:
            self._disk_end(p.parse_json(kind, payload))
        elif kind == p.HELLO:
            self.hello = p.parse_json(kind, payload)
        elif kind == p.FROZEN:
            self.frozen = p.parse_json(kind, payload)
            self.frozen_at_server = dt.datetime.now(dt.timezone.utc)
            self.frozen_event.set()
        elif kind == p.ERROR:
            self.errors.append(p.parse_json(kind, payload))
        elif kind == p.TRAILER:
            self.trailer = p.parse_json(kind, payload)
            return True
        else:
            raise ProtocolError(f"unknown agent frame type {kind:#x}")
        return False

    def bytes_read(self) -> int:
        return sum(d.size if d.ended else d.read for d in self.disks)

    def _disk(self) -> DiskCycle:
        if self.current is None:
            raise ProtocolError("a block frame came outside a disk")
        return self.current

    def _check_index(self, d: DiskCycle, first: int, count: int) -> None:
        blocks = self.layout.blocks(d.size)
        if first < 0 or count < 1 or first + count > blocks:
            raise ProtocolError(f"disk {d.disk.name}: blocks {first}+{count} are outside its {blocks} blocks")

    def _disk_start(self, doc: dict) -> None:
        if self.current is not None:
            raise ProtocolError("a disk frame came before the previous disk ended")
        if self.next_disk >= len(self.disks) or doc.get("name") != self.disks[self.next_disk].disk.name:
            raise ProtocolError(f"the agent sent disk {doc.get('name')!r} out of order")
        d = self.disks[self.next_disk]
        d.start(doc)
        self.current = d
        if d.direct and not d.resync:
            raise ProtocolError(f"disk {d.disk.name}: sent without a map but the agent did not resync it")
        if d.direct and self.direct is not None:
            # A resync rewrites every block, so it need not go through the cache (see DiskCycle.direct).
            self.segments = self.direct
            if self.on_direct_disk:
                self.on_direct_disk(d)
        else:
            self.segments = self.cached
        lay = self.layout
        self.segments.begin_disk({"name": d.disk.name, "size": d.size, "block_size": lay.block_size,
                                  "sub_block_size": lay.sub_block_size, "sub_hash_len": lay.sub_hash_len})

    def _block(self, payload: bytes) -> None:
        d = self._disk()
        b = p.parse_block(payload, self.layout)
        self._check_index(d, b.index, 1)
        if not b.mask or b.mask & ~self.layout.full_mask:
            raise ProtocolError(f"disk {d.disk.name}: block {b.index} has an invalid sub-block mask {b.mask:#x}")
        want = sum(n for _, n in self.layout.runs(b.index, b.mask, d.size))
        if len(b.data) != want:
            raise ProtocolError(f"disk {d.disk.name}: block {b.index} carries {len(b.data)} bytes, its mask needs {want}")
        if b.mask != self.layout.full_mask and d.resync:
            raise ProtocolError(f"disk {d.disk.name}: a partial block in a resync")
        d.manifest[b.index] = b.digest
        if d.subs is not None and b.sub_hashes:
            d.subs[b.index] = b.sub_hashes
        d.changed += 1
        d.bytes_sent += len(b.data)
        self.segments.add(p.BLOCK, payload)

    def _zeros(self, payload: bytes) -> None:
        d = self._disk()
        first, count = p.parse_zeros(payload)
        self._check_index(d, first, count)
        d.manifest.set_zero(first, count)
        if d.subs is not None:
            d.subs.set_zero(first, count)
        d.zero_blocks += count
        self.segments.add(p.ZERO, payload)

    def _disk_end(self, doc: dict) -> None:
        d = self._disk()
        if doc.get("changed") != d.changed or doc.get("zero") != d.zero_blocks:
            raise ProtocolError(
                f"disk {d.disk.name}: the agent counted {doc.get('changed')} changed / {doc.get('zero')} zero blocks, "
                f"{d.changed} / {d.zero_blocks} arrived"
            )
        d.ended = True
        d.read = d.size
        self.current = None
        self.next_disk += 1
        if self.progress:
            self.progress(self.bytes_read())

    def check_complete(self) -> None:
        if self.trailer is None:
            raise ProtocolError("the agent's stream ended without a trailer")
        if self.errors:
            e = self.errors[0]
            raise ReplicationError(f"agent error ({e.get('kind')}) on disk {e.get('disk')}: {e.get('message')}")
        if not self.trailer.get("ok"):
            raise ReplicationError(f"the agent's cycle failed: {self.trailer.get('error')}")
        if self.current is not None or self.next_disk != len(self.disks):
            raise ProtocolError(f"the agent finished {self.next_disk} of {len(self.disks)} disks")


# -- applying -----------------------------------------------------------------------------


@dataclass
class PagePlan:
    """Page writes and clears for one disk from one segment."""

    writes: list[tuple[int, bytes]] = field(default_factory=list)
    clears: list[tuple[int, int]] = field(default_factory=list)


def _pad(data: bytes) -> bytes:
    rem = len(data) % PAGE
    return data + bytes(PAGE - rem) if rem else data


def plan_segment(raw: bytes) -> dict[str, PagePlan]:
    """Disk name -> coalesced page writes (<= 4 MiB, 512-aligned; all-zero runs become
    clears) and clears, for a segment's plaintext."""
    runs: dict[str, list[tuple[int, bytes]]] = {}
    clears: dict[str, list[tuple[int, int]]] = {}
    layout: Layout | None = None
    disk: str | None = None
    size = 0
    for kind, payload in p.iter_frames(raw):
        if kind == p.DISK:
            doc = p.parse_json(kind, payload)
            disk, size = doc["name"], int(doc["size"])
            layout = Layout(int(doc["block_size"]), int(doc["sub_block_size"]), int(doc["sub_hash_len"]))
            runs.setdefault(disk, [])
            clears.setdefault(disk, [])
            continue
        if layout is None or disk is None:
            raise ProtocolError("a segment's blocks come before its disk frame")
        if kind == p.BLOCK:
            b = p.parse_block(payload, layout)
            pos = 0
            for off, n in layout.runs(b.index, b.mask, size):
                runs[disk].append((off, bytes(b.data[pos:pos + n])))
                pos += n
        elif kind == p.ZERO:
            first, count = p.parse_zeros(payload)
            start = first * layout.block_size
            end = min(size, (first + count) * layout.block_size)
            clears[disk].append((start, end - start))
        else:
            raise ProtocolError(f"unexpected frame {kind:#x} in a segment")
    return {name: _coalesce(runs[name], clears[name]) for name in runs}


def plan_segment_of_bytes(offset: int, data: bytes) -> PagePlan:
    """Page writes and clears that put `data` at `offset` (all-zero stretches are cleared)."""
    step = 64 * 1024
    return _coalesce([(offset + i, data[i:i + step]) for i in range(0, len(data), step)], [])


def _coalesce(runs: list[tuple[int, bytes]], clears: list[tuple[int, int]]) -> PagePlan:
    plan = PagePlan()
    all_clears = list(clears)
    pending: list[tuple[int, bytearray]] = []
    for off, data in sorted(runs, key=lambda r: r[0]):
        if data.count(0) == len(data):
            all_clears.append((off, len(data)))
            continue
        if pending and pending[-1][0] + len(pending[-1][1]) == off and len(pending[-1][1]) + len(data) <= MAX_PAGE_WRITE:
            pending[-1][1].extend(data)
        else:
            pending.append((off, bytearray(data)))
    plan.writes = [(off, _pad(bytes(buf))) for off, buf in pending]
    merged: list[list[int]] = []
    for off, n in sorted(all_clears):
        n = -(-n // PAGE) * PAGE
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1][1] += n
        else:
            merged.append([off, n])
    plan.clears = [(o, n) for o, n in merged]
    return plan
