"""Drill decisions with plain data: which machines a scheduled drill takes, and which
earlier drills still up refuse a new one (and how the refusal reads)."""

from __future__ import annotations

import datetime as dt

import pytest

from drbook.errors import PreflightError
from drbook.failover.drills import blocking_drills, drill_targets, outcome_markdown, require_no_live_drill
from drbook.models import DrillRecord, ItemState, ProtectedItem

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def _item(name: str, group: str | None = None, state: ItemState = ItemState.PROTECTED) -> ProtectedItem:
    return ProtectedItem(name=name, machine=name, group=group, state=state)


def _drill(drill_id: str, items: list[str], status: str, minutes: int = 0) -> DrillRecord:
    return DrillRecord(drill_id=drill_id, items=items, status=status, started=T0 + dt.timedelta(minutes=minutes),
                       resource_group=f"drbook-{drill_id}", report={"flow_run_id": f"run-of-{drill_id}"})


ITEMS = [_item("app01", "app"), _item("app02", "app"), _item("db01"), _item("web01", state=ItemState.INITIAL_REPLICATION),
         _item("old01", state=ItemState.FAILED_OVER)]


# -- which drills block -------------------------------------------------------------------

def test_running_and_succeeded_drills_block_failed_and_cleaned_up_ones_do_not():
    records = [_drill("d-ok", ["db01"], "succeeded", 2), _drill("d-run", ["db01"], "running", 1),
               _drill("d-failed", ["db01"], "failed"), _drill("d-gone", ["db01"], "cleaned-up")]
    assert [r.drill_id for r in blocking_drills(records, ["db01"])] == ["d-run", "d-ok"]


def test_only_drills_sharing_a_machine_block():
    records = [_drill("d-app", ["app01", "app02"], "succeeded")]
    assert blocking_drills(records, ["db01"]) == []
    assert [r.drill_id for r in blocking_drills(records, ["db01", "app02"])] == ["d-app"]
    require_no_live_drill(records, ["db01"])  # no refusal


def test_a_drill_still_up_is_named_with_its_cleanup_command():
    records = [_drill("drill-20261121-aa", ["db01", "app01"], "succeeded")]
    with pytest.raises(PreflightError) as err:
        require_no_live_drill(records, ["db01"])
    msg = str(err.value)
    assert msg.startswith("cannot drill db01: drill drill-20261121-aa of db01 (flow run run-of-drill-20261121-aa")
    assert "resource group drbook-drill-20261121-aa" in msg and "is still up" in msg
    assert "`drbook test-failover-cleanup drill-20261121-aa`" in msg
    assert msg.endswith("Nothing was changed")


def test_a_drill_whose_run_crashed_names_the_record_and_the_way_out():
    records = [_drill("drill-crashed", ["db01"], "running")]
    with pytest.raises(PreflightError) as err:
        require_no_live_drill(records, ["db01"])
    msg = str(err.value)
    assert "drill drill-crashed of db01 (flow run run-of-drill-crashed" in msg
    assert "its run crashed and left the record running" in msg
    assert "`drbook test-failover-cleanup drill-crashed` removes what it made and closes the record" in msg
    assert "drbook reconcile" in msg


def test_every_blocking_drill_is_named():
    records = [_drill("d1", ["db01"], "succeeded"), _drill("d2", ["app01"], "running", 1)]
    with pytest.raises(PreflightError) as err:
        require_no_live_drill(records, ["db01", "app01"])
    assert "drbook test-failover-cleanup d1" in str(err.value) and "drbook test-failover-cleanup d2" in str(err.value)


# -- which machines a scheduled drill takes -------------------------------------------------

def test_neither_machines_nor_group_means_every_drillable_item_and_says_who_is_skipped():
    sel = drill_targets(ITEMS, None, None)
    assert sel.machines == ["app01", "app02", "db01"]
    assert sel.skipped == {"old01": "it is failed-over; a drill needs protected",
                           "web01": "it is initial-replication; a drill needs protected"}
    assert drill_targets(ITEMS, [], "").machines == ["app01", "app02", "db01"]


def test_a_group_means_its_members():
    assert drill_targets(ITEMS, None, "app").machines == ["app01", "app02"]
    with pytest.raises(PreflightError, match="no protected item is in replication group 'web'; groups: app"):
        drill_targets(ITEMS, None, "web")


def test_named_machines_are_taken_as_named_and_unknown_ones_refused():
    assert drill_targets(ITEMS, ["db01", "web01", "db01"], None).machines == ["db01", "web01"]
    with pytest.raises(PreflightError, match="no protected item db99, x; protected items: app01, app02, db01, old01, web01"):
        drill_targets(ITEMS, ["db99", "db01", "x"], None)


def test_machines_and_group_together_are_refused():
    with pytest.raises(PreflightError, match="not both"):
        drill_targets(ITEMS, ["db01"], "app")


def test_nothing_to_drill_is_refused_with_the_reasons():
    with pytest.raises(PreflightError, match="nothing to drill.*web01: it is initial-replication"):
        drill_targets([_item("web01", state=ItemState.INITIAL_REPLICATION)], None, None)
    with pytest.raises(PreflightError, match="nothing to drill"):
        drill_targets([], None, None)


def test_the_outcome_says_what_failed_and_that_nothing_is_left():
    cleanup = {"deleted": ["a", "b"], "resource_group_deleted": "drbook-d1"}
    text = outcome_markdown("d1", ["db01"], "VerificationError: db01: disk0: 1 blocks differ", cleanup)
    assert "**FAILED**: VerificationError: db01: disk0: 1 blocks differ" in text
    assert "2 resources deleted" in text and "nothing tagged with the run is left" in text
    assert "**Succeeded**" in outcome_markdown("d1", ["db01"], None, cleanup)
