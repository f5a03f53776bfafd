"""The process server's receive path against a broken or hostile source machine: what a
frame may claim is bounded before anything is allocated, corrupt block data is caught by
hashing it before it is kept (and then nothing of the cycle is applied), and every
malformed stream is a ProtocolError, never another exception. No service: the engine runs
the real agent through the LocalShell against in-memory storage."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import sys
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from drbook.agent import agent as agent_mod
from drbook.config import AzureConfig, ContainerNames, DiskConfig, MachineConfig, SiteConfig
from drbook.errors import ConflictError, NotFoundError, ProtocolError, VerificationError
from drbook.models import ItemState, Policy, ProtectedDisk, ProtectedItem, RecoveryPoint
from drbook.replication import cycle as cy
from drbook.replication import protocol as p
from drbook.replication import segments, vhd
from drbook.replication.blobs import replica_blob_name
from drbook.replication.cycle import CycleSettings
from drbook.replication.engine import ReplicationEngine
from drbook.replication.local_shell import LocalShell
from drbook.replication.manifest import MAX_DISK, Manifest, SubMap
from drbook.replication.segments import SegmentError, open_segment, seal
from drbook.replication.storage import CycleStorage
from drbook.vault import item_key

KIB, MIB, GIB, TIB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4
LAYOUT = p.Layout(64 * KIB, 4 * KIB, 8)
AGENT_DIR = str(Path(agent_mod.__file__).parent)


def _receiver(known: int = 10 * GIB, *, old: Manifest | None = None, configured: int = 0) -> tuple[cy.Receiver, cy.DiskCycle]:
    disk = ProtectedDisk(name="disk0", path="/dev/sda", size_bytes=known)
    d = cy.DiskCycle(disk=disk, layout=LAYOUT, old=old, old_subs=None, force_resync=old is None,
                     configured_size=configured)
    d.direct = old is None
    return cy.Receiver("db01", [d], LAYOUT, cy.SegmentWriter(1 << 20, lambda seq, raw: None)), d


def _disk_doc(size, **extra) -> dict:  # noqa: ANN001 - any JSON value, on purpose
    return {"index": 0, "name": "disk0", "path": "/dev/sda", "size": size, "blocks": 1, "resync": True,
            "reason": "no block map", **extra}


def _traced_peak(fn) -> int:  # noqa: ANN001
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# -- bounds ----------------------------------------------------------------------------------


def test_a_disk_frame_claiming_a_tebibyte_is_refused_before_anything_is_allocated():
    receiver, d = _receiver(known=10 * GIB)
    payload = p.json_frame(p.DISK, _disk_doc(TIB))[p.FRAME.size:]

    def take() -> None:
        with pytest.raises(ProtocolError, match=rf"disk disk0: the agent's disk frame claims {TIB} bytes; "
                                                rf"at most {20 * GIB} are accepted") as err:
            receiver.handle(p.DISK, payload)
        assert err.value.retryable

    assert _traced_peak(take) < 256 * KIB  # the maps of a 1 TiB disk would be 2.5 GiB
    assert d.manifest is None and d.subs is None


def test_a_disk_may_grow_within_its_allowance_and_an_unknown_size_is_bounded_by_azure():
    receiver, d = _receiver(known=10 * GIB)
    receiver.handle(p.DISK, p.json_frame(p.DISK, _disk_doc(3 * MIB + 1000))[p.FRAME.size:])
    assert d.size == 3 * MIB + 1000 and d.manifest.blocks == 49
    small = _receiver(known=2 * MIB)[1]
    assert small.size_bound()[0] == 2 * MIB + GIB
    assert _receiver(known=10 * GIB, configured=30 * GIB)[1].size_bound()[0] == 60 * GIB
    unknown_receiver, unknown = _receiver(known=0)
    assert unknown.size_bound()[0] == MAX_DISK == 8 * TIB - MIB
    with pytest.raises(ProtocolError, match=f"at most {MAX_DISK} are accepted"):
        unknown_receiver.handle(p.DISK, p.json_frame(p.DISK, _disk_doc(8 * TIB))[p.FRAME.size:])


@pytest.mark.parametrize("size", [-1, -(2 ** 63), 0])
def test_a_negative_or_zero_disk_size_is_a_protocol_error(size: int):
    receiver, _ = _receiver()
    with pytest.raises(ProtocolError, match=f"claims {size} bytes"):
        receiver.handle(p.DISK, p.json_frame(p.DISK, _disk_doc(size))[p.FRAME.size:])
    segment = p.json_frame(p.DISK, {"name": "d0", "size": size, "block_size": 65536, "sub_block_size": 0,
                                    "sub_hash_len": 8})
    with pytest.raises(ProtocolError, match="segment's disk frame"):
        cy.plan_segment(segment)
    with pytest.raises(VerificationError):
        Manifest.zeros(size - 1, 65536)  # once an assert (gone under -O)


@pytest.mark.parametrize("kind, length, bound", [
    (p.BLOCK, 60 * MIB, LAYOUT.block_head + LAYOUT.block_size),
    (p.SUBS, 1 << 20, 8 + LAYOUT.sub_width),
    (p.ZERO, 13, p.ZEROS.size),
    (p.PROGRESS_FRAME, 1 << 31, p.PROGRESS.size),
    (p.TRAILER, p.MAX_JSON + 1, p.MAX_JSON),
])
def test_a_frame_longer_than_its_kind_can_hold_is_refused_before_its_payload_is_read(kind: int, length: int, bound: int):
    stream = io.BytesIO(p.FRAME.pack(kind, length) + b"x" * 16)

    def read() -> None:
        with pytest.raises(ProtocolError, match=rf"claims {length} bytes, more than the {bound} of"):
            p.FrameReader(stream, layout=LAYOUT).read()

    assert _traced_peak(read) < 256 * KIB
    assert stream.tell() == p.FRAME.size


def test_an_unknown_frame_type_is_refused_at_its_header():
    with pytest.raises(ProtocolError, match="unknown agent frame type 0x51"):
        p.FrameReader(io.BytesIO(p.FRAME.pack(ord("Q"), 10 ** 9))).read()


def test_a_flood_of_error_frames_keeps_only_the_first_few():
    receiver, _ = _receiver()
    for i in range(1000):
        receiver.handle(p.ERROR, p.json_frame(p.ERROR, {"disk": None, "kind": "read", "message": f"e{i}"})[p.FRAME.size:])
    assert len(receiver.errors) == cy.MAX_ERRORS and receiver.errors[0]["message"] == "e0"


# -- every malformed stream is a ProtocolError --------------------------------------------------

# What each once raised (found by a probe of the receive path), and the frame that did it.
MALFORMED = {
    "RecursionError": (p.DISK, b"[" * 100_000),
    "UnicodeDecodeError": (p.HELLO, b'{"version": "\xff\xfe"}'),
    "JSONDecodeError": (p.TRAILER, b'{"ok": tru'),
    "KeyError": (p.DISK, json.dumps({"name": "disk0"}).encode()),
    "TypeError": (p.DISK, json.dumps(_disk_doc(None)).encode()),
    "ValueError": (p.DISK, json.dumps(_disk_doc("12x")).encode()),
    "ValueError (a number of 5000 digits)": (p.DISK, b'{"name": "disk0", "size": ' + b"9" * 5000 + b"}"),
    "OverflowError": (p.DISK, b'{"name": "disk0", "size": 1e400}'),
    "OverflowError (NaN)": (p.DISK, b'{"name": "disk0", "size": NaN}'),
    "AssertionError": (p.DISK, json.dumps(_disk_doc(-5)).encode()),
    "MemoryError": (p.DISK, json.dumps(_disk_doc(8 * TIB)).encode()),
    "AttributeError (a hook result that is not an object)": (p.TRAILER, json.dumps({"ok": True, "freeze": ["x"]}).encode()),
    "AttributeError (hook output that is not text)": (
        p.TRAILER, json.dumps({"ok": True, "freeze": [{"cmd": "x", "kind": "crash", "rc": 0, "out": 5}]}).encode()),
    "TypeError (a freeze instant that is not a number)": (p.TRAILER, json.dumps({"ok": True, "read_ended": "x"}).encode()),
    "ValidationError (an agent version that is not text)": (p.HELLO, json.dumps({"version": 4}).encode()),
    "not an object": (p.FROZEN, b"[1, 2]"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformed_frame_once_raising_another_exception_is_a_protocol_error(case: str):
    kind, payload = MALFORMED[case]
    receiver, _ = _receiver(known=2 * MIB)
    with pytest.raises(ProtocolError) as err:
        receiver.handle(kind, payload)
    assert err.value.retryable


def test_block_frames_that_do_not_fit_their_disk_are_protocol_errors():
    receiver, d = _receiver(known=2 * MIB)
    receiver.handle(p.DISK, p.json_frame(p.DISK, _disk_doc(2 * MIB))[p.FRAME.size:])
    data = os.urandom(64 * KIB)
    subs = agent_mod.Hasher(64 * KIB, 4 * KIB, 8).sub_hashes(data)
    digest = hashlib.sha256(data).digest()
    for index, mask, body, match in [(32, 0xFFFF, data, "outside its 32 blocks"), (2 ** 63, 0xFFFF, data, "outside"),
                                     (1, 0, data, "invalid sub-block mask"), (1, 1 << 16, data, "invalid"),
                                     (1, 0xFFFF, data[:-1], "carries 65535 bytes"),
                                     (1, 0b1, data[:4096], "a partial block in a resync")]:
        with pytest.raises(ProtocolError, match=match):
            receiver.handle(p.BLOCK, p.BLOCK_HEAD.pack(index, mask) + digest + subs + body)
    with pytest.raises(ProtocolError, match="outside"):
        receiver.handle(p.ZERO, p.ZEROS.pack(30, 3))
    receiver.handle(p.ZERO, p.ZEROS.pack(3, 2))
    with pytest.raises(ProtocolError, match="arrived a second time"):
        receiver.handle(p.ZERO, p.ZEROS.pack(4, 1))
    with pytest.raises(ProtocolError, match="the resync ended without 30 of its blocks"):
        receiver.handle(p.DISK_END, p.json_frame(p.DISK_END, {"changed": 0, "zero": 2})[p.FRAME.size:])
    assert d.manifest.blocks == 32


# -- corrupt block data ----------------------------------------------------------------------


def _block_stream(old: bytes, new: bytes, path: Path) -> list[tuple[int, bytes]]:
    """The real agent's frames for `new` against the maps of `old`."""
    path.write_bytes(new)
    bs = LAYOUT.block_size
    header = {"disks": [{"name": "disk0", "path": str(path), "size": len(old)}], "block_size": bs,
              "sub_block_size": LAYOUT.sub_block_size, "sub_hash_len": LAYOUT.sub_hash_len, "hooks": {}, "threads": 1}
    out = io.BytesIO()
    request = agent_mod.encode_request(header, [(bytes(Manifest.of(old, bs).hashes), _sub_map(old))])
    assert agent_mod.scan(io.BytesIO(request), out) == 0
    return list(p.FrameReader(io.BytesIO(out.getvalue()), layout=LAYOUT))


def _changed(old: bytes, change: str) -> bytes:
    """`old` with block 3 changed: a few bytes of one sub-block (a partial block frame), or all of it."""
    new = bytearray(old)
    if change == "a few bytes":
        new[3 * 64 * KIB + 5000:3 * 64 * KIB + 5100] = os.urandom(100)
    else:
        new[3 * 64 * KIB:4 * 64 * KIB] = os.urandom(64 * KIB)
    return bytes(new)


@pytest.mark.parametrize("change", ["a few bytes", "a whole block"])
def test_a_flipped_data_byte_is_named_and_nothing_of_it_is_kept(tmp_path: Path, change: str):
    old = os.urandom(8 * 64 * KIB)
    frames = _block_stream(old, _changed(old, change), tmp_path / "disk0.img")
    blocks = [i for i, (kind, _) in enumerate(frames) if kind == p.BLOCK]
    assert len(blocks) == 1
    kind, payload = frames[blocks[0]]
    corrupt = bytearray(payload)
    corrupt[-1] ^= 0x01
    frames[blocks[0]] = (kind, bytes(corrupt))
    emitted: list[bytes] = []
    d = cy.DiskCycle(disk=ProtectedDisk(name="disk0", path="x", size_bytes=len(old)), layout=LAYOUT,
                     old=Manifest.of(old, LAYOUT.block_size), old_subs=SubMap(len(old), LAYOUT, _sub_map(old)))
    writer = cy.SegmentWriter(1, lambda seq, raw: emitted.append(raw))
    receiver = cy.Receiver("db01", [d], LAYOUT, writer)
    with pytest.raises(ProtocolError, match=r"disk disk0: block 3 \(offset 196608\): .*does not match") as err:
        for kind, payload in frames:
            receiver.handle(kind, payload)
    assert err.value.retryable
    assert emitted == [] and d.manifest == d.old and d.changed == 0


def _sub_map(data: bytes) -> bytes:
    """The agent's own sub-block hashes of every block of `data`."""
    hasher = agent_mod.Hasher(LAYOUT.block_size, LAYOUT.sub_block_size, LAYOUT.sub_hash_len)
    return b"".join(hasher.sub_hashes(data[i:i + LAYOUT.block_size]) for i in range(0, len(data), LAYOUT.block_size))


# The engine against in-memory storage: the vault, points, cache and replicas of one test.


@dataclass
class MemoryVault:
    docs: dict[str, object] = field(default_factory=dict)

    def item(self, name: str) -> ProtectedItem:
        return self.docs[item_key(name)].model_copy(deep=True)

    def update(self, key: str, model: type, fn) -> object:  # noqa: ANN001
        doc = self.docs[key].model_copy(deep=True)
        doc = fn(doc) or doc
        self.docs[key] = doc
        return doc

    @contextlib.contextmanager
    def lease(self, name: str, *, holder: str):
        yield SimpleNamespace(check=lambda: None)


@dataclass
class MemoryPoints:
    points: dict[tuple[str, str], RecoveryPoint] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def find(self, item: str, point_id: str) -> RecoveryPoint | None:
        return self.points.get((item, point_id))

    def get(self, item: str, point_id: str) -> RecoveryPoint:
        return self.points[(item, point_id)]

    def record(self, point: RecoveryPoint) -> bool:
        return self.points.setdefault((point.item, point.id), point) is point

    def put_manifest(self, item: str, point_id: str, disk: str, manifest: Manifest) -> str:
        self.blobs[f"{item}/{point_id}/{disk}.bin"] = manifest.to_bytes()
        return f"{item}/{point_id}/{disk}.bin"

    def put_submap(self, item: str, point_id: str, disk: str, subs: SubMap) -> None:
        self.blobs[f"{item}/{point_id}/{disk}.sub"] = subs.to_bytes()

    def manifest(self, item: str, point_id: str, disk: str) -> Manifest | None:
        data = self.blobs.get(f"{item}/{point_id}/{disk}.bin")
        return Manifest.from_bytes(data) if data else None

    def submap(self, item: str, point_id: str, disk: str) -> SubMap | None:
        data = self.blobs.get(f"{item}/{point_id}/{disk}.sub")
        return SubMap.from_bytes(data) if data else None

    def drop_submaps(self, item: str, point_id: str) -> None:
        self.blobs.pop(f"{item}/{point_id}/disk0.sub", None)


@dataclass
class MemoryCache:
    blobs: dict[str, bytes] = field(default_factory=dict)

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        if create_only and name in self.blobs:
            raise ConflictError(f"{name} exists")
        self.blobs[name] = bytes(data)

    def get(self, name: str) -> bytes:
        if name not in self.blobs:
            raise NotFoundError(name)
        return self.blobs[name]

    def put_stream(self, name: str, stream, length: int) -> None:  # noqa: ANN001 - a binary file
        self.put(name, stream.read(length))

    def download(self, name: str, out) -> int:  # noqa: ANN001 - a binary file
        out.write(self.get(name))
        return len(self.blobs[name])

    def get_json(self, name: str) -> dict | None:
        return json.loads(self.blobs[name]) if name in self.blobs else None

    def names(self, prefix: str) -> list[str]:
        return sorted(n for n in self.blobs if n.startswith(prefix))

    def cycles(self, item: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for name in self.names(f"{item}/"):
            found.setdefault(name.split("/")[1], []).append(name)
        return found

    def delete(self, names) -> int:  # noqa: ANN001
        return sum(self.blobs.pop(n, None) is not None for n in list(names))


@dataclass
class MemoryReplicas:
    container_name: str = "replicas"
    blobs: dict[str, bytearray] = field(default_factory=dict)
    snaps: dict[str, bytes] = field(default_factory=dict)
    writes: int = 0

    def ensure(self, name: str, disk_size: int) -> None:
        blob = self.blobs.setdefault(name, bytearray())
        blob[:] = blob[:vhd.blob_size(disk_size)].ljust(vhd.blob_size(disk_size), b"\0")

    def write(self, name: str, writes, clears) -> int:  # noqa: ANN001
        blob = self.blobs[name]
        for off, n in clears:
            blob[off:off + n] = bytes(n)
        for off, data in writes:
            blob[off:off + len(data)] = data
            self.writes += 1
        return sum(len(d) for _, d in writes)

    def snapshot(self, name: str, metadata: dict | None = None) -> str:
        snap = f"snap-{len(self.snaps)}"
        self.snaps[snap] = bytes(self.blobs[name])
        return snap

    def snapshot_exists(self, name: str, snapshot: str) -> bool:
        return snapshot in self.snaps


class _FlipFirstBlock:
    """The agent's stdout with the last data byte of its first block frame flipped."""

    def __init__(self, raw) -> None:  # noqa: ANN001
        self.raw = raw
        self.buf: io.BytesIO | None = None

    def read(self, n: int = -1) -> bytes:
        if self.buf is None:
            data = bytearray(self.raw.read())
            pos = 0
            while True:
                kind, length = p.FRAME.unpack_from(data, pos)
                pos += p.FRAME.size + length
                if kind == p.BLOCK:
                    break
            data[pos - 1] ^= 0x01
            self.buf = io.BytesIO(bytes(data))
        return self.buf.read(n)


class FlippingShell(LocalShell):
    """Runs the agent like the LocalShell; while `armed`, one byte of its stream flips on the way."""

    armed = False

    def open_process(self, command: str):  # noqa: ANN201
        proc = super().open_process(command)
        if self.armed:
            proc.stdout = _FlipFirstBlock(proc.stdout)
        return proc


@dataclass
class MemoryEngine:
    engine: ReplicationEngine
    shell: FlippingShell
    vault: MemoryVault
    points: MemoryPoints
    cache: MemoryCache
    replicas: MemoryReplicas
    disk: Path

    def replica(self) -> bytes:
        return bytes(self.replicas.blobs[replica_blob_name("db01", "disk0")][:self.disk.stat().st_size])


def _memory_engine(tmp_path: Path, data: bytes) -> MemoryEngine:
    disk = tmp_path / "disk0.img"
    disk.write_bytes(data)
    machine = MachineConfig(name="db01", address="127.0.0.1", agent_dir=AGENT_DIR, python=sys.executable,
                            disks=[DiskConfig(name="disk0", path=str(disk), size_bytes=len(data))])
    site = SiteConfig(site="test", machines=[machine], azure=AzureConfig(
        subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg", location="westeurope",
        storage_account="devstoreaccount1", blob_endpoint="https://127.0.0.1:1/devstoreaccount1",
        encryption_key="env:UNUSED_IN_TESTS", containers=ContainerNames()))
    item = ProtectedItem(name="db01", machine="db01", state=ItemState.INITIAL_REPLICATION, policy=Policy(),
                         disks=[ProtectedDisk(name="disk0", path=str(disk), size_bytes=len(data), resync_required=True,
                                              resync_reason="initial copy")])
    vault, points, cache, replicas = MemoryVault({item_key("db01"): item}), MemoryPoints(), MemoryCache(), MemoryReplicas()
    shell = FlippingShell()
    settings = CycleSettings(segment_bytes=256 * KIB, hook_timeout=20, idle_timeout=30, barrier_timeout=30)
    no_blobs = SimpleNamespace(get_container_client=lambda name: None)
    engine = ReplicationEngine(site, vault, no_blobs, lambda m: shell, os.urandom(32), settings=settings)
    engine.points = points
    engine.storage = CycleStorage(vault, points, cache, replicas, engine.key)
    return MemoryEngine(engine, shell, vault, points, cache, replicas, disk)


@pytest.mark.parametrize("change", ["a few bytes", "a whole block"])
def test_a_flipped_byte_on_the_wire_applies_nothing_and_records_no_point(tmp_path: Path, change: str):
    old = os.urandom(8 * 64 * KIB)
    env = _memory_engine(tmp_path, old)
    first = env.engine.run_cycle("db01")
    assert env.replica() == old
    writes, replica = env.replicas.writes, env.replica()
    new = _changed(old, change)
    env.disk.write_bytes(new)
    env.shell.armed = True
    with pytest.raises(ProtocolError, match=r"disk disk0: block 3 \(offset 196608\): .*does not match") as err:
        env.engine.run_cycle("db01")
    assert err.value.retryable
    item = env.vault.item("db01")
    assert item.last_point_id == first.id and not item.disks[0].resync_required
    assert list(env.points.points) == [("db01", first.id)]
    assert env.points.manifest("db01", first.id, "disk0") == Manifest.of(old, LAYOUT.block_size)
    assert env.replicas.writes == writes and env.replica() == replica
    assert env.cache.blobs == {}
    env.shell.armed = False  # the retry
    second = env.engine.run_cycle("db01")
    assert env.replica() == new
    assert env.points.manifest("db01", second.id, "disk0") == Manifest.of(new, LAYOUT.block_size)


# -- decompression is capped -----------------------------------------------------------------


def _bomb(size: int) -> bytes:
    """A zstd frame of `size` zero bytes (a few KiB), made without holding them."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
        chunk = bytes(MIB)
        for _ in range(size // MIB):
            w.write(chunk)
    return out.getvalue()


def test_a_segment_that_decompresses_past_its_size_is_refused_without_the_memory(monkeypatch: pytest.MonkeyPatch):
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = struct.pack(">4sB", segments.SEGMENT_MAGIC, segments.SEGMENT_VERSION) + nonce + AESGCM(key).encrypt(
        nonce, _bomb(256 * MIB), segments.associated_data("db01", "cy-1", 1))
    monkeypatch.setattr(segments, "MAX_SEGMENT", 64 * MIB)

    def open_it() -> None:
        with pytest.raises(SegmentError, match="more than 1000 bytes"):
            open_segment(sealed, key, "db01", "cy-1", 1, raw_bytes=1000)
        with pytest.raises(SegmentError, match=f"more than {64 * MIB} bytes"):
            open_segment(sealed, key, "db01", "cy-1", 1)

    assert _traced_peak(open_it) < 80 * MIB  # the bomb is 256 MiB
    raw = os.urandom(5000)
    assert open_segment(seal(raw, key, "i", "c", 2), key, "i", "c", 2, raw_bytes=5000) == raw
    with pytest.raises(SegmentError, match="its commit marker says 5001"):
        open_segment(seal(raw, key, "i", "c", 2), key, "i", "c", 2, raw_bytes=5001)


def test_a_manifest_whose_body_outgrows_its_header_is_refused_without_the_memory():
    good = Manifest.zeros(10 * 64 * KIB, 64 * KIB).to_bytes()
    head = good[:9 + struct.unpack_from(">I", good, 5)[0]]
    bomb = head + _bomb(256 * MIB)

    def parse() -> None:
        with pytest.raises(VerificationError, match="more than 320 bytes"):
            Manifest.from_bytes(bomb)

    assert _traced_peak(parse) < 16 * MIB
    with pytest.raises(VerificationError, match="body has 0 bytes, its header says 320"):
        Manifest.from_bytes(head + zstandard.ZstdCompressor().compress(b""))
    for header in ({"disk_size": -1, "block_size": 65536, "hash": "sha256"}, {"disk_size": 10, "hash": "sha256"},
                   {"disk_size": 9 * TIB, "block_size": 65536, "hash": "sha256"},
                   {"disk_size": 10, "block_size": True, "hash": "sha256"}):
        body = json.dumps(header).encode()
        with pytest.raises(VerificationError, match="header field"):
            Manifest.from_bytes(b"DRMF" + struct.pack(">BI", 1, len(body)) + body)
    for header in (b"\xff\xfe", b"[" * 100_000, b"[]"):
        with pytest.raises(VerificationError, match="header is not"):
            Manifest.from_bytes(b"DRMF" + struct.pack(">BI", 1, len(header)) + header)
