"""Home again, end to end on the lab: fail over, let the guest write in Azure, reprotect while
it runs, fail back after an approval, commit, protect again with a delta. Every on-premises
disk is held to the guest's write log, independently of the manifests the flows verify with. The second
round trip tears reverse cycles at every phase and comes home through a recovery plan."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drbook.approvals import answer
from drbook.errors import LeaseHeldError, PreflightError, ReplicationError, StateTransitionError
from drbook.failover.build import resources_of_run
from drbook.flows.failover import commit_flow, failover_flow
from drbook.flows.prepare_azure import prepare_azure_flow
from drbook.flows.replication import enable_replication_flow
from drbook.flows.plan import plan_failback_flow
from drbook.flows.reprotect import failback_flow, reprotect_flow
from drbook.models import ItemState
from drbook.plans.record import PlanRunRecord
from drbook.vault import plan_run_key
from drbook.reprotect.cycle import run_cycle
from drbook.reprotect.model import ReprotectRecord, reprotect_key
from tests.lab_site import arm, run_in_thread, sdk, site, start_azure_writer, start_writer, wait_for_paused_run  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # powers lab VMs off and on; faults in cycles

M = "db01"


def _disks(lab: dict) -> dict[str, Path]:
    m = next(x for x in lab["machines"] if x["name"] == M)
    return {d["name"]: Path(d["path"]) for d in m["disks"]}


def _state(site) -> ItemState:
    return site.vault.item(M).state


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drbook.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def failed_over(lab, site, site_path, tmp_path_factory):
    """db01 protected, written, failed over (planned) and committed: what it held is on its disks."""
    tmp = tmp_path_factory.mktemp("reprotect")
    prepare_azure_flow(site_path=site_path)
    enable_replication_flow([M, "app02"], site_path=site_path)  # app02: protected, never failed over
    writer = start_writer(lab, M, tmp, rate=4, seed=41)
    try:
        time.sleep(1.0)
        thread, out = run_in_thread(failover_flow, [M], planned=True, approval_timeout=60, site_path=site_path)
        answer(wait_for_paused_run([M], site_path), approve=True, approver="tester")
        thread.join(300)
    finally:
        writer.stop()
    assert "result" in out, f"failover failed: {out.get('error')!r}"
    [vm] = out["result"]["vms"]
    assert all(d.get("baseline_snapshot") for d in site.vault.item(M).azure_vms[0].disks), "failover took no S0"
    commit_flow([M], site_path=site_path)
    assert _state(site) == ItemState.COMMITTED
    at_point = {name: path.read_bytes() for name, path in _disks(lab).items()}
    return {"vm": vm, "at_point": at_point, "tmp": tmp}


def test_illegal_orders_are_refused_and_change_nothing(site, site_path, failed_over):
    before = site.vault.item(M)
    with pytest.raises(StateTransitionError, match="failback needs reprotected"):
        failback_flow([M], approval_timeout=5, site_path=site_path)
    with pytest.raises(StateTransitionError, match="commit needs one of failed-over or failed-back"):
        commit_flow([M], site_path=site_path)  # committed already: commit needs failed-over (or failed-back)
    with pytest.raises(StateTransitionError, match="cannot reprotect app02: it is protected; reprotect needs committed"):
        reprotect_flow(["app02"], site_path=site_path)
    assert site.vault.item(M) == before
    assert site.vault.find(reprotect_key(M), ReprotectRecord) is None


def test_a_target_that_is_powered_on_or_too_small_is_refused_before_anything_moves(site, site_path, failed_over):
    from drbook.adapters.vsphere import from_site

    cfg = site.machine(M)
    with from_site(site.cfg) as vc:
        vc.power_on(cfg.vm_name)
    try:
        with pytest.raises(PreflightError, match="powered off while its disks are written"):
            reprotect_flow([M], site_path=site_path)
    finally:
        with from_site(site.cfg) as vc:
            vc.power_off(cfg.vm_name)
    assert _state(site) == ItemState.COMMITTED


def test_round_trip_reprotect_failback_commit_and_protect_again(lab, sdk, arm, site, site_path, failed_over):
    vm = failed_over["vm"]
    vm_id = sdk.compute.virtual_machines.get(vm["resource_group"], vm["vm_name"]).id
    guest = start_azure_writer(lab, arm, M, vm_id, failed_over["at_point"], failed_over["tmp"], rate=2, seed=43)
    try:
        time.sleep(1.5)
        first = reprotect_flow([M], site_path=site_path)[0]
        assert _state(site) == ItemState.REPROTECTED
        assert first["cycle"] == 1 and first["bytes_moved"] > 0
        # Only what the guest changed moves (the old disk is the baseline), at most twice the change.
        assert first["bytes_moved"] <= 2 * first["bytes_changed"] + 2 * 64 * 1024, first
        time.sleep(1.0)
        second = reprotect_flow([M], site_path=site_path)[0]
        assert second["cycle"] == 2

        thread, out = run_in_thread(failback_flow, [M], approval_timeout=60, site_path=site_path)
        run_id = wait_for_paused_run([M], site_path)
        # The failback holds db01's lease while it waits: a reprotect (or a second failback) is refused.
        with pytest.raises(LeaseHeldError):
            reprotect_flow([M], site_path=site_path)
        with pytest.raises(LeaseHeldError):
            failback_flow([M], approval_timeout=5, site_path=site_path)
        done = _cli("approve", run_id, "--comment", "home")
        assert done.returncode == 0, done.stderr
        thread.join(300)
        assert "result" in out, f"failback failed: {out.get('error')!r}"
        guest.proc.wait(timeout=30)  # the deallocated VM refused its next write: the guest stopped
    finally:
        guest.stop()
    [row] = out["result"]
    assert row["verified"] and _state(site) == ItemState.FAILED_BACK
    last = guest.last_seq()
    assert last > 0
    for name, path in _disks(lab).items():
        assert path.read_bytes() == guest.expected(name, last), f"{M}/{name} lost a write made in Azure"

    from drbook.adapters.vsphere import from_site

    with from_site(site.cfg) as vc:
        assert vc.power_state(site.machine(M).vm_name) == "poweredOn"

    # Commit refuses an unverified failback, then removes everything of the failover's run.
    record = site.vault.get(reprotect_key(M), ReprotectRecord)
    site.vault.update(reprotect_key(M), ReprotectRecord, lambda r: r.model_copy(update={"verification": None}))
    with pytest.raises(PreflightError, match="verification did not run; nothing was deleted"):
        commit_flow([M], site_path=site_path)
    assert resources_of_run(site.azure, record.failover_run_id) != []
    site.vault.update(reprotect_key(M), ReprotectRecord, lambda r: r.model_copy(update={"verification": record.verification}))
    commit_flow([M], site_path=site_path)
    assert resources_of_run(site.azure, record.failover_run_id) == []

    # Protection again: the first forward cycle is a delta against the replica in Azure.
    [again] = enable_replication_flow([M], site_path=site_path)
    assert _state(site) == ItemState.PROTECTED and not again["resync"]
    total = sum(len(b) for b in failed_over["at_point"].values())
    assert again["bytes_sent"] < total / 4, again
    report = site.engine.verify_point(M, again["point"])
    assert report.ok, report


def test_an_interrupted_reverse_cycle_resumes_without_loss(lab, lab_control, sdk, arm, site, site_path):
    """A second round trip of db01 (protected again by the test above: module order), with a cycle
    torn at every phase before it is recorded (the process server dying), one whose master-target
    agent is killed, and one whose SSH connection drops."""
    limits = arm.snapshot_limits()
    arm.set_snapshot_limits(max_per_window=50)  # six torn and whole cycles within Azure's 5 minutes
    try:
        _torn_cycles_then_failback(lab, lab_control, sdk, arm, site, site_path)
    finally:
        arm.set_snapshot_limits(max_per_window=limits["maxPerWindow"])


def _torn_cycles_then_failback(lab, lab_control, sdk, arm, site, site_path) -> None:
    thread, out = run_in_thread(failover_flow, [M], planned=True, approval_timeout=60, site_path=site_path)
    answer(wait_for_paused_run([M], site_path), approve=True, approver="tester")
    thread.join(300)
    assert "result" in out, out.get("error")
    commit_flow([M], site_path=site_path)
    [vm] = out["result"]["vms"]
    vm_id = sdk.compute.virtual_machines.get(vm["resource_group"], vm["vm_name"]).id
    at_point = {name: path.read_bytes() for name, path in _disks(lab).items()}
    guest = start_azure_writer(lab, arm, M, vm_id, at_point, Path(site_path).parent, rate=2, seed=47)
    try:
        reprotect_flow([M], site_path=site_path)
        for phase in ("snapshotted", "planned", "applying", "applied"):
            def die(at: str, phase=phase) -> None:
                if at == phase:
                    raise ReplicationError(f"injected: the process server died at {phase}")
            time.sleep(0.5)
            with pytest.raises(ReplicationError, match="injected"):
                run_cycle(site, site.vault.get(reprotect_key(M), ReprotectRecord), fault=die)

        def kill_agent(at: str) -> None:  # the master target's agent dies in the middle of its writes
            if at == "applying":
                subprocess.run(["pkill", "-KILL", "-f", "agent.py apply"], check=False)
                time.sleep(0.5)
        with pytest.raises(ReplicationError, match="master target|applying the changes failed"):
            run_cycle(site, site.vault.get(reprotect_key(M), ReprotectRecord), fault=kill_agent)

        def drop_ssh(at: str) -> None:  # the SSH connection to the master target dies mid-stream
            if at == "applying":
                daemon = lab_control.managed(f"sshd-{M}").pid()
                assert daemon, "db01's sshd is not running"
                subprocess.run(["pkill", "-KILL", "-P", str(daemon)], check=False)  # its sessions, not the daemon
                time.sleep(0.5)
        with pytest.raises(ReplicationError, match="master target|applying the changes failed"):
            run_cycle(site, site.vault.get(reprotect_key(M), ReprotectRecord), fault=drop_ssh)
        assert any(d.in_flight for d in site.vault.get(reprotect_key(M), ReprotectRecord).disks), "torn blocks on record"
        # This time home through a recovery plan: its failback script runs on the machine it came home to.
        plan = Path(site_path).parent / "home.yaml"
        plan.write_text(yaml.safe_dump({"name": "home", "groups": [{"name": "database", "machines": [M], "post": [
            {"script": "plan_check_app.sh.j2", "directions": ["failback"]}]}]}))
        thread, out = run_in_thread(plan_failback_flow, str(plan), approval_timeout=60, site_path=site_path)
        answer(wait_for_paused_run(None, site_path, flow="plan-failback"), approve=True, approver="tester")
        thread.join(300)
        assert "result" in out, f"plan failback failed: {out.get('error')!r}"
        guest.proc.wait(timeout=30)
    finally:
        guest.stop()
    for name, path in _disks(lab).items():
        assert path.read_bytes() == guest.expected(name, guest.last_seq()), f"{M}/{name} lost a write"
    result = out["result"]
    assert result["direction"] == "failback" and result["status"] == "succeeded", result
    [row] = result["machines"]
    assert row["verified"] and row["bytes_verified"] > 0 and row["vm_name"] == M
    record = site.vault.get(plan_run_key(result["run_id"]), PlanRunRecord)
    script = next(x for x in record.steps if x.kind == "script")
    recover = next(x for x in record.steps if x.kind == "recover")
    assert script.status == "succeeded" and script.started >= recover.finished
    assert "ok: the hostname answers" in script.output, script.output
    assert Path(result["report"]).exists()
    commit_flow([M], site_path=site_path)
    left = [r for r in site.azure.list_tagged("drbook-reprotect-item", M)]
    assert left == [], left
