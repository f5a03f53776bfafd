"""The process server's side of the agent protocol: a mirror of drbook/agent/agent.py.

The agent defines the wire format (it is shipped alone, stdlib only); this module parses
what it sends and builds what it reads. tests/test_replication_protocol.py checks that
the constants below equal the agent's and that frames round-trip both ways.
"""

from __future__ import annotations

import io
import json
import math
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
NAMES = {HELLO: "hello", FROZEN: "frozen", DISK: "disk", BLOCK: "block", ZERO: "zero", SUBS: "sub-hash",
         PROGRESS_FRAME: "progress", DISK_END: "disk end", ERROR: "error", TRAILER: "trailer"}
# A block frame carries at most one block plus its hashes; anything far larger is garbage.
# Without the layout (a reader that does not know the block size) this is its bound.
MAX_PAYLOAD = 64 * 1024 * 1024
# JSON frames carry hook results, each clipped by the agent (MAX_HOOK_OUTPUT characters of
# output and of errors, up to 6 bytes each once escaped): room for dozens of hooks.
MAX_JSON = 4 * 1024 * 1024


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

    @property
    def block_head(self) -> int:
        """Bytes of a block frame before its data: index, mask, digest, sub-block hashes."""
        return BLOCK_HEAD.size + HASH_LEN + self.sub_width

    def check(self, what: str) -> "Layout":
        """The layout itself, or a ProtocolError when `what` (a segment's disk frame) gave one
        the agent would refuse."""
        if self.block_size <= 0 or self.block_size % 512 or self.sub_block_size < 0 or \
                (self.sub_on and not 0 < self.sub_hash_len <= HASH_LEN):
            raise ProtocolError(f"{what}: no valid block layout ({self.block_size}, {self.sub_block_size}, "
                                f"{self.sub_hash_len})")
        return self

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


def write_request(out: BinaryIO, header: dict, maps: list[tuple]) -> int:
    """Write the scan request to `out` (the agent's stdin): the header, then each disk's block
    map and sub-block map, each a length and its bytes. A map is bytes, or an object with
    `chunks()` (a drbook.replication.mapfile.MapBuffer), written a chunk at a time, so a large
    disk's maps never become one bytes object here. The bytes written, the same as
    encode_request's (and the agent's)."""
    body = json.dumps(header, sort_keys=True).encode()
    out.write(MAGIC + struct.pack(">BI", REQUEST_VERSION, len(body)) + body)
    sent = len(MAGIC) + 5 + len(body)
    for pair in maps:
        for m in pair:
            out.write(U64.pack(len(m)))
            for piece in m.chunks() if hasattr(m, "chunks") else (m,):
                out.write(piece)
            sent += U64.size + len(m)
    return sent


def encode_request(header: dict, maps: list[tuple]) -> bytes:
    """The scan request as one bytes object (small maps: tests, benchmarks)."""
    out = io.BytesIO()
    write_request(out, header, maps)
    return out.getvalue()


def frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def json_frame(kind: int, doc: dict) -> bytes:
    return frame(kind, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


NONE = type(None)
NUMBER = (int, float, NONE)
# The fields of JSON frames the process server reads, and their types. The agent writes more.
SHAPES: dict[int, dict[str, tuple[type, ...]]] = {
    HELLO: {"version": (str, NONE)},
    FROZEN: {"ok": (bool, NONE), "results": (list, NONE)},
    DISK: {"name": (str,), "size": (int,), "resync": (bool, NONE), "reason": (str, NONE)},
    DISK_END: {"changed": (int,), "zero": (int,)},
    TRAILER: {"ok": (bool, NONE), "error": (str, NONE), "freeze": (list, NONE), "thaw": (list, NONE),
              "thawed_early": (bool, NONE), "frozen_at": NUMBER, "read_ended": NUMBER, "thaw_started": NUMBER},
}
HOOK_LISTS = {FROZEN: ("results",), TRAILER: ("freeze", "thaw")}
HOOK_RESULT: dict[str, tuple[type, ...]] = {"cmd": (str, NONE), "kind": (str, NONE), "out": (str, NONE),
                                            "err": (str, NONE), "rc": (int, NONE)}


def frame_name(kind: int) -> str:
    return f"{chr(kind)!r} ({NAMES[kind]})" if kind in NAMES else f"{kind:#x}"


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number the agent sends")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def parse_json(kind: int, payload: bytes | memoryview) -> dict:
    """A JSON frame's object, its fields of the types SHAPES says; else a ProtocolError."""
    try:
        doc = json.loads(bytes(payload).decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too deeply nested
        raise ProtocolError(f"agent frame {frame_name(kind)} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"agent frame {frame_name(kind)} is not a JSON object")
    for key, types in SHAPES.get(kind, {}).items():
        field(doc, kind, key, types)
    for key in HOOK_LISTS.get(kind, ()):
        for result in doc.get(key) or []:
            if not isinstance(result, dict):
                raise ProtocolError(f"agent frame {frame_name(kind)}: {key} holds {type(result).__name__}, not a hook result")
            for rkey, types in HOOK_RESULT.items():
                field(result, kind, rkey, types)
    return doc


def field(doc: dict, kind: int, key: str, types: tuple[type, ...]):  # noqa: ANN201 - one of `types`
    """doc[key] when it is one of `types` (None in `types`: it may also be missing)."""
    value = doc.get(key)
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return value
    got = "missing" if key not in doc else _type_name(type(value))
    raise ProtocolError(f"agent frame {frame_name(kind)}: {key!r} is {got}, not {' or '.join(map(_type_name, types))}")


def _type_name(t: type) -> str:
    return "null" if t is NONE else t.__name__


def parse_block(payload: bytes | memoryview, layout: Layout) -> Block:
    view = memoryview(payload)
    head = layout.block_head
    if len(view) < head:
        raise ProtocolError(f"block frame of {len(view)} bytes is shorter than its {head}-byte head")
    index, mask = BLOCK_HEAD.unpack_from(view)
    digest = bytes(view[BLOCK_HEAD.size:BLOCK_HEAD.size + HASH_LEN])
    subs = bytes(view[BLOCK_HEAD.size + HASH_LEN:head])
    return Block(index, mask, digest, subs, view[head:])


def check_range(disk: str, disk_size: int, layout: Layout, first: int, count: int) -> None:
    blocks = layout.blocks(disk_size)
    if first < 0 or count < 1 or first + count > blocks:
        raise ProtocolError(f"disk {disk}: blocks {first}+{count} are outside its {blocks} blocks")


def check_block(disk: str, disk_size: int, layout: Layout, b: Block) -> None:
    """A block frame that fits its disk: a block of it, a mask of its sub-blocks, and as many
    bytes as the mask selects."""
    check_range(disk, disk_size, layout, b.index, 1)
    if not b.mask or b.mask & ~layout.full_mask:
        raise ProtocolError(f"disk {disk}: block {b.index} has an invalid sub-block mask {b.mask:#x}")
    want = sum(n for _, n in layout.runs(b.index, b.mask, disk_size))
    if len(b.data) != want:
        raise ProtocolError(f"disk {disk}: block {b.index} carries {len(b.data)} bytes, its mask needs {want}")


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


def frame_limit(kind: int, layout: Layout | None, max_payload: int = MAX_PAYLOAD) -> tuple[int, str]:
    """The most payload bytes a frame of `kind` can hold, and why; an unknown kind is a
    ProtocolError. Without `layout` a block or sub-hash frame is bounded by `max_payload`."""
    fixed = {ZERO: ZEROS.size, PROGRESS_FRAME: PROGRESS.size}
    if kind in fixed:
        return fixed[kind], "its fixed size"
    if kind in JSON_FRAMES:
        return MAX_JSON, "MAX_JSON"
    if kind not in (BLOCK, SUBS):
        raise ProtocolError(f"unknown agent frame type {kind:#x}")
    if layout is None:
        return max_payload, "MAX_PAYLOAD"
    if kind == SUBS:
        return U64.size + layout.sub_width, f"an index and the sub-block hashes of a {layout.block_size}-byte block"
    return layout.block_head + layout.block_size, f"the head and data of a {layout.block_size}-byte block"


class FrameReader:
    """Frames from the agent's stdout. `None` at a clean end between frames; a stream that
    stops inside a frame is a ProtocolError (retryable: the cycle is simply run again).
    A frame's length is checked against what its kind can hold (`frame_limit`, by the
    configured `layout`) before its payload is read, so a source cannot make the process
    server allocate more than one block's worth per frame."""

    def __init__(self, stream: BinaryIO, *, layout: Layout | None = None, max_payload: int = MAX_PAYLOAD) -> None:
        self.stream = stream
        self.layout = layout
        self.max_payload = max_payload
        self.bytes = 0

    def read(self) -> tuple[int, bytes] | None:
        head = _read_exact(self.stream, FRAME.size)
        if not head:
            return None
        if len(head) < FRAME.size:
            raise ProtocolError("the agent's stream ended inside a frame header")
        kind, length = FRAME.unpack(head)
        limit, why = frame_limit(kind, self.layout, self.max_payload)
        if length > limit:
            raise ProtocolError(f"agent frame {frame_name(kind)} claims {length} bytes, more than the {limit} of "
                                f"{why}; the stream is corrupt")
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
