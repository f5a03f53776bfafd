"""Properties of the agent protocol, with hypothesis (derandomized: the same examples every
run, no example database).

(a) What the agent writes (its own functions: drbook/agent/agent.py, run in this process)
    is what the process server reads: frames, requests, and whole scans, whose maps and
    applied segments are the disk.
(b) Mutated streams (bit flips, truncation, inserted and deleted bytes, huge lengths and
    indexes) give a ProtocolError or a parse whose maps say what the replica then holds;
    never another exception.
(c) Segments, manifests and sub-block maps under mutation give their typed error or the
    original.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drbook.agent import agent as agent_mod
from drbook.errors import ProtocolError, ReplicationError, VerificationError
from drbook.models import ProtectedDisk
from drbook.replication import cycle as cy
from drbook.replication import protocol as p
from drbook.replication import vhd
from drbook.replication.manifest import Manifest, SubMap
from drbook.replication.segments import SegmentError, open_segment, seal

BS, SBS, SHL = 4096, 512, 8  # small blocks keep every example cheap; 8 sub-blocks a block
LAYOUT = p.Layout(BS, SBS, SHL)


def fuzz(examples: int):  # noqa: ANN201 - a hypothesis settings decorator
    return settings(derandomize=True, database=None, max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the agent's side, run in this process ----------------------------------------------------


def block_map(data: bytes) -> bytes:
    return b"".join(hashlib.sha256(data[i:i + BS]).digest() for i in range(0, len(data), BS))


def sub_map(data: bytes) -> bytes:
    hasher = agent_mod.Hasher(BS, SBS, SHL)
    return b"".join(hasher.sub_hashes(data[i:i + BS]) for i in range(0, len(data), BS))


def agent_scan(old: bytes | None, new: bytes, with_subs: bool) -> bytes:
    """The agent's stream for disk `new` against the maps of `old` (None: no map, a resync)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "disk0.img"
        path.write_bytes(new)
        maps = (b"", b"") if old is None else (block_map(old), sub_map(old) if with_subs else b"")
        header = {"disks": [{"name": "disk0", "path": str(path), "size": None if old is None else len(old)}],
                  "block_size": BS, "sub_block_size": SBS, "sub_hash_len": SHL, "hooks": {}, "threads": 1,
                  "read_buffer": 4 * BS, "bridge_gap": 2 * SBS, "sub_rebuild": old is not None and not with_subs}
        out = io.BytesIO()
        assert agent_mod.scan(io.BytesIO(agent_mod.encode_request(header, [maps])), out) == 0
        return out.getvalue()


# -- the process server's side ---------------------------------------------------------------


@dataclass
class Received:
    disk: cy.DiskCycle
    segments: list[bytes]


def receive(stream: bytes, old: bytes | None, with_subs: bool) -> Received:
    """The stream through the reader and the Receiver, as a cycle takes it."""
    d = cy.DiskCycle(disk=ProtectedDisk(name="disk0", path="x", size_bytes=len(old) if old else 0), layout=LAYOUT,
                     old=Manifest.of(old, BS) if old is not None else None,
                     old_subs=SubMap(len(old), LAYOUT, sub_map(old)) if old is not None and with_subs else None,
                     force_resync=old is None)
    d.direct = d.request_maps() == (b"", b"")
    segments: list[bytes] = []
    writer = cy.SegmentWriter(4 * BS, lambda seq, raw: segments.append(raw))
    receiver = cy.Receiver("db01", [d], LAYOUT, writer, direct=writer)
    for kind, payload in p.FrameReader(io.BytesIO(stream), layout=LAYOUT):
        if receiver.handle(kind, payload):
            break
    writer.flush()
    receiver.check_complete()
    return Received(d, segments)


def applied(base: bytes, size: int, segments: list[bytes]) -> bytes:
    """What a replica that held `base` holds once the segments are applied (its first `size` bytes)."""
    image = bytearray(base[:size].ljust(vhd.replica_size(size), b"\x5a"))
    for raw in segments:
        for plan in cy.plan_segment(raw).values():
            for off, n in plan.clears:
                image[off:off + n] = bytes(n)
            for off, data in plan.writes:
                image[off:off + len(data)] = data
    return bytes(image[:size])


def garbage(size: int) -> bytes:
    """A replica's old bytes that a resync must overwrite or clear everywhere."""
    return random.Random(size).randbytes(size)


# -- (a) round trips -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 64, 2 ** 64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6)
json_docs = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
u32, u64 = st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 64 - 1)
frames = st.lists(st.one_of(
    st.tuples(st.just(p.ERROR), json_docs),
    st.tuples(st.just(p.ZERO), st.tuples(u64, u32)),
    st.tuples(st.just(p.PROGRESS_FRAME), st.tuples(u32, u64)),
    st.tuples(st.just(p.SUBS), st.tuples(u64, st.binary(min_size=LAYOUT.sub_width, max_size=LAYOUT.sub_width))),
), max_size=6)


def agent_frame(kind: int, value) -> bytes:  # noqa: ANN001
    if kind == p.ERROR:
        return agent_mod.json_frame(kind, value)
    if kind == p.SUBS:
        return agent_mod.frame(kind, agent_mod.U64.pack(value[0]) + value[1])
    return agent_mod.frame(kind, (agent_mod.ZEROS if kind == p.ZERO else agent_mod.PROGRESS).pack(*value))


def parsed(kind: int, payload: bytes):  # noqa: ANN201
    return {p.ERROR: p.parse_json, p.ZERO: lambda k, x: p.parse_zeros(x), p.PROGRESS_FRAME: lambda k, x: p.parse_progress(x),
            p.SUBS: lambda k, x: p.parse_subs(x, LAYOUT)}[kind](kind, payload)


@fuzz(60)
@given(frames)
def test_the_frames_the_agent_writes_are_the_frames_the_reader_reads(sent: list):
    stream = b"".join(agent_frame(kind, value) for kind, value in sent)
    got = [(kind, parsed(kind, payload)) for kind, payload in p.FrameReader(io.BytesIO(stream), layout=LAYOUT)]
    assert got == [(kind, value) for kind, value in sent]
    assert [(k, bytes(v)) for k, v in p.iter_frames(stream)] == list(p.FrameReader(io.BytesIO(stream)))


@fuzz(40)
@given(json_docs, st.lists(st.tuples(st.binary(max_size=96), st.binary(max_size=64)), max_size=3))
def test_a_scan_request_reads_back_as_the_agent_reads_it(header: dict, maps: list):
    header = {**header, "disks": [{"name": f"d{i}"} for i in range(len(maps))]}
    ours = p.encode_request(header, maps)
    assert ours == agent_mod.encode_request(header, maps)
    assert agent_mod.read_request(io.BytesIO(ours)) == (header, maps)


@st.composite
def disks(draw) -> tuple[bytes | None, bytes, bool]:  # noqa: ANN001
    """(old, new, with sub-block map): a disk and how it changed since the last cycle."""
    rng = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
    blocks = draw(st.integers(1, 9))
    size = blocks * BS + draw(st.sampled_from([0, 0, 1, 100, SBS, 3000]))
    old = bytearray(size)
    for i in range(0, size, BS):
        if draw(st.booleans()):
            old[i:i + BS] = rng.randbytes(len(old[i:i + BS]))
    new = bytearray(old)
    for i in range(0, size, BS):
        edit = draw(st.sampled_from(["keep", "keep", "zero", "whole", "poke", "poke"]))
        end = min(size, i + BS)
        if edit == "zero":
            new[i:end] = bytes(end - i)
        elif edit == "whole":
            new[i:end] = rng.randbytes(end - i)
        elif edit == "poke":
            at = rng.randrange(i, end)
            stop = min(end, at + rng.randint(1, 700))
            new[at:stop] = rng.randbytes(stop - at)
    mode = draw(st.sampled_from(["delta", "delta", "no sub-block map", "resync", "resized"]))
    if mode == "resized":
        new = new[:size - BS] if size > BS and draw(st.booleans()) else new + bytearray(rng.randbytes(BS + 77))
    return (None if mode == "resync" else bytes(old)), bytes(new), mode != "no sub-block map"


@fuzz(60)
@given(disks())
def test_a_scan_round_trips_into_maps_and_segments_that_are_the_disk(case: tuple):
    old, new, with_subs = case
    r = receive(agent_scan(old, new, with_subs), old, with_subs)
    assert r.disk.size == len(new) and r.disk.manifest == Manifest.of(new, BS)
    assert bytes(r.disk.subs.hashes) == sub_map(new)
    base = old if old is not None and not r.disk.resync else garbage(len(new))
    assert applied(base, len(new), r.segments) == new


# -- (b) mutated streams ---------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    old: bytes | None
    new: bytes
    with_subs: bool
    stream: bytes


@functools.lru_cache(maxsize=None)
def base(name: str) -> Base:
    """A fixed stream of each kind: a resync, a delta with whole, partial, bridged and zero
    blocks, and a delta that rebuilds a lost sub-block map (S frames)."""
    rng = random.Random(name)
    old = bytearray(rng.randbytes(12 * BS + 700))
    old[5 * BS:6 * BS] = bytes(BS)
    new = bytearray(old)
    new[BS + 10:BS + 20] = b"x" * 10  # partial
    new[BS + 2 * SBS + 5:BS + 2 * SBS + 9] = b"yyyy"  # partial, bridged over the gap
    new[3 * BS:4 * BS] = rng.randbytes(BS)  # whole
    new[7 * BS:8 * BS] = bytes(BS)  # zero
    new[12 * BS + 3] ^= 0xFF  # the short last block
    old_arg = None if name == "resync" else bytes(old)
    with_subs = name != "rebuild"
    return Base(old_arg, bytes(new), with_subs, agent_scan(old_arg, bytes(new), with_subs))


def partial_blocks(stream: bytes) -> set[int]:
    """The blocks a stream (one the Receiver took whole) sent as partial block frames."""
    found = set()
    for kind, payload in p.FrameReader(io.BytesIO(stream), layout=LAYOUT):
        if kind == p.TRAILER:
            return found
        if kind == p.BLOCK and (b := p.parse_block(payload, LAYOUT)).mask != LAYOUT.full_mask:
            found.add(b.index)
    return found


def frame_starts(stream: bytes) -> list[int]:
    starts, pos = [], 0
    while pos + p.FRAME.size <= len(stream):
        starts.append(pos)
        pos += p.FRAME.size + p.FRAME.unpack_from(stream, pos)[1]
    return starts


byte_ops = (
    st.tuples(st.just("flip"), st.integers(0, 2 ** 20), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 2 ** 20)),
    st.tuples(st.just("insert"), st.integers(0, 2 ** 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2 ** 20), st.integers(1, 64)),
)
byte_mutations = st.lists(st.one_of(*byte_ops), min_size=1, max_size=3)
mutations = st.lists(st.one_of(
    *byte_ops,
    st.tuples(st.just("length"), st.integers(0, 100), st.sampled_from([0, 1, 54, 2 ** 31, 2 ** 32 - 1, 60 << 20])),
    st.tuples(st.just("u64"), st.integers(0, 100), st.sampled_from([2 ** 63, 2 ** 64 - 1, 2 ** 40, 1])),
), min_size=1, max_size=3)


def mutate(stream: bytes, ops: list) -> bytes:
    """Frame-aware mutations (a frame's length, the first u64 of its payload) on the base
    stream's frames first, then byte mutations at positions taken modulo the length."""
    data, starts = bytearray(stream), frame_starts(stream)
    for op, *args in ops:
        if op == "length":
            p.FRAME.pack_into(data, starts[args[0] % len(starts)], data[starts[args[0] % len(starts)]], args[1])
        elif op == "u64":
            at = starts[args[0] % len(starts)] + p.FRAME.size
            data[at:at + 8] = args[1].to_bytes(8, "big")
    for op, *args in ops:
        at = args[0] % (len(data) + 1) if op in ("flip", "truncate", "insert", "delete") else None
        if op == "flip" and at < len(data):
            data[at] ^= 1 << args[1]
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = args[1]
        elif op == "delete":
            del data[at:at + args[1]]
    return bytes(data)


@fuzz(200)
@given(st.sampled_from(["resync", "delta", "rebuild"]), mutations)
def test_a_mutated_stream_is_a_protocol_error_or_maps_that_say_what_the_replica_holds(name: str, ops: list):
    b = base(name)
    stream = mutate(b.stream, ops)
    try:
        r = receive(stream, b.old, b.with_subs)
    except ProtocolError as exc:
        assert exc.retryable
        return
    except ReplicationError as exc:  # an error or failure the (mutated) agent reported: a parse too
        assert type(exc) is ReplicationError and str(exc).startswith(("agent error", "the agent's cycle failed"))
        return
    size = r.disk.size
    image = applied(b.old if b.old is not None and not r.disk.resync else garbage(size), size, r.segments)
    truth = Manifest.of(image, BS)
    wrong = {i for i in range(truth.blocks) if truth[i] != r.disk.manifest[i]}
    assert wrong <= partial_blocks(stream), "only a partial block's SHA-256 is taken as sent (it covers bytes not at hand)"
    if b.with_subs:  # without, the S frames rebuild the sub-block map from what the agent says
        assert bytes(r.disk.subs.hashes) == sub_map(image)


# -- (c) segments, manifests and sub-block maps ------------------------------------------------

KEY = bytes(range(32))


@functools.lru_cache(maxsize=None)
def raw_segment() -> bytes:
    b = base("delta")
    segments: list[bytes] = []
    writer = cy.SegmentWriter(1 << 20, lambda seq, raw: segments.append(raw))
    writer.begin_disk({"name": "disk0", "size": len(b.new), "block_size": BS, "sub_block_size": SBS, "sub_hash_len": SHL})
    for kind, payload in p.iter_frames(b.stream):
        if kind in (p.BLOCK, p.ZERO):
            writer.add(kind, bytes(payload))
    writer.flush()
    return segments[0]


@fuzz(60)
@given(byte_mutations, st.booleans())
def test_a_mutated_sealed_segment_is_a_segment_error_or_the_original(ops: list, sized: bool):
    raw = raw_segment()
    sealed = seal(raw, KEY, "db01", "cy-1", 1)
    try:
        got = open_segment(mutate(sealed, ops), KEY, "db01", "cy-1", 1, raw_bytes=len(raw) if sized else None)
    except SegmentError:
        return
    assert got == raw


@fuzz(100)
@given(mutations)
def test_a_mutated_segment_plaintext_is_a_protocol_error_or_a_plan(ops: list):
    try:
        plans = cy.plan_segment(mutate(raw_segment(), ops))
    except ProtocolError:
        return
    assert all(off % 512 == 0 and len(data) % 512 == 0 for plan in plans.values() for off, data in plan.writes)


@functools.lru_cache(maxsize=None)
def serialised(which: str) -> tuple[type, bytes]:
    new = base("delta").new
    original = Manifest.of(new, BS) if which == "manifest" else SubMap(len(new), LAYOUT, sub_map(new))
    return type(original), original.to_bytes()


@fuzz(100)
@given(byte_mutations, st.sampled_from(["manifest", "sub-block map"]))
def test_a_mutated_manifest_or_sub_block_map_is_a_verification_error_or_a_map(ops: list, which: str):
    kind, data = serialised(which)
    try:
        back = kind.from_bytes(mutate(data, ops))
    except VerificationError:
        return
    assert isinstance(back, kind) and back.disk_size > 0
