"""A disk's block maps take memory bounded by a constant, whatever the disk's size (issue 14).

Maps above mapfile.MEMORY_LIMIT live in a file-backed MapBuffer; here the limit and the
chunk size are forced tiny, so small maps take the file-backed path and span many chunks,
and must behave exactly like maps in memory: entries, zeros, diff, equality, derived
copies, the packed form (also as older drbook wrote it), the request to the agent, the
vault's and the cache's streamed puts and gets, and whole cycles. A subprocess then checks
that a 1 TiB disk's maps stay far below the bound in anonymous memory, and fast. No service.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from tests import blob_fixtures
from drbook.adapters import blobstore
from drbook.agent import agent as agent_mod
from drbook.errors import NotFoundError, ReplicationError, VerificationError
from drbook.models import ProtectedDisk
from drbook.replication import cycle as cy
from drbook.replication import mapfile
from drbook.replication import protocol as p
from drbook.replication.blobs import Cache
from drbook.replication.manifest import Manifest, SubMap, sub_hashes, zero_hash, zero_sub_hashes
from drbook.replication.mapfile import MapBuffer
from drbook.replication.recovery import _runs
from drbook.replication.storage import CycleStorage
from drbook.replication.store import PointStore
from drbook.vault import Vault

azurite, azurite_blob = blob_fixtures.azurite, blob_fixtures.azurite_blob  # fixtures of the lab test below
KIB, MIB, GIB, TIB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4
BS, SBS, SHL = 4096, 512, 8
LAYOUT = p.Layout(BS, SBS, SHL)  # 64 bytes of sub-block hashes a block
SIZE = 20 * BS + 1000  # 21 blocks, the last one short
CHUNK = 200  # 6 manifest entries, 3 sub-block map entries a chunk


@pytest.fixture(params=["memory", "file"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Maps in memory or in files, in chunks of a few entries either way."""
    monkeypatch.setattr(mapfile, "CHUNK", CHUNK)
    in_file = request.param == "file"
    monkeypatch.setattr(mapfile, "MEMORY_LIMIT", 0 if in_file else 8 * MIB)
    monkeypatch.setattr(blobstore, "STREAM_PIECE", 100 if in_file else 4 * MIB)
    return request.param


def _disk(seed: int = 1, size: int = SIZE) -> bytearray:
    """A disk with some all-zero blocks among data blocks."""
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(size))
    for i in (2, 3, 4, 9, 20):
        data[i * BS:(i + 1) * BS] = bytes(len(data[i * BS:(i + 1) * BS]))
    return data


def _manifest_bytes(data: bytes | bytearray) -> bytes:
    return b"".join(hashlib.sha256(data[i:i + BS]).digest() for i in range(0, len(data), BS))


def _submap_bytes(data: bytes | bytearray) -> bytes:
    return b"".join(sub_hashes(bytes(data[i:i + BS]), LAYOUT) for i in range(0, len(data), BS))


def _old_format(magic: bytes, header: dict, body: bytes) -> bytes:
    """A packed map as drbook wrote it before maps were streamed (one zstd call on the whole body)."""
    head = json.dumps(header, sort_keys=True).encode()
    return struct.pack(">4sBI", magic, 1, len(head)) + head + zstandard.ZstdCompressor(level=3).compress(body)


# -- maps above the limit behave like maps below it ------------------------------------------------


def test_a_zero_manifest_stores_nothing_and_reads_as_the_zero_hashes(backend: str):
    z = Manifest.zeros(SIZE, BS)
    assert z.hashes.file_backed == (backend == "file") and z.hashes.nchunks == 4 and z.hashes.stored == 0
    assert bytes(z.hashes) == zero_hash(BS) * 20 + zero_hash(1000) == _manifest_bytes(bytes(SIZE))
    assert z[20] == zero_hash(1000) and z.is_zero(20) and z.is_zero(0)
    assert z == Manifest(SIZE, BS, _manifest_bytes(bytes(SIZE))) == Manifest.of(bytes(SIZE), BS)
    subs = SubMap.zeros(SIZE, LAYOUT)
    assert subs.hashes.stored == 0 and bytes(subs.hashes) == _submap_bytes(bytes(SIZE))
    assert subs[20] == zero_sub_hashes(LAYOUT, 1000) and len(subs[20]) == LAYOUT.sub_width


def test_entries_zero_ranges_diff_and_equality_match_a_plain_byte_string(backend: str):
    data = _disk()
    m = Manifest.zeros(SIZE, BS)
    ref = bytearray(_manifest_bytes(bytes(SIZE)))
    for i in (0, 5, 6, 11, 17, 20):  # entries on chunk edges, and the short last block
        digest = hashlib.sha256(data[i * BS:(i + 1) * BS]).digest()
        m[i] = digest
        ref[i * 32:(i + 1) * 32] = digest
    assert bytes(m.hashes) == bytes(ref) and m.hashes == bytes(ref) and m.hashes == ref
    assert m.hashes.stored == 4 * 6 * 32 - 3 * 32  # every chunk was written into; the last has 3 entries
    m.set_zero(5, 8)  # inside chunks and a whole chunk (6..11)
    ref[5 * 32:13 * 32] = zero_hash(BS) * 8
    m.set_zero(20, 1)
    ref[20 * 32:] = zero_hash(1000)
    assert bytes(m.hashes) == bytes(ref)
    assert m.hashes.state[1] == mapfile.BLANK  # a chunk zeroed whole stores nothing again
    truth = Manifest(SIZE, BS, bytes(ref))
    assert m == truth and not (m != truth)
    other = Manifest.of(data, BS)
    assert m.diff(other) == [i for i in range(21) if ref[i * 32:(i + 1) * 32] != other[i]]
    assert list(other.changed(m)) == m.diff(other)
    assert Manifest.zeros(SIZE, BS).diff(Manifest.zeros(SIZE, BS)) == []
    assert m != Manifest.zeros(SIZE, BS) and m != Manifest.zeros(SIZE + 1, BS)
    with pytest.raises(IndexError):
        m[21] = bytes(32)
    with pytest.raises(IndexError):
        m[21]  # noqa: B018 - reading past the end is an error, not b""
    with pytest.raises(IndexError):
        m.set_zero(20, 2)


def test_a_map_buffer_slices_like_a_bytearray(backend: str):
    buf = Manifest.zeros(SIZE, BS).hashes
    ref = bytearray(bytes(buf))
    for start, data in [(0, b"\x01" * 32), (190, b"\x02" * 20), (100, os.urandom(400)), (len(ref) - 7, b"\x03" * 7)]:
        buf[start:start + len(data)] = data
        ref[start:start + len(data)] = data
    assert bytes(buf) == bytes(ref) and buf[150:450] == bytes(ref[150:450]) and buf[-3] == ref[-3]
    assert buf[:32] == bytes(ref[:32]) and buf[5:5] == b"" and len(buf) == len(ref)
    with pytest.raises(ValueError):
        buf[0:4] = b"abc"  # no resizing
    with pytest.raises(IndexError):
        buf.write(len(ref) - 1, b"ab")


def test_the_packed_form_round_trips_and_reads_what_older_drbook_wrote(backend: str):
    data = _disk()
    m, subs = Manifest.of(data, BS), SubMap(SIZE, LAYOUT, _submap_bytes(data))
    for x, kind in ((m, Manifest), (subs, SubMap)):
        back = kind.from_bytes(x.to_bytes())
        assert back.hashes == x.hashes and back.disk_size == SIZE and back.hashes.file_backed == (backend == "file")
        with x.packed() as (stream, length):
            assert length == len(x.to_bytes())
            assert kind.read(stream).hashes == x.hashes
    old = _old_format(b"DRMF", {"disk_size": SIZE, "block_size": BS, "blocks": 21, "hash": "sha256"}, _manifest_bytes(data))
    assert Manifest.from_bytes(old, disk_size=SIZE) == m
    old_subs = _old_format(b"DRSM", {"disk_size": SIZE, "block_size": BS, "sub_block_size": SBS, "sub_hash_len": SHL},
                           _submap_bytes(data))
    assert bytes(SubMap.from_bytes(old_subs).hashes) == _submap_bytes(data)
    # What this code writes, the code before it read: the same head and header, one zstd frame.
    packed = m.to_bytes()
    head_len = 9 + struct.unpack_from(">I", packed, 5)[0]
    assert packed[:head_len] == old[:head_len]
    assert zstandard.ZstdDecompressor().decompress(packed[head_len:]) == _manifest_bytes(data)


def test_a_zero_map_packed_and_read_back_stores_nothing(backend: str):
    back = SubMap.from_bytes(SubMap.zeros(SIZE, LAYOUT).to_bytes())
    assert bytes(back.hashes) == _submap_bytes(bytes(SIZE))
    assert back.hashes.stored == (0 if backend == "file" else len(back.hashes))  # in memory the bytes are taken anyway


@pytest.mark.parametrize("body, match", [
    (b"\0" * (21 * 32 - 1), "body has 671 bytes, its header says 672"),
    (b"\0" * (21 * 32 + 1), "body does not decompress .it decompresses to more than 672 bytes"),
    (bytes(256 * KIB), "more than 672 bytes"),
])
def test_a_body_of_another_size_is_refused_in_memory_and_in_a_file(backend: str, body: bytes, match: str):
    packed = _old_format(b"DRMF", {"disk_size": SIZE, "block_size": BS, "hash": "sha256"}, body)
    with pytest.raises(VerificationError, match=match):
        Manifest.from_bytes(packed)
    head_len = 9 + struct.unpack_from(">I", packed, 5)[0]
    with pytest.raises(VerificationError, match="body does not decompress"):
        Manifest.from_bytes(packed[:head_len] + b"not zstd" * 8)


def test_a_header_longer_than_any_map_needs_is_not_read():
    data = b"DRMF" + struct.pack(">BI", 1, 2 ** 32 - 1) + b"{}"
    with pytest.raises(VerificationError, match="header is not JSON .it claims 4294967295 bytes"):
        Manifest.from_bytes(data)


def test_a_derived_map_reads_through_until_written_and_leaves_its_base_alone(backend: str):
    data = _disk()
    old = Manifest.of(data, BS)
    before = bytes(old.hashes)
    new = old.derived()
    assert new == old and new.hashes.stored == 0 and new.diff(old) == []
    new[7] = b"\x07" * 32
    new.set_zero(12, 6)  # a whole chunk (12..17) becomes blank, not the base's
    assert bytes(old.hashes) == before
    assert new.diff(old) == [7] + [i for i in range(12, 18) if not old.is_zero(i)]
    assert new.hashes.stored == 6 * 32  # only the chunk of block 7 was copied
    assert new[12] == zero_hash(BS) and new[0] == old[0] and new[20] == old[20]
    independent = new.copy()
    new[0] = b"\x00" * 32
    assert independent[0] == old[0] and independent[7] == b"\x07" * 32 and independent.hashes.base is None
    subs = SubMap(SIZE, LAYOUT, _submap_bytes(data))
    derived = subs.derived()
    derived[4] = b"\x04" * LAYOUT.sub_width
    assert bytes(subs.hashes) == _submap_bytes(data) and derived[3] == subs[3] and derived[4] != subs[4]


def test_the_request_to_the_agent_streams_the_maps_and_is_the_same_bytes(backend: str):
    data = _disk()
    m, subs = Manifest.of(data, BS), SubMap(SIZE, LAYOUT, _submap_bytes(data))
    header = {"disks": [{"name": "d0", "path": "/x", "size": SIZE}, {"name": "d1", "path": "/y", "size": None}],
              "block_size": BS}
    out = io.BytesIO()
    sent = p.write_request(out, header, [(m.hashes, subs.hashes), (b"", b"")])
    expected = agent_mod.encode_request(header, [(_manifest_bytes(data), _submap_bytes(data)), (b"", b"")])
    assert out.getvalue() == expected == p.encode_request(header, [(m.hashes, subs.hashes), (b"", b"")])
    assert sent == len(expected)
    assert agent_mod.read_request(io.BytesIO(expected))[1][0] == (_manifest_bytes(data), _submap_bytes(data))


def test_a_delta_cycle_builds_its_new_maps_from_the_old_without_copying_them(backend: str):
    old_data, new_data = _disk(1), _disk(1)
    new_data[7 * BS + 100:7 * BS + 200] = os.urandom(100)
    d = cy.DiskCycle(disk=ProtectedDisk(name="disk0", path="x", size_bytes=SIZE), layout=LAYOUT,
                     old=Manifest.of(old_data, BS), old_subs=SubMap(SIZE, LAYOUT, _submap_bytes(old_data)))
    d.start({"name": "disk0", "size": SIZE, "resync": False})
    assert d.manifest.hashes.base is d.old.hashes and d.subs.hashes.base is d.old_subs.hashes
    assert d.manifest == d.old and d.manifest.hashes.stored == 0
    d.manifest[7] = hashlib.sha256(new_data[7 * BS:8 * BS]).digest()
    d.subs[7] = sub_hashes(bytes(new_data[7 * BS:8 * BS]), LAYOUT)
    assert d.manifest == Manifest.of(new_data, BS) and d.old == Manifest.of(old_data, BS)
    assert bytes(d.subs.hashes) == _submap_bytes(new_data) and bytes(d.old_subs.hashes) == _submap_bytes(old_data)
    d.release_maps()


# -- the vault and the cache, streamed ----------------------------------------------------------------


class FakeBlob:
    """The calls of azure-storage-blob's BlobClient that drbook's streamed puts and gets make."""

    def __init__(self, container: "FakeContainer", name: str) -> None:
        self.container, self.blob_name = container, name

    def _data(self) -> bytes:
        if self.blob_name not in self.container.blobs:
            raise ResourceNotFoundError("BlobNotFound")
        return self.container.blobs[self.blob_name][0]

    def upload_blob(self, data, *, overwrite: bool = True, length: int | None = None, **kwargs) -> dict:  # noqa: ANN001
        data = data if isinstance(data, bytes) else data.read()
        self.container.calls.append(("put", len(data)))
        self.container.version += 1
        self.container.blobs[self.blob_name] = (bytes(data), f"etag-{self.container.version}")
        return {"etag": f"etag-{self.container.version}"}

    def stage_block(self, block_id: str, data: bytes, length: int | None = None) -> None:
        self.container.calls.append(("stage", len(data)))
        self.container.staged[(self.blob_name, block_id)] = bytes(data)

    def commit_block_list(self, blocks: list) -> None:
        self.container.calls.append(("commit", len(blocks)))
        self.container.version += 1
        data = b"".join(self.container.staged.pop((self.blob_name, b.id)) for b in blocks)
        self.container.blobs[self.blob_name] = (data, f"etag-{self.container.version}")

    def get_blob_properties(self) -> SimpleNamespace:
        return SimpleNamespace(size=len(self._data()), etag=self.container.blobs[self.blob_name][1])

    def download_blob(self, offset: int | None = None, length: int | None = None, etag: str | None = None,
                      match_condition=None, **kwargs) -> SimpleNamespace:  # noqa: ANN001
        data = self._data()
        if etag is not None and etag != self.container.blobs[self.blob_name][1]:
            raise ResourceModifiedError("ConditionNotMet")
        self.container.calls.append(("get", length))
        if self.container.on_get:
            self.container.on_get()
        piece = data[offset or 0:(offset or 0) + length] if length is not None else data
        return SimpleNamespace(readall=lambda: piece)

    def delete_blob(self) -> None:
        if self.container.blobs.pop(self.blob_name, None) is None:
            raise ResourceNotFoundError("BlobNotFound")


class FakeContainer:
    def __init__(self, name: str = "vault") -> None:
        self.container_name = name
        self.blobs: dict[str, tuple[bytes, str]] = {}
        self.staged: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, int]] = []
        self.version = 0
        self.on_get = None

    def get_blob_client(self, name: str) -> FakeBlob:
        return FakeBlob(self, name)

    def list_blob_names(self, name_starts_with: str = "") -> list[str]:
        return sorted(n for n in self.blobs if n.startswith(name_starts_with))


def test_the_vault_puts_and_gets_a_large_map_in_pieces(backend: str, tmp_path: Path):
    container = FakeContainer()
    points = PointStore(Vault(container), map_dir=str(tmp_path))
    data = _disk()
    m, subs = Manifest.of(data, BS), SubMap(SIZE, LAYOUT, _submap_bytes(data))
    key = points.put_manifest("db01", "pt-1", "disk0", m)
    points.put_submap("db01", "pt-1", "disk0", subs)
    assert container.blobs[key][0] == m.to_bytes() or Manifest.from_bytes(container.blobs[key][0]) == m
    back = points.manifest("db01", "pt-1", "disk0")
    assert back == m and back.hashes.file_backed == (backend == "file")
    assert bytes(points.submap("db01", "pt-1", "disk0").hashes) == _submap_bytes(data)
    assert points.manifest("db01", "pt-2", "disk0") is None and points.submap("db01", "pt-2", "disk0") is None
    kinds = {kind for kind, _ in container.calls}
    if backend == "file":  # pieces of 100 bytes: staged blocks, ranged reads
        assert {"stage", "commit"} <= kinds and max(n for kind, n in container.calls if kind in ("stage", "get")) <= 100
    else:
        assert "stage" not in kinds


def test_a_blob_replaced_while_it_is_read_is_not_read_as_a_mix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(blobstore, "STREAM_PIECE", 100)
    container = FakeContainer("cache")
    cache = Cache(SimpleNamespace(get_container_client=lambda name: container), "cache")
    cache.put_stream("x", io.BytesIO(os.urandom(350)), 350)
    assert [k for k, _ in container.calls] == ["stage"] * 4 + ["commit"]
    out = io.BytesIO()
    assert cache.download("x", out) == 350 and out.getvalue() == container.blobs["x"][0]

    def replace() -> None:
        container.on_get = None
        FakeBlob(container, "x").upload_blob(b"new")

    container.on_get = replace
    with pytest.raises(Exception, match="read cache blob cache/x") as err:
        cache.download("x", io.BytesIO())
    assert err.value.retryable
    with pytest.raises(NotFoundError):
        cache.download("missing", io.BytesIO())


def test_maps_stream_through_azurite_in_pieces(azurite_blob, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                               tmp_path: Path):
    """The streamed puts and gets against a real blob service (lab): staged blocks of 100
    bytes, ranged reads, file-backed maps; what they write reads back whole as before."""
    monkeypatch.setattr(mapfile, "CHUNK", CHUNK)
    monkeypatch.setattr(mapfile, "MEMORY_LIMIT", 0)
    monkeypatch.setattr(blobstore, "STREAM_PIECE", 100)
    vault = Vault(azurite_blob.get_container_client(f"vault-{uuid.uuid4().hex[:12]}"))
    vault.ensure()
    points = PointStore(vault, map_dir=str(tmp_path))
    data = _disk()
    m, subs = Manifest.of(data, BS), SubMap(SIZE, LAYOUT, _submap_bytes(data))
    key = points.put_manifest("db01", "pt-1", "disk0", m)
    points.put_submap("db01", "pt-1", "disk0", subs)
    back = points.manifest("db01", "pt-1", "disk0")
    assert back == m and back.hashes.file_backed
    assert bytes(points.submap("db01", "pt-1", "disk0").hashes) == _submap_bytes(data)
    assert Manifest.from_bytes(vault.get_bytes(key)) == m
    vault.put_bytes(key, _old_format(b"DRMF", {"disk_size": SIZE, "block_size": BS, "hash": "sha256"},
                                     _manifest_bytes(data)))
    assert points.manifest("db01", "pt-1", "disk0") == m
    assert points.manifest("db01", "pt-2", "disk0") is None
    name = f"cache-{uuid.uuid4().hex[:12]}"
    azurite_blob.create_container(name)
    cache = Cache(azurite_blob, name)
    payload = os.urandom(1234)
    cache.put_stream("db01/cy-1/disk0.manifest", io.BytesIO(payload), len(payload))
    out = io.BytesIO()
    assert cache.download("db01/cy-1/disk0.manifest", out) == len(payload) and out.getvalue() == payload
    assert cache.get("db01/cy-1/disk0.manifest") == payload
    with pytest.raises(NotFoundError):
        cache.download("db01/cy-1/missing", io.BytesIO())


def test_whole_cycles_with_file_backed_maps_and_streamed_cache(backend: str, tmp_path: Path):
    """The engine's resync then delta cycle, every map in a file and through the cache's streamed puts and gets."""
    from tests.test_protocol_hardening import _memory_engine

    old = bytes(_disk(3, 64 * KIB * 8))
    env = _memory_engine(tmp_path, old)
    container = FakeContainer("cache")
    cache = Cache(SimpleNamespace(get_container_client=lambda name: container), "cache")
    storage = env.engine.storage
    env.engine.storage = CycleStorage(storage.vault, storage.points, cache, storage.replicas, storage.key,
                                      map_dir=str(tmp_path))
    first = env.engine.run_cycle("db01")
    assert env.replica() == old
    assert env.points.manifest("db01", first.id, "disk0") == Manifest.of(old, 64 * KIB)
    new = bytearray(old)
    new[3 * 64 * KIB + 10:3 * 64 * KIB + 20] = b"x" * 10
    new[6 * 64 * KIB:7 * 64 * KIB] = bytes(64 * KIB)
    env.disk.write_bytes(new)
    second = env.engine.run_cycle("db01")
    assert env.replica() == new
    assert env.points.manifest("db01", second.id, "disk0") == Manifest.of(bytes(new), 64 * KIB)
    assert container.blobs == {}  # the cycle's cache is cleaned up
    assert env.engine.last_stats["db01"]["disks"]["disk0"]["changed"] == 1


def test_a_map_file_that_does_not_fit_is_a_named_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(mapfile, "MEMORY_LIMIT", 0)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=0, f_frsize=4096))
    with pytest.raises(ReplicationError, match=rf"work directory {tmp_path} cannot hold a 672-byte block map: "
                                               r"only 0 bytes are free; .*spool_dir"):
        Manifest.zeros(SIZE, BS, str(tmp_path))


def test_changed_blocks_become_runs_of_at_most_a_page_write():
    assert list(_runs(iter([1, 2, 3, 7, 9, 10]), 64 * KIB)) == [(1, 4), (7, 8), (9, 11)]
    assert list(_runs(iter(range(130)), 64 * KIB)) == [(0, 64), (64, 128), (128, 130)]
    assert list(_runs(iter([]), 64 * KIB)) == []


def test_map_buffer_geometry_is_checked():
    blanks = lambda: (b"\0" * 4, b"\1" * 4)  # noqa: E731
    with pytest.raises(ValueError):
        MapBuffer(-1, 4, blanks)
    with pytest.raises(ValueError):
        MapBuffer(4, 4, blanks, base=MapBuffer(3, 4, blanks))
    assert bytes(MapBuffer(3, 4, blanks)) == b"\0" * 8 + b"\1" * 4
    assert MapBuffer(0, 4, blanks).nchunks == 0 and bytes(MapBuffer(5, 0, blanks)) == b""


# -- a 1 TiB disk's maps, measured ------------------------------------------------------------------

_TIB_CYCLES = textwrap.dedent('''
    import json, threading, time, tracemalloc
    from drbook.models import ProtectedDisk
    from drbook.replication import cycle as cy, protocol as p
    from drbook.replication.manifest import Manifest, SubMap

    def anon():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) * 1024

    TIB, MAP_DIR = 1024 ** 4, {map_dir!r}
    layout = p.Layout(64 * 1024, 4096, 8)
    blocks = layout.blocks(TIB)
    base, peak, stop = anon(), [0], threading.Event()
    def sample():
        while not stop.wait(0.002):
            peak[0] = max(peak[0], anon() - base)
    threading.Thread(target=sample, daemon=True).start()
    tracemalloc.start()
    started = time.perf_counter()

    # A resync (new disk, force_resync): the disk frame, a few blocks, the rest as zero frames.
    d = cy.DiskCycle(disk=ProtectedDisk(name="disk0", path="/dev/sda", size_bytes=TIB), layout=layout,
                     old=None, old_subs=None, force_resync=True, map_dir=MAP_DIR)
    d.direct = True
    receiver = cy.Receiver("db01", [d], layout, cy.SegmentWriter(1 << 20, lambda seq, raw: None))
    receiver.handle(p.DISK, p.json_frame(p.DISK, {{"name": "disk0", "size": TIB, "resync": True}})[p.FRAME.size:])
    for i in (0, 1, blocks // 2, blocks - 1):
        d.receive(i, 1)
        d.manifest[i] = i.to_bytes(32, "big")
        d.subs[i] = i.to_bytes(layout.sub_width, "big")
    for first, end in ((2, blocks // 2), (blocks // 2 + 1, blocks - 1)):
        receiver.handle(p.ZERO, p.ZEROS.pack(first, end - first))
    assert d.missing() == 0
    with d.manifest.packed(MAP_DIR) as (packed, n):  # stage_run's put in the cache
        vault_old = Manifest.read(packed, directory=MAP_DIR, disk_size=TIB)  # the next cycle's old manifest
    with d.subs.packed(MAP_DIR) as (packed, n):
        sub_bytes = n
    resync_s = time.perf_counter() - started

    # The delta cycle after it: the request to the agent, the new maps derived from the old.
    e = cy.DiskCycle(disk=ProtectedDisk(name="disk0", path="/dev/sda", size_bytes=TIB), layout=layout,
                     old=vault_old, old_subs=d.subs, map_dir=MAP_DIR)
    class Sink:
        n = 0
        def write(self, data): Sink.n += len(data)
    p.write_request(Sink(), {{"disks": [e.request_disk()]}}, [e.request_maps()])
    e.start({{"name": "disk0", "size": TIB, "resync": False}})
    e.manifest[5] = b"\\x05" * 32
    assert e.manifest.diff(vault_old) == [5] and e.manifest[1] == (1).to_bytes(32, "big")
    with e.manifest.packed(MAP_DIR) as (packed, n):
        pass
    seconds = time.perf_counter() - started
    _, traced = tracemalloc.get_traced_memory()
    stop.set()
    peak[0] = max(peak[0], anon() - base)
    print(json.dumps({{"traced": traced, "anon": peak[0], "seconds": seconds, "resync_seconds": resync_s,
                      "request": Sink.n, "file_backed": d.manifest.hashes.file_backed and d.subs.hashes.file_backed,
                      "stored": e.manifest.hashes.stored + d.manifest.hashes.stored + d.subs.hashes.stored,
                      "sub_packed": sub_bytes}}))
''')


def test_a_tebibyte_disks_maps_take_bounded_memory_and_little_time(tmp_path: Path):
    """A 1 TiB disk's maps are 2.5 GiB; a resync and the delta cycle after it (in a fresh
    process, default limits) must stay far below 64 MiB of anonymous memory, in seconds."""
    code = _TIB_CYCLES.format(map_dir=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout)
    assert r["file_backed"] and r["request"] > 2 * GIB + 512 * MIB
    assert r["stored"] == 7 * MIB  # only the 1 MiB chunks of the 9 entries written: 3 + 3 + 1
    assert r["traced"] < 64 * MIB and r["anon"] < 64 * MIB, r
    assert r["seconds"] < 60, r
