"""Crashes on the lab, for real: the process server SIGKILLed at each phase of a cycle, the
SSH connection cut mid-stream, Azurite killed mid-cycle. After each, the next cycle makes a
correct point, and no point that exists is torn: each one verifies block by block and
equals the disk at its freeze instant."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from drbook.errors import DRError, LeaseHeldError
from drbook.replication.engine import PHASES
from drbook.site import open_site
from drbook.flows.replication import enable_replication_flow
from lab.workload import paused_seq
from tests.lab_site import start_writer

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # kills Azurite, an sshd, the process server

ITEM = "app02"  # one 128 MiB disk: the smallest lab machine keeps this module quick


def _seq(point) -> int:
    return next(s for s in (paused_seq(x) for x in point.freeze_evidence) if s is not None)


def _cycle_when_free(site, timeout: float = 40):
    """The killed process still holds the item's lease until it expires (15 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return site.engine.run_cycle(ITEM)
        except LeaseHeldError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _assert_points_whole(site, writer, before: set[str]) -> None:
    """Every point made since `before` verifies block by block and holds its freeze instant."""
    for point in site.engine.points.points(ITEM):
        if point.id in before:
            continue
        report = site.engine.verify_point(ITEM, point.id)
        assert report.ok, report.summary()
        seq = _seq(point)
        if seq >= 1:
            for d in point.disks:
                blob = site.blob_service.get_blob_client(d.container, d.blob, snapshot=d.snapshot)
                assert blob.download_blob(offset=0, length=d.size_bytes).readall() == writer.expected(d.disk, seq), \
                    f"{point.id} {d.disk} is not the disk at its freeze instant"


@pytest.fixture(scope="module")
def writer(lab, site_path, tmp_path_factory):
    enable_replication_flow([ITEM], site_path=site_path)
    w = start_writer(lab, ITEM, tmp_path_factory.mktemp("crash"), rate=1, seed=31)
    w.started = time.time()
    yield w
    w.stop()


# The hardest phase for real: a half-applied cycle, replayed by the next one. All six
# phases are crashed in-process by tests/test_replication_engine.py; a real kill costs
# the 15 s the dead process's lease takes to expire, so the lab does it once.
@pytest.mark.parametrize("phase", ["mid-apply"])
def test_the_process_server_killed_at_a_phase(site_path, writer, phase):
    site = open_site(site_path)
    before = {p.id for p in site.engine.points.points(ITEM)}
    proc = subprocess.run([sys.executable, "-m", "tests.crash_cycle", site_path, ITEM, phase], timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the cycle did not reach {phase}"
    point = _cycle_when_free(site)
    after = {p.id for p in site.engine.points.points(ITEM)}
    # A cycle killed after its commit marker is replayed into a point; before it, discarded.
    replayed = PHASES.index(phase) >= PHASES.index("after-commit-marker")
    assert len(after - before) == (2 if replayed else 1)
    assert point.id in after
    _assert_points_whole(site, writer, before)


def _kill_sessions(sshd_pid: int) -> None:
    """Kill the sshd and every session it forked (children by parent pid)."""
    import os
    from pathlib import Path

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == sshd_pid:
            os.kill(int(stat.parent.name), signal.SIGKILL)
    os.kill(sshd_pid, signal.SIGKILL)


def test_the_ssh_connection_cut_mid_stream(site_path, writer, lab_control):
    """Cut while the agent holds the source frozen: its session dies mid-cycle."""
    import threading

    site = open_site(site_path)
    before = {p.id for p in site.engine.points.points(ITEM)}
    sshd = lab_control.managed(f"sshd-{ITEM}")
    cut = threading.Event()

    def cut_when_frozen() -> None:
        deadline = time.monotonic() + 30
        while not (writer.control / "pause.ack").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        _kill_sessions(sshd.pid())
        cut.set()

    cutter = threading.Thread(target=cut_when_frozen, daemon=True)
    cutter.start()
    try:
        with pytest.raises(DRError):
            site.engine.run_cycle(ITEM)
    finally:
        cutter.join(35)
        lab_control.up()
    assert cut.is_set(), "the source was never frozen"
    _cycle_when_free(site)
    _assert_points_whole(site, writer, before)


def test_azurite_killed_mid_cycle(site_path, writer, lab_control):
    site = open_site(site_path)
    before = {p.id for p in site.engine.points.points(ITEM)}
    azurite = lab_control.managed("azurite")

    def fault(at: str) -> None:
        if at == "after-commit-marker":  # the cycle is in the cache; its apply will find no Azurite
            azurite.stop()

    # Clients that give up at once on a dead Azurite (the SDK would retry for seconds).
    from drbook.adapters.blobstore import blob_service
    from drbook.replication.engine import ReplicationEngine
    from drbook.vault import Vault

    impatient = blob_service(site.cfg, retry_total=0)
    vault = Vault(impatient.get_container_client(site.cfg.azure.containers.vault))
    engine = ReplicationEngine(site.cfg, vault, impatient, site.shell_for, site.encryption_key, fault=fault)
    try:
        with pytest.raises(DRError):
            engine.run_cycle(ITEM)
    finally:
        lab_control.up()
    _cycle_when_free(site)
    _assert_points_whole(site, writer, before)
