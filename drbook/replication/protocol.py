"""The process server's side of the agent protocol: a mirror of drbook/agent/agent.py.

The agent defines the wire format (it is shipped alone, stdlib only); this module parses
what it sends and builds what it reads. tests/test_replication_protocol.py checks that
the constants below equal the agent's and that frames round-trip both ways.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from drbook.errors import ProtocolError

MAGIC = b"DRBK"
REQUEST_VERSION = 1
FRAME = struct.Struct(">BI")
BLOCK_HEAD = struct.Struct(">QI")
ZEROS = struct.Struct(">QI")
PROGRESS = struct.Struct(">IQ")
U64 = struct.Struct(">Q")
HASH_LEN = 32

HELLO = ord("H")
FROZEN = ord("F")
DISK = ord("D")
BLOCK = ord("B")
ZERO = ord("Z")
SUBS = ord("S")
PROGRESS_FRAME = ord("P")
DISK_END = ord("E")
ERROR = ord("X")
TRAILER = ord("T")

GO = b"G"
ABORT = b"A"

JSON_FRAMES = frozenset({HELLO, FROZEN, DISK, DISK_END, ERROR, TRAILER})
# A block frame carries at most one block plus its hashes; anything far larger is garbage.
MAX_PAYLOAD = 64 * 1024 * 1024


@dataclass(frozen=True)
class Layout:
    """How a disk's blocks are cut: block size and (optional) sub-blocks."""

    block_size: int = 64 * 1024
    sub_block_size: int = 0
    sub_hash_len: int = 8

    @property
    def nsub(self) -> int:
        return -(-self.block_size // self.sub_block_size) if self.sub_on else 1

    @property
    def sub_on(self) -> bool:
        return 0 < self.sub_block_size < self.block_size

    @property
    def sub_width(self) -> int:
        """Bytes of sub-block hashes per block (0 when sub-blocks are off)."""
        return self.nsub * self.sub_hash_len if self.sub_on else 0

    @property
    def full_mask(self) -> int:
        return (1 << self.nsub) - 1

    def blocks(self, disk_size: int) -> int:
        return -(-disk_size // self.block_size)

    def runs(self, index: int, mask: int, disk_size: int) -> list[tuple[int, int]]:
        """(disk offset, length) of the contiguous runs of sub-blocks a mask selects, in the
        order their data follows in a block frame."""
        base = index * self.block_size
        end = min(base + self.block_size, disk_size)
        if not self.sub_on:
            return [(base, end - base)]
        runs: list[tuple[int, int]] = []
        sbs = self.sub_block_size
        for i in range(self.nsub):
            if not mask >> i & 1:
                continue
            off = base + i * sbs
            if off >= end:
                break
            length = min(sbs, end - off)
            if runs and runs[-1][0] + runs[-1][1] == off:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((off, length))
        return runs


@dataclass
class Block:
    index: int
    mask: int
    digest: bytes
    sub_hashes: bytes
    data: memoryview


def encode_request(header: dict, maps: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps(header, sort_keys=True).encode()
    parts = [MAGIC, struct.pack(">BI", REQUEST_VERSION, len(body)), body]
    for block_map, sub_map in maps:
        parts += [U64.pack(len(block_map)), bytes(block_map), U64.pack(len(sub_map)), bytes(sub_map)]
    return b"".join(parts)


def frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def json_frame(kind: int, doc: dict) -> bytes:
    return frame(kind, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def parse_json(kind: int, payload: bytes | memoryview) -> dict:
    try:
        doc = json.loads(bytes(payload))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError(f"agent frame {chr(kind)!r} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"agent frame {chr(kind)!r} is not a JSON object")
    return doc


def parse_block(payload: bytes | memoryview, layout: Layout) -> Block:
    view = memoryview(payload)
    head = BLOCK_HEAD.size + HASH_LEN + layout.sub_width
    if len(view) < head:
        raise ProtocolError(f"block frame of {len(view)} bytes is shorter than its {head}-byte head")
    index, mask = BLOCK_HEAD.unpack_from(view)
    digest = bytes(view[BLOCK_HEAD.size:BLOCK_HEAD.size + HASH_LEN])
    subs = bytes(view[BLOCK_HEAD.size + HASH_LEN:head])
    return Block(index, mask, digest, subs, view[head:])


def parse_zeros(payload: bytes | memoryview) -> tuple[int, int]:
    if len(payload) != ZEROS.size:
        raise ProtocolError(f"zero frame has {len(payload)} bytes, expected {ZEROS.size}")
    return ZEROS.unpack(payload)


def parse_subs(payload: bytes | memoryview, layout: Layout) -> tuple[int, bytes]:
    if len(payload) != U64.size + layout.sub_width:
        raise ProtocolError(f"sub-hash frame has {len(payload)} bytes, expected {U64.size + layout.sub_width}")
    return U64.unpack_from(payload)[0], bytes(payload[U64.size:])


def parse_progress(payload: bytes | memoryview) -> tuple[int, int]:
    if len(payload) != PROGRESS.size:
        raise ProtocolError(f"progress frame has {len(payload)} bytes, expected {PROGRESS.size}")
    return PROGRESS.unpack(payload)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if data is None:
        data = b""
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class FrameReader:
    """Frames from the agent's stdout. `None` at a clean end between frames; a stream that
    stops inside a frame is a ProtocolError (retryable: the cycle is simply run again)."""

    def __init__(self, stream: BinaryIO, *, max_payload: int = MAX_PAYLOAD) -> None:
        self.stream = stream
        self.max_payload = max_payload
        self.bytes = 0

    def read(self) -> tuple[int, bytes] | None:
        head = _read_exact(self.stream, FRAME.size)
        if not head:
            return None
        if len(head) < FRAME.size:
            raise ProtocolError("the agent's stream ended inside a frame header")
        kind, length = FRAME.unpack(head)
        if length > self.max_payload:
            raise ProtocolError(f"agent frame {kind:#x} claims {length} bytes; the stream is corrupt")
        payload = _read_exact(self.stream, length) if length else b""
        if len(payload) < length:
            raise ProtocolError(f"the agent's stream ended inside a {chr(kind)!r} frame ({len(payload)} of {length} bytes)")
        self.bytes += FRAME.size + length
        return kind, payload

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while (item := self.read()) is not None:
            yield item


def iter_frames(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Frames packed in a buffer (a segment): (kind, payload view)."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if pos + FRAME.size > len(view):
            raise ProtocolError("a segment ends inside a frame header")
        kind, length = FRAME.unpack_from(view, pos)
        pos += FRAME.size
        if pos + length > len(view):
            raise ProtocolError("a segment ends inside a frame")
        yield kind, view[pos:pos + length]
        pos += length
