"""Reprotect's pure parts: which blocks move back, in what reads, and what is refused before
anything moves (the whole flow runs end to end in tests/test_e2e_reprotect.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from drbook.adapters.recovery_site import PageRange
from drbook.config import DiskConfig, MachineConfig
from drbook.errors import PreflightError, StateTransitionError
from drbook.models import AzureVmRef, ItemState, ProtectedDisk, ProtectedItem
from drbook.reprotect import blocks as blk
from drbook.reprotect.start import check_sizes, choose_target, new_record, target_kind

BS = 64 * 1024


def test_exactly_the_changed_ranges_move_and_nothing_past_the_disk():
    ranges = [PageRange(start=0, end=511), PageRange(start=BS - 512, end=BS + 511),
              PageRange(start=10 * BS, end=20 * BS)]
    spans = blk.of_ranges(ranges, 4 * BS)
    assert spans == [(0, 512), (BS - 512, BS + 512)]
    assert blk.total(spans) == 512 + 1024
    # close ranges are read as one; drift blocks are whole blocks
    assert blk.merge(spans, gap=blk.JOIN_GAP) == [(0, 512), (BS - 512, BS + 512)]
    assert blk.merge([(0, 512), (4096, 8192)], gap=blk.JOIN_GAP) == [(0, 8192)]
    assert blk.of_blocks({1, 3}, BS, 3 * BS + 100) == [(BS, 2 * BS), (3 * BS, 3 * BS + 100)]


def test_a_reversed_range_is_refused():
    with pytest.raises(ValueError):
        blk.of_ranges([PageRange(start=1024, end=0)], 4 * BS)


@given(st.lists(st.tuples(st.integers(0, 300 * 512), st.integers(1, 64 * 512)), max_size=60))
@settings(max_examples=100, deadline=None)
def test_extents_round_trip_and_reads_cover_exactly_the_spans(pairs):
    spans = [(a, a + n) for a, n in pairs]
    merged = blk.merge(spans)
    assert blk.of_extents(blk.to_extents(spans)) == merged
    covered = []
    for offset, length in blk.reads(spans, max_read=4 * 512):
        assert 0 < length <= 4 * 512
        covered.append((offset, offset + length))
    assert blk.merge(covered) == merged
    assert blk.total(covered) == blk.total(spans) == sum(b - a for a, b in merged)


def _item(state=ItemState.COMMITTED, **kw) -> ProtectedItem:
    disks = [ProtectedDisk(name="disk0", path="/d0", size_bytes=8 * BS), ProtectedDisk(name="disk1", path="/d1",
                                                                                       size_bytes=4 * BS)]
    vm = AzureVmRef(machine="app01", resource_group="rg", vm_name="app01-vm",
                    disks=[{"disk": "disk0", "resource_group": "rg", "name": "app01-disk0", "baseline_snapshot": "s0a"},
                           {"disk": "disk1", "resource_group": "rg", "name": "app01-disk1"}])
    return ProtectedItem(name="app01", machine="app01", state=state, disks=disks, failover_run_id="run1",
                         failover_point_id="pt1", azure_vms=[vm], **kw)


def _machine(name: str, sizes: list[int | None], vm: str | None = "vm") -> MachineConfig:
    return MachineConfig(name=name, vm_name=vm, address="127.0.0.1",
                         disks=[DiskConfig(name=f"disk{i}", path=f"/{name}/d{i}", size_bytes=s) for i, s in enumerate(sizes)])


def test_the_record_keeps_each_disks_baseline_and_its_targets_path():
    record = new_record(_item(), _machine("app01", [None, None]), disk_ids={"disk0": "id0", "disk1": "id1"},
                        location="westeurope", run_id="r")
    assert record.target_kind == "original"
    assert [(d.disk, d.baseline, d.baseline_is_point, d.target_path) for d in record.disks] == [
        ("disk0", "s0a", True, "/app01/d0"), ("disk1", None, False, "/app01/d1")]


@pytest.mark.parametrize("state", [ItemState.PROTECTED, ItemState.FAILED_OVER, ItemState.REPROTECTED])
def test_reprotect_needs_a_committed_failover(state):
    with pytest.raises(StateTransitionError, match="reprotect needs committed"):
        new_record(_item(state), _machine("app01", [None, None]), disk_ids={}, location="x", run_id="r")


def test_a_smaller_or_missing_target_disk_is_refused_before_anything_moves():
    with pytest.raises(PreflightError, match="smaller than disk1"):
        check_sizes(_item(), _machine("spare", [8 * BS, 4 * BS - 512]))
    with pytest.raises(PreflightError, match="has 1 disks"):
        check_sizes(_item(), _machine("spare", [8 * BS]))
    check_sizes(_item(), _machine("spare", [8 * BS, 4 * BS]))


def test_targets_kind_and_a_protected_machine_is_not_a_target():
    class Cfg:
        machines = [_machine("app01", [None]), _machine("spare", [None]), _machine("phys", [None], vm=None),
                    _machine("db01", [None])]
    item = _item()
    assert target_kind(item, choose_target(Cfg, item, None, {})) == "original"
    assert target_kind(item, choose_target(Cfg, item, "spare", {})) == "alternate"
    assert target_kind(item, choose_target(Cfg, item, "phys", {})) == "physical"
    with pytest.raises(PreflightError, match="no machine 'nope'"):
        choose_target(Cfg, item, "nope", {})
    with pytest.raises(PreflightError, match="db01 is a protected machine"):
        choose_target(Cfg, item, "db01", {"db01": ProtectedItem(name="db01", machine="db01", state=ItemState.PROTECTED)})


@pytest.mark.parametrize(("target", "vm", "kind"), [("spare01", "spare01", "alternate"), ("phys01", None, "physical")])
def test_protection_again_after_a_failback_elsewhere_follows_the_data(target, vm, kind):
    from types import SimpleNamespace

    from drbook.reprotect.model import reprotect_key
    from drbook.reprotect.reenable import follow_data, require_reenable

    item = _item(ItemState.FAILED_BACK)
    record = new_record(_item(), _machine(target, [None, None], vm=vm), disk_ids={"disk0": "id0", "disk1": "id1"},
                        location="westeurope", run_id="r").model_copy(update={"status": "committed"})
    assert record.target_kind == kind

    class Vault:
        def find(self, key, cls):  # noqa: ANN001, ANN202
            return record if key == reprotect_key("app01") else None

    site = SimpleNamespace(vault=Vault())
    assert require_reenable(site, item) is record
    follow_data(item, record)
    assert (item.machine, item.vm_name) == (target, vm)
    assert [d.path for d in item.disks] == [f"/{target}/d0", f"/{target}/d1"]
    assert [d.name for d in item.disks] == ["disk0", "disk1"] and item.name == "app01"
    record = record.model_copy(update={"status": "failed-back"})
    with pytest.raises(PreflightError, match="its failback is not committed"):
        require_reenable(site, item)


def test_a_machine_another_items_reprotect_wrote_is_not_a_target():
    class Cfg:
        machines = [_machine("app01", [None]), _machine("phys", [None], vm=None)]
    with pytest.raises(PreflightError, match="phys is the target of app02's reprotect"):
        choose_target(Cfg, _item(), "phys", {}, {"phys": "app02"})
    assert choose_target(Cfg, _item(), "phys", {}, {"phys": "app01"}).name == "phys"
