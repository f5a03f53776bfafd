"""The agent as the process server runs it: a subprocess through a RemoteShell (here the
local one), over real files."""

from __future__ import annotations

import ast
import collections
import hashlib
import io
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drbook.agent import agent as agent_mod
from drbook.replication import protocol as p
from drbook.replication.local_shell import LocalShell
from drbook.replication.manifest import Manifest, SubMap

AGENT = Path(agent_mod.__file__)
LAYOUT = p.Layout(64 * 1024, 4096, 8)
NOSUB = p.Layout(64 * 1024, 0, 8)


@dataclass
class Scan:
    frames: list[tuple[int, bytes]]
    code: int
    stderr: str
    hello: dict = field(default_factory=dict)
    disks: list[dict] = field(default_factory=list)
    ends: list[dict] = field(default_factory=list)
    trailer: dict | None = None
    frozen: dict | None = None
    errors: list[dict] = field(default_factory=list)
    blocks: dict[str, list[p.Block]] = field(default_factory=dict)
    zeros: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    subs: dict[str, dict[int, bytes]] = field(default_factory=dict)


def parse(frames: list[tuple[int, bytes]], layout: p.Layout, code: int = 0, stderr: str = "") -> Scan:
    s = Scan(frames, code, stderr)
    disk = None
    for kind, payload in frames:
        if kind == p.HELLO:
            s.hello = p.parse_json(kind, payload)
        elif kind == p.FROZEN:
            s.frozen = p.parse_json(kind, payload)
        elif kind == p.DISK:
            s.disks.append(p.parse_json(kind, payload))
            disk = s.disks[-1]["name"]
            s.blocks[disk], s.zeros[disk], s.subs[disk] = [], [], {}
        elif kind == p.BLOCK:
            s.blocks[disk].append(p.parse_block(payload, layout))
        elif kind == p.ZERO:
            s.zeros[disk].append(p.parse_zeros(payload))
        elif kind == p.SUBS:
            index, subs = p.parse_subs(payload, layout)
            s.subs[disk][index] = subs
        elif kind == p.DISK_END:
            s.ends.append(p.parse_json(kind, payload))
        elif kind == p.ERROR:
            s.errors.append(p.parse_json(kind, payload))
        elif kind == p.TRAILER:
            s.trailer = p.parse_json(kind, payload)
    return s


def header(disks: list[tuple[str, Path, int | None]], layout: p.Layout = LAYOUT, **extra) -> dict:
    h = {"disks": [{"name": n, "path": str(path), "size": size} for n, path, size in disks],
         "block_size": layout.block_size, "sub_block_size": layout.sub_block_size, "sub_hash_len": layout.sub_hash_len,
         "hooks": {"freeze": [], "thaw": []}}
    h.update(extra)
    return h


def run_scan(hdr: dict, maps: list[tuple[bytes, bytes]], layout: p.Layout = LAYOUT) -> Scan:
    shell = LocalShell()
    proc = shell.open_process(f"{sys.executable} {AGENT} scan")
    proc.stdin.write(p.encode_request(hdr, maps))
    proc.stdin.close()
    frames = list(p.FrameReader(proc.stdout))
    code = proc.wait(30)
    return parse(frames, layout, code, proc.stderr_text())


def apply(base: bytes, scan: Scan, disk: str, size: int, layout: p.Layout) -> bytes:
    """What the process server would hold after applying the scan to `base`."""
    out = bytearray(base[:size].ljust(size, b"\0"))
    for first, count in scan.zeros[disk]:
        start, end = first * layout.block_size, min(size, (first + count) * layout.block_size)
        out[start:end] = bytes(end - start)
    for b in scan.blocks[disk]:
        pos = 0
        for off, n in layout.runs(b.index, b.mask, size):
            out[off:off + n] = b.data[pos:pos + n]
            pos += n
    return bytes(out)


def make_disk(path: Path, size: int, seed: int = 1, fill: float = 0.5) -> bytes:
    """A disk with random data in about `fill` of its 64 KiB blocks, zeros elsewhere."""
    import random

    rng = random.Random(seed)
    data = bytearray(size)
    for off in range(0, size, 65536):
        if rng.random() < fill:
            n = min(65536, size - off)
            data[off:off + n] = rng.randbytes(n)
    path.write_bytes(data)
    return bytes(data)


def maps_of(data: bytes, layout: p.Layout = LAYOUT) -> tuple[bytes, bytes]:
    m = Manifest.of(data, layout.block_size)
    if not layout.sub_on:
        return bytes(m.hashes), b""
    from drbook.replication.manifest import sub_hashes

    subs = b"".join(sub_hashes(data[i:i + layout.block_size], layout) for i in range(0, len(data), layout.block_size))
    SubMap(len(data), layout, subs)  # geometry check
    return bytes(m.hashes), subs


# -- CLI ------------------------------------------------------------------------------------


def test_version_and_self_check(tmp_path: Path):
    shell = LocalShell()
    out = shell.run(f"{sys.executable} {AGENT} --version")
    assert out.exit_status == 0 and out.stdout == agent_mod.AGENT_VERSION + "\n"
    disk = tmp_path / "d.img"
    disk.write_bytes(b"x" * 5000)
    out = shell.run(f"{sys.executable} {AGENT} self-check --disk {disk} {tmp_path}/missing.img")
    doc = json.loads(out.stdout)
    assert out.exit_status == 0 and doc["version"] == agent_mod.AGENT_VERSION and doc["ok"] is False
    assert doc["disks"][0] == {"path": str(disk), "readable": True, "size": 5000, "kind": "file", "error": None}
    assert doc["disks"][1]["readable"] is False and "No such file" in doc["disks"][1]["error"]
    assert doc["python"] == sys.version.split()[0]


def test_agent_is_python36_syntax_and_stdlib_only():
    source = AGENT.read_text()
    ast.parse(source, feature_version=(3, 6))  # no walrus, no positional-only params, ...
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert "from __future__ import annotations" not in source  # 3.7+
    assert "capture_output" not in source and "text=True" not in source  # 3.7+ subprocess arguments
    for node in ast.walk(tree):  # f-string "=" specifiers (3.8) leave a literal ending in "="
        if isinstance(node, ast.JoinedStr):
            for i, part in enumerate(node.values[:-1]):
                if isinstance(part, ast.Constant) and isinstance(node.values[i + 1], ast.FormattedValue):
                    assert not str(part.value).endswith("="), ast.unparse(node)


# -- scanning -------------------------------------------------------------------------------


def test_full_scan_sends_every_nonzero_block_and_zero_runs(tmp_path: Path):
    size = 3 * 1024 * 1024 + 12345  # a short last block
    data = make_disk(tmp_path / "d0.img", size)
    s = run_scan(header([("d0", tmp_path / "d0.img", None)]), [(b"", b"")])
    assert s.code == 0, s.stderr
    assert s.hello["version"] == agent_mod.AGENT_VERSION
    assert s.disks[0]["resync"] is True and "no block map" in s.disks[0]["reason"]
    assert s.disks[0]["size"] == size and s.disks[0]["blocks"] == 49
    nonzero = [i for i in range(49) if any(data[i * 65536:(i + 1) * 65536])]
    assert [b.index for b in s.blocks["d0"]] == nonzero
    assert all(b.mask == LAYOUT.full_mask for b in s.blocks["d0"])
    assert all(b.digest == hashlib.sha256(data[b.index * 65536:(b.index + 1) * 65536]).digest() for b in s.blocks["d0"])
    assert sum(c for _, c in s.zeros["d0"]) == 49 - len(nonzero)
    assert apply(b"\xff" * size, s, "d0", size, LAYOUT) == data
    assert s.ends[0]["changed"] == len(nonzero) and s.ends[0]["bytes_read"] == size
    assert s.trailer["ok"] is True and s.trailer["resync"] == ["d0"]


@pytest.mark.parametrize("layout", [LAYOUT, NOSUB], ids=["sub-blocks", "whole-blocks"])
def test_delta_scan_sends_only_what_changed(tmp_path: Path, layout: p.Layout):
    size = 4 * 1024 * 1024
    old = make_disk(tmp_path / "d0.img", size, fill=0.8)
    new = bytearray(old)
    new[65536 * 2 + 4096:65536 * 2 + 8192] = os.urandom(4096)  # one sub-block
    new[65536 * 9 - 100:65536 * 9 + 100] = os.urandom(200)  # straddles two blocks
    new[65536 * 20:65536 * 21] = bytes(65536)  # a block now all zero
    new[65536 * 30 + 500:65536 * 30 + 501] = b"\x01" if new[65536 * 30 + 500] != 1 else b"\x02"
    (tmp_path / "d0.img").write_bytes(new)
    block_map, sub_map = maps_of(old, layout)
    s = run_scan(header([("d0", tmp_path / "d0.img", size)], layout), [(block_map, sub_map)], layout)
    assert s.code == 0, s.stderr
    assert s.disks[0]["resync"] is False
    want_changed = [i for i in range(64) if old[i * 65536:(i + 1) * 65536] != new[i * 65536:(i + 1) * 65536] and any(new[i * 65536:(i + 1) * 65536])]
    assert [b.index for b in s.blocks["d0"]] == want_changed
    was_zero = not any(old[65536 * 20:65536 * 21])
    assert s.zeros["d0"] == ([] if was_zero else [(20, 1)])
    if layout.sub_on:
        masks = {b.index: b.mask for b in s.blocks["d0"]}
        assert masks[2] == 1 << 1
        assert masks[8] == 1 << 15 and masks[9] == 1
        assert masks[30] == 1
        sent = sum(len(b.data) for b in s.blocks["d0"])
        assert sent == 4 * 4096
    assert apply(old, s, "d0", size, layout) == bytes(new)
    # The block hashes it sent make the new map.
    m = Manifest.of(old, 65536)
    for b in s.blocks["d0"]:
        m[b.index] = b.digest
    for first, count in s.zeros["d0"]:
        m.set_zero(first, count)
    assert m == Manifest.of(bytes(new), 65536)


def test_bridge_gap_joins_nearby_changes_into_one_extent(tmp_path: Path):
    size, bs, sbs = 4 * 1024 * 1024, 65536, 4096
    old = make_disk(tmp_path / "d0.img", size, fill=1.0)
    new = bytearray(old)

    def touch(block: int, sub: int) -> None:
        at = block * bs + sub * sbs
        new[at:at + sbs] = os.urandom(sbs)

    touch(2, 1), touch(2, 14)  # 48 KiB apart in one block: bridged
    touch(5, 15), touch(7, 0)  # block 6 unchanged between them, 64 KiB: bridged, block 6 sent whole
    touch(10, 0), touch(12, 0)  # 124 KiB apart: not bridged
    touch(20, 15), touch(22, 0)
    new[21 * bs:22 * bs] = bytes(bs)  # a block turned to zeros lies between: not bridged
    (tmp_path / "d0.img").write_bytes(new)
    block_map, sub_map = maps_of(old)
    s = run_scan(header([("d0", tmp_path / "d0.img", size)], bridge_gap=64 * 1024), [(block_map, sub_map)])
    assert s.code == 0, s.stderr
    masks = {b.index: b.mask for b in s.blocks["d0"]}
    full = (1 << 16) - 1
    assert masks == {2: sum(1 << i for i in range(1, 15)), 5: 1 << 15, 6: full, 7: 1, 10: 1, 12: 1, 20: 1 << 15, 22: 1}
    assert s.zeros["d0"] == [(21, 1)]
    assert s.ends[0]["changed"] == len(masks)
    assert apply(old, s, "d0", size, LAYOUT) == bytes(new)
    m = Manifest.of(old, bs)
    for b in s.blocks["d0"]:
        m[b.index] = b.digest
        assert b.sub_hashes == maps_of(bytes(new))[1][b.index * 16 * 8:(b.index + 1) * 16 * 8]
    for first, count in s.zeros["d0"]:
        m.set_zero(first, count)
    assert m == Manifest.of(bytes(new), bs)
    # Downstream, the bridged changes are one page write each.
    from drbook.replication.cycle import SegmentWriter, plan_segment

    raw: list[bytes] = []
    w = SegmentWriter(1 << 30, lambda seq, data: raw.append(data))
    w.begin_disk({"name": "d0", "size": size, "block_size": bs, "sub_block_size": sbs, "sub_hash_len": 8})
    for kind, payload in s.frames:
        if kind in (p.BLOCK, p.ZERO):
            w.add(kind, payload)
    w.flush()
    plan = plan_segment(raw[0])["d0"]
    assert [(off, len(data)) for off, data in plan.writes] == [
        (2 * bs + sbs, 14 * sbs), (5 * bs + 15 * sbs, 2 * sbs + bs), (10 * bs, sbs), (12 * bs, sbs),
        (20 * bs + 15 * sbs, sbs), (22 * bs, sbs)]


def test_unchanged_disk_sends_nothing_and_sub_rebuild_sends_sub_hashes(tmp_path: Path):
    size = 2 * 1024 * 1024
    data = make_disk(tmp_path / "d0.img", size)
    block_map, sub_map = maps_of(data)
    s = run_scan(header([("d0", tmp_path / "d0.img", size)]), [(block_map, sub_map)])
    assert s.blocks["d0"] == [] and s.zeros["d0"] == [] and s.subs["d0"] == {}
    assert s.ends[0]["changed"] == 0 and s.trailer["ok"]
    s = run_scan(header([("d0", tmp_path / "d0.img", size)], sub_rebuild=True), [(block_map, b"")])
    nonzero = [i for i in range(32) if any(data[i * 65536:(i + 1) * 65536])]
    assert sorted(s.subs["d0"]) == nonzero
    assert b"".join(s.subs["d0"].get(i, sub_map[i * 128:(i + 1) * 128]) for i in range(32)) == sub_map


def test_resized_disk_and_bad_map_mean_resync(tmp_path: Path):
    data = make_disk(tmp_path / "d0.img", 1024 * 1024)
    block_map, _ = maps_of(data)
    s = run_scan(header([("d0", tmp_path / "d0.img", 512 * 1024)]), [(block_map, b"")])
    assert s.disks[0]["resync"] and "size changed from 524288 to 1048576" in s.disks[0]["reason"]
    s = run_scan(header([("d0", tmp_path / "d0.img", None)]), [(block_map[:-32], b"")])
    assert s.disks[0]["resync"] and "block map has 15 entries" in s.disks[0]["reason"]
    assert apply(b"", s, "d0", len(data), LAYOUT) == data


def test_two_disks_and_an_unreadable_one(tmp_path: Path):
    a = make_disk(tmp_path / "a.img", 256 * 1024, seed=2)
    make_disk(tmp_path / "b.img", 128 * 1024, seed=3)
    thawed = tmp_path / "thawed"
    hdr = header([("a", tmp_path / "a.img", None), ("missing", tmp_path / "nope.img", None)],
                 hooks={"freeze": [{"cmd": "echo frozen", "kind": "crash"}], "thaw": [{"cmd": f"touch {thawed}", "kind": "crash"}]})
    s = run_scan(hdr, [(b"", b""), (b"", b"")])
    assert s.code != 0
    assert apply(b"", s, "a", len(a), LAYOUT) == a
    assert s.errors and s.errors[0]["kind"] == "open" and "nope.img" in s.errors[0]["message"]
    assert s.trailer["ok"] is False and "nope.img" in s.trailer["error"]
    assert thawed.exists(), "the thaw hook must run when a disk fails"


def test_hooks_run_in_order_and_are_reported(tmp_path: Path):
    make_disk(tmp_path / "d.img", 128 * 1024)
    order = tmp_path / "order"
    hooks = {"freeze": [{"cmd": f"echo app >> {order}; echo flushed", "kind": "app"},
                        {"cmd": f"echo crash >> {order}; echo paused seq=7", "kind": "crash"}],
             "thaw": [{"cmd": f"echo thaw >> {order}", "kind": "crash"}, {"cmd": "echo oops >&2; exit 3", "kind": "app"}]}
    s = run_scan(header([("d", tmp_path / "d.img", None)], hooks=hooks), [(b"", b"")])
    assert order.read_text().split() == ["app", "crash", "thaw"]
    assert s.frozen["ok"] is True and [r["out"].strip() for r in s.frozen["results"]] == ["flushed", "paused seq=7"]
    t = s.trailer
    assert t["ok"] and [r["rc"] for r in t["freeze"]] == [0, 0] and [r["rc"] for r in t["thaw"]] == [0, 3]
    assert t["thaw"][1]["err"].strip() == "oops"
    assert t["frozen_at"] <= t["read_started"] <= t["read_ended"] <= t["thaw_started"]
    failing = {"freeze": [{"cmd": "exit 1", "kind": "crash"}], "thaw": []}
    s = run_scan(header([("d", tmp_path / "d.img", None)], hooks=failing), [(b"", b"")])
    assert s.frozen["ok"] is False and s.trailer["freeze"][0]["rc"] == 1 and s.trailer["ok"]


def test_barrier_waits_for_go_and_abort_thaws(tmp_path: Path):
    disk = tmp_path / "d.img"
    disk.write_bytes(b"a" * 65536)
    thawed = tmp_path / "thawed"
    hooks = {"freeze": [{"cmd": "echo frozen", "kind": "crash"}], "thaw": [{"cmd": f"echo x >> {thawed}", "kind": "crash"}]}
    shell = LocalShell()
    for signal_byte in (p.GO, p.ABORT):
        proc = shell.open_process(f"{sys.executable} {AGENT} scan")
        proc.stdin.write(p.encode_request(header([("d", disk, None)], hooks=hooks, barrier=True), [(b"", b"")]))
        proc.stdin.flush()
        reader = p.FrameReader(proc.stdout)
        kinds = []
        while not kinds or kinds[-1] != p.FROZEN:
            kinds.append(reader.read()[0])
        assert kinds == [p.HELLO, p.FROZEN]
        disk.write_bytes(b"b" * 65536)  # written while frozen, before GO: what the read must see
        time.sleep(0.2)
        assert not thawed.exists() or thawed.read_text().count("x") == (signal_byte == p.ABORT)
        proc.stdin.write(signal_byte)
        proc.stdin.close()
        s = parse([(p.HELLO, b"{}"), (p.FROZEN, b"{}")] + list(reader), LAYOUT, proc.wait(30))
        if signal_byte == p.GO:
            assert s.trailer["ok"] and bytes(s.blocks["d"][0].data) == b"b" * 65536
        else:
            assert not s.trailer["ok"] and "no go" in s.trailer["error"] and s.disks == []
        disk.write_bytes(b"a" * 65536)
    assert thawed.read_text().count("x") == 2


def test_broken_pipe_and_sigterm_still_thaw(tmp_path: Path):
    disk = tmp_path / "d.img"
    disk.write_bytes(os.urandom(16 * 1024 * 1024))
    shell = LocalShell()
    for how in ("close", "sigterm"):
        thawed = tmp_path / f"thawed-{how}"
        hooks = {"freeze": [{"cmd": "sleep 0.1" if how == "sigterm" else "true", "kind": "crash"}],
                 "thaw": [{"cmd": f"touch {thawed}", "kind": "crash"}]}
        proc = shell.open_process(f"exec {sys.executable} {AGENT} scan")
        proc.stdin.write(p.encode_request(header([("d", disk, None)], hooks=hooks), [(b"", b"")]))
        proc.stdin.close()
        reader = p.FrameReader(proc.stdout)
        assert reader.read()[0] == p.HELLO
        if how == "close":
            proc.stdout.close()
        else:
            os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(30)
        assert code in (3, 4), proc.stderr_text()
        assert thawed.exists(), how


def test_max_freeze_watchdog_thaws_early(tmp_path: Path):
    disk = tmp_path / "d.img"
    disk.write_bytes(b"x" * 65536)
    thawed = tmp_path / "thawed"
    hooks = {"freeze": [{"cmd": "true", "kind": "crash"}], "thaw": [{"cmd": f"touch {thawed}", "kind": "crash"}]}
    shell = LocalShell()
    proc = shell.open_process(f"{sys.executable} {AGENT} scan")
    proc.stdin.write(p.encode_request(header([("d", disk, None)], hooks=hooks, barrier=True, max_freeze=0.3,
                                             barrier_timeout=1.0), [(b"", b"")]))
    proc.stdin.flush()
    s = parse(list(p.FrameReader(proc.stdout)), LAYOUT, proc.wait(30))
    assert thawed.exists()
    assert s.trailer["thawed_early"] is True and s.trailer["ok"] is False


def test_bad_request_is_an_error_frame():
    shell = LocalShell()
    proc = shell.open_process(f"{sys.executable} {AGENT} scan")
    proc.stdin.write(b"GARBAGE!!")
    proc.stdin.close()
    s = parse(list(p.FrameReader(proc.stdout)), LAYOUT, proc.wait(30))
    assert s.code == 2 and s.errors[0]["kind"] == "request" and "bad magic" in s.errors[0]["message"]
    assert s.trailer["ok"] is False


# -- scan: hashes only --------------------------------------------------------------------


@pytest.mark.parametrize("layout", [LAYOUT, NOSUB], ids=["sub-blocks", "whole-blocks"])
def test_hashes_only_scan_sends_indices_and_hashes_without_data(tmp_path: Path, layout: p.Layout):
    size = 2 * 1024 * 1024 + 4096
    old = make_disk(tmp_path / "d0.img", size, fill=0.7)
    new = bytearray(old)
    new[65536 * 3 + 10:65536 * 3 + 20] = os.urandom(10)
    new[65536 * 5:65536 * 6] = bytes(65536)
    new[-100:] = os.urandom(100)  # the short last block
    (tmp_path / "d0.img").write_bytes(new)
    block_map, sub_map = maps_of(old, layout)
    s = run_scan(header([("d0", tmp_path / "d0.img", size)], layout, hashes_only=True, bridge_gap=65536),
                 [(block_map, sub_map)], layout)
    assert s.code == 0 and s.trailer["ok"], s.stderr
    assert s.disks[0]["hashes_only"] is True and s.disks[0]["resync"] is False
    blocks = 33
    chunk = [bytes(new[i * 65536:(i + 1) * 65536]) for i in range(blocks)]
    changed = [i for i in range(blocks) if chunk[i] != old[i * 65536:(i + 1) * 65536] and any(chunk[i])]
    assert [b.index for b in s.blocks["d0"]] == changed  # no bridging with hashes_only
    for b in s.blocks["d0"]:
        assert b.mask == 0 and len(b.data) == 0 and b.digest == hashlib.sha256(chunk[b.index]).digest()
        with pytest.raises(p.ProtocolError, match="invalid sub-block mask"):  # never taken for data
            p.check_block("d0", size, layout, b)
    was_zero = not any(old[65536 * 5:65536 * 6])
    assert s.zeros["d0"] == ([] if was_zero else [(5, 1)])
    assert s.ends[0]["changed"] == len(changed) and s.ends[0]["bytes_sent"] == 0
    # Without a map: the whole manifest of the disk, as hashes and zero runs.
    s = run_scan(header([("d0", tmp_path / "d0.img", None)], layout, hashes_only=True), [(b"", b"")], layout)
    m = Manifest.of(bytes(size), 65536)
    for b in s.blocks["d0"]:
        m[b.index] = b.digest
    assert m == Manifest.of(bytes(new), 65536)
    assert s.disks[0]["resync"] is True and s.ends[0]["bytes_sent"] == 0


# -- apply (master target) -------------------------------------------------------------------


@dataclass
class Applied:
    code: int
    stderr: str
    hello: dict | None = None
    disks: list[dict] = field(default_factory=list)
    ends: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    trailer: dict | None = None


def parse_apply(raw: bytes, code: int, stderr: str = "") -> Applied:
    a = Applied(code, stderr)
    for kind, payload in p.iter_frames(raw):
        doc = json.loads(bytes(payload))
        if kind == p.HELLO:
            a.hello = doc
        elif kind == p.DISK:
            a.disks.append(doc)
        elif kind == p.DISK_END:
            a.ends.append(doc)
        elif kind == p.ERROR:
            a.errors.append(doc)
        else:
            assert kind == p.TRAILER and a.trailer is None
            a.trailer = doc
    return a


def run_apply(stream: bytes, *, kill_after: int | None = None) -> Applied:
    """The agent in apply mode as a subprocess; `kill_after`: SIGKILL it once that many bytes
    of `stream` are in, before the rest is sent."""
    proc = LocalShell().open_process(f"exec {sys.executable} {AGENT} apply")
    if kill_after is None:
        try:
            proc.stdin.write(stream)
            proc.stdin.close()
        except BrokenPipeError:  # it refused the stream and stopped reading: its answer says why
            pass
        raw = proc.stdout.read()
        return parse_apply(raw, proc.wait(30), proc.stderr_text())
    proc.stdin.write(stream[:kill_after])
    proc.stdin.flush()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait(30)
    return parse_apply(b"", code)


def apply_header(disks: list[tuple[str, Path, int]]) -> bytes:
    return agent_mod.encode_apply_header({"disks": [{"name": n, "path": str(path), "size": size} for n, path, size in disks]})


@dataclass
class Op:
    disk: int
    kind: str  # "B", "Z", "E"
    offset: int = 0
    data: bytes = b""
    length: int = 0


def encode_ops(ops: list[Op], done: bool = True) -> bytes:
    out = []
    for op in ops:
        if op.kind == "B":
            out.append(agent_mod.apply_block_frame(op.disk, op.offset, op.data))
        elif op.kind == "Z":
            out.append(agent_mod.apply_zero_frame(op.disk, op.offset, op.length))
        else:
            out.append(agent_mod.apply_end_frame(op.disk))
    if done:
        out.append(agent_mod.apply_done_frame())
    return b"".join(out)


def random_ops(rng, disk: int, size: int, n: int) -> list[Op]:
    ops = []
    for _ in range(n):
        if rng.random() < 0.7:
            length = rng.choice([65536, 4096, 512, rng.randrange(1, 70000)])
            offset = rng.randrange(0, size - length + 1)
            ops.append(Op(disk, "B", offset, rng.randbytes(length)))
        else:
            length = rng.choice([65536, 3 * 65536, rng.randrange(1, 3 * 1024 * 1024)])
            length = min(length, size)
            ops.append(Op(disk, "Z", rng.randrange(0, size - length + 1), length=length))
    ops.append(Op(disk, "B", size - 1000, rng.randbytes(1000)))  # up to the very end
    return ops


def expected_after(base: bytes, ops: list[Op], disk: int) -> bytes:
    out = bytearray(base)
    for op in ops:
        if op.disk != disk:
            continue
        if op.kind == "B":
            out[op.offset:op.offset + len(op.data)] = op.data
        elif op.kind == "Z":
            out[op.offset:op.offset + op.length] = bytes(op.length)
    return bytes(out)


def write_log_sha256(ops: list[Op], disk: int) -> str:
    """The E report's sha256, computed from its definition in the agent's docstring."""
    h = hashlib.sha256()
    for op in ops:
        if op.disk == disk and op.kind == "B":
            h.update(b"B" + op.offset.to_bytes(8, "big") + len(op.data).to_bytes(8, "big") + op.data)
        elif op.disk == disk and op.kind == "Z":
            h.update(b"Z" + op.offset.to_bytes(8, "big") + op.length.to_bytes(8, "big"))
    return h.hexdigest()


def two_targets(tmp_path: Path, rng) -> tuple[list[tuple[str, Path, int]], list[bytes], list[Op]]:
    """Two targets holding old data (the first 8 KiB longer than the source), and a stream
    of random block and zero writes for them, interleaved, with disk 0 ended mid-stream."""
    sizes = [4 * 1024 * 1024 + 512, 3 * 1024 * 1024]
    bases = [rng.randbytes(sizes[0] + 8192), rng.randbytes(sizes[1])]
    disks = []
    for i, (size, base) in enumerate(zip(sizes, bases)):
        path = tmp_path / f"t{i}.img"
        path.write_bytes(base)
        disks.append((f"disk{i}", path, size))
    a, b = random_ops(rng, 0, sizes[0], 60), random_ops(rng, 1, sizes[1], 40)
    ops = []
    while a or b:
        src = a if (a and rng.random() < 0.6) or not b else b
        ops.append(src.pop(0))
    at = max(i for i, op in enumerate(ops) if op.disk == 0)
    ops.insert(at + 1, Op(0, "E"))  # disk 1 is ended by the end frame
    return disks, bases, ops


def test_apply_round_trip_writes_blocks_and_zero_ranges(tmp_path: Path):
    import random

    rng = random.Random(12)
    disks, bases, ops = two_targets(tmp_path, rng)
    a = run_apply(apply_header(disks) + encode_ops(ops))
    assert a.code == 0, (a.stderr, a.errors)
    assert a.hello["mode"] == "apply" and a.hello["version"] == agent_mod.AGENT_VERSION
    assert [(d["name"], d["kind"], d["size"], d["target_size"]) for d in a.disks] == [
        ("disk0", "file", disks[0][2], disks[0][2] + 8192), ("disk1", "file", disks[1][2], disks[1][2])]
    for i, (name, path, size) in enumerate(disks):
        assert path.read_bytes() == expected_after(bases[i], ops, i)
    assert path.stat().st_size == disks[1][2]  # never grown
    assert disks[0][1].read_bytes()[-8192:] == bases[0][-8192:]  # past `size`: untouched
    assert [e["name"] for e in a.ends] == ["disk0", "disk1"] and a.trailer == {
        **a.trailer, "ok": True, "error": None, "ended": ["disk0", "disk1"], "mode": "apply"}
    for i, end in enumerate(a.ends):
        mine = [op for op in ops if op.disk == i]
        assert end["blocks"] == sum(op.kind == "B" for op in mine)
        assert end["data_bytes"] == sum(len(op.data) for op in mine)
        assert end["zero_ranges"] == sum(op.kind == "Z" for op in mine)
        assert end["zero_bytes"] == sum(op.length for op in mine if op.kind == "Z")
        assert end["bytes_written"] == end["data_bytes"] + end["zero_bytes"]
        assert end["sha256"] == write_log_sha256(ops, i)
    # The same stream again: the same bytes and the same reports.
    again = run_apply(apply_header(disks) + encode_ops(ops))
    assert again.code == 0
    for i, (name, path, size) in enumerate(disks):
        assert path.read_bytes() == expected_after(bases[i], ops, i)
    assert [e["sha256"] for e in again.ends] == [e["sha256"] for e in a.ends]
    # The output is frames the process server's reader accepts.
    proc = LocalShell().open_process(f"{sys.executable} {AGENT} apply")
    proc.stdin.write(apply_header(disks) + encode_ops(ops))
    proc.stdin.close()
    assert [k for k, _ in p.FrameReader(proc.stdout)] == [p.HELLO, p.DISK, p.DISK, p.DISK_END, p.DISK_END, p.TRAILER]
    assert proc.wait(30) == 0


@pytest.mark.parametrize("how", ["cut-mid-frame", "cut-between-frames", "killed"])
def test_apply_interrupted_then_rerun_gives_identical_bytes(tmp_path: Path, how: str):
    import random

    rng = random.Random(7)
    disks, bases, ops = two_targets(tmp_path, rng)
    stream = apply_header(disks) + encode_ops(ops)
    half = len(stream) // 2
    if how == "cut-between-frames":
        full = apply_header(disks)
        for op in ops:
            full += encode_ops([op], done=False)
            if len(full) >= half:
                break
        cut = run_apply(full)
        assert cut.code == 2 and "ended before its end frame" in cut.trailer["error"]
    elif how == "cut-mid-frame":
        assert all(len(encode_ops([op], done=False)) > 100 or op.kind != "B" for op in ops)
        cut = run_apply(stream[:half])
        assert cut.code == 2 and cut.trailer["ok"] is False and cut.errors[0]["kind"] == "frame"
        assert "inside a frame" in cut.trailer["error"], cut.trailer
    else:
        cut = run_apply(stream, kill_after=half)
        assert cut.code == -signal.SIGKILL and cut.trailer is None
    assert any(path.read_bytes() != base for (_, path, _), base in zip(disks, bases)), "part of it was applied"
    full = run_apply(stream)
    assert full.code == 0, full.errors
    for i, (name, path, size) in enumerate(disks):
        assert path.read_bytes() == expected_after(bases[i], ops, i), name


def _untouched(paths: list[Path]):  # noqa: ANN202 - a checker
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in paths}
    return lambda: all((path.read_bytes(), path.stat().st_mtime_ns) == seen for path, seen in before.items())


def test_apply_refuses_a_target_smaller_than_its_size_before_writing(tmp_path: Path):
    good, small = tmp_path / "good.img", tmp_path / "small.img"
    good.write_bytes(b"\x11" * 1024 * 1024)
    small.write_bytes(b"\x22" * (1024 * 1024 - 512))
    untouched = _untouched([good, small])
    ops = [Op(0, "B", 0, b"\xff" * 65536), Op(1, "B", 0, b"\xff" * 65536), Op(0, "Z", 65536, length=65536)]
    a = run_apply(apply_header([("good", good, 1024 * 1024), ("small", small, 1024 * 1024)]) + encode_ops(ops))
    assert a.code == 2 and a.trailer["ok"] is False and a.disks == [] and a.ends == []
    assert a.errors == [{"disk": "small", "kind": "target", "message": a.trailer["error"]}]
    assert "1048064 bytes, smaller than the 1048576 bytes to apply" in a.trailer["error"]
    assert untouched()


def test_apply_refuses_directories_missing_paths_fifos_and_a_target_twice(tmp_path: Path):
    good = tmp_path / "good.img"
    good.write_bytes(bytes(65536))
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")  # opening it for writing would block: refused before that
    os.symlink(good, tmp_path / "link")
    untouched = _untouched([good])
    cases = {tmp_path / "dir": "not a regular file or a block device",
             tmp_path / "fifo": "not a regular file or a block device",
             tmp_path / "missing.img": "cannot stat: No such file",
             tmp_path / "link": "the same target as disk good"}
    for path, message in cases.items():
        started = time.monotonic()
        a = run_apply(apply_header([("good", good, 65536), ("bad", path, 4096)])
                      + encode_ops([Op(0, "B", 0, b"x" * 4096), Op(1, "B", 0, b"x" * 4096)]))
        assert a.code == 2 and a.errors[0]["kind"] == "target" and a.errors[0]["disk"] == "bad", a
        assert message in a.trailer["error"] and str(path) in a.trailer["error"]
        assert time.monotonic() - started < 10
        assert untouched(), path
    assert not (tmp_path / "missing.img").exists()  # never created


@pytest.mark.parametrize("op, message", [
    (Op(0, "B", 65536 - 4095, b"x" * 4096), "a block of 4096 bytes at offset 61441 is outside disk d's [0, 65536)"),
    (Op(0, "B", 1 << 63, b"x"), "outside"),
    (Op(0, "Z", 0, length=65537), "a zero range of 65537 bytes at offset 0 is outside"),
    (Op(0, "Z", 65536, length=1), "outside"),
    (Op(0, "Z", 100, length=0), "a zero range of 0 bytes"),
    (Op(1, "B", 0, b"x"), "names disk 1 of 1"),
    (Op(0, "E"), "a second end frame for disk d"),
], ids=["block-past-end", "block-huge-offset", "zeros-past-end", "zeros-at-end", "zero-length", "no-such-disk",
        "second-end"])
def test_apply_refuses_writes_outside_the_disk(tmp_path: Path, op: Op, message: str):
    target = tmp_path / "t.img"
    target.write_bytes(b"\x01" * (65536 + 8192))  # larger than the disk: the tail must stay
    first = Op(0, "B", 0, b"\x02" * 512)
    ops = [first, Op(0, "E"), op] if op.kind == "E" else [first, op]
    a = run_apply(apply_header([("d", target, 65536)]) + encode_ops(ops))
    assert a.code == 2 and a.trailer["ok"] is False and message in a.trailer["error"], a.trailer
    assert target.read_bytes() == b"\x02" * 512 + b"\x01" * (65536 + 8192 - 512)  # only the valid frame


def test_apply_after_end_frame_is_refused(tmp_path: Path):
    target = tmp_path / "t.img"
    target.write_bytes(bytes(65536))
    a = run_apply(apply_header([("d", target, 65536)]) + encode_ops([Op(0, "E"), Op(0, "B", 0, b"x")]))
    assert a.code == 2 and "a block for disk d after its end frame" in a.trailer["error"]
    assert [e["name"] for e in a.ends] == ["d"] and target.read_bytes() == bytes(65536)


def _malformed(target: Path) -> dict[str, bytes]:
    hdr = apply_header([("d", target, 65536)])
    ok = agent_mod.apply_block_frame(0, 0, b"y" * 100)
    disk = {"name": "d", "path": str(target), "size": 65536}

    def raw_header(body: bytes, magic: bytes = b"DRBA", version: int = 1) -> bytes:
        return magic + bytes([version]) + len(body).to_bytes(4, "big") + body

    return {
        "empty": b"",
        "scan-request": agent_mod.encode_request({"disks": [disk]}, [(b"", b"")]),
        "bad-version": raw_header(b"{}", version=2),
        "short-header": raw_header(b'{"disks": []}')[:-3],
        "header-not-json": raw_header(b"{not json"),
        "header-not-utf8": raw_header(b"\xff\xfe"),
        "header-a-list": raw_header(b"[]"),
        "header-huge": b"DRBA\x01\xff\xff\xff\xff",
        "no-disks": raw_header(b'{"disks": []}'),
        "size-missing": raw_header(json.dumps({"disks": [{"name": "d", "path": str(target)}]}).encode()),
        "size-bool": raw_header(json.dumps({"disks": [{**disk, "size": True}]}).encode()),
        "size-negative": raw_header(json.dumps({"disks": [{**disk, "size": -1}]}).encode()),
        "path-empty": raw_header(json.dumps({"disks": [{**disk, "path": ""}]}).encode()),
        "unknown-frame": hdr + ok + p.frame(ord("Q"), b"abc"),
        "scan-frame": hdr + ok + p.json_frame(p.HELLO, {}),
        "block-no-data": hdr + ok + p.frame(p.BLOCK, agent_mod.APPLY_BLOCK.pack(0, 0)),
        "block-short": hdr + ok + p.frame(p.BLOCK, b"\0\0"),
        "block-huge-claim": hdr + ok + p.FRAME.pack(p.BLOCK, 0xFFFFFFFF) + b"x" * 64,
        "zero-short": hdr + ok + p.frame(p.ZERO, b"\0" * 12),
        "end-long": hdr + ok + p.frame(p.DISK_END, b"\0" * 8),
        "done-with-payload": hdr + ok + p.frame(p.TRAILER, b"{}"),
        "cut-in-frame-header": hdr + ok + ok[:3],
        "cut-in-payload": hdr + ok + ok[:50],
        "garbage": hdr + bytes(range(256)) * 4,
    }


def test_malformed_apply_streams_give_an_error_trailer(tmp_path: Path):
    """Each case in process (cheap), a few also through the command line."""
    target = tmp_path / "t.img"
    target.write_bytes(bytes(65536))
    for name, stream in _malformed(target).items():
        if name in ("scan-request", "block-huge-claim", "cut-in-payload", "garbage"):
            a = run_apply(stream)
        else:
            out = io.BytesIO()
            code = agent_mod.apply(io.BytesIO(stream), out)
            a = parse_apply(out.getvalue(), code)
        assert a.code == 2, (name, a.code, a.stderr)
        assert a.trailer["ok"] is False and a.trailer["error"] and a.errors[0]["kind"] in ("request", "frame"), name
        assert "Traceback" not in a.stderr, name
        assert target.read_bytes()[100:] == bytes(65536 - 100), name  # at most the one valid block


def test_apply_mutated_streams_never_crash(tmp_path: Path):
    """In process, over a seeded corpus: any mutation of a valid stream ends in a trailer,
    exit 0 or 2 (never an internal error), and never writes outside [0, size)."""
    import random

    rng = random.Random(3)
    target = tmp_path / "t.img"
    size = 256 * 1024
    ops = random_ops(rng, 0, size, 12)
    ops = [Op(op.disk, op.kind, op.offset, op.data[:5000], min(op.length, 20000)) for op in ops]
    valid = apply_header([("d", target, size)]) + encode_ops(ops + [Op(0, "E")])
    codes = collections.Counter()
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            what, at = rng.random(), rng.randrange(len(data))
            if what < 0.4:
                data[at] ^= 1 << rng.randrange(8)
            elif what < 0.6:
                del data[at:at + rng.randrange(1, 64)]
            elif what < 0.8:
                data[at:at] = rng.randbytes(rng.randrange(1, 16))
            else:
                data = data[:at]
        target.write_bytes(b"\xaa" * (size + 4096))
        out = io.BytesIO()
        code = agent_mod.apply(io.BytesIO(bytes(data)), out)
        a = parse_apply(out.getvalue(), code)
        assert code in (0, 2) and a.trailer["ok"] is (code == 0), (code, a.trailer)
        assert target.read_bytes()[size:] == b"\xaa" * 4096 and target.stat().st_size == size + 4096
        codes[code] += 1
    assert codes[2] > 200 and codes[0] >= 1, codes
