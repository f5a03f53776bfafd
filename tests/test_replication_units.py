"""The replication engine's pure parts: protocol mirror, VHD footer, segments, manifests,
page planning, consistency, retention and RPO decisions."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import struct
import uuid

import pytest

from drbook.agent import agent as agent_mod
from drbook.errors import ProtocolError, SecretError, VerificationError
from drbook.models import ItemState, Policy, ProtectedItem, RecoveryPoint
from drbook.replication import protocol as p
from drbook.replication import vhd
from drbook.replication.consistency import judge
from drbook.replication.cycle import MAX_PAGE_WRITE, SegmentWriter, plan_segment
from drbook.replication.manifest import ZERO_BLOCK_HASH, Manifest, SubMap, sub_hashes, zero_hash
from drbook.replication.retention import decide_retention, retention_reasons
from drbook.replication.rpo import decide_rpo, next_cycle
from drbook.replication.segments import SegmentError, key_from_hex, open_segment, seal

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)

# -- protocol --------------------------------------------------------------------------------


def test_protocol_constants_mirror_the_agent():
    for name in ("MAGIC", "REQUEST_VERSION", "HASH_LEN", "HELLO", "FROZEN", "DISK", "BLOCK", "ZERO", "SUBS",
                 "PROGRESS_FRAME", "DISK_END", "ERROR", "TRAILER", "GO", "ABORT"):
        assert getattr(p, name) == getattr(agent_mod, name), name
    for name in ("FRAME", "BLOCK_HEAD", "ZEROS", "PROGRESS", "U64"):
        assert getattr(p, name).format == getattr(agent_mod, name).format, name


def test_request_round_trips_both_ways():
    header = {"disks": [{"name": "d0", "path": "/dev/sda", "size": 10}, {"name": "d1", "path": "/x", "size": None}],
              "block_size": 65536, "barrier": True, "hooks": {"freeze": [{"cmd": "x", "kind": "crash"}], "thaw": []}}
    maps = [(os.urandom(64), os.urandom(16)), (b"", b"")]
    ours = p.encode_request(header, maps)
    assert ours == agent_mod.encode_request(header, maps)
    got_header, got_maps = agent_mod.read_request(io.BytesIO(ours))
    assert got_header == header and got_maps == maps
    with pytest.raises(agent_mod.AgentError, match="ended after"):
        agent_mod.read_request(io.BytesIO(ours[:-3]))


def test_frames_round_trip_both_ways():
    layout = p.Layout(65536, 4096, 8)
    data = os.urandom(3 * 4096)
    block = agent_mod.frame(agent_mod.BLOCK, agent_mod.BLOCK_HEAD.pack(7, 0b1011) + b"h" * 32 + b"s" * 128 + data)
    stream = (agent_mod.json_frame(agent_mod.HELLO, {"version": "1"}) + block
              + agent_mod.frame(agent_mod.ZERO, agent_mod.ZEROS.pack(3, 9))
              + agent_mod.frame(agent_mod.PROGRESS_FRAME, agent_mod.PROGRESS.pack(1, 12345))
              + p.json_frame(p.TRAILER, {"ok": True}))
    frames = list(p.FrameReader(io.BytesIO(stream)))
    assert [k for k, _ in frames] == [p.HELLO, p.BLOCK, p.ZERO, p.PROGRESS_FRAME, p.TRAILER]
    assert p.parse_json(*frames[0]) == {"version": "1"}
    b = p.parse_block(frames[1][1], layout)
    assert (b.index, b.mask, b.digest, b.sub_hashes, bytes(b.data)) == (7, 0b1011, b"h" * 32, b"s" * 128, data)
    assert p.parse_zeros(frames[2][1]) == (3, 9)
    assert p.parse_progress(frames[3][1]) == (1, 12345)
    assert [(k, bytes(v)) for k, v in p.iter_frames(stream)] == frames
    # The mask's runs are where the data goes (sub-blocks 0-1 together, then 3).
    assert layout.runs(7, 0b1011, 10 ** 9) == [(7 * 65536, 8192), (7 * 65536 + 3 * 4096, 4096)]
    assert layout.runs(2, 0xFFFF, 2 * 65536 + 5000) == [(2 * 65536, 5000)]


def test_truncated_and_corrupt_streams_are_protocol_errors():
    whole = p.json_frame(p.TRAILER, {"ok": True})
    for cut in (2, len(whole) - 1):
        with pytest.raises(ProtocolError, match="ended inside"):
            list(p.FrameReader(io.BytesIO(whole[:cut])))
    with pytest.raises(ProtocolError, match="claims"):
        p.FrameReader(io.BytesIO(p.FRAME.pack(p.BLOCK, 2 ** 31))).read()
    with pytest.raises(ProtocolError, match="not valid JSON"):
        p.parse_json(p.DISK, b"{nope")
    assert ProtocolError("x").retryable


# -- VHD -------------------------------------------------------------------------------------


def test_vhd_footer_fields_and_checksum():
    uid = uuid.UUID(int=42)
    f = vhd.build_footer(128 * vhd.MIB, unique_id=uid, when=dt.datetime(2000, 1, 1, 0, 1, tzinfo=dt.timezone.utc))
    assert len(f) == 512
    assert f[:8] == b"conectix"
    assert struct.unpack(">I", f[8:12])[0] == 2
    assert struct.unpack(">I", f[12:16])[0] == 0x00010000
    assert f[16:24] == b"\xff" * 8
    assert struct.unpack(">I", f[24:28])[0] == 60
    assert struct.unpack(">QQ", f[40:56]) == (128 * vhd.MIB, 128 * vhd.MIB)
    assert struct.unpack(">I", f[60:64])[0] == 2
    assert f[68:84] == uid.bytes and f[84:] == bytes(428)
    assert (sum(f[:64]) + sum(f[68:]) + struct.unpack(">I", f[64:68])[0]) & 0xFFFFFFFF == 0xFFFFFFFF
    parsed = vhd.parse_footer(f, blob_size=128 * vhd.MIB + 512)
    assert parsed.current_size == 128 * vhd.MIB and parsed.unique_id == uid


@pytest.mark.parametrize("size", [vhd.MIB, 128 * vhd.MIB, 30 * 1024 * vhd.MIB, 2 * 1024 * 1024 * vhd.MIB])
def test_vhd_geometry_is_within_the_disk(size: int):
    cyl, heads, spt = vhd.geometry(size)
    total = size // 512
    assert cyl * heads * spt <= total
    assert heads <= 16 and spt in (17, 31, 63, 255) and cyl <= 65535


def test_vhd_known_geometries():
    # Worked by hand from the spec's algorithm: 2048 sectors -> 17 spt, 120 cyl*heads, 4 heads;
    # 262144 sectors -> 15420 cyl*heads, 16 heads; 127 GiB -> past 65535*16*63: 255 spt.
    assert vhd.geometry(1 * vhd.MIB) == (30, 4, 17)
    assert vhd.geometry(128 * vhd.MIB) == (963, 16, 17)
    assert vhd.geometry(127 * 1024 * vhd.MIB) == (65278, 16, 255)
    # 31 and 63 sectors per track in between (cyl*heads would exceed 16*1024 at 17).
    assert vhd.geometry(200 * vhd.MIB)[1:] == (16, 31)
    assert vhd.geometry(1024 * vhd.MIB)[1:] == (16, 63)


def test_vhd_invalid_footers_are_refused():
    good = bytearray(vhd.build_footer(64 * vhd.MIB))
    cases = {
        "cookie": (0, b"notavhd!"),
        "disk type": (60, struct.pack(">I", 3)),
        "data offset": (16, bytes(8)),
        "format version": (12, struct.pack(">I", 0x00020000)),
    }
    for what, (off, val) in cases.items():
        bad = bytearray(good)
        bad[off:off + len(val)] = val
        struct.pack_into(">I", bad, 64, vhd.checksum(bad))
        with pytest.raises(vhd.VhdFormatError, match=what):
            vhd.parse_footer(bytes(bad))
    flipped = bytearray(good)
    flipped[100] ^= 1
    with pytest.raises(vhd.VhdFormatError, match="checksum"):
        vhd.parse_footer(bytes(flipped))
    with pytest.raises(vhd.VhdFormatError, match="blob is"):
        vhd.parse_footer(bytes(good), blob_size=64 * vhd.MIB)
    with pytest.raises(vhd.VhdFormatError, match="512 bytes"):
        vhd.parse_footer(bytes(good[:511]))
    with pytest.raises(ValueError, match="multiple of 1 MiB"):
        vhd.build_footer(vhd.MIB + 512)
    assert isinstance(vhd.VhdFormatError("x"), VerificationError)


def test_replica_size_rounds_up_to_a_mib():
    assert vhd.replica_size(1) == vhd.MIB
    assert vhd.replica_size(vhd.MIB) == vhd.MIB
    assert vhd.replica_size(vhd.MIB + 1) == 2 * vhd.MIB
    assert vhd.blob_size(3 * vhd.MIB - 7) == 3 * vhd.MIB + 512


# -- segments --------------------------------------------------------------------------------


def test_segments_seal_and_open_and_refuse_tampering():
    key = os.urandom(32)
    raw = os.urandom(1000) + bytes(100000)
    sealed = seal(raw, key, "db01", "cy-1", 3)
    assert raw[:1000] not in sealed
    assert len(sealed) < len(raw)  # zstd took the zeros
    assert open_segment(sealed, key, "db01", "cy-1", 3) == raw
    tampered = bytearray(sealed)
    tampered[len(tampered) // 2] ^= 0x40
    for args, blob in [(("db01", "cy-1", 3), bytes(tampered)), (("db01", "cy-1", 4), sealed),
                       (("db02", "cy-1", 3), sealed), (("db01", "cy-2", 3), sealed)]:
        with pytest.raises(SegmentError, match="failed authentication"):
            open_segment(blob, key, *args)
    with pytest.raises(SegmentError, match="failed authentication"):
        open_segment(sealed, os.urandom(32), "db01", "cy-1", 3)
    with pytest.raises(SegmentError, match="truncated"):
        open_segment(sealed[:20], key, "db01", "cy-1", 3)
    a, b = seal(raw, key, "i", "c", 1), seal(raw, key, "i", "c", 1)
    assert a[5:17] != b[5:17]  # a fresh nonce every time


def test_segment_key_from_hex():
    assert key_from_hex("ab" * 32) == b"\xab" * 32
    with pytest.raises(SecretError, match="32 bytes"):
        key_from_hex("ab" * 16)
    with pytest.raises(SecretError, match="not hex") as err:
        key_from_hex("zz" * 32)
    assert "zz" not in str(err.value)


# -- manifest --------------------------------------------------------------------------------


def test_manifest_zero_hash_and_serialisation():
    assert ZERO_BLOCK_HASH == hashlib.sha256(bytes(65536)).digest()
    size = 5 * 65536 + 100
    z = Manifest.zeros(size, 65536)
    assert z.blocks == 6 and z[5] == zero_hash(100) and z.is_zero(5)
    data = bytearray(size)
    data[70000:70010] = b"x" * 10
    m = Manifest.of(bytes(data), 65536)
    assert m.diff(z) == [1]
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m and back.disk_size == size
    m.set_zero(1, 1)
    assert m == z
    with pytest.raises(VerificationError, match="not a drbook manifest"):
        Manifest.from_bytes(b"XXXX" + m.to_bytes()[4:])
    with pytest.raises(VerificationError, match="needs 6 hashes"):
        Manifest(size, 65536, b"\0" * 32)
    with pytest.raises(IndexError):
        m[6] = b"\0" * 32


def test_submap_zero_and_serialisation():
    layout = p.Layout(65536, 4096, 8)
    size = 2 * 65536 + 5000
    z = SubMap.zeros(size, layout)
    data = bytes(size)
    assert bytes(z.hashes) == b"".join(sub_hashes(data[i:i + 65536], layout) for i in range(0, size, 65536))
    assert SubMap.from_bytes(z.to_bytes()).hashes == z.hashes
    assert agent_mod.Hasher(65536, 4096, 8).sub_hashes(bytes(5000)) == z[2]


# -- page planning ---------------------------------------------------------------------------


def _segment(frames: list[bytes], size: int, layout: p.Layout) -> bytes:
    raw = bytearray()
    w = SegmentWriter(10 ** 9, lambda seq, data: raw.extend(data))
    w.begin_disk({"name": "d0", "size": size, "block_size": layout.block_size,
                  "sub_block_size": layout.sub_block_size, "sub_hash_len": layout.sub_hash_len})
    for f in frames:
        kind, length = p.FRAME.unpack_from(f)
        w.add(kind, f[p.FRAME.size:])
    w.flush()
    return bytes(raw)


def test_plan_coalesces_writes_turns_zero_runs_into_clears_and_pads():
    layout = p.Layout(65536, 4096, 8)
    size = 200 * 65536 + 1000

    def block(index: int, mask: int, data: bytes) -> bytes:
        return p.frame(p.BLOCK, p.BLOCK_HEAD.pack(index, mask) + b"h" * 32 + b"s" * 128 + data)

    frames = [block(i, 0xFFFF, os.urandom(65536)) for i in range(10, 80)]  # 70 adjacent blocks = 4.4 MiB
    frames.append(block(100, 0b101, os.urandom(4096) + bytes(4096)))  # the zero sub-block run is cleared
    frames.append(block(200, 0xFFFF, b"\x07" * 1000))  # the short last block
    frames.append(p.frame(p.ZERO, p.ZEROS.pack(150, 3)))
    frames.append(p.frame(p.ZERO, p.ZEROS.pack(153, 2)))
    plan = plan_segment(_segment(frames, size, layout))["d0"]
    assert [(o, len(d)) for o, d in plan.writes] == [(10 * 65536, 64 * 65536), (74 * 65536, 6 * 65536),
                                                      (100 * 65536, 4096), (200 * 65536, 1024)]
    assert all(len(d) <= MAX_PAGE_WRITE and o % 512 == 0 and len(d) % 512 == 0 for o, d in plan.writes)
    assert plan.writes[-1][1] == b"\x07" * 1000 + bytes(24)
    assert plan.clears == [(100 * 65536 + 8192, 4096), (150 * 65536, 5 * 65536)]


def test_segment_writer_splits_and_repeats_the_disk_frame():
    out: list[bytes] = []
    w = SegmentWriter(100_000, lambda seq, data: out.append(data))
    layout = p.Layout(65536, 0, 8)
    w.begin_disk({"name": "d0", "size": 10 * 65536, "block_size": 65536, "sub_block_size": 0, "sub_hash_len": 8})
    for i in range(3):
        w.add(p.BLOCK, p.BLOCK_HEAD.pack(i, 1) + b"h" * 32 + os.urandom(65536))
    w.flush()
    assert len(out) == 2
    for raw in out:
        assert next(iter(p.iter_frames(raw)))[0] == p.DISK
    plans = [plan_segment(raw)["d0"] for raw in out]
    assert [o for pl in plans for o, _ in pl.writes] == [0, 2 * 65536]
    assert layout.nsub == 1


# -- consistency -----------------------------------------------------------------------------


def _trailer(freeze, ok=True, thaw_after=True, early=False):
    return {"ok": ok, "freeze": freeze, "thaw": [{"cmd": "resume", "kind": "crash", "rc": 0, "out": "resumed"}],
            "frozen_at": 1.0, "read_ended": 2.0, "thaw_started": 3.0 if thaw_after else 1.5, "thawed_early": early,
            "error": None if ok else "boom"}


def test_consistency_is_honest():
    crash_ok = {"cmd": "pause", "kind": "crash", "rc": 0, "out": "paused seq=12\n"}
    app_ok = {"cmd": "flush", "kind": "app", "rc": 0, "out": "flushed"}
    app_bad = dict(app_ok, rc=1)
    assert judge(_trailer([]), "crash")[0] == "inconsistent"
    c, ev = judge(_trailer([crash_ok]), "crash")
    assert c == "crash" and any("paused seq=12" in e for e in ev)
    assert judge(_trailer([dict(crash_ok, rc=None)]), "crash")[0] == "inconsistent"
    assert judge(_trailer([crash_ok], thaw_after=False), "crash")[0] == "inconsistent"
    assert judge(_trailer([crash_ok], early=True), "crash")[0] == "inconsistent"
    assert judge(_trailer([app_ok, crash_ok]), "app")[0] == "app"
    assert judge(_trailer([app_ok, crash_ok]), "crash")[0] == "crash"
    assert judge(_trailer([app_bad, crash_ok]), "app")[0] == "crash"
    assert judge(_trailer([crash_ok]), "app")[0] == "crash"
    assert judge(_trailer([app_ok]), "app")[0] == "inconsistent"
    assert judge(_trailer([crash_ok]), "crash", barrier="ok")[0] == "crash"
    c, ev = judge(_trailer([crash_ok]), "crash", barrier="the freeze hooks of app02 failed")
    assert c == "inconsistent" and any("app02" in e for e in ev)


# -- retention -------------------------------------------------------------------------------


def _points(hours_ago: list[float]) -> list[RecoveryPoint]:
    return [RecoveryPoint(id=f"p{i}", item="db01", time=T0 - dt.timedelta(hours=h), consistency="crash")
            for i, h in enumerate(hours_ago)]


def test_retention_keeps_the_window_and_the_newest():
    pts = _points([0.1, 5, 23.9, 24.1, 30, 100])
    keep, purge = decide_retention(pts, Policy(retention_hours=24), T0)
    assert [x.id for x in keep] == ["p0", "p1", "p2"]
    assert [x.id for x in purge] == ["p3", "p4", "p5"]


def test_retention_never_purges_the_newest_point_and_honours_pins():
    pts = _points([48, 72, 96])
    keep, purge = decide_retention(pts, Policy(retention_hours=24), T0)
    assert [x.id for x in keep] == ["p0"] and [x.id for x in purge] == ["p1", "p2"]
    keep, purge = decide_retention(pts, Policy(retention_hours=24), T0, pinned={"p2"})
    assert [x.id for x in keep] == ["p0", "p2"] and [x.id for x in purge] == ["p1"]
    reasons = retention_reasons(pts, Policy(retention_hours=24), T0, pinned={"p2"})
    assert reasons == {"p0": "keep: newest point", "p1": "purge: 72.0 h old, retention is 24 h",
                       "p2": "keep: pinned (in use by a failover or drill)"}
    assert decide_retention([], Policy(), T0) == ([], [])
    keep, purge = decide_retention(_points([0.5, 1, 2]), Policy(retention_hours=0.75), T0)
    assert [x.id for x in keep] == ["p0"] and [x.id for x in purge] == ["p1", "p2"]


# -- RPO -------------------------------------------------------------------------------------


def _item(state=ItemState.PROTECTED, breached=False, last=None, last_app=None) -> ProtectedItem:
    return ProtectedItem(name="db01", machine="db01", state=state, rpo_breached=breached, last_point_time=last,
                         last_app_point_time=last_app, created=T0 - dt.timedelta(hours=5))


def test_rpo_edges():
    pol = Policy(rpo_threshold_minutes=15)
    fresh, stale = T0 - dt.timedelta(minutes=5), T0 - dt.timedelta(minutes=16)
    assert decide_rpo(_item(last=fresh), fresh, pol, T0).status == "unchanged"
    d = decide_rpo(_item(last=stale), stale, pol, T0)
    assert d.status == "breached" and d.breached and d.lag_seconds == 16 * 60
    assert decide_rpo(_item(breached=True, last=stale), stale, pol, T0).status == "unchanged"
    d = decide_rpo(_item(breached=True, last=fresh), fresh, pol, T0)
    assert d.status == "recovered" and not d.breached
    # Before the first point the lag runs from the item's creation.
    assert decide_rpo(_item(state=ItemState.INITIAL_REPLICATION), None, pol, T0).status == "breached"
    # A failed-over item does not replicate: no breach is raised for it.
    d = decide_rpo(_item(state=ItemState.FAILED_OVER, last=stale), stale, pol, T0)
    assert d.status == "unchanged" and not d.monitored
    assert decide_rpo(_item(state=ItemState.FAILED_OVER, breached=True, last=stale), stale, pol, T0).status == "recovered"


def test_next_cycle_kind():
    pol = Policy(crash_frequency_minutes=5, app_frequency_minutes=60)
    m = lambda n: T0 - dt.timedelta(minutes=n)  # noqa: E731
    assert next_cycle(_item(last=m(1), last_app=None), pol, T0) == "app"
    assert next_cycle(_item(last=m(1), last_app=m(61)), pol, T0) == "app"
    assert next_cycle(_item(last=m(6), last_app=m(30)), pol, T0) == "crash"
    assert next_cycle(_item(last=m(1), last_app=m(30)), pol, T0) is None
    assert next_cycle(_item(state=ItemState.FAILED_OVER, last=m(100)), pol, T0) is None


def test_emit_rpo_event(monkeypatch):
    import prefect.events

    from drbook.replication import events

    seen = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kw: seen.append(kw) or "event")
    stale = T0 - dt.timedelta(minutes=30)
    assert events.emit_rpo_event(decide_rpo(_item(last=stale), stale, Policy(), T0)) == "event"
    assert seen[0]["event"] == "drbook.rpo.breached"
    assert seen[0]["resource"]["prefect.resource.id"] == "drbook.item.db01"
    assert seen[0]["payload"]["lag_seconds"] == 1800
    assert events.emit_rpo_event(decide_rpo(_item(last=T0), T0, Policy(), T0)) is None
    events.emit_rpo_event(decide_rpo(_item(breached=True, last=T0), T0, Policy(), T0))
    assert seen[-1]["event"] == "drbook.rpo.recovered"


def test_a_full_spool_is_a_replication_error_naming_it(tmp_path):
    from drbook.errors import ReplicationError
    from drbook.replication.cycle import Spool

    spool = Spool(str(tmp_path))
    spool.file.close()
    spool.file = open("/dev/full", "wb")  # every write fails with ENOSPC
    with pytest.raises(ReplicationError, match=rf"spool in {tmp_path} could not take segment 3 .*No space left"):
        spool.put(3, b"x" * 100_000)
    with pytest.raises(ReplicationError, match=r"process_servers\[0\]\.cycle\.spool_dir"):
        spool.put(4, b"x" * 100_000)


# -- verifying a disk against its manifest -----------------------------------------------------


def _fixed_vhd(disk: bytes, data_size: int | None = None) -> bytearray:
    data_size = data_size or vhd.replica_size(len(disk))
    return bytearray(disk.ljust(data_size, b"\0") + vhd.build_footer(data_size))


def _check(blob: bytearray, manifest: Manifest, **kwargs):
    from drbook.replication.verify import check_against_manifest

    return check_against_manifest(lambda offset, length: bytes(blob[offset:offset + length]), len(blob), manifest, **kwargs)


def test_the_verifier_names_bad_blocks_footer_and_padding():
    disk = os.urandom(3 * 64 * 1024 + 1000)  # a short last block, padding up to 1 MiB
    manifest = Manifest.of(disk, 64 * 1024)
    seen = []
    good = _check(_fixed_vhd(disk), manifest, progress=seen.append)
    assert good.ok and good.blocks == 4 and good.bytes_verified == len(disk) == sum(seen)

    flipped = _fixed_vhd(disk)
    flipped[2 * 64 * 1024 + 7] ^= 0xFF
    assert _check(flipped, manifest).bad_blocks == [2]

    dirty_tail = _fixed_vhd(disk)
    dirty_tail[len(disk) + 10] = 1
    check = _check(dirty_tail, manifest)
    assert not check.ok and not check.tail_ok and check.footer_ok and check.bad_blocks == []

    no_footer = _fixed_vhd(disk)
    no_footer[-512:-504] = b"notavhd!"
    check = _check(no_footer, manifest)
    assert not check.ok and not check.footer_ok and "cookie" in check.footer_error

    grown = _fixed_vhd(disk, data_size=4 * vhd.MIB)  # a managed disk grown after its import
    assert not _check(grown, manifest).footer_ok
    assert _check(grown, manifest, exact_size=False).ok

    too_small = _check(_fixed_vhd(disk[:64 * 1024]), Manifest.of(disk + bytes(vhd.MIB), 64 * 1024))
    assert not too_small.ok and not too_small.footer_ok and too_small.bytes_verified == 0  # nothing read past the end


# -- cycle settings from the site config -------------------------------------------------------

SITE_YAML = """
site: test
azure:
  subscription_id: "00000000-0000-0000-0000-000000000000"
  resource_group: rg
  location: westeurope
  storage_account: acct
  blob_endpoint: https://acct.blob.core.windows.net
  encryption_key: env:UNUSED_IN_TESTS
"""


def test_cycle_settings_come_from_the_first_process_server(tmp_path):
    from drbook.config import load_site
    from drbook.errors import ConfigError
    from drbook.replication.cycle import CycleSettings

    path = tmp_path / "site.yaml"
    path.write_text(SITE_YAML)
    assert CycleSettings.from_site(load_site(path)) == CycleSettings()

    path.write_text(SITE_YAML + """
process_servers:
  - name: local
    cycle:
      spool_dir: /var/spool/drbook
      bridge_gap: 0
      page_workers: 16
  - name: other
    work_queue: other
""")
    settings = CycleSettings.from_site(load_site(path))
    assert (settings.spool_dir, settings.bridge_gap, settings.page_workers) == ("/var/spool/drbook", 0, 16)
    assert settings.block_size == CycleSettings().block_size and settings.layout.sub_on

    path.write_text(SITE_YAML + "process_servers: [{name: local, cycle: {spool: /tmp, page_workers: 0}}]\n")
    with pytest.raises(ConfigError) as err:
        load_site(path)
    assert "process_servers.0.cycle.spool" in str(err.value) and "process_servers.0.cycle.page_workers" in str(err.value)
