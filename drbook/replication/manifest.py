"""Block manifests: the SHA-256 of every block of a disk at a recovery point.

A manifest is what the process server sends the agent as its block map (the truth of
what the replica holds), and what `verify_point` checks a snapshot against, byte for
byte. Vault key: manifests/<item>/<point_id>/<disk>.bin.

Beside it, the sub-block map (`SubMap`, short truncated hashes of the 4 KiB pieces of
every block) lets the agent send only the pieces of a changed block that changed. It is
an optimisation with a safe fallback: without it a changed block is sent whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct

import zstandard

from drbook.errors import ProtocolError, VerificationError
from drbook.replication import vhd
from drbook.replication.protocol import HASH_LEN, Layout
from drbook.replication.segments import decompress

MANIFEST_MAGIC = b"DRMF"
SUBMAP_MAGIC = b"DRSM"
_HEAD = struct.Struct(">4sBI")
_VERSION = 1
# Azure's largest page blob is 8 TiB, and a replica is the disk rounded up to a MiB plus the
# VHD footer: no larger disk can be replicated, so no larger map is ever read or made.
MAX_DISK = 8 * 1024 ** 4 - vhd.MIB


@functools.lru_cache(maxsize=64)
def zero_hash(length: int) -> bytes:
    """SHA-256 of `length` zero bytes (an all-zero block)."""
    return hashlib.sha256(bytes(length)).digest()


ZERO_BLOCK_HASH = zero_hash(64 * 1024)


def block_length(index: int, disk_size: int, block_size: int) -> int:
    return max(0, min(block_size, disk_size - index * block_size))


@functools.lru_cache(maxsize=64)
def zero_sub_hashes(layout: Layout, length: int) -> bytes:
    """The sub-block hashes of an all-zero block of `length` bytes (padded like the agent)."""
    sbs, shl = layout.sub_block_size, layout.sub_hash_len
    hashes = b"".join(hashlib.sha256(bytes(min(sbs, length - i))).digest()[:shl] for i in range(0, length, sbs))
    return hashes.ljust(layout.sub_width, b"\0")


def sub_hashes(data: bytes | memoryview, layout: Layout) -> bytes:
    sbs, shl = layout.sub_block_size, layout.sub_hash_len
    view = memoryview(data)
    return b"".join(hashlib.sha256(view[i:i + sbs]).digest()[:shl] for i in range(0, len(view), sbs)).ljust(layout.sub_width, b"\0")


def _pack(magic: bytes, header: dict, body: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    return _HEAD.pack(magic, _VERSION, len(head)) + head + zstandard.ZstdCompressor(level=3).compress(body)


def _unpack(magic: bytes, data: bytes, what: str) -> tuple[dict, memoryview]:
    """(header, compressed body) of a manifest or sub-block map."""
    if len(data) < _HEAD.size:
        raise VerificationError(f"{what}: too short to be a manifest")
    got, version, hlen = _HEAD.unpack_from(data)
    if got != magic or version != _VERSION:
        raise VerificationError(f"{what}: not a drbook {'manifest' if magic == MANIFEST_MAGIC else 'sub-block map'} (v{_VERSION})")
    try:
        header = json.loads(data[_HEAD.size:_HEAD.size + hlen])
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too deeply nested
        raise VerificationError(f"{what}: its header is not JSON") from None
    if not isinstance(header, dict):
        raise VerificationError(f"{what}: its header is not a JSON object")
    return header, memoryview(data)[_HEAD.size + hlen:]


def _body(packed: memoryview, size: int, what: str) -> bytearray:
    """The decompressed body, which must be exactly the `size` bytes the header implies: a
    body that would grow larger is refused before it takes the memory."""
    try:
        body = decompress(packed, size)
    except zstandard.ZstdError as exc:
        raise VerificationError(f"{what}: body does not decompress ({exc})") from None
    if len(body) != size:
        raise VerificationError(f"{what}: body has {len(body)} bytes, its header says {size}")
    return body


def _size(header: dict, key: str, what: str, top: int = MAX_DISK) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top:
        raise VerificationError(f"{what}: header field {key} is {value!r}, not a size of 1..{top} bytes")
    return value


def _repeat(unit: bytes, count: int, tail: bytes) -> bytearray:
    """unit * count + tail in one buffer, built in place (a 1 TiB disk's manifest is 512 MiB)."""
    buf = bytearray(unit) * count
    buf += tail
    return buf


class Manifest:
    """`blocks` SHA-256 digests of `block_size`-byte blocks of a `disk_size`-byte disk (the
    last block may be short)."""

    def __init__(self, disk_size: int, block_size: int, hashes: bytes | bytearray, *, copy: bool = True) -> None:
        """`copy=False` adopts `hashes` (a bytearray) instead of copying it."""
        blocks = -(-disk_size // block_size)
        if len(hashes) != blocks * HASH_LEN:
            raise VerificationError(f"manifest of a {disk_size}-byte disk needs {blocks} hashes, has {len(hashes) // HASH_LEN}")
        self.disk_size = disk_size
        self.block_size = block_size
        self.hashes = bytearray(hashes) if copy or not isinstance(hashes, bytearray) else hashes

    @property
    def blocks(self) -> int:
        return len(self.hashes) // HASH_LEN

    @classmethod
    def zeros(cls, disk_size: int, block_size: int) -> "Manifest":
        """The manifest of an all-zero disk."""
        full, rest = divmod(disk_size, block_size)
        return cls(disk_size, block_size, _repeat(zero_hash(block_size), full, zero_hash(rest) if rest else b""),
                   copy=False)

    @classmethod
    def of(cls, data: bytes | memoryview, block_size: int) -> "Manifest":
        """The manifest of a disk's bytes (tests, verification)."""
        view = memoryview(data)
        hashes = b"".join(hashlib.sha256(view[i:i + block_size]).digest() for i in range(0, len(view), block_size))
        return cls(len(view), block_size, hashes)

    def __getitem__(self, index: int) -> bytes:
        return bytes(self.hashes[index * HASH_LEN:(index + 1) * HASH_LEN])

    def __setitem__(self, index: int, digest: bytes) -> None:
        if not 0 <= index < self.blocks or len(digest) != HASH_LEN:
            raise IndexError(f"block {index} is outside a {self.blocks}-block manifest")
        self.hashes[index * HASH_LEN:(index + 1) * HASH_LEN] = digest

    def set_zero(self, first: int, count: int) -> None:
        if first < 0 or count < 0 or first + count > self.blocks:
            raise IndexError(f"blocks {first}..{first + count - 1} are outside a {self.blocks}-block manifest")
        _fill(self.hashes, HASH_LEN, first, count, self.blocks,
              lambda index: zero_hash(block_length(index, self.disk_size, self.block_size)))

    def is_zero(self, index: int) -> bool:
        return self[index] == zero_hash(block_length(index, self.disk_size, self.block_size))

    def resized(self, disk_size: int) -> "Manifest":
        """An all-zero manifest of the new size (a resized disk is resynced whole)."""
        return Manifest.zeros(disk_size, self.block_size)

    def copy(self) -> "Manifest":
        return Manifest(self.disk_size, self.block_size, self.hashes, copy=True)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Manifest)
            and (self.disk_size, self.block_size, self.hashes) == (other.disk_size, other.block_size, other.hashes)
        )

    def diff(self, other: "Manifest") -> list[int]:
        """Indexes of the blocks whose hash differs (same geometry assumed)."""
        return [i for i in range(min(self.blocks, other.blocks)) if self[i] != other[i]]

    def to_bytes(self) -> bytes:
        return _pack(MANIFEST_MAGIC, {"disk_size": self.disk_size, "block_size": self.block_size,
                                       "blocks": self.blocks, "hash": "sha256"}, bytes(self.hashes))

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "manifest", *, disk_size: int | None = None) -> "Manifest":
        """The manifest in `data`; with `disk_size` (when the caller knows it) it must be of
        that disk, else of at most MAX_DISK: its body is decompressed to no more than that."""
        header, packed = _unpack(MANIFEST_MAGIC, data, what)
        if header.get("hash") != "sha256":
            raise VerificationError(f"{what}: unknown hash {header.get('hash')!r}")
        block_size = _size(header, "block_size", what)
        if disk_size is not None and header.get("disk_size") != disk_size:
            raise VerificationError(f"{what}: a manifest of a {header.get('disk_size')}-byte disk, not of {disk_size} bytes")
        disk_size = _size(header, "disk_size", what)
        body = _body(packed, -(-disk_size // block_size) * HASH_LEN, what)
        return cls(disk_size, block_size, body, copy=False)


class SubMap:
    """Truncated sub-block hashes, `layout.sub_width` bytes per block."""

    def __init__(self, disk_size: int, layout: Layout, hashes: bytes | bytearray, *, copy: bool = True) -> None:
        """`copy=False` adopts `hashes` (a bytearray) instead of copying it."""
        blocks = layout.blocks(disk_size)
        if len(hashes) != blocks * layout.sub_width:
            raise VerificationError(f"sub-block map of a {disk_size}-byte disk needs {blocks * layout.sub_width} bytes, has {len(hashes)}")
        self.disk_size = disk_size
        self.layout = layout
        self.hashes = bytearray(hashes) if copy or not isinstance(hashes, bytearray) else hashes

    @classmethod
    def zeros(cls, disk_size: int, layout: Layout) -> "SubMap":
        full, rest = divmod(disk_size, layout.block_size)
        tail = zero_sub_hashes(layout, rest) if rest else b""
        return cls(disk_size, layout, _repeat(zero_sub_hashes(layout, layout.block_size), full, tail), copy=False)

    def __getitem__(self, index: int) -> bytes:
        w = self.layout.sub_width
        return bytes(self.hashes[index * w:(index + 1) * w])

    def __setitem__(self, index: int, hashes: bytes) -> None:
        w = self.layout.sub_width
        if len(hashes) != w or not 0 <= index < len(self.hashes) // w:
            raise IndexError(f"sub-block hashes for block {index} do not fit the map")
        self.hashes[index * w:(index + 1) * w] = hashes

    def set_zero(self, first: int, count: int) -> None:
        lay = self.layout
        blocks = lay.blocks(self.disk_size)
        if first < 0 or count < 0 or first + count > blocks:
            raise IndexError(f"blocks {first}..{first + count - 1} are outside a {blocks}-block sub-block map")
        _fill(self.hashes, lay.sub_width, first, count, blocks,
              lambda index: zero_sub_hashes(lay, block_length(index, self.disk_size, lay.block_size)))

    def to_bytes(self) -> bytes:
        lay = self.layout
        return _pack(SUBMAP_MAGIC, {"disk_size": self.disk_size, "block_size": lay.block_size,
                                     "sub_block_size": lay.sub_block_size, "sub_hash_len": lay.sub_hash_len},
                     bytes(self.hashes))

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "sub-block map") -> "SubMap":
        header, packed = _unpack(SUBMAP_MAGIC, data, what)
        disk_size = _size(header, "disk_size", what)
        try:
            layout = Layout(_size(header, "block_size", what), _size(header, "sub_block_size", what),
                            _size(header, "sub_hash_len", what, HASH_LEN)).check(what)
        except ProtocolError as exc:
            raise VerificationError(str(exc)) from None
        body = _body(packed, layout.blocks(disk_size) * layout.sub_width, what)
        return cls(disk_size, layout, body, copy=False)


def _fill(buf: bytearray, width: int, first: int, count: int, blocks: int, entry) -> None:  # noqa: ANN001
    """Set entries first..first+count-1 of a map of `width`-byte entries to `entry(index)`,
    which is the same for every whole block: one slice assignment, not one per block."""
    last = first + count - 1
    whole = count - 1 if count and last == blocks - 1 else count  # the disk's last block may be short
    if whole:
        buf[first * width:(first + whole) * width] = entry(first) * whole
    if whole < count:
        buf[last * width:(last + 1) * width] = entry(last)
