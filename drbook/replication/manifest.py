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

from drbook.errors import VerificationError
from drbook.replication.protocol import HASH_LEN, Layout

MANIFEST_MAGIC = b"DRMF"
SUBMAP_MAGIC = b"DRSM"
_HEAD = struct.Struct(">4sBI")
_VERSION = 1


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


def _unpack(magic: bytes, data: bytes, what: str) -> tuple[dict, bytes]:
    if len(data) < _HEAD.size:
        raise VerificationError(f"{what}: too short to be a manifest")
    got, version, hlen = _HEAD.unpack_from(data)
    if got != magic or version != _VERSION:
        raise VerificationError(f"{what}: not a drbook {'manifest' if magic == MANIFEST_MAGIC else 'sub-block map'} (v{_VERSION})")
    header = json.loads(data[_HEAD.size:_HEAD.size + hlen])
    try:
        body = zstandard.ZstdDecompressor().decompress(data[_HEAD.size + hlen:])
    except zstandard.ZstdError as exc:
        raise VerificationError(f"{what}: body does not decompress ({exc})") from None
    return header, body


class Manifest:
    """`blocks` SHA-256 digests of `block_size`-byte blocks of a `disk_size`-byte disk (the
    last block may be short)."""

    def __init__(self, disk_size: int, block_size: int, hashes: bytes | bytearray) -> None:
        blocks = -(-disk_size // block_size)
        if len(hashes) != blocks * HASH_LEN:
            raise VerificationError(f"manifest of a {disk_size}-byte disk needs {blocks} hashes, has {len(hashes) // HASH_LEN}")
        self.disk_size = disk_size
        self.block_size = block_size
        self.hashes = bytearray(hashes)

    @property
    def blocks(self) -> int:
        return len(self.hashes) // HASH_LEN

    @classmethod
    def zeros(cls, disk_size: int, block_size: int) -> "Manifest":
        """The manifest of an all-zero disk."""
        blocks = -(-disk_size // block_size)
        full = zero_hash(block_size) * (disk_size // block_size)
        tail = zero_hash(disk_size % block_size) if disk_size % block_size else b""
        assert len(full + tail) == blocks * HASH_LEN
        return cls(disk_size, block_size, full + tail)

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
        if first < 0 or first + count > self.blocks:
            raise IndexError(f"blocks {first}..{first + count - 1} are outside a {self.blocks}-block manifest")
        for index in range(first, first + count):
            self[index] = zero_hash(block_length(index, self.disk_size, self.block_size))

    def is_zero(self, index: int) -> bool:
        return self[index] == zero_hash(block_length(index, self.disk_size, self.block_size))

    def resized(self, disk_size: int) -> "Manifest":
        """An all-zero manifest of the new size (a resized disk is resynced whole)."""
        return Manifest.zeros(disk_size, self.block_size)

    def copy(self) -> "Manifest":
        return Manifest(self.disk_size, self.block_size, self.hashes)

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
    def from_bytes(cls, data: bytes, what: str = "manifest") -> "Manifest":
        header, body = _unpack(MANIFEST_MAGIC, data, what)
        if header.get("hash") != "sha256":
            raise VerificationError(f"{what}: unknown hash {header.get('hash')!r}")
        return cls(int(header["disk_size"]), int(header["block_size"]), body)


class SubMap:
    """Truncated sub-block hashes, `layout.sub_width` bytes per block."""

    def __init__(self, disk_size: int, layout: Layout, hashes: bytes | bytearray) -> None:
        blocks = layout.blocks(disk_size)
        if len(hashes) != blocks * layout.sub_width:
            raise VerificationError(f"sub-block map of a {disk_size}-byte disk needs {blocks * layout.sub_width} bytes, has {len(hashes)}")
        self.disk_size = disk_size
        self.layout = layout
        self.hashes = bytearray(hashes)

    @classmethod
    def zeros(cls, disk_size: int, layout: Layout) -> "SubMap":
        bs, blocks = layout.block_size, layout.blocks(disk_size)
        full = zero_sub_hashes(layout, bs) * (disk_size // bs)
        tail = zero_sub_hashes(layout, disk_size % bs) if disk_size % bs else b""
        assert len(full + tail) == blocks * layout.sub_width
        return cls(disk_size, layout, full + tail)

    def __getitem__(self, index: int) -> bytes:
        w = self.layout.sub_width
        return bytes(self.hashes[index * w:(index + 1) * w])

    def __setitem__(self, index: int, hashes: bytes) -> None:
        w = self.layout.sub_width
        if len(hashes) != w or not 0 <= index < len(self.hashes) // w:
            raise IndexError(f"sub-block hashes for block {index} do not fit the map")
        self.hashes[index * w:(index + 1) * w] = hashes

    def set_zero(self, first: int, count: int) -> None:
        bs = self.layout.block_size
        for index in range(first, first + count):
            self[index] = zero_sub_hashes(self.layout, block_length(index, self.disk_size, bs))

    def to_bytes(self) -> bytes:
        lay = self.layout
        return _pack(SUBMAP_MAGIC, {"disk_size": self.disk_size, "block_size": lay.block_size,
                                     "sub_block_size": lay.sub_block_size, "sub_hash_len": lay.sub_hash_len},
                     bytes(self.hashes))

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "sub-block map") -> "SubMap":
        header, body = _unpack(SUBMAP_MAGIC, data, what)
        layout = Layout(int(header["block_size"]), int(header["sub_block_size"]), int(header["sub_hash_len"]))
        return cls(int(header["disk_size"]), layout, body)
