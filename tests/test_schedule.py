"""Scheduled replication decisions (drbook.replication.schedule) with plain data."""

from __future__ import annotations

import datetime as dt

from drbook.models import ItemState, Policy, ProtectedItem
from drbook.replication.schedule import (ActiveRun, FinishedRun, ScheduleBounds, busy_items, decide_schedule,
                                        start_leads)

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
POL = Policy(crash_frequency_minutes=5, app_frequency_minutes=60)


def m(minutes: float) -> dt.datetime:
    return T0 - dt.timedelta(minutes=minutes)


def item(name: str, last: float | None, last_app: float | None = None, *, group: str | None = None,
         state: ItemState = ItemState.PROTECTED, policy: Policy = POL) -> ProtectedItem:
    return ProtectedItem(name=name, machine=name, state=state, group=group, policy=policy,
                         last_point_time=None if last is None else m(last),
                         last_app_point_time=None if last_app is None else m(last_app))


def by_item(schedule):
    return {r.item: r for r in schedule.reasons}


def test_an_item_is_due_after_its_crash_frequency_and_not_before():
    s = decide_schedule([item("a", 6), item("b", 1)], T0)
    assert [(c.group, c.members, c.want) for c in s.cycles] == [(None, ["a"], "crash")]
    r = by_item(s)
    assert r["a"].status == "due"
    assert r["b"].status == "not-due" and r["b"].due_at == m(1) + dt.timedelta(minutes=5)
    assert "not yet due until 12:04:00" in r["b"].why


def test_fractional_minutes_make_seconds_level_policies():
    fast = Policy(crash_frequency_minutes=0.25, app_frequency_minutes=60)
    s = decide_schedule([item("a", 16 / 60, policy=fast), item("b", 10 / 60, policy=fast)], T0)
    assert [c.members for c in s.cycles] == [["a"]]


def test_an_item_with_no_point_yet_is_due():
    s = decide_schedule([item("a", None)], T0)
    assert [c.members for c in s.cycles] == [["a"]]


def test_app_point_wanted_only_from_machines_that_can_make_one():
    items = [item("a", 6, 61), item("b", 6, None), item("c", 6, 30)]
    s = decide_schedule(items, T0, app_capable={"a", "b", "c"})
    assert {c.members[0]: c.want for c in s.cycles} == {"a": "app", "b": "app", "c": "crash"}
    # No quiesce hooks: it never gets an app point, so asking for one every tick would be pointless.
    s = decide_schedule(items, T0, app_capable=())
    assert {c.want for c in s.cycles} == {"crash"}


def test_a_failing_app_point_does_not_make_cycles_back_to_back():
    """The app point is overdue (its hooks failed), but the last cycle was a minute ago."""
    s = decide_schedule([item("a", 1, 120)], T0, app_capable={"a"})
    assert s.cycles == [] and by_item(s)["a"].status == "not-due"


def test_app_frequency_shorter_than_crash_sets_the_pace_for_app_capable_machines():
    pol = Policy(crash_frequency_minutes=30, app_frequency_minutes=10)
    s = decide_schedule([item("a", 11, 11, policy=pol), item("b", 11, 11, policy=pol)], T0, app_capable={"a"})
    assert [(c.members, c.want) for c in s.cycles] == [(["a"], "app")]


def test_only_protected_items_replicate_on_schedule():
    s = decide_schedule([item("a", 60, state=ItemState.FAILED_OVER),
                         item("b", None, state=ItemState.INITIAL_REPLICATION)], T0)
    assert s.cycles == []
    assert {r.status for r in s.reasons} == {"not-replicating"}
    assert "failed-over" in by_item(s)["a"].why


def test_a_group_is_due_when_any_member_is_and_cycles_as_one():
    items = [item("web", 1, group="g"), item("db", 6, group="g"), item("solo", 6)]
    s = decide_schedule(items, T0)
    assert [(c.group, c.members) for c in s.cycles] == [(None, ["solo"]), ("g", ["db", "web"])]
    r = by_item(s)
    assert r["web"].status == "due" and "group g is due (its member db is)" in r["web"].why
    assert s.cycles[1].parameters() == {"group": "g", "machines": ["db", "web"], "want": "crash"}


def test_a_group_with_different_policies_runs_at_its_strictest_members_pace():
    fast = Policy(crash_frequency_minutes=2, app_frequency_minutes=60)
    items = [item("web", 3, 10, group="g", policy=fast), item("db", 3, 10, group="g")]
    assert [c.group for c in decide_schedule(items, T0).cycles] == ["g"]
    # any member wanting an app point makes it an app cycle for the whole group
    items = [item("web", 6, 61, group="g"), item("db", 6, 5, group="g")]
    assert decide_schedule(items, T0, app_capable={"web", "db"}).cycles[0].want == "app"


def test_a_group_member_that_is_not_protected_stays_out():
    items = [item("web", 6, group="g"), item("db", 6, group="g", state=ItemState.FAILED_OVER)]
    assert [c.members for c in decide_schedule(items, T0).cycles] == [["web"]]


def test_busy_items_and_groups_are_skipped_with_the_reason():
    items = [item("a", 6), item("web", 6, group="g"), item("db", 6, group="g"), item("b", 6)]
    s = decide_schedule(items, T0, busy={"a": "its lock is held by w1", "db": "run r1 is pending (3s)"})
    assert [c.members for c in s.cycles] == [["b"]]
    r = by_item(s)
    assert r["a"].status == "busy" and "held by w1" in r["a"].why
    assert r["web"].status == "busy" and "group g: db" in r["web"].why
    assert r["db"].status == "busy" and "pending" in r["db"].why


def test_busy_from_leases_and_live_runs():
    bounds = ScheduleBounds(pending_s=60, running_grace_s=30)
    runs = [
        ActiveRun(run_id="r1", state="SCHEDULED", since=T0 - dt.timedelta(seconds=5), items=["a"]),
        ActiveRun(run_id="r2", state="PENDING", since=T0 - dt.timedelta(seconds=90), items=["b"]),  # nobody took it
        ActiveRun(run_id="r3", state="RUNNING", since=T0 - dt.timedelta(seconds=10), items=["c", "d"]),
        ActiveRun(run_id="r4", state="RUNNING", since=T0 - dt.timedelta(seconds=600), items=["e"]),  # worker died
        ActiveRun(run_id="r5", state="SCHEDULED", since=T0 + dt.timedelta(seconds=20), items=["f"]),  # not yet due
    ]
    busy = busy_items({"g": "engine@host"}, runs, T0, bounds)
    assert set(busy) == {"a", "c", "d", "f", "g"}
    assert "r1" in busy["a"] and "held by engine@host" in busy["g"]


def test_a_running_cycle_holding_the_lease_stays_busy_however_long_it_runs():
    """A slow cycle delays the next one instead of stacking: its lease is renewed while it lives."""
    runs = [ActiveRun(run_id="r1", state="RUNNING", since=T0 - dt.timedelta(hours=2), items=["a"])]
    busy = busy_items({"a": "replication-engine"}, runs, T0)
    s = decide_schedule([item("a", 600)], T0, busy=busy)
    assert s.cycles == [] and by_item(s)["a"].status == "busy"


def test_a_cycle_starts_early_by_the_time_its_last_cycle_took_to_land():
    """Policy 5 min, last point 4 min 40 s ago: not due by the clock, but its last cycle took
    25 s from being asked for to its end, so it is started now to land near the 5 minutes."""
    finished = [FinishedRun(run_id="r1", requested=m(4.9), ended=m(4.9) + dt.timedelta(seconds=25), items=["a"]),
                FinishedRun(run_id="r0", requested=m(10), ended=m(10) + dt.timedelta(seconds=90), items=["a"])]
    leads = start_leads(["a", "b"], finished, tick_s=10)
    assert leads == {"a": 25 + 5, "b": 5}  # the newest run counts; half a tick for everyone
    s = decide_schedule([item("a", 4 + 40 / 60), item("b", 4 + 40 / 60)], T0, leads=leads)
    assert [c.members for c in s.cycles] == [["a"]]
    r = by_item(s)
    assert r["a"].due_at == m(4 + 40 / 60) + dt.timedelta(minutes=5) - dt.timedelta(seconds=30)
    assert "up to 30s early" in r["a"].why
    assert r["b"].status == "not-due"


def test_the_lead_is_at_most_the_interval_so_a_slow_machine_replicates_back_to_back():
    fast = Policy(crash_frequency_minutes=0.25, app_frequency_minutes=60)
    slow = [FinishedRun(run_id="r", requested=m(1), ended=m(1) + dt.timedelta(seconds=40), items=["a"])]
    leads = start_leads(["a"], slow)
    assert leads == {"a": 40}
    # its point landed a second ago: due again now (15 s early at most), not 25 s in the past
    r = by_item(decide_schedule([item("a", 1 / 60, policy=fast)], T0, leads=leads))
    assert r["a"].status == "due" and r["a"].due_at == m(1 / 60)
    # a busy item stays busy whatever its lead: never two cycles at once
    r = by_item(decide_schedule([item("a", 1 / 60, policy=fast)], T0, leads=leads, busy={"a": "its lock is held"}))
    assert r["a"].status == "busy"


def test_a_run_of_a_group_gives_every_member_its_lead():
    run = FinishedRun(run_id="g", requested=m(2), ended=m(2) + dt.timedelta(seconds=12), items=["a", "b"])
    assert start_leads(["a", "b", "c"], [run]) == {"a": 12, "b": 12, "c": 0}
