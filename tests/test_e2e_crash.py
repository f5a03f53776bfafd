"""Crashes on the lab, for real: the process server SIGKILLed at every phase of a cycle.
After each, the next cycle makes a correct point (replaying a cycle killed after its commit
marker), and no point that exists is torn: each one verifies block by block and equals the
disk at its freeze instant. More faults (agent, SSH, Azurite, the worker) are tests/chaos."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from drbook.replication.engine import PHASES
from drbook.site import open_site
from drbook.flows.replication import enable_replication_flow
from drbook.vault import lock_key
from lab.workload import paused_seq
from tests.lab_site import point_problems, start_writer

# In the parallel phase of `make test`: it kills only its own cycle processes and breaks only
# its own site's lease, and app01 is written by no other test of that phase (the continuous
# tests write app02; the writers of the serial phase run after).
pytestmark = pytest.mark.lab

ITEM = "app01"


def _seq(point) -> int:
    return next(s for s in (paused_seq(x) for x in point.freeze_evidence) if s is not None)


def _assert_points_whole(site, writer, before: set[str]) -> None:
    """Every point made since `before` is whole (its blocks match its manifest) and holds its
    freeze instant (the writer alive: a dead one answers a pause with its last seq, and
    this proves nothing)."""
    assert writer.proc.poll() is None, "the workload writer died"
    for point in site.engine.points.points(ITEM):
        if point.id in before:
            continue
        seq = _seq(point)
        assert seq >= 1, f"{point.id}: frozen before the writer's first write"
        torn, mismatched = point_problems(site, ITEM, point, lambda disk: writer.expected(disk, seq))
        assert (torn, mismatched) == ([], []), f"torn: {torn}; not the disk at its freeze instant: {mismatched}"


def _break_dead_holders_lease(site) -> bool:
    """What an operator does once the process server is known dead (`az storage blob lease
    break`): the next cycle need not wait the 15 s the lease takes to expire by itself. The
    expiry itself is proven by tests/chaos (and tests/test_vault.py)."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobLeaseClient

    blob = site.vault.container.get_blob_client(lock_key(f"item-{ITEM}"))
    if blob.get_blob_properties().lease.state != "leased":
        return False
    try:
        BlobLeaseClient(blob).break_lease(lease_break_period=0)
    except HttpResponseError:
        return False
    return True


@pytest.fixture(scope="module")
def writer(lab, site_path, tmp_path_factory):
    enable_replication_flow([ITEM], site_path=site_path)
    w = start_writer(lab, ITEM, tmp_path_factory.mktemp("crash"), rate=2, seed=31)
    time.sleep(1)  # a first write before the first freeze: every point's seq is then >= 1
    yield w
    w.stop()


# Every phase, for real: the cycle's own process SIGKILLed there (tests/crash_cycle.py), so no
# `finally`, lease release or thread of it runs, as when a process server loses power. The
# Azurite kill and the SSH cut are the chaos suite's (tests/chaos), with proof that they fired.
@pytest.mark.parametrize("phase", PHASES)
def test_the_process_server_killed_at_a_phase(site_path, writer, phase):
    site = open_site(site_path)
    before = {p.id for p in site.engine.points.points(ITEM)}
    proc = subprocess.run([sys.executable, "-m", "tests.crash_cycle", site_path, ITEM, phase], timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the cycle did not reach {phase} (exit {proc.returncode})"
    assert _break_dead_holders_lease(site), "the killed cycle held no lease on its item"
    point = site.engine.run_cycle(ITEM)
    after = {p.id for p in site.engine.points.points(ITEM)}
    # A cycle killed after its commit marker is replayed into a point; before it, discarded.
    replayed = PHASES.index(phase) >= PHASES.index("after-commit-marker")
    assert len(after - before) == (2 if replayed else 1), f"points made: {sorted(after - before)}"
    assert point.id in after
    _assert_points_whole(site, writer, before)
