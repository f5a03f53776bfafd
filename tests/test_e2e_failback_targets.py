"""Failback to a machine other than the original, end to end on the lab: app02 fails over,
then comes home on spare01 (a VMware VM holding an older copy of app02's disk: the first
reverse cycle is a delta chosen by hashes), and after a second failover on phys01 (a
physical server with a blank disk: the first cycle moves every non-zero block). Each
target's disks are held to the Azure guest's write log. Protection then resumes with app02 on
the machine its data came home to: a delta against the replica in Azure.

app02 only (other modules may use db01 and app01 meanwhile), with the lab's spares."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from drbook.approvals import answer
from drbook.failover.build import resources_of_run
from drbook.flows.failover import commit_flow, failover_flow
from drbook.flows.prepare_azure import prepare_azure_flow
from drbook.flows.replication import enable_replication_flow
from drbook.flows.reprotect import failback_flow, reprotect_flow
from drbook.models import ItemState
from drbook.reprotect.model import ReprotectRecord, reprotect_key
from tests.lab_site import arm, run_in_thread, sdk, site, start_azure_writer, start_writer, wait_for_paused_run  # noqa: F401

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # fails app02 over twice; powers lab VMs off and on

M = "app02"
SPARE = "spare01"  # a VMware VM the lab leaves powered off
PHYS = "phys01"    # a physical server: no VM in vCenter
BS = 64 * 1024


def _disks(lab: dict, machine: str) -> dict[str, Path]:
    m = next(x for x in lab["machines"] if x["name"] == machine)
    return {d["name"]: Path(d["path"]) for d in m["disks"]}


def _state(site) -> ItemState:  # noqa: ANN001
    return site.vault.item(M).state


def _blocks_differing(a: bytes, b: bytes) -> int:
    return sum(1 for i in range(0, len(a), BS) if a[i:i + BS] != b[i:i + BS])


def _nonzero_blocks(data: bytes) -> int:
    zero = bytes(BS)
    return sum(1 for i in range(0, len(data), BS) if data[i:i + BS] != zero[:len(data[i:i + BS])])


def _power(site, vm: str, on: bool) -> None:  # noqa: ANN001
    from drbook.adapters.vsphere import from_site

    with from_site(site.cfg) as vc:
        if on:
            vc.power_on(vm)
        else:
            vc.power_off(vm)


def _power_state(site, vm: str) -> str:  # noqa: ANN001
    from drbook.adapters.vsphere import from_site

    with from_site(site.cfg) as vc:
        return vc.power_state(vm)


def _fail_over_and_commit(site, site_path: str) -> dict:  # noqa: ANN001
    thread, out = run_in_thread(failover_flow, [M], planned=True, approval_timeout=60, site_path=site_path)
    answer(wait_for_paused_run([M], site_path), approve=True, approver="tester")
    thread.join(300)
    assert "result" in out, f"failover failed: {out.get('error')!r}"
    [vm] = out["result"]["vms"]
    assert all(d.get("baseline_snapshot") for d in site.vault.item(M).azure_vms[0].disks), "failover took no S0"
    commit_flow([M], site_path=site_path)
    assert _state(site) == ItemState.COMMITTED
    return vm


def _reprotect_and_fail_back(lab, sdk, arm, site, site_path: str, vm: dict, at_point: dict[str, bytes],  # noqa: ANN001
                             tmp: Path, target: str, seed: int) -> tuple[dict, dict, object]:
    """Reprotect to `target` while the Azure guest writes, fail back (approved): (first
    cycle's row, failback's row, the guest writer)."""
    vm_id = sdk.compute.virtual_machines.get(vm["resource_group"], vm["vm_name"]).id
    guest = start_azure_writer(lab, arm, M, vm_id, at_point, tmp, rate=2, seed=seed)
    try:
        time.sleep(1.5)
        first = reprotect_flow([M], target=target, site_path=site_path)[0]
        assert _state(site) == ItemState.REPROTECTED
        assert (first["cycle"], first["target"]) == (1, target), first
        thread, out = run_in_thread(failback_flow, [M], approval_timeout=60, site_path=site_path)
        answer(wait_for_paused_run([M], site_path), approve=True, approver="tester")
        thread.join(300)
        assert "result" in out, f"failback failed: {out.get('error')!r}"
        guest.proc.wait(timeout=30)  # the deallocated VM refused its next write: the guest stopped
    finally:
        guest.stop()
    [row] = out["result"]
    assert row["verified"] and row["target"] == target and _state(site) == ItemState.FAILED_BACK, row
    return first, row, guest


def _commit_failback(site, site_path: str) -> None:  # noqa: ANN001
    record = site.vault.get(reprotect_key(M), ReprotectRecord)
    commit_flow([M], site_path=site_path)
    assert resources_of_run(site.azure, record.failover_run_id) == []
    assert site.vault.get(reprotect_key(M), ReprotectRecord).status == "committed"


def _protected_again_on(site, site_path: str, target: str) -> dict:  # noqa: ANN001
    """Protection resumes with the item on the machine its data came home to: a delta against
    the replica in Azure, and the new point verifies."""
    [again] = enable_replication_flow([M], site_path=site_path)
    item = site.vault.item(M)
    assert item.state == ItemState.PROTECTED and item.machine == target, item
    assert all(d.path == site.machine(target).disks[i].path for i, d in enumerate(item.disks))
    total = sum(d.size_bytes for d in item.disks)
    assert not again["resync"] and again["bytes_sent"] < total / 4, again
    assert site.engine.verify_point(M, again["point"]).ok
    return again


@pytest.fixture(scope="module", autouse=True)
def lab_vms_as_found(site):
    """spare01 is a spare: off before (a run that failed may have left it on) and after;
    app02's VM, shut down by the failovers, runs again after."""
    _power(site, SPARE, on=False)
    yield
    _power(site, SPARE, on=False)
    _power(site, site.machine(M).vm_name, on=True)


@pytest.fixture(scope="module")
def failed_over(lab, site, site_path, tmp_path_factory):
    """app02 protected; its disk as the initial copy saw it (`older`); written on-premises,
    failed over (planned) and committed."""
    tmp = tmp_path_factory.mktemp("failback-targets")
    prepare_azure_flow(site_path=site_path)
    enable_replication_flow([M], site_path=site_path)
    older = {name: path.read_bytes() for name, path in _disks(lab, M).items()}
    writer = start_writer(lab, M, tmp, rate=4, seed=61)
    try:
        time.sleep(2.0)
        vm = _fail_over_and_commit(site, site_path)
    finally:
        writer.stop()
    at_point = {name: path.read_bytes() for name, path in _disks(lab, M).items()}
    assert at_point != older, "the writer changed nothing before the failover"
    return {"vm": vm, "older": older, "at_point": at_point, "tmp": tmp}


def test_failback_to_another_vm_holding_an_older_copy_moves_a_delta(lab, sdk, arm, site, site_path, failed_over):
    spare = _disks(lab, SPARE)
    # spare01 holds app02's disk as it was before the last writes (a restore of an old backup, say).
    spare["disk0"].write_bytes(failed_over["older"]["disk0"])
    spare_disk1 = spare["disk1"].read_bytes()  # a disk app02 does not have: left alone
    assert _power_state(site, SPARE) == "poweredOff"
    size = len(failed_over["at_point"]["disk0"])
    drifted = _blocks_differing(failed_over["older"]["disk0"], failed_over["at_point"]["disk0"])

    first, row, guest = _reprotect_and_fail_back(lab, sdk, arm, site, site_path, failed_over["vm"],
                                                 failed_over["at_point"], failed_over["tmp"], SPARE, seed=63)
    print(f"\nalternate {SPARE}: first cycle moved {first['bytes_moved']} bytes of a {size}-byte disk "
          f"({first['bytes_moved'] / size:.1%}); drift {drifted} blocks ({drifted * BS} bytes), "
          f"guest changes {first['bytes_changed']} bytes; final cycle moved {row['final_bytes_moved']}")
    assert first["target_kind"] == "alternate"
    # Every block the older copy lacks moves (random data, never zero), and little else: a delta.
    assert drifted > 0
    assert drifted * BS <= first["bytes_moved"] <= drifted * BS + 4 * first["bytes_changed"] + 4 * BS, first
    assert first["bytes_moved"] < size / 4, first

    last = guest.last_seq()
    assert last > 0
    assert spare["disk0"].read_bytes() == guest.expected("disk0", last), f"{SPARE}/disk0 lost a write made in Azure"
    assert spare["disk1"].read_bytes() == spare_disk1
    assert _power_state(site, SPARE) == "poweredOn"
    record = site.vault.get(reprotect_key(M), ReprotectRecord)
    assert (record.target, record.target_kind, record.target_vm) == (SPARE, "alternate", SPARE)
    _commit_failback(site, site_path)
    _protected_again_on(site, site_path, SPARE)


def test_failback_to_a_blank_physical_server_moves_every_nonzero_block(lab, sdk, arm, site, site_path, failed_over):
    # app02 is protected on spare01 now (the test above): it fails over a second time from there.
    assert site.vault.item(M).machine == SPARE
    protected = {"disk0": _disks(lab, SPARE)["disk0"].read_bytes()}
    writer = start_writer(lab, SPARE, failed_over["tmp"], rate=4, seed=65)
    try:
        time.sleep(2.0)
        vm = _fail_over_and_commit(site, site_path)
    finally:
        writer.stop()
    at_point = {"disk0": _disks(lab, SPARE)["disk0"].read_bytes()}
    assert at_point != protected, "the writer changed nothing before the second failover"

    phys = _disks(lab, PHYS)
    with open(phys["disk0"], "r+b") as f:  # a blank disk: all zeros (sparse)
        size = f.seek(0, 2)
        f.truncate(0)
        f.truncate(size)
    nonzero = _nonzero_blocks(at_point["disk0"]) * BS

    first, row, guest = _reprotect_and_fail_back(lab, sdk, arm, site, site_path, vm, at_point,
                                                 failed_over["tmp"], PHYS, seed=67)
    print(f"\nphysical {PHYS}: first cycle moved {first['bytes_moved']} bytes of a {size}-byte disk "
          f"({first['bytes_moved'] / size:.1%}); the point has {nonzero} non-zero bytes "
          f"({_nonzero_blocks(protected['disk0']) * BS} at protection); zero blocks sent "
          f"{first['zero_bytes']}; final cycle moved {row['final_bytes_moved']}")
    assert first["target_kind"] == "physical"
    # Everything the point holds that is not zero moves (the blank disk matches only its zero blocks).
    assert nonzero - 2 * BS <= first["bytes_moved"] <= nonzero + 4 * first["bytes_changed"] + 4 * BS, first
    assert first["bytes_moved"] < size

    assert row["health"] == f"{PHYS} answers over SSH" and "physical server ready" in row["target_state"], row
    last = guest.last_seq()
    assert last > 0
    assert phys["disk0"].read_bytes() == guest.expected("disk0", last), f"{PHYS}/disk0 lost a write made in Azure"
    record = site.vault.get(reprotect_key(M), ReprotectRecord)
    assert (record.target, record.target_kind, record.target_vm) == (PHYS, "physical", None)
    _commit_failback(site, site_path)
    _protected_again_on(site, site_path, PHYS)
