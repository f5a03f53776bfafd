"""Prepare Azure, drill, fail over and commit, end to end on the lab, each proven byte for byte.

The machines' disks are compared in Azure, through grant-access SAS reads, with what the
workload log says they held at the recovery point's freeze instant — independently of the
manifests the flows verify against.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from azure.mgmt.compute.models import GrantAccessData
from azure.storage.blob import BlobClient

from drbook.errors import ApprovalRejected, LeaseHeldError, StateTransitionError
from drbook.approvals import answer
from drbook.failover.build import resources_of_run
from drbook.failover.prepare import isolation_nsg_name, isolated_vnet_name
from drbook.models import FailoverRecord, ItemState
from drbook.vault import failover_key
from drbook.flows.failover import commit_flow, failover_flow
from drbook.flows.prepare_azure import prepare_azure_flow
from drbook.flows.replication import enable_replication_flow, replicate_flow
from drbook.flows.drill import drill_cleanup_flow, drill_flow
from lab.workload import paused_seq
from tests.lab_site import arm, run_in_thread, sdk, site, start_writer, wait_for_paused_run  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # faults in the lab's ARM emulator; stops sshd-db01


def _disk_bytes(site, sdk, rg: str, name: str, size: int) -> bytes:
    """A managed disk's bytes, read as a person would: grant access, GET the SAS URL."""
    compute = sdk.compute
    sas = compute.disks.begin_grant_access(rg, name, GrantAccessData(access="Read", duration_in_seconds=600)).result().access_sas
    try:
        reader = BlobClient.from_blob_url(sas, connection_verify=str(site.cfg.azure.ca_bundle))
        return reader.download_blob(offset=0, length=size).readall()
    finally:
        compute.disks.begin_revoke_access(rg, name).result()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drbook.cli", *args], capture_output=True, text=True, check=True)


def _deallocate(sdk, vm: dict) -> None:
    """Azure grants no read access to the disks of a running VM: stop it first."""
    sdk.compute.virtual_machines.begin_deallocate(vm["resource_group"], vm["vm_name"]).result()


def _point_seq(point) -> int:
    seqs = [paused_seq(line) for line in point.freeze_evidence]
    seqs = [s for s in seqs if s is not None]
    assert seqs, f"point {point.id} has no freeze mark: {point.freeze_evidence}"
    return seqs[0]


def test_prepare_azure_is_idempotent_and_isolates_the_test_network(sdk, site, site_path):
    dry = prepare_azure_flow(dry_run=True, site_path=site_path)
    shared = {"drbook-lab-storage", site.cfg.azure.storage_account}  # the lab's one storage account, maybe made already
    assert dry["changed"] and {s["action"] for s in dry["steps"] if s["name"] not in shared} == {"create"}
    assert sdk.resource.resource_groups.check_existence(site.cfg.azure.resource_group) is False
    first = prepare_azure_flow(site_path=site_path)
    assert first["changed"]
    second = prepare_azure_flow(site_path=site_path)
    assert not second["changed"] and {s["action"] for s in second["steps"]} == {"unchanged"}

    rg = site.cfg.azure.resource_group
    prod = site.cfg.network_mapping[0].target_vnet
    net = sdk.network
    test_vnet = net.virtual_networks.get(rg, isolated_vnet_name(prod))
    assert list(net.virtual_network_peerings.list(rg, isolated_vnet_name(prod))) == []
    assert list(net.virtual_network_peerings.list(rg, prod)) == []
    assert test_vnet.address_space.address_prefixes == net.virtual_networks.get(rg, prod).address_space.address_prefixes
    nsg = net.network_security_groups.get(rg, isolation_nsg_name(prod))
    rules = {r.name: r for r in nsg.security_rules}
    assert rules["deny-internet-out"].access == "Deny" and rules["deny-internet-out"].destination_address_prefix == "Internet"
    assert rules["deny-all-in"].access == "Deny" and rules["deny-all-in"].direction == "Inbound"
    assert all(s.network_security_group and s.network_security_group.id.endswith(isolation_nsg_name(prod)) for s in test_vnet.subnets)


def test_protect_the_lab_machines(site, site_path):
    rows = enable_replication_flow(["db01"], site_path=site_path)
    rows += enable_replication_flow(["app01", "app02"], group="app", site_path=site_path)
    assert {r["item"] for r in rows} == {"db01", "app01", "app02"}
    assert all(site.vault.item(n).state == ItemState.PROTECTED for n in ("db01", "app01", "app02"))


def test_commit_before_failover_is_refused(site_path, site):
    before = site.vault.item("db01")
    with pytest.raises(StateTransitionError, match="cannot commit db01: it is protected; commit needs one of failed-over or failed-back"):
        commit_flow(["db01"], site_path=site_path)
    assert site.vault.item("db01") == before


def test_drill_of_an_older_point_brings_up_that_point_and_cleanup_leaves_nothing(sdk, lab, site, site_path, tmp_path):
    writer = start_writer(lab, "db01", tmp_path)
    try:
        time.sleep(1.0)
        replicate_flow(["db01"], site_path=site_path)
        time.sleep(1.0)
        replicate_flow(["db01"], site_path=site_path)
    finally:
        writer.stop()
    points = sorted(site.engine.points.points("db01"), key=lambda p: p.time)
    older, newer = points[-2], points[-1]
    assert _point_seq(older) < _point_seq(newer), "the two points must hold different instants"

    drill = drill_flow(["db01"], point=older.id, site_path=site_path)
    [vm] = drill["vms"]
    result = drill["results"][0]
    assert result["verified"] and result["point_id"] == older.id
    assert result["ip"] == "10.10.2.13", "a drill keeps the machine's IP in the isolated network"
    _deallocate(sdk, vm)
    for d in vm["disks"]:
        size = next(x.size_bytes for x in older.disks if x.disk == d["disk"])
        got = _disk_bytes(site, sdk, d["resource_group"], d["name"], size)
        assert got == writer.expected(d["disk"], _point_seq(older)), f"{d['name']} differs from point {older.id}"
    nic = sdk.network.network_interfaces.get(vm["resource_group"], "db01-nic0")
    assert isolated_vnet_name(site.cfg.network_mapping[0].target_vnet) in nic.ip_configurations[0].subnet.id

    cleaned = drill_cleanup_flow(drill["drill_id"], site_path=site_path)
    assert cleaned["left"] == []
    assert resources_of_run(site.azure, drill["flow_run_id"]) == []
    assert sdk.resource.resource_groups.check_existence(vm["resource_group"]) is False


def _everything(sdk, site, machines=("db01",)) -> dict:
    """What a failover may change: the items, their points, every resource in the group."""
    rg = site.cfg.azure.resource_group
    return {
        "items": {m: site.vault.item(m).model_dump(exclude={"updated", "etag"}) for m in machines},
        "points": {m: sorted(p.id for p in site.engine.points.points(m)) for m in machines},
        "resources": sorted(r.id for r in sdk.resource.resources.list_by_resource_group(rg)),
    }


def test_rejected_or_unanswered_approval_changes_nothing(sdk, site, site_path):
    before = _everything(sdk, site)
    thread, out = run_in_thread(failover_flow, ["db01"], point="latest-processed", approval_timeout=60, site_path=site_path)
    run_id = wait_for_paused_run(["db01"], site_path)
    # As a person would: list what waits, then reject it.
    waiting = json.loads(_cli("approvals", "--json").stdout)
    assert any(w["run_id"] == run_id and w["flow"] == "failover" and w["machines"] == "db01" for w in waiting)
    _cli("approve", run_id, "--reject", "--comment", "not today")
    thread.join(60)
    assert isinstance(out.get("error"), ApprovalRejected)
    assert resources_of_run(site.azure, run_id) == []
    assert _everything(sdk, site) == before

    thread, out = run_in_thread(failover_flow, ["db01"], point="latest-processed", approval_timeout=2, site_path=site_path)
    thread.join(60)
    assert isinstance(out.get("error"), ApprovalRejected) and "in time" in str(out["error"])
    assert site.vault.item("db01").state == ItemState.PROTECTED
    assert _everything(sdk, site) == before


def test_a_second_failover_of_a_machine_is_refused_while_one_runs(site_path):
    thread, out = run_in_thread(failover_flow, ["db01"], point="latest-processed", approval_timeout=60, site_path=site_path)
    run_id = wait_for_paused_run(["db01"], site_path)
    try:
        with pytest.raises(LeaseHeldError):
            failover_flow(["db01"], point="latest-processed", approval_timeout=5, site_path=site_path)
    finally:
        answer(run_id, approve=False, comment="test done")
        thread.join(60)


def test_failed_provisioning_rolls_back_with_nothing_leaked(sdk, site, site_path, arm):
    before = _everything(sdk, site)
    arm.inject_fault("Microsoft.Compute/virtualMachines/write", fail_provisioning=1, error_code="OSProvisioningTimedOut",
                     error_message="lab: provisioning failed")
    try:
        thread, out = run_in_thread(failover_flow, ["db01"], point="latest-processed", approval_timeout=60,
                                    site_path=site_path)
        run_id = wait_for_paused_run(["db01"], site_path)
        answer(run_id, approve=True, approver="tester")
        thread.join(180)
    finally:
        arm.clear_faults()
    # the injected fault fired, and it is what failed the failover
    assert "OSProvisioningTimedOut" in str(out.get("error")) or "provisioning failed" in str(out.get("error")), out
    assert resources_of_run(site.azure, run_id) == []
    rg = site.cfg.azure.resource_group
    assert list(sdk.compute.virtual_machines.list(rg)) == []
    assert list(sdk.compute.disks.list_by_resource_group(rg)) == []
    assert list(sdk.network.network_interfaces.list(rg)) == []
    assert _everything(sdk, site) == before
    assert site.vault.get(failover_key(run_id), FailoverRecord).status == "rolled-back"


def test_a_failure_after_the_build_moves_the_moved_items_back_and_sweeps_every_vm(sdk, site, site_path, monkeypatch):
    """The second machine's move to failed-over fails after both VMs were built: the first
    machine's move is undone (rollback-failover) and every resource of the run is swept."""
    from drbook.failover import outcome

    machines = ("app01", "app02")
    before = _everything(sdk, site, machines)
    real = outcome.mark_failed_over
    calls = []

    def second_fails(vault, row, run_id):
        calls.append(row.item)
        if len(calls) == 2:
            raise StateTransitionError(f"injected: {row.item} cannot move")
        return real(vault, row, run_id)

    monkeypatch.setattr(outcome, "mark_failed_over", second_fails)
    # `latest`: the sources answer, so a final cycle of the group makes the shared point
    thread, out = run_in_thread(failover_flow, list(machines), point="latest", approval_timeout=60,
                                site_path=site_path)
    run_id = wait_for_paused_run(list(machines), site_path)
    answer(run_id, approve=True, approver="tester")
    thread.join(300)
    assert "injected" in str(out.get("error")) and len(calls) == 2, out
    assert resources_of_run(site.azure, run_id) == []
    assert list(sdk.compute.virtual_machines.list(site.cfg.azure.resource_group)) == []
    after = _everything(sdk, site, machines)
    assert {m: i["state"] for m, i in after["items"].items()} == {m: ItemState.PROTECTED for m in machines}
    # the final cycle's shared point stays (a failover deletes no point); nothing else changed
    assert all(set(before["points"][m]) <= set(after["points"][m]) for m in machines)
    assert after["resources"] == before["resources"]
    record = site.vault.get(failover_key(run_id), FailoverRecord)
    assert record.status == "rolled-back" and record.report["reverted"] == [calls[0]]


def test_unplanned_failover_with_the_source_gone_and_arm_faults_completes_then_commits(
        sdk, lab, site, site_path, arm, lab_control, tmp_path):
    """The data center is gone (db01's sshd is down): `latest` cannot take a final point and
    falls back to the newest one; ARM throttles and fails once on the way; it completes, and
    the disks in Azure are the workload's at that point's freeze instant. Then a commit and a
    second failover of db01 start at once: the commit proceeds, the failover is refused."""
    writer = start_writer(lab, "db01", tmp_path, seed=23)
    try:
        time.sleep(1.0)
        replicate_flow(["db01"], site_path=site_path)
    finally:
        writer.stop()
    newest = max(site.engine.points.points("db01"), key=lambda p: p.time)
    lab_control.managed("sshd-db01").stop()
    arm.inject_fault("Microsoft.Compute/disks/write", server_error=1)
    arm.inject_fault("Microsoft.Network/networkInterfaces/write", throttle=1, retry_after=1)
    try:
        thread, out = run_in_thread(failover_flow, ["db01"], point="latest", approval_timeout=60,
                                    site_path=site_path)
        run_id = wait_for_paused_run(["db01"], site_path)
        answer(run_id, approve=True, approver="tester", comment="go")
        thread.join(300)
        fired = arm.faults()
    finally:
        arm.clear_faults()
        lab_control.up()
    assert "result" in out, f"failover failed: {out.get('error')!r}"
    # both injected faults were answered on the way (their counters ran down)
    assert fired["microsoft.compute/disks/write"]["serverError"] == 0, fired
    assert fired["microsoft.network/networkinterfaces/write"]["throttle"] == 0, fired
    result = out["result"]
    assert result["results"][0]["verified"]
    assert result["results"][0]["point_id"] == newest.id
    item = site.vault.item("db01")
    assert item.state == ItemState.FAILED_OVER and item.failover_point_id == result["results"][0]["point_id"]
    [vm] = result["vms"]
    assert sdk.compute.virtual_machines.get(site.cfg.azure.resource_group, vm["vm_name"]).tags["drbook-item"] == "db01"
    _deallocate(sdk, vm)
    for d in vm["disks"]:
        size = next(x.size_bytes for x in newest.disks if x.disk == d["disk"])
        got = _disk_bytes(site, sdk, d["resource_group"], d["name"], size)
        assert got == writer.expected(d["disk"], _point_seq(newest)), f"{d['name']} is not db01 at {newest.id}"

    resources = _everything(sdk, site)["resources"]
    commit_thread, commit_out = run_in_thread(commit_flow, ["db01"], site_path=site_path)
    with pytest.raises((LeaseHeldError, StateTransitionError), match="db01"):
        failover_flow(["db01"], point="latest-processed", approval_timeout=5, site_path=site_path)
    commit_thread.join(120)
    assert "result" in commit_out, f"the commit did not proceed: {commit_out.get('error')!r}"
    committed = commit_out["result"]
    assert site.vault.item("db01").state == ItemState.COMMITTED
    assert [p.id for p in site.engine.points.points("db01")] == [committed["db01"]["kept_point"]]
    assert _everything(sdk, site)["resources"] == resources, "the refused failover built something"


def test_planned_failover_of_a_group_loses_no_write(sdk, lab, site, site_path, tmp_path):
    writers = [start_writer(lab, m, tmp_path, rate=4, seed=11 + i) for i, m in enumerate(("app01", "app02"))]
    try:
        time.sleep(1.5)
        thread, out = run_in_thread(failover_flow, ["app01", "app02"], planned=True, approval_timeout=60,
                                    site_path=site_path)
        try:
            run_id = wait_for_paused_run(["app01", "app02"], site_path)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the flow: {out.get('error')!r}") from None
        answer(run_id, approve=True, approver="tester")
        thread.join(300)
        assert "result" in out, f"planned failover failed: {out.get('error')!r}"
    finally:
        for w in writers:
            w.stop()
    result = out["result"]
    point_ids = {r["point_id"] for r in result["results"]}
    assert len(point_ids) == 1, "a group fails over to one shared point"
    for w in writers:
        # Zero data loss: every write the workload made is in Azure.
        vm = next(v for v in result["vms"] if v["machine"] == w.machine)
        m = next(x for x in lab["machines"] if x["name"] == w.machine)
        _deallocate(sdk, vm)
        for d in vm["disks"]:
            size = next(x["size_bytes"] for x in m["disks"] if x["name"] == d["disk"])
            got = _disk_bytes(site, sdk, d["resource_group"], d["name"], size)
            assert got == w.expected(d["disk"], w.last_seq()), f"{w.machine}/{d['disk']} lost writes"
    assert {site.vault.item(m).state for m in ("app01", "app02")} == {ItemState.FAILED_OVER}
    assert "all disks verified" in open(result["report"]).read()


def test_reconcile_removes_what_crashed_runs_left_and_keeps_completed_ones(sdk, site, site_path):
    import uuid

    from azure.mgmt.compute.models import CreationData, Disk
    from azure.mgmt.network.models import NetworkInterface, NetworkInterfaceIPConfiguration, Subnet
    from prefect import flow

    from drbook.flows.reconcile import reconcile_flow

    @flow(name="a-run-that-dies")
    def dies() -> None:
        raise RuntimeError("the process server lost power")

    failed_run = str(dies(return_state=True).state_details.flow_run_id)
    unknown_run = str(uuid.uuid4())
    rg = site.cfg.azure.resource_group
    prod = site.cfg.network_mapping[0]
    subnet_id = sdk.network.subnets.get(rg, prod.target_vnet, prod.target_subnet).id
    for run_id, name in ((failed_run, "leftover-a"), (unknown_run, "leftover-b")):
        tags = {"drbook-site": site.cfg.site, "drbook-run": run_id, "drbook-item": "db01"}
        sdk.compute.disks.begin_create_or_update(rg, f"{name}-disk", Disk(
            location=site.cfg.azure.location, tags=tags, disk_size_gb=1,
            creation_data=CreationData(create_option="Empty"))).result()
        sdk.network.network_interfaces.begin_create_or_update(rg, f"{name}-nic", NetworkInterface(
            location=site.cfg.azure.location, tags=tags, ip_configurations=[NetworkInterfaceIPConfiguration(
                name="ipconfig1", subnet=Subnet(id=subnet_id), private_ip_allocation_method="Dynamic")])).result()
    kept_vms = [vm.name for vm in sdk.compute.virtual_machines.list(rg)]
    assert kept_vms, "the committed failover's VM is there"

    dry = reconcile_flow(dry_run=True, site_path=site_path)
    assert set(dry["orphan_runs"]) == {failed_run, unknown_run}
    assert len(resources_of_run(site.azure, failed_run)) == 2
    done = reconcile_flow(site_path=site_path)
    assert set(done["removed"]) == {failed_run, unknown_run}
    assert resources_of_run(site.azure, failed_run) == [] and resources_of_run(site.azure, unknown_run) == []
    assert [vm.name for vm in sdk.compute.virtual_machines.list(rg)] == kept_vms
