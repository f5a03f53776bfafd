"""The agent as the process server runs it: a subprocess through a RemoteShell (here the
local one), over real files."""

from __future__ import annotations

import ast
import hashlib
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
