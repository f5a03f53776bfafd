"""Decisions the flows used to make themselves, now pure functions in drbook/: which
cycles run, what commit deletes, what a planned failover does, the failover RPO, and
which states allow an action."""

from __future__ import annotations

import datetime as dt

import pytest

from drbook import state as statelib
from drbook.errors import PreflightError, StateTransitionError
from drbook.failover.points import failover_steps, require_final_points, rpo_seconds
from drbook.models import ItemState, ProtectedItem, RecoveryPoint
from drbook.replication.retention import commit_reasons
from drbook.replication.selection import CyclePlan, plan_cycles, plan_final_cycles, select_for_replication

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def _item(name: str, group: str | None = None, state: ItemState = ItemState.PROTECTED) -> ProtectedItem:
    return ProtectedItem(name=name, machine=name, group=group, state=state)


def _p(pid: str, item: str = "app01", minutes: int = 0) -> RecoveryPoint:
    return RecoveryPoint(id=pid, item=item, time=T0 + dt.timedelta(minutes=minutes), consistency="crash")


ITEMS = [_item("app01", "app"), _item("app02", "app"), _item("db01"), _item("web01", state=ItemState.INITIAL_REPLICATION)]


def test_group_members_share_one_cycle_and_the_rest_cycle_alone():
    items = {i.name: i for i in ITEMS}
    assert plan_cycles(items, ["app01", "db01", "app02"]) == [
        CyclePlan(group=None, members=["db01"]), CyclePlan(group="app", members=["app01", "app02"])]


def test_a_lone_group_member_takes_its_final_cycle_alone():
    items = {i.name: i for i in ITEMS}
    assert plan_final_cycles(items, ["app01", "db01"]) == [
        CyclePlan(group=None, members=["db01"]), CyclePlan(group=None, members=["app01"])]
    assert plan_final_cycles(items, ["app02", "app01"]) == [CyclePlan(group="app", members=["app02", "app01"])]


def test_replication_selects_a_group_every_protected_item_or_the_machines_named():
    assert select_for_replication(ITEMS, group="app") == [CyclePlan(group="app", members=["app01", "app02"])]
    assert select_for_replication(ITEMS, all_items=True) == [
        CyclePlan(group=None, members=["db01"]), CyclePlan(group="app", members=["app01", "app02"])]
    assert select_for_replication(ITEMS, ["db01"]) == [CyclePlan(group=None, members=["db01"])]


def test_replication_refuses_what_it_cannot_cycle_before_anything_runs():
    with pytest.raises(PreflightError, match="group 'web' has no protected members"):
        select_for_replication(ITEMS, group="web")
    with pytest.raises(PreflightError, match="cannot replicate web01: it is initial-replication"):
        select_for_replication(ITEMS, ["db01", "web01"])
    with pytest.raises(PreflightError, match=r"cannot replicate nope: no protected item of that name \(known: app01"):
        select_for_replication(ITEMS, ["nope"])


@pytest.mark.parametrize("kept", [None, "gone"])
def test_commit_without_its_failed_over_point_among_the_points_decides_nothing(kept):
    """A record without the failed-over point (or naming a point that is gone) would make
    commit delete every point: refused before anything is deleted."""
    from drbook.errors import StateTransitionError

    with pytest.raises(StateTransitionError, match="nothing was deleted"):
        commit_reasons([_p("a"), _p("b", minutes=5)], kept)


def test_commit_keeps_only_the_failed_over_point():
    reasons = commit_reasons([_p("a"), _p("b", minutes=5), _p("c", minutes=10)], "b")
    assert reasons["b"].startswith("keep")
    assert [k for k, v in reasons.items() if v.startswith("purge")] == ["a", "c"]


def test_a_planned_failover_stops_syncs_and_shuts_down_an_unplanned_one_only_syncs_for_latest():
    planned = failover_steps(True, "latest-processed")
    assert planned.stop_applications and planned.final_cycle and planned.final_cycle_required and planned.shut_down_sources
    assert failover_steps(False, "latest").model_dump() == {
        "stop_applications": False, "final_cycle": True, "final_cycle_required": False, "shut_down_sources": False}
    assert not failover_steps(False, "latest-processed").final_cycle
    assert not failover_steps(False, "pt-123").final_cycle


def test_a_planned_failover_needs_every_machines_last_point():
    a, b = _p("x", "app01"), _p("y", "app02")
    assert require_final_points(["app01", "app02"], [b, a]) == {"app01": a, "app02": b}
    with pytest.raises(PreflightError, match="app02 did not answer; nothing was changed in Azure"):
        require_final_points(["app01", "app02"], [a, None])


def test_failover_rpo_is_the_points_age_at_the_disaster_and_never_negative():
    assert rpo_seconds(T0, T0 + dt.timedelta(seconds=90)) == 90.0
    assert rpo_seconds(T0 + dt.timedelta(seconds=5), T0) == 0.0


@pytest.mark.parametrize("action, allowed", [
    ("failover", {ItemState.PROTECTED}), ("test-failover", {ItemState.PROTECTED}), ("commit", {ItemState.FAILED_OVER, ItemState.FAILED_BACK})])
def test_the_state_machine_owns_which_states_allow_an_action(action, allowed):
    for state in ItemState:
        item = _item("db01", state=state)
        if state in allowed:
            statelib.require(item, action)
        else:
            with pytest.raises(StateTransitionError, match=f"cannot {action} db01: it is {state.value}"):
                statelib.require(item, action)
