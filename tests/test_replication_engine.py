"""The replication engine against a real Azurite and a real vault, with the agent running
as a subprocess through the local RemoteShell and the lab's workload writer changing the
disks underneath. Every point is read back from its blob snapshot and compared byte for
byte with the workload log replayed to the point's freeze instant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.blob_fixtures import AzuriteInfo, azurite, azurite_blob  # noqa: F401  (fixtures)

from drbook.agent import agent as agent_mod
from drbook.config import AzureConfig, ContainerNames, DiskConfig, MachineConfig, SiteConfig
from drbook.errors import DRError, PreflightError, ReplicationError
from drbook.models import ItemState, Policy, ProtectedItem, RecoveryPoint, ReplicationGroup
from drbook.replication import vhd
from drbook.replication.blobs import Replicas
from drbook.replication.cycle import CycleSettings
from drbook.replication.engine import PHASES, ReplicationEngine
from drbook.replication.local_shell import LocalShell
from drbook.replication.manifest import Manifest
from drbook.replication.store import PointStore
from drbook.vault import Vault
from lab import workload

MIB = 1024 * 1024
AGENT_DIR = str(Path(agent_mod.__file__).parent)
SETTINGS = CycleSettings(segment_bytes=256 * 1024, hook_timeout=20, idle_timeout=30, barrier_timeout=30)


@dataclass
class Machine:
    cfg: MachineConfig
    disks: dict[str, Path]
    control: Path
    log: Path
    initial: dict[str, bytes] = field(default_factory=dict)
    writer: subprocess.Popen | None = None

    def start_writer(self, rate: float = 3.0, seed: int = 5) -> None:
        self.initial = {n: p.read_bytes() for n, p in self.disks.items()}
        args = [sys.executable, "-m", "lab.workload", "run", "--log", str(self.log), "--control", str(self.control),
                "--rate", str(rate), "--seconds", "120", "--seed", str(seed), "--max-write", str(64 * 1024)]
        for n, p in self.disks.items():
            args += ["--disk", f"{n}={p}"]
        self.writer = subprocess.Popen(args)
        import time

        deadline = time.monotonic() + 10
        while not (self.control / workload.RUNNING).exists():
            assert time.monotonic() < deadline, "the workload writer did not start"
            time.sleep(0.02)

    def stop_writer(self) -> None:
        if self.writer is not None and self.writer.poll() is None:
            self.writer.send_signal(signal.SIGTERM)
            self.writer.wait(10)

    def truth(self, disk: str, seq: int) -> bytes:
        return workload.replay(self.log, disk, self.initial[disk], seq)


@dataclass
class Env:
    site: SiteConfig
    vault: Vault
    engine: ReplicationEngine
    service: object
    tmp: Path
    machines: dict[str, Machine] = field(default_factory=dict)

    def add_machine(self, name: str, disks: dict[str, int], *, quiesce: list[str] | None = None,
                    crash: bool = True) -> Machine:
        base = self.tmp / name
        (base / "disks").mkdir(parents=True)
        paths = {}
        for i, (dname, size) in enumerate(disks.items()):
            paths[dname] = base / "disks" / f"{dname}.img"
            data = bytearray(size)
            # Some data, some zeros: both kinds of block from the start.
            for off in range(0, size, 256 * 1024):
                data[off:off + 64 * 1024] = os.urandom(min(64 * 1024, size - off))
            paths[dname].write_bytes(data)
        control = base / "control"
        hook = f"{sys.executable} -m lab.workload"
        cfg = MachineConfig(
            name=name, address="127.0.0.1", agent_dir=AGENT_DIR, python=sys.executable,
            disks=[DiskConfig(name=n, path=str(p), size_bytes=disks[n]) for n, p in paths.items()],
            crash_hooks=[f"{hook} pause --control {control}"] if crash else [],
            crash_thaw_hooks=[f"{hook} resume --control {control}"] if crash else [],
            quiesce_hooks=quiesce or [], thaw_hooks=["true"] if quiesce else [],
        )
        self.site.machines.append(cfg)
        m = Machine(cfg, paths, control, base / "workload.jsonl")
        self.machines[name] = m
        return m

    def engine_with(self, **kwargs) -> ReplicationEngine:
        return ReplicationEngine(self.site, self.vault, self.service, lambda m: LocalShell(), self.engine.key,
                                 settings=kwargs.pop("settings", SETTINGS), **kwargs)

    def snapshot_bytes(self, point: RecoveryPoint, disk: str) -> bytes:
        d = next(x for x in point.disks if x.disk == disk)
        replicas = Replicas(self.service, d.container)
        size = replicas.size(d.blob, d.snapshot)
        assert size == vhd.blob_size(d.size_bytes)
        vhd.parse_footer(replicas.read(d.blob, d.snapshot, size - 512, 512), blob_size=size)
        return replicas.read(d.blob, d.snapshot, 0, d.size_bytes)

    def cache_names(self) -> list[str]:
        return list(self.service.get_container_client(self.site.azure.containers.cache).list_blob_names())


@pytest.fixture
def env(azurite: AzuriteInfo, azurite_blob, tmp_path: Path):
    uid = uuid.uuid4().hex[:10]
    names = ContainerNames(cache=f"cache-{uid}", replicas=f"replicas-{uid}", vault=f"vault-{uid}")
    site = SiteConfig(site="test", azure=AzureConfig(
        subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg", location="westeurope",
        storage_account=azurite.account, blob_endpoint=azurite.blob_endpoint, encryption_key="env:UNUSED_IN_TESTS",
        containers=names))
    vault = Vault(azurite_blob.get_container_client(names.vault), actor="test")
    vault.ensure()
    engine = ReplicationEngine(site, vault, azurite_blob, lambda m: LocalShell(), os.urandom(32), settings=SETTINGS)
    engine.ensure_containers()
    e = Env(site, vault, engine, azurite_blob, tmp_path)
    yield e
    for m in e.machines.values():
        m.stop_writer()
    for name in (names.cache, names.replicas, names.vault):
        azurite_blob.delete_container(name)


def _seq(point: RecoveryPoint) -> int:
    seq = workload.paused_seq("\n".join(point.freeze_evidence))
    assert seq is not None, point.freeze_evidence
    return seq


def test_initial_copy_then_delta_cycles_under_a_running_workload(env: Env):
    m = env.add_machine("app01", {"disk0": 4 * MIB, "disk1": 2 * MIB + 512 * 1024})
    m.start_writer(rate=4.0)
    progress: list[tuple[int, int]] = []
    item = env.engine.enable_replication(m.cfg, Policy(), progress=lambda done, total: progress.append((done, total)))
    assert item.state == ItemState.PROTECTED and item.last_point_id
    assert progress and progress[-1][0] == progress[-1][1] == 4 * MIB + 2 * MIB + 512 * 1024
    points = [PointStore(env.vault).get("app01", item.last_point_id)]
    assert points[0].resync and points[0].consistency == "crash"
    stats = []
    # Without bridging (which may add unchanged bytes between nearby changes; test_agent
    # covers it), what a delta sends is bounded by what the workload wrote.
    exact = env.engine_with(settings=SETTINGS.model_copy(update={"bridge_gap": 0}))
    for _ in range(3):
        import time

        time.sleep(0.4)
        points.append(exact.run_cycle("app01"))
        stats.append(exact.last_stats["app01"])
    m.stop_writer()
    seqs = [_seq(p) for p in points]
    assert seqs == sorted(seqs) and seqs[-1] > seqs[0] > 0
    # Every point, the oldest too after later cycles wrote over its blobs, is its own instant.
    for point, seq in zip(points, seqs):
        for disk in m.disks:
            assert env.snapshot_bytes(point, disk) == m.truth(disk, seq), (point.id, disk)
        report = env.engine.verify_point("app01", point.id)
        assert report.ok, report.summary()
    # Delta cycles send the changed 4 KiB pieces: never more than the workload wrote meanwhile.
    log = workload.read_log(m.log)
    for s, before, after in zip(stats, seqs, seqs[1:]):
        sent = sum(d["bytes_sent"] for d in s["disks"].values())
        written = sum(e["length"] for e in log if "event" not in e and before < e["seq"] <= after)
        assert 0 < sent <= written and not any(d["resync"] for d in s["disks"].values())
    later = points[1:]
    assert all(not p.resync and p.consistency == "crash" and p.cycle_id for p in later)
    assert len({p.id for p in points}) == 4
    doc = env.vault.item("app01")
    assert doc.last_point_id == points[-1].id and doc.last_app_point_time is None
    assert all(not d.resync_required for d in doc.disks)
    assert env.cache_names() == []
    # Only the newest point keeps its sub-block maps.
    subs = [k for k in env.vault.keys("manifests/app01/") if k.endswith(".sub")]
    assert subs and all(f"/{points[-1].id}/" in k for k in subs)


def test_group_points_share_an_id_and_one_frozen_instant(env: Env):
    a = env.add_machine("app01", {"disk0": 2 * MIB})
    b = env.add_machine("app02", {"disk0": 3 * MIB})
    for x in (a, b):
        env.engine.enable_replication(x.cfg, Policy(), group="app")
    a.start_writer(rate=3.0, seed=1)
    b.start_writer(rate=3.0, seed=2)
    import time

    time.sleep(0.3)
    points = env.engine.run_group_cycle("app")  # members from groups/app.json
    assert [p.item for p in points] == ["app01", "app02"]
    a.stop_writer()
    b.stop_writer()
    assert len({p.id for p in points}) == 1 and all(p.group == "app" for p in points)
    assert all(p.consistency == "crash" for p in points)
    assert all(any("group barrier" in e for e in p.freeze_evidence) for p in points)
    for point, m in zip(points, (a, b)):
        assert env.snapshot_bytes(point, "disk0") == m.truth("disk0", _seq(point))
    # The freezes overlapped: every member paused before any member resumed.
    events = [[e for e in workload.read_log(m.log) if e.get("event") in ("pause", "resume")] for m in (a, b)]
    pauses = [next(e["time"] for e in ev if e["event"] == "pause") for ev in events]
    resumes = [next(e["time"] for e in ev if e["event"] == "resume") for ev in events]
    assert max(pauses) < min(resumes)


@pytest.mark.parametrize("phase", PHASES)
def test_a_crash_at_any_phase_loses_nothing_and_tears_no_point(env: Env, phase: str):
    m = env.add_machine("db01", {"disk0": 2 * MIB, "disk1": 1 * MIB})
    env.engine.enable_replication(m.cfg, Policy())
    states = [{n: p.read_bytes() for n, p in m.disks.items()}]

    def change(seed: int) -> None:
        with open(m.disks["disk0"], "r+b") as f:
            for off in (seed * 4096, 700 * 1024 + seed * 8192, 2 * MIB - 4096):
                f.seek(off)
                f.write(os.urandom(4096))
        with open(m.disks["disk1"], "r+b") as f:
            f.seek(0)
            f.write(bytes(64 * 1024))  # a block becomes all zero
        states.append({n: p.read_bytes() for n, p in m.disks.items()})

    change(1)

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == phase:
            raise Crash(at)

    crashing = env.engine_with(fault=fault, settings=SETTINGS.model_copy(update={"segment_bytes": 8 * 1024}))
    with pytest.raises(Crash):
        crashing.run_cycle("db01")
    committed = PHASES.index(phase) >= PHASES.index("after-commit-marker")
    assert env.cache_names(), "a crash leaves its cycle in the cache"
    assert len(PointStore(env.vault).points("db01")) == 1 + (phase == "after-point-recorded")
    change(2)
    recovered = env.engine.run_cycle("db01")
    points = PointStore(env.vault).points("db01")
    # The crashed cycle became a point exactly when it had committed; the next one too.
    assert len(points) == (3 if committed else 2)
    expected = [states[0]] + ([states[1]] if committed else []) + [states[2]]
    assert points[-1].id == recovered.id
    for point, want in zip(points, expected):
        for disk, data in want.items():
            assert env.snapshot_bytes(point, disk) == data, (phase, point.id, disk)
        assert env.engine.verify_point("db01", point.id).ok
    assert env.vault.item("db01").last_point_id == recovered.id
    assert env.cache_names() == []
    # No snapshot leaked: a crash after the snapshots reuses them on replay.
    replicas = Replicas(env.service, env.site.azure.containers.replicas)
    for disk in m.disks:
        assert len(replicas.snapshots(f"replicas/db01/{disk}.vhd")) == len(points)


@pytest.mark.parametrize("phase", ["after-commit-marker", "mid-apply", "after-snapshot", "after-point-recorded"])
def test_local_staging_keeps_segments_out_of_the_cache_and_rolls_back_a_lost_apply(env: Env, phase: str):
    m = env.add_machine("db01", {"disk0": 2 * MIB})
    env.engine.enable_replication(m.cfg, Policy(staging="local"))

    initial = m.disks["disk0"].read_bytes()

    def change(offsets: tuple[int, ...], data: bytes | None = None) -> bytes:
        with open(m.disks["disk0"], "r+b") as f:
            for off in offsets:
                f.seek(off)
                f.write(data[off:off + 4096] if data is not None else os.urandom(4096))
        return m.disks["disk0"].read_bytes()

    lost = (4096, 300 * 1024, 2 * MIB - 8192)
    first = change(lost)
    seen: list[str] = []

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == "after-commit-marker":
            seen.extend(env.cache_names())
        if at == phase:
            raise Crash(at)

    with pytest.raises(Crash):
        env.engine_with(fault=fault).run_cycle("db01")
    assert any(n.endswith("/COMMITTED") for n in seen) and not any("/seg-" in n for n in seen), seen
    kept = phase == "after-point-recorded"
    # What the lost cycle wrote goes back to what the last point holds, so only a replica
    # that was really put back matches; and one more change elsewhere.
    change(lost, initial)
    second = change((900 * 1024,))
    recovered = env.engine.run_cycle("db01")
    points = PointStore(env.vault).points("db01")
    assert len(points) == (3 if kept else 2)
    # A lost apply cannot be replayed from the cache: its blocks were put back from the last
    # point's snapshot, so the next cycle was an ordinary delta (no resync, a few KiB sent).
    assert recovered.resync is False
    assert env.engine.last_stats["db01"]["disks"]["disk0"]["bytes_sent"] < 256 * 1024
    if kept:
        assert env.snapshot_bytes(points[1], "disk0") == first
    assert env.snapshot_bytes(recovered, "disk0") == second
    assert env.engine.verify_point("db01", recovered.id).ok
    assert not env.vault.item("db01").disks[0].resync_required
    assert env.cache_names() == []
    replicas = Replicas(env.service, env.site.azure.containers.replicas)
    assert len(replicas.snapshots("replicas/db01/disk0.vhd")) == len(points)
    assert env.engine.run_cycle("db01").resync is False


def test_a_resized_disk_is_resynced_and_flagged(env: Env):
    m = env.add_machine("db01", {"disk0": 2 * MIB, "disk1": MIB})
    env.engine.enable_replication(m.cfg, Policy())
    with open(m.disks["disk0"], "ab") as f:
        f.write(os.urandom(MIB + 1000))  # grows by a MiB and a bit: not a MiB multiple any more
    grown = env.engine.run_cycle("db01")
    assert grown.resync
    d0 = next(d for d in grown.disks if d.disk == "disk0")
    assert d0.size_bytes == 3 * MIB + 1000
    assert env.snapshot_bytes(grown, "disk0") == m.disks["disk0"].read_bytes()
    assert env.engine.last_stats["db01"]["disks"]["disk1"]["resync"] is False
    doc = env.vault.item("db01")
    assert next(d for d in doc.disks if d.name == "disk0").size_bytes == 3 * MIB + 1000
    assert all(not d.resync_required for d in doc.disks)
    assert env.engine.verify_point("db01", grown.id).ok
    os.truncate(m.disks["disk0"], MIB)
    shrunk = env.engine.run_cycle("db01")
    assert shrunk.resync and env.snapshot_bytes(shrunk, "disk0") == m.disks["disk0"].read_bytes()
    assert env.engine.verify_point("db01", shrunk.id).ok
    after = env.engine.run_cycle("db01")
    assert not after.resync and env.engine.last_stats["db01"]["disks"]["disk0"]["bytes_sent"] == 0


def test_consistency_follows_the_hooks(env: Env):
    ok = env.add_machine("app01", {"disk0": MIB}, quiesce=["echo flushed"])
    bad = env.add_machine("app02", {"disk0": MIB}, quiesce=["echo nope; exit 4"])
    none = env.add_machine("db01", {"disk0": MIB}, crash=False)
    for x in (ok, bad, none):
        env.engine.enable_replication(x.cfg, Policy())
    p1 = env.engine.run_cycle("app01", want="app")
    assert p1.consistency == "app" and any("flushed" in e for e in p1.freeze_evidence)
    assert env.vault.item("app01").last_app_point_time == p1.time
    p2 = env.engine.run_cycle("app02", want="app")
    assert p2.consistency == "crash" and any("quiesce hook failed" in e for e in p2.freeze_evidence)
    p3 = env.engine.run_cycle("db01")
    assert p3.consistency == "inconsistent"


def test_retention_keeps_exactly_what_the_policy_says(env: Env):
    import datetime as dt

    m = env.add_machine("db01", {"disk0": MIB})
    env.engine.enable_replication(m.cfg, Policy(retention_hours=1))
    for _ in range(3):
        env.engine.run_cycle("db01")
    store = PointStore(env.vault)
    points = store.points("db01")
    assert len(points) == 4
    later = points[-1].time + dt.timedelta(hours=2)
    replicas = Replicas(env.service, env.site.azure.containers.replicas)
    orphan = replicas.snapshot("replicas/db01/disk0.vhd")  # as if a cycle died before recording its point
    dry = env.engine.apply_retention("db01", later, dry_run=True)
    assert dry.kept == [points[-1].id] and set(dry.purged) == {p.id for p in points[:-1]}
    assert all(a.startswith("Would delete") for a in dry.actions) and len(store.points("db01")) == 4
    assert sum("orphan" in a for a in dry.actions) == 1 and replicas.snapshot_exists("replicas/db01/disk0.vhd", orphan)
    # Pin the oldest (a drill uses it): it stays.
    done = env.engine.apply_retention("db01", later, pinned=(points[0].id,))
    assert set(done.kept) == {points[0].id, points[-1].id}
    assert [p.id for p in store.points("db01")] == [points[0].id, points[-1].id]
    assert not replicas.snapshot_exists("replicas/db01/disk0.vhd", orphan)
    assert len(replicas.snapshots("replicas/db01/disk0.vhd")) == 2
    for p in points:
        alive = p.id in done.kept
        for d in p.disks:
            assert replicas.snapshot_exists(d.blob, d.snapshot) == alive
        assert bool(env.vault.keys(f"manifests/db01/{p.id}/")) == alive
    assert env.engine.verify_point("db01", points[-1].id).ok


def test_a_tampered_committed_segment_forces_a_resync(env: Env):
    m = env.add_machine("db01", {"disk0": 2 * MIB})
    env.engine.enable_replication(m.cfg, Policy())
    with open(m.disks["disk0"], "r+b") as f:
        f.write(os.urandom(100_000))

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == "after-commit-marker":
            raise Crash(at)

    with pytest.raises(Crash):
        env.engine_with(fault=fault).run_cycle("db01")
    cache = env.service.get_container_client(env.site.azure.containers.cache)
    seg = next(n for n in cache.list_blob_names() if "/seg-" in n)
    data = bytearray(cache.download_blob(seg).readall())
    data[-5] ^= 1
    cache.upload_blob(seg, bytes(data), overwrite=True)
    done = env.engine.recover("db01")
    assert "could not replay" in done[0]
    assert env.vault.item("db01").disks[0].resync_required
    point = env.engine.run_cycle("db01")
    assert point.resync and env.snapshot_bytes(point, "disk0") == m.disks["disk0"].read_bytes()
    assert env.engine.verify_point("db01", point.id).ok


def test_verify_point_reports_a_corrupted_snapshot_block(env: Env):
    m = env.add_machine("db01", {"disk0": MIB})
    env.engine.enable_replication(m.cfg, Policy())
    point = PointStore(env.vault).get("db01", env.vault.item("db01").last_point_id)
    # Corrupt the manifest instead of the (immutable) snapshot: the check must name the block.
    store = PointStore(env.vault)
    man = store.manifest("db01", point.id, "disk0")
    bad = Manifest(man.disk_size, man.block_size, man.hashes)
    bad[5] = b"\x01" * 32
    store.put_manifest("db01", point.id, "disk0", bad)
    report = env.engine.verify_point("db01", point.id)
    assert not report.ok and report.disks[0].bad_blocks == [5] and "disk0" in report.summary()


def test_enable_refuses_a_machine_in_another_group_before_touching_anything(env: Env):
    m = env.add_machine("db01", {"disk0": MIB})
    env.vault.save_item(ProtectedItem(name="db01", machine="db01", group="app"))  # e.g. pushed, enabled before
    before = env.vault.item("db01")
    with pytest.raises(PreflightError, match=r"db01 is already in replication group 'app', so it cannot join 'db'"):
        env.engine.enable_replication(m.cfg, Policy(), group="db")
    assert env.vault.item("db01") == before and env.vault.find("groups/db.json", ReplicationGroup) is None
    assert PointStore(env.vault).points("db01") == [] and env.cache_names() == []
    assert list(env.service.get_container_client(env.site.azure.containers.replicas).list_blob_names()) == []
    # A membership known only from the group's document counts too.
    n = env.add_machine("db02", {"disk0": MIB})
    env.vault.put("groups/app.json", ReplicationGroup(name="app", members=["db02"]), create_only=True)
    with pytest.raises(PreflightError, match="db02 is already in replication group 'app'"):
        env.engine.enable_replication(n.cfg, Policy(), group="db")
    assert env.vault.find_item("db02") is None


def test_cycles_refuse_items_that_do_not_replicate(env: Env):
    m = env.add_machine("db01", {"disk0": MIB})
    env.vault.save_item(ProtectedItem(name="db01", machine="db01"))
    with pytest.raises(PreflightError, match="unprotected"):
        env.engine.run_cycle("db01")
    assert m.cfg.name == "db01"


@pytest.mark.parametrize("phase", ["after-segment-upload", "after-commit-marker"])
def test_a_crash_during_the_initial_copy(env: Env, phase: str):
    """The initial copy writes straight to the replica (no cache): a crash before its commit
    leaves the disks flagged for resync, so the next attempt copies everything again."""
    m = env.add_machine("db01", {"disk0": 2 * MIB})

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == phase:
            raise Crash(at)

    with pytest.raises(Crash):
        env.engine_with(fault=fault).enable_replication(m.cfg, Policy())
    doc = env.vault.item("db01")
    assert doc.state == ItemState.INITIAL_REPLICATION and doc.disks[0].resync_required
    with open(m.disks["disk0"], "r+b") as f:
        f.write(os.urandom(8192))
    item = env.engine.enable_replication(m.cfg, Policy())
    assert item.state == ItemState.PROTECTED
    points = PointStore(env.vault).points("db01")
    assert len(points) == (2 if phase == "after-commit-marker" else 1)
    assert env.snapshot_bytes(points[-1], "disk0") == m.disks["disk0"].read_bytes()
    assert all(env.engine.verify_point("db01", p.id).ok for p in points)
    assert not env.vault.item("db01").disks[0].resync_required and env.cache_names() == []


def test_a_member_that_cannot_freeze_aborts_the_group_and_thaws_the_others(env: Env):
    a = env.add_machine("app01", {"disk0": MIB})
    b = env.add_machine("app02", {"disk0": MIB})
    for x in (a, b):
        env.engine.enable_replication(x.cfg, Policy(), group="app")
    thawed = env.tmp / "app01-thawed"
    a.cfg.crash_thaw_hooks.append(f"touch {thawed}")
    before = {n: env.vault.item(n).last_point_id for n in ("app01", "app02")}
    engine = env.engine_with(settings=SETTINGS.model_copy(update={"barrier_timeout": 0.5}))
    b.cfg.crash_hooks.insert(0, "sleep 1.5")  # app02 freezes too late for the barrier
    with pytest.raises(ReplicationError, match="group barrier aborted.*app02: not frozen within 0.5s"):
        engine.run_group_cycle("app", ["app01", "app02"])
    assert thawed.exists(), "app01 was frozen for the barrier and must be thawed"
    b.cfg.crash_hooks.pop(0)
    b.cfg.python = "/nonexistent/python3"  # app02's agent does not even start
    thawed.unlink()
    with pytest.raises(DRError, match="app02"):
        env.engine.run_group_cycle("app", ["app01", "app02"])
    assert {n: env.vault.item(n).last_point_id for n in ("app01", "app02")} == before
    assert len(PointStore(env.vault).points("app01")) == 1 and env.cache_names() == []
    # A member whose freeze hook fails: the group still gets its points, honestly inconsistent.
    b.cfg.python = sys.executable
    b.cfg.crash_hooks.insert(0, "exit 9")
    points = env.engine.run_group_cycle("app", ["app01", "app02"])
    assert [p.consistency for p in points] == ["inconsistent", "inconsistent"]
    assert all(any("freeze hooks of app02 failed" in e for e in p.freeze_evidence) for p in points)
