"""The chaos suite's short seeded run on the lab: one fault of each kind (the agent, the SSH
connection, Azurite, the Prefect worker; the process server's is test_e2e_crash's, at every
phase) strikes a replication cycle of
app02 while the workload writer writes; after each, a clean cycle makes a point, and every
point is whole, equal to the disk at its freeze instant, and none acknowledged is lost.
The 100-cycle run is bench/bench_chaos.py. DRBOOK_CHAOS_SEED replays another plan."""

from __future__ import annotations

import os

import pytest

from drbook.flows.replication import enable_replication_flow
from tests.chaos.faults import KINDS, Chaos, plan
from tests.lab_site import start_writer

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # kills Azurite, an sshd, the worker, the process server

ITEM = "app02"
SEED = int(os.environ.get("DRBOOK_CHAOS_SEED", "20261203"))
# The process server's SIGKILL at every phase is tests/test_e2e_crash.py's (each phase, every
# make test); the 100-cycle run (bench/bench_chaos.py) mixes all five kinds.
SHORT_RUN = tuple(k for k in KINDS if k != "process-server")


def test_one_fault_of_each_kind_tears_nothing_and_loses_nothing(lab, lab_control, site_path, tmp_path_factory):
    enable_replication_flow([ITEM], site_path=site_path)
    writer = start_writer(lab, ITEM, tmp_path_factory.mktemp("chaos"), rate=2, seed=SEED % 1000, seconds=600)
    chaos = Chaos(site_path, ITEM, lab_control, writer).start()
    faults = plan(SEED, len(SHORT_RUN), kinds=SHORT_RUN)
    assert sorted(f.kind for f in faults) == sorted(SHORT_RUN)
    outcomes = []
    try:
        for fault in faults:
            outcome = chaos.strike(fault)
            outcomes.append(outcome)
            assert outcome.fired, f"seed {SEED}: {fault.label()} did not fire: {outcome.evidence}"
            # the fault struck this cycle, not a lease left by the one before
            assert not (outcome.cycle_error or "").startswith("LeaseHeldError"), outcome.cycle_error
            chaos.clean_cycle()
            chaos.check()
    finally:
        writer.stop()
    t = chaos.tally
    story = "; ".join(f"{o.fault.label()}: {o.cycle_error or 'point ' + str(o.point_id)}" for o in outcomes)
    assert (t.torn, t.mismatches, t.lost) == ([], [], []), f"seed {SEED}: {story}"
    assert t.points_checked >= len(SHORT_RUN), f"seed {SEED}: only {t.points_checked} points checked ({story})"
