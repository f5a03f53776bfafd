"""One replication cycle's moving parts: receiving the agent's stream into segments and a
new manifest, the commit marker, and turning segments into page writes.

drbook.replication.staging and .apply wire these to blobs and the vault.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import BaseModel

from drbook.config import CycleConfig, ProcessServerConfig, SiteConfig
from drbook.errors import ProtocolError, ReplicationError
from drbook.models import ProtectedDisk
from drbook.replication import protocol as p
from drbook.replication.manifest import MAX_DISK, Manifest, SubMap, block_length, sub_hashes
from drbook.replication.mapfile import MapBuffer
from drbook.replication.protocol import Layout

MAX_PAGE_WRITE = 4 * 1024 * 1024
PAGE = 512
# A disk may grow between cycles (it is then resynced whole, DESIGN.md section 2): to twice
# the largest size the process server knows of it (vault, last manifest, site config), or
# by GROWTH_MIN when it is small. Its maps cost 32 bytes plus the sub-block hashes per block,
# so a source that claimed more would choose the process server's memory.
GROWTH_MIN = 1024 ** 3
MAX_ERRORS = 16
MARKER = "COMMITTED"
SNAPSHOTS = "SNAPSHOTS"

Progress = Callable[[int, int], None]


class CycleSettings(CycleConfig):
    """A cycle's knobs: the site config's `cycle` of a process server (CycleConfig), plus
    what is derived from them."""

    @classmethod
    def from_site(cls, site: SiteConfig) -> "CycleSettings":
        """The `cycle` of the process server this process runs on (drbook.scaleout.worker:
        DRBOOK_PROCESS_SERVER, else the site's first)."""
        from drbook.scaleout.worker import current_process_server

        return cls.of(current_process_server(site))

    @classmethod
    def of(cls, ps: ProcessServerConfig) -> "CycleSettings":
        return cls.model_validate(ps.cycle.model_dump())

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
    process_server: str | None = None  # the one that ran the cycle (a replay may be another's)

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

    `map_dir`: where the maps of a large disk go (drbook.replication.mapfile; the cycle's
    spool_dir, None: the system temp directory).
    """

    disk: ProtectedDisk
    layout: Layout
    old: Manifest | None
    old_subs: SubMap | None
    force_resync: bool = False
    configured_size: int = 0  # the site config's size_bytes of the disk (0: not set)
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
    received: "BlockSet | None" = None
    map_dir: str | None = None

    def request_maps(self) -> tuple[MapBuffer | bytes, MapBuffer | bytes]:
        """The maps to send the agent (b"": none): the old maps themselves, not copies (a 1 TiB
        disk's are 2.5 GiB); protocol.write_request sends them a chunk at a time."""
        if self.old is None or self.force_resync:
            return b"", b""
        subs = self.old_subs.hashes if self.old_subs is not None and self.old_subs.disk_size == self.old.disk_size else b""
        return self.old.hashes, subs

    def request_disk(self) -> dict:
        return {"name": self.disk.name, "path": self.disk.path,
                "size": self.old.disk_size if self.old is not None and not self.force_resync else None}

    @property
    def sub_rebuild(self) -> bool:
        return self.layout.sub_on and self.old is not None and not self.force_resync and self.request_maps()[1] == b""

    def size_bound(self) -> tuple[int, str]:
        """The most bytes the agent may say this disk has, and why."""
        known = max(self.disk.size_bytes, self.configured_size, self.old.disk_size if self.old is not None else 0)
        if known <= 0:
            return MAX_DISK, "the largest disk a replica page blob holds; its size is not known yet"
        return min(MAX_DISK, max(2 * known, known + GROWTH_MIN)), f"the growth allowed from its known size of {known} bytes"

    def start(self, doc: dict) -> None:
        """Take the agent's disk frame (types checked by protocol.parse_json); the size is
        checked against size_bound before any map is allocated."""
        size = int(doc["size"])
        bound, why = self.size_bound()
        if not 0 < size <= bound:
            raise ProtocolError(f"disk {self.disk.name}: the agent's disk frame claims {size} bytes; at most {bound} are "
                                f"accepted ({why}). If the disk really is that large, set its size_bytes in the site config")
        self.size = size
        self.resync = bool(doc.get("resync"))
        self.reason = doc.get("reason")
        lay = self.layout
        self.received = BlockSet(lay.blocks(size))
        where = self.map_dir
        if self.resync or self.old is None:
            self.manifest = Manifest.zeros(self.size, lay.block_size, where)
            self.subs = SubMap.zeros(self.size, lay, where) if lay.sub_on else None
        else:
            if self.old.disk_size != self.size or self.old.block_size != lay.block_size:
                raise ProtocolError(f"disk {self.disk.name}: the agent kept a map of another geometry without a resync")
            # The new maps read through to the old ones, which stay as they are: only the
            # chunks of the blocks that change are copied (a 1 TiB disk's maps are 2.5 GiB).
            self.manifest = self.old.derived(where)
            if not lay.sub_on:
                self.subs = None
            elif self.old_subs is not None and self.request_maps()[1]:
                self.subs = self.old_subs.derived(where)
            else:  # rebuilt from the agent's S and B frames
                self.subs = SubMap.zeros(self.size, lay, where)

    def release_maps(self) -> None:
        """Give back the files of a large disk's maps (once the new ones are in the cache);
        the maps of a small disk stay readable."""
        for m in (self.manifest, self.subs, self.old, self.old_subs):  # the derived ones first
            if m is not None:
                m.close()

    def receive(self, first: int, count: int) -> None:
        """Blocks first..first+count-1 arrived (as data or as zeros): each may come once."""
        p.check_range(self.disk.name, self.size, self.layout, first, count)
        if self.received is not None and not self.received.add(first, count):
            raise ProtocolError(f"disk {self.disk.name}: blocks {first}+{count} arrived a second time")

    def missing(self) -> int:
        """Blocks the agent did not account for (a resync must send every one, as data or zeros)."""
        blocks = self.layout.blocks(self.size)
        return blocks - (self.received.count if self.received is not None else 0)


class BlockSet:
    """Which blocks of a disk arrived in this cycle: a bit each (a 1 TiB disk of 64 KiB blocks: 2 MiB)."""

    def __init__(self, blocks: int) -> None:
        self.bits = bytearray(-(-blocks // 8))
        self.count = 0

    def add(self, first: int, count: int) -> bool:
        """Mark the range; False (nothing marked) when any of it was marked already."""
        end = first + count
        lo, hi = -(-first // 8), end // 8  # the whole bytes inside the range
        if lo >= hi:
            singles, lo, hi = list(range(first, end)), 0, 0
        else:
            singles = [*range(first, lo * 8), *range(hi * 8, end)]
        if self.bits.count(0, lo, hi) != hi - lo or any(self.bits[i >> 3] >> (i & 7) & 1 for i in singles):
            return False
        self.bits[lo:hi] = b"\xff" * (hi - lo)
        for i in singles:
            self.bits[i >> 3] |= 1 << (i & 7)
        self.count += count
        return True


def verify_block(disk: str, disk_size: int, layout: Layout, b: p.Block, held: bytes | None) -> bytes:
    """Hash what arrived as the agent hashed it (agent.Hasher) before any of it is kept;
    the block's sub-block hashes to record (b"" without sub-blocks).

    A whole block: its SHA-256 and its sub-block hashes. A partial block: each sent
    sub-block against its hash; the hashes of the sub-blocks not sent stay those `held` for
    the replica. The SHA-256 of a partial block covers bytes the process server does not
    have at hand: it is taken as sent, and a wrong one makes the next cycle send the block."""
    where = f"disk {disk}: block {b.index} (offset {b.index * layout.block_size})"
    if b.mask == layout.full_mask:
        if hashlib.sha256(b.data).digest() != b.digest:
            raise ProtocolError(f"{where}: the data received does not match its SHA-256; the cycle is not applied")
        if layout.sub_on and sub_hashes(b.data, layout) != b.sub_hashes:
            raise ProtocolError(f"{where}: the data received does not match its sub-block hashes; the cycle is not applied")
        return b.sub_hashes
    if held is None:
        raise ProtocolError(f"{where}: a partial block, but the process server holds no sub-block map")
    length = block_length(b.index, disk_size, layout.block_size)
    sbs, shl = layout.sub_block_size, layout.sub_hash_len
    record = bytearray(held)
    pos = 0
    for i in range(layout.nsub):
        if b.mask >> i & 1 and i * sbs < length:
            piece = b.data[pos:pos + min(sbs, length - i * sbs)]
            pos += len(piece)
            digest = hashlib.sha256(piece).digest()[:shl]
            if digest != b.sub_hashes[i * shl:(i + 1) * shl]:
                raise ProtocolError(f"{where}: sub-block {i} received does not match its hash; the cycle is not applied")
            record[i * shl:(i + 1) * shl] = digest
    return bytes(record)


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
            p.check_range(d.disk.name, d.size, self.layout, index, 1)
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
            error = p.parse_json(kind, payload)
            if len(self.errors) < MAX_ERRORS:  # the first is the one reported; a source must not fill memory with more
                self.errors.append(error)
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
        p.check_block(d.disk.name, d.size, self.layout, b)
        if b.mask != self.layout.full_mask and d.resync:
            raise ProtocolError(f"disk {d.disk.name}: a partial block in a resync")
        subs = verify_block(d.disk.name, d.size, self.layout, b, d.subs[b.index] if d.subs is not None else None)
        d.receive(b.index, 1)
        d.manifest[b.index] = b.digest
        if d.subs is not None and subs:
            d.subs[b.index] = subs
        d.changed += 1
        d.bytes_sent += len(b.data)
        self.segments.add(p.BLOCK, payload)

    def _zeros(self, payload: bytes) -> None:
        d = self._disk()
        first, count = p.parse_zeros(payload)
        d.receive(first, count)
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
        if d.resync and d.missing():
            raise ProtocolError(f"disk {d.disk.name}: the resync ended without {d.missing()} of its blocks")
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
            disk, size, layout = _segment_disk(p.parse_json(kind, payload))
            runs.setdefault(disk, [])
            clears.setdefault(disk, [])
            continue
        if layout is None or disk is None:
            raise ProtocolError("a segment's blocks come before its disk frame")
        if kind == p.BLOCK:
            b = p.parse_block(payload, layout)
            p.check_block(disk, size, layout, b)
            pos = 0
            for off, n in layout.runs(b.index, b.mask, size):
                runs[disk].append((off, bytes(b.data[pos:pos + n])))
                pos += n
        elif kind == p.ZERO:
            first, count = p.parse_zeros(payload)
            p.check_range(disk, size, layout, first, count)
            start = first * layout.block_size
            end = min(size, (first + count) * layout.block_size)
            clears[disk].append((start, end - start))
        else:
            raise ProtocolError(f"unexpected frame {kind:#x} in a segment")
    return {name: _coalesce(runs[name], clears[name]) for name in runs}


def _segment_disk(doc: dict) -> tuple[str, int, Layout]:
    """(name, size, layout) of a segment's disk frame (written by SegmentWriter.begin_disk)."""
    name = p.field(doc, p.DISK, "name", (str,))
    size = p.field(doc, p.DISK, "size", (int,))
    if not 0 < size <= MAX_DISK:
        raise ProtocolError(f"a segment's disk frame gives disk {name} {size} bytes (at most {MAX_DISK})")
    layout = Layout(*(p.field(doc, p.DISK, k, (int,)) for k in ("block_size", "sub_block_size", "sub_hash_len")))
    return name, size, layout.check(f"the segment disk frame of {name}")


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
