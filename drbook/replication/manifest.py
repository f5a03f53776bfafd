"""Block manifests: the SHA-256 of every block of a disk at a recovery point.

A manifest is what the process server sends the agent as its block map (the truth of
what the replica holds), and what `verify_point` checks a snapshot against, byte for
byte. Vault key: manifests/<item>/<point_id>/<disk>.bin.

Beside it, the sub-block map (`SubMap`, short truncated hashes of the 4 KiB pieces of
every block) lets the agent send only the pieces of a changed block that changed. It is
an optimisation with a safe fallback: without it a changed block is sent whole.

Both keep their entries in a drbook.replication.mapfile.MapBuffer: in memory for a small
disk, in a temporary file for a large one, with the entries of an all-zero disk not stored
at all. Packing (`pack`, `to_bytes`) and reading (`read`, `from_bytes`) stream a chunk at a
time, so no operation holds a whole map of a large disk in memory. The packed form: a
head (magic, version 1, header length), the JSON header, one zstd frame of the entries.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import io
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import zstandard

from drbook.errors import ProtocolError, VerificationError
from drbook.replication import vhd
from drbook.replication.mapfile import CHUNK, MapBuffer, fits_in_memory, spooled
from drbook.replication.protocol import HASH_LEN, Layout

MANIFEST_MAGIC = b"DRMF"
SUBMAP_MAGIC = b"DRSM"
_HEAD = struct.Struct(">4sBI")
_VERSION = 1
# Azure's largest page blob is 8 TiB, and a replica is the disk rounded up to a MiB plus the
# VHD footer: no larger disk can be replicated, so no larger map is ever read or made.
MAX_DISK = 8 * 1024 ** 4 - vhd.MIB
ZSTD_LEVEL = 3
# A map's header is a few dozen bytes of JSON: a longer one is not read.
MAX_HEADER = 1024 * 1024
# Level 3 compresses with a window of at most 2 MiB: a frame that asks for far more is not
# a map drbook wrote, and its decoder does not get the memory.
MAX_WINDOW = 8 * 1024 * 1024
_ZEROS = bytes(1024 * 1024)


@functools.lru_cache(maxsize=64)
def zero_hash(length: int) -> bytes:
    """SHA-256 of `length` zero bytes (an all-zero block), hashed a MiB at a time."""
    digest = hashlib.sha256()
    view = memoryview(_ZEROS)
    while length > 0:
        digest.update(view[:length])
        length -= len(view)
    return digest.digest()


ZERO_BLOCK_HASH = zero_hash(64 * 1024)


def block_length(index: int, disk_size: int, block_size: int) -> int:
    return max(0, min(block_size, disk_size - index * block_size))


@functools.lru_cache(maxsize=64)
def zero_sub_hashes(layout: Layout, length: int) -> bytes:
    """The sub-block hashes of an all-zero block of `length` bytes (padded like the agent)."""
    sbs, shl = layout.sub_block_size, layout.sub_hash_len
    whole, rest = divmod(length, sbs)
    hashes = zero_hash(sbs)[:shl] * whole + (zero_hash(rest)[:shl] if rest else b"")
    return hashes.ljust(layout.sub_width, b"\0")


def sub_hashes(data: bytes | memoryview, layout: Layout) -> bytes:
    sbs, shl = layout.sub_block_size, layout.sub_hash_len
    view = memoryview(data)
    return b"".join(hashlib.sha256(view[i:i + sbs]).digest()[:shl] for i in range(0, len(view), sbs)).ljust(layout.sub_width, b"\0")




# -- the packed form, streamed ------------------------------------------------------------------


def _read_upto(stream: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes, fewer only at the end of `stream`."""
    first = stream.read(n) or b""
    if len(first) == n or not first:
        return first
    parts, got = [first], len(first)
    while got < n and (more := stream.read(n - got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _pack(out: BinaryIO, magic: bytes, header: dict, entries: MapBuffer) -> int:
    """Write the packed map to `out` a chunk at a time; the bytes written."""
    head = json.dumps(header, sort_keys=True).encode()
    start = out.tell()
    out.write(_HEAD.pack(magic, _VERSION, len(head)) + head)
    with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(out, size=len(entries), closefd=False) as writer:
        for chunk in entries.chunks():
            writer.write(chunk)
    return out.tell() - start


def _read_header(stream: BinaryIO, magic: bytes, what: str) -> dict:
    head = _read_upto(stream, _HEAD.size)
    if len(head) < _HEAD.size:
        raise VerificationError(f"{what}: too short to be a manifest")
    got, version, hlen = _HEAD.unpack(head)
    if got != magic or version != _VERSION:
        raise VerificationError(f"{what}: not a drbook {'manifest' if magic == MANIFEST_MAGIC else 'sub-block map'} (v{_VERSION})")
    if hlen > MAX_HEADER:
        raise VerificationError(f"{what}: its header is not JSON (it claims {hlen} bytes, at most {MAX_HEADER})")
    try:
        header = json.loads(_read_upto(stream, hlen))
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too deeply nested
        raise VerificationError(f"{what}: its header is not JSON") from None
    if not isinstance(header, dict):
        raise VerificationError(f"{what}: its header is not a JSON object")
    return header


def _pieces(stream: BinaryIO, size: int, what: str, lengths: Iterable[int]) -> Iterator[bytes]:
    """The decompressed body in pieces of `lengths` (adding up to `size`): it must be exactly
    the `size` bytes the header implies, and a body that would grow larger is refused once it
    has, never taking more memory than a piece (the frame's content size is not trusted)."""
    got = 0
    try:
        with zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(stream, closefd=False) as reader:
            for n in lengths:
                piece = _read_upto(reader, n)
                got += len(piece)
                if len(piece) < n:
                    raise VerificationError(f"{what}: body has {got} bytes, its header says {size}")
                yield piece
            if reader.read(1):
                raise zstandard.ZstdError(f"it decompresses to more than {size} bytes")
    except zstandard.ZstdError as exc:
        raise VerificationError(f"{what}: body does not decompress ({exc})") from None


def _read_body(stream: BinaryIO, size: int, what: str, make: Callable[[], MapBuffer]) -> MapBuffer:
    """The body into the map `make()` gives. A map too large for memory is checked first (the
    body decompressed once and dropped), so a corrupt or hostile header never gets a large
    file made for it; that takes a stream that can seek back (a file, BytesIO)."""
    if not fits_in_memory(size):
        start = stream.tell()
        whole, rest = divmod(size, CHUNK)
        for _ in _pieces(stream, size, what, [CHUNK] * whole + ([rest] if rest else [])):
            pass
        stream.seek(start)
    entries = make()
    for c, piece in enumerate(_pieces(stream, size, what, entries.chunk_lengths())):
        entries.put_chunk(c, piece)
    return entries


def _size(header: dict, key: str, what: str, top: int = MAX_DISK) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top:
        raise VerificationError(f"{what}: header field {key} is {value!r}, not a size of 1..{top} bytes")
    return value


class _Map(abc.ABC):
    """What a manifest and a sub-block map share: their entries (`hashes`, a MapBuffer) and
    their packed form."""

    MAGIC = b""
    hashes: MapBuffer

    @abc.abstractmethod
    def _header(self) -> dict:
        """The packed form's JSON header (each kind of map says its own geometry)."""

    def pack(self, out: BinaryIO) -> int:
        """Write the packed map (the vault's and the cache's format) to `out` (a stream that
        can tell its position); return its length."""
        return _pack(out, self.MAGIC, self._header(), self.hashes)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        self.pack(out)
        return out.getvalue()

    @contextlib.contextmanager
    def packed(self, directory: str | None = None) -> Iterator[tuple[BinaryIO, int]]:
        """(stream, length) of the packed map, in a temporary file in `directory` once large."""
        with spooled(directory) as f:
            n = self.pack(f)
            f.seek(0)
            yield f, n

    def close(self) -> None:
        """Release the entries' file now (a file-backed map; otherwise it goes with the object)."""
        self.hashes.close()


def _entries(hashes: bytes | bytearray | MapBuffer, copy: bool, directory: str | None,
             blank: Callable[[], MapBuffer]) -> MapBuffer:
    """A map's entries: a MapBuffer adopted (`copy=False`) or copied, or bytes loaded into `blank()`."""
    if isinstance(hashes, MapBuffer):
        return hashes.copy(directory) if copy else hashes
    return blank().load(hashes)


def _manifest_blanks(disk_size: int, block_size: int) -> Callable[[], tuple[bytes, bytes]]:
    def blanks() -> tuple[bytes, bytes]:
        rest = disk_size % block_size
        return zero_hash(block_size), zero_hash(rest if rest else block_size)
    return blanks


def _submap_blanks(disk_size: int, layout: Layout) -> Callable[[], tuple[bytes, bytes]]:
    def blanks() -> tuple[bytes, bytes]:
        rest = disk_size % layout.block_size
        return zero_sub_hashes(layout, layout.block_size), zero_sub_hashes(layout, rest if rest else layout.block_size)
    return blanks


class Manifest(_Map):
    """`blocks` SHA-256 digests of `block_size`-byte blocks of a `disk_size`-byte disk (the
    last block may be short). Entries never written are the hashes of all-zero blocks."""

    MAGIC = MANIFEST_MAGIC

    def __init__(self, disk_size: int, block_size: int, hashes: bytes | bytearray | MapBuffer, *, copy: bool = True,
                 directory: str | None = None) -> None:
        """`hashes`: every digest, or a MapBuffer of them, which `copy=False` adopts instead of
        copying. `directory`: where the entries' file goes when they are too many for memory."""
        blocks = -(-disk_size // block_size)
        if len(hashes) != blocks * HASH_LEN:
            raise VerificationError(f"manifest of a {disk_size}-byte disk needs {blocks} hashes, has {len(hashes) // HASH_LEN}")
        self.disk_size = disk_size
        self.block_size = block_size
        self.hashes = _entries(hashes, copy, directory, lambda: self.blank(disk_size, block_size, directory))

    @staticmethod
    def blank(disk_size: int, block_size: int, directory: str | None = None) -> MapBuffer:
        """The entries of an all-zero disk: nothing stored until an entry is written."""
        if disk_size < 0 or block_size <= 0:
            raise VerificationError(f"no manifest of a {disk_size}-byte disk of {block_size}-byte blocks")
        return MapBuffer(-(-disk_size // block_size), HASH_LEN, _manifest_blanks(disk_size, block_size),
                         directory=directory)

    @property
    def blocks(self) -> int:
        return len(self.hashes) // HASH_LEN

    @classmethod
    def zeros(cls, disk_size: int, block_size: int, directory: str | None = None) -> "Manifest":
        """The manifest of an all-zero disk (made in no time, whatever the disk's size)."""
        return cls(disk_size, block_size, cls.blank(disk_size, block_size, directory), copy=False)

    @classmethod
    def of(cls, data: bytes | memoryview, block_size: int) -> "Manifest":
        """The manifest of a disk's bytes (tests, verification)."""
        view = memoryview(data)
        hashes = b"".join(hashlib.sha256(view[i:i + block_size]).digest() for i in range(0, len(view), block_size))
        return cls(len(view), block_size, hashes)

    def __getitem__(self, index: int) -> bytes:
        return self.hashes.read(index * HASH_LEN, (index + 1) * HASH_LEN)

    def __setitem__(self, index: int, digest: bytes) -> None:
        if not 0 <= index < self.hashes.count or len(digest) != HASH_LEN:
            raise IndexError(f"block {index} is outside a {self.blocks}-block manifest")
        self.hashes.write(index * HASH_LEN, digest)

    def set_zero(self, first: int, count: int) -> None:
        if first < 0 or count < 0 or first + count > self.blocks:
            raise IndexError(f"blocks {first}..{first + count - 1} are outside a {self.blocks}-block manifest")
        self.hashes.set_blank(first, count)

    def is_zero(self, index: int) -> bool:
        return self[index] == zero_hash(block_length(index, self.disk_size, self.block_size))

    def resized(self, disk_size: int) -> "Manifest":
        """An all-zero manifest of the new size (a resized disk is resynced whole)."""
        return Manifest.zeros(disk_size, self.block_size, self.hashes.directory)

    def copy(self, directory: str | None = None) -> "Manifest":
        return Manifest(self.disk_size, self.block_size, self.hashes.copy(directory), copy=False)

    def derived(self, directory: str | None = None) -> "Manifest":
        """A copy made in no time that reads through to this manifest until written
        (MapBuffer.derive): this one must not change while the copy is used."""
        return Manifest(self.disk_size, self.block_size, self.hashes.derive(directory), copy=False)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Manifest)
            and (self.disk_size, self.block_size) == (other.disk_size, other.block_size)
            and self.hashes == other.hashes
        )

    __hash__ = None  # type: ignore[assignment] - mutable

    def changed(self, other: "Manifest") -> Iterator[int]:
        """Indexes of the blocks whose hash differs (same geometry assumed), a chunk at a time."""
        return self.hashes.differing(other.hashes)

    def diff(self, other: "Manifest") -> list[int]:
        """Indexes of the blocks whose hash differs (same geometry assumed)."""
        return list(self.changed(other))

    def _header(self) -> dict:
        return {"disk_size": self.disk_size, "block_size": self.block_size, "blocks": self.blocks, "hash": "sha256"}

    @classmethod
    def read(cls, stream: BinaryIO, what: str = "manifest", *, disk_size: int | None = None,
             directory: str | None = None) -> "Manifest":
        """The manifest packed in `stream` (from its position); with `disk_size` (when the
        caller knows it) it must be of that disk, else of at most MAX_DISK: its body is
        decompressed to no more than that."""
        header = _read_header(stream, MANIFEST_MAGIC, what)
        if header.get("hash") != "sha256":
            raise VerificationError(f"{what}: unknown hash {header.get('hash')!r}")
        block_size = _size(header, "block_size", what)
        if disk_size is not None and header.get("disk_size") != disk_size:
            raise VerificationError(f"{what}: a manifest of a {header.get('disk_size')}-byte disk, not of {disk_size} bytes")
        disk_size = _size(header, "disk_size", what)
        hashes = _read_body(stream, -(-disk_size // block_size) * HASH_LEN, what,
                            lambda: cls.blank(disk_size, block_size, directory))
        return cls(disk_size, block_size, hashes, copy=False)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "manifest", *, disk_size: int | None = None) -> "Manifest":
        return cls.read(io.BytesIO(data), what, disk_size=disk_size)


class SubMap(_Map):
    """Truncated sub-block hashes, `layout.sub_width` bytes per block. Entries never written
    are those of all-zero blocks."""

    MAGIC = SUBMAP_MAGIC

    def __init__(self, disk_size: int, layout: Layout, hashes: bytes | bytearray | MapBuffer, *, copy: bool = True,
                 directory: str | None = None) -> None:
        """`hashes`: every block's, or a MapBuffer of them, which `copy=False` adopts instead
        of copying. `directory`: where the entries' file goes when they are too many for memory."""
        blocks = layout.blocks(disk_size)
        if len(hashes) != blocks * layout.sub_width:
            raise VerificationError(f"sub-block map of a {disk_size}-byte disk needs {blocks * layout.sub_width} bytes, has {len(hashes)}")
        self.disk_size = disk_size
        self.layout = layout
        self.hashes = _entries(hashes, copy, directory, lambda: self.blank(disk_size, layout, directory))

    @staticmethod
    def blank(disk_size: int, layout: Layout, directory: str | None = None) -> MapBuffer:
        """The entries of an all-zero disk: nothing stored until an entry is written."""
        if disk_size < 0:
            raise VerificationError(f"no sub-block map of a {disk_size}-byte disk")
        return MapBuffer(layout.blocks(disk_size), layout.sub_width, _submap_blanks(disk_size, layout),
                         directory=directory)

    @classmethod
    def zeros(cls, disk_size: int, layout: Layout, directory: str | None = None) -> "SubMap":
        return cls(disk_size, layout, cls.blank(disk_size, layout, directory), copy=False)

    def __getitem__(self, index: int) -> bytes:
        w = self.layout.sub_width
        return self.hashes.read(index * w, (index + 1) * w)

    def __setitem__(self, index: int, hashes: bytes) -> None:
        w = self.layout.sub_width
        if len(hashes) != w or not 0 <= index < self.hashes.count:
            raise IndexError(f"sub-block hashes for block {index} do not fit the map")
        self.hashes.write(index * w, hashes)

    def set_zero(self, first: int, count: int) -> None:
        blocks = self.layout.blocks(self.disk_size)
        if first < 0 or count < 0 or first + count > blocks:
            raise IndexError(f"blocks {first}..{first + count - 1} are outside a {blocks}-block sub-block map")
        self.hashes.set_blank(first, count)

    def copy(self, directory: str | None = None) -> "SubMap":
        return SubMap(self.disk_size, self.layout, self.hashes.copy(directory), copy=False)

    def derived(self, directory: str | None = None) -> "SubMap":
        """A copy made in no time that reads through to this map until written
        (MapBuffer.derive): this one must not change while the copy is used."""
        return SubMap(self.disk_size, self.layout, self.hashes.derive(directory), copy=False)

    def _header(self) -> dict:
        lay = self.layout
        return {"disk_size": self.disk_size, "block_size": lay.block_size, "sub_block_size": lay.sub_block_size,
                "sub_hash_len": lay.sub_hash_len}

    @classmethod
    def read(cls, stream: BinaryIO, what: str = "sub-block map", *, directory: str | None = None) -> "SubMap":
        header = _read_header(stream, SUBMAP_MAGIC, what)
        disk_size = _size(header, "disk_size", what)
        try:
            layout = Layout(_size(header, "block_size", what), _size(header, "sub_block_size", what),
                            _size(header, "sub_hash_len", what, HASH_LEN)).check(what)
        except ProtocolError as exc:
            raise VerificationError(str(exc)) from None
        hashes = _read_body(stream, layout.blocks(disk_size) * layout.sub_width, what,
                            lambda: cls.blank(disk_size, layout, directory))
        return cls(disk_size, layout, hashes, copy=False)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "sub-block map") -> "SubMap":
        return cls.read(io.BytesIO(data), what)
