"""Scale-out decisions without a service: placing units on process servers, taking a lost
one's over, giving them back, rebalancing; the runs a lost server left behind; the config."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from drbook.config import ProcessServerConfig, TakeoverConfig
from drbook.models import ItemState, ProtectedDisk, ProtectedItem
from drbook.replication.schedule import ActiveRun
from drbook.scaleout.assign import Assignment, decide, units_of
from drbook.scaleout.leftovers import left_behind
from drbook.scaleout.worker import worker_argv, worker_env, worker_queues

T0 = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
TAKEOVER = TakeoverConfig(after_s=30, return_after_s=20)


def servers(*names: str, **pins: list[str]) -> list[ProcessServerConfig]:
    return [ProcessServerConfig(name=n, machines=pins.get(n, [])) for n in names]


def item(name: str, group: str | None = None, size: int = 1 << 30, state=ItemState.PROTECTED) -> ProtectedItem:
    return ProtectedItem(name=name, machine=name, group=group, state=state,
                         disks=[ProtectedDisk(name="disk0", size_bytes=size, path="/dev/sda")])


def polled(now: dt.datetime, **ages: float | None) -> dict:
    return {name: (None if age is None else now - dt.timedelta(seconds=age)) for name, age in ages.items()}


def where(decision) -> dict[str, str]:
    return {key: p.server for key, p in decision.assignment.units.items()}


def test_units_keep_a_group_together_and_leave_unprotected_items_out():
    units = units_of([item("a", "g"), item("b", "g"), item("c"), item("d", state=ItemState.FAILED_OVER)])
    assert [(u.key, u.members) for u in units] == [("c", ["c"]), ("group:g", ["a", "b"])]
    assert units[1].load > units[0].load  # two members cost more than one


def test_new_units_are_balanced_over_the_servers_online_and_placements_stick():
    items = [item(f"m{i:02}") for i in range(9)]
    d1 = decide(None, units_of(items), servers("ps1", "ps2", "ps3"), polled(T0, ps1=1, ps2=1, ps3=1), T0, TAKEOVER)
    counts = {s: list(where(d1).values()).count(s) for s in ("ps1", "ps2", "ps3")}
    assert counts == {"ps1": 3, "ps2": 3, "ps3": 3}
    assert {m.why for m in d1.moves} == {"new"} and d1.events == []
    # A fourth server joining moves nothing until a rebalance.
    t = T0 + dt.timedelta(seconds=30)
    d2 = decide(d1.assignment, units_of(items), servers("ps1", "ps2", "ps3", "ps4"),
                polled(t, ps1=1, ps2=1, ps3=1, ps4=1), t, TAKEOVER)
    assert where(d2) == where(d1) and d2.moves == [] and d2.lost() == []
    d3 = decide(d2.assignment, units_of(items), servers("ps1", "ps2", "ps3", "ps4"),
                polled(t, ps1=1, ps2=1, ps3=1, ps4=1), t, TAKEOVER, rebalance=True)
    assert sorted(list(where(d3).values()).count(s) for s in ("ps1", "ps2", "ps3", "ps4")) == [2, 2, 2, 3]
    assert {m.why for m in d3.moves} == {"rebalance"}


def test_weight_and_disk_size_steer_the_balance():
    big = servers("ps1", "ps2")
    big[1] = ProcessServerConfig(name="ps2", weight=3)
    d = decide(None, units_of([item(f"m{i}") for i in range(8)]), big, polled(T0, ps1=1, ps2=1), T0, TAKEOVER)
    assert list(where(d).values()).count("ps2") == 6
    # The largest units are placed first (longest first): one huge disk alone on one server.
    d = decide(None, units_of([item("huge", size=8 << 40), item("a"), item("b")]), servers("ps1", "ps2"),
               polled(T0, ps1=1, ps2=1), T0, TAKEOVER)
    assert where(d)["a"] == where(d)["b"] != where(d)["huge"]


def test_a_lost_server_is_taken_over_then_its_units_come_home():
    items = [item(f"m{i}") for i in range(4)] + [item("a1", "app"), item("a2", "app")]
    ps = servers("ps1", "ps2")
    d1 = decide(None, units_of(items), ps, polled(T0, ps1=1, ps2=1), T0, TAKEOVER)
    on_ps2 = sorted(k for k, s in where(d1).items() if s == "ps2")
    assert on_ps2
    # ps2 stops polling: within after_s nothing happens ...
    t = T0 + dt.timedelta(seconds=25)
    d2 = decide(d1.assignment, units_of(items), ps, {"ps1": t, "ps2": T0}, t, TAKEOVER)
    assert where(d2) == where(d1) and d2.events == []
    # ... past it, every unit of ps2 moves to ps1, home kept, and one event says so.
    t = T0 + dt.timedelta(seconds=31)
    d3 = decide(d2.assignment, units_of(items), ps, {"ps1": t, "ps2": T0}, t, TAKEOVER)
    assert set(where(d3).values()) == {"ps1"} and d3.lost() == ["ps2"]
    assert sorted(m.unit for m in d3.moves) == on_ps2 and {m.why for m in d3.moves} == {"takeover"}
    assert [(e.server, e.kind, sorted(m.unit for m in e.moves)) for e in d3.events] == [("ps2", "lost", on_ps2)]
    assert {d3.assignment.units[k].home for k in on_ps2} == {"ps2"}
    # A group stays whole: both members on one server.
    assert d3.assignment.server_of(["a1"]) == d3.assignment.server_of(["a2"])
    # Still lost: no new event, nothing moves.
    t = T0 + dt.timedelta(seconds=60)
    d4 = decide(d3.assignment, units_of(items), ps, {"ps1": t, "ps2": T0}, t, TAKEOVER)
    assert d4.events == [] and d4.moves == []
    # It polls again: the units wait return_after_s, then go home with a "returned" event.
    t = T0 + dt.timedelta(seconds=70)
    d5 = decide(d4.assignment, units_of(items), ps, {"ps1": t, "ps2": t}, t, TAKEOVER)
    assert d5.moves == [] and d5.lost() == ["ps2"]
    t = T0 + dt.timedelta(seconds=91)
    d6 = decide(d5.assignment, units_of(items), ps, {"ps1": t, "ps2": t}, t, TAKEOVER)
    assert where(d6) == where(d1) and {m.why for m in d6.moves} == {"return"}
    assert [(e.server, e.kind) for e in d6.events] == [("ps2", "returned")] and d6.lost() == []


def test_without_automatic_return_units_stay_until_a_rebalance():
    manual = TakeoverConfig(after_s=30, return_after_s=0, automatic_return=False)
    items = [item(f"m{i}") for i in range(4)]
    ps = servers("ps1", "ps2")
    d1 = decide(None, units_of(items), ps, polled(T0, ps1=1, ps2=1), T0, manual)
    t = T0 + dt.timedelta(seconds=40)
    d2 = decide(d1.assignment, units_of(items), ps, {"ps1": t, "ps2": T0}, t, manual)
    t = T0 + dt.timedelta(seconds=50)
    d3 = decide(d2.assignment, units_of(items), ps, {"ps1": t, "ps2": t}, t, manual)
    assert set(where(d3).values()) == {"ps1"} and d3.moves == [] and d3.lost() == []
    d4 = decide(d3.assignment, units_of(items), ps, {"ps1": t, "ps2": t}, t, manual, rebalance=True)
    assert sorted(where(d4).values()) == ["ps1", "ps1", "ps2", "ps2"]


def test_pins_win_and_a_pinned_unit_is_taken_over_too():
    ps = servers("ps1", "ps2", ps2=["m0", "m1"])
    items = [item(f"m{i}") for i in range(4)]
    d1 = decide(None, units_of(items), ps, polled(T0, ps1=1, ps2=1), T0, TAKEOVER)
    assert where(d1)["m0"] == where(d1)["m1"] == "ps2"
    t = T0 + dt.timedelta(seconds=40)
    d2 = decide(d1.assignment, units_of(items), ps, {"ps1": t, "ps2": T0}, t, TAKEOVER)
    assert where(d2)["m0"] == "ps1" and d2.assignment.units["m0"].home == "ps2"
    # A rebalance never moves a pin away from home when home is online.
    d3 = decide(d2.assignment, units_of(items), ps, {"ps1": t, "ps2": t}, t, TakeoverConfig(after_s=30, return_after_s=0),
                rebalance=True)
    assert where(d3)["m0"] == where(d3)["m1"] == "ps2"


def test_no_server_online_moves_nothing_and_a_removed_server_gives_its_units_away():
    items = [item(f"m{i}") for i in range(4)]
    d1 = decide(None, units_of(items), servers("ps1", "ps2"), polled(T0, ps1=1, ps2=1), T0, TAKEOVER)
    t = T0 + dt.timedelta(seconds=100)
    d2 = decide(d1.assignment, units_of(items), servers("ps1", "ps2"), {"ps1": T0, "ps2": T0}, t, TAKEOVER)
    assert where(d2) == where(d1) and d2.moves == [] and d2.lost() == ["ps1", "ps2"]
    # ps2 is removed from the site config: its units move to ps1.
    d3 = decide(d1.assignment, units_of(items), servers("ps1"), {"ps1": t}, t, TAKEOVER)
    assert set(where(d3).values()) == {"ps1"} and {m.why for m in d3.moves} == {"unconfigured"}


def test_a_server_that_never_polled_is_lost_from_the_start():
    d = decide(None, units_of([item("a"), item("b")]), servers("ps1", "ps2"), polled(T0, ps1=1, ps2=None), T0, TAKEOVER)
    assert set(where(d).values()) == {"ps1"} and d.lost() == ["ps2"]
    assert [(e.server, e.kind, e.last_polled) for e in d.events] == [("ps2", "lost", None)]


def test_an_assignment_round_trips_through_json():
    d = decide(None, units_of([item("a", "g"), item("b")]), servers("ps1"), polled(T0, ps1=1), T0, TAKEOVER)
    again = Assignment.model_validate_json(d.assignment.model_dump_json())
    assert again == d.assignment and again.server_of(["a"]) == "ps1"


def run(run_id: str, state: str, items: list[str], queue: str) -> ActiveRun:
    return ActiveRun(run_id=run_id, state=state, since=T0, items=items, queue=queue)


def test_runs_left_behind_by_a_lost_server():
    runs = [run("waiting", "SCHEDULED", ["a"], "ps2"), run("taken", "PENDING", ["b"], "ps2"),
            run("dead", "RUNNING", ["c"], "ps2"), run("alive", "RUNNING", ["d"], "ps2"),
            run("elsewhere", "SCHEDULED", ["e"], "ps1")]
    left = left_behind(runs, {"ps2"}, held={"d": "replication-engine@ps2"})
    assert [r.run_id for r in left.cancel] == ["waiting", "taken"]
    assert [r.run_id for r in left.crash] == ["dead"]
    assert left_behind(runs, set(), held={}).run_ids == set()


def test_process_server_config_and_worker_command():
    ps = ProcessServerConfig(name="ps2", address="127.0.2.2", runs_stages=False, max_cycles=2)
    assert ps.queue == "ps2" and worker_queues(ps) == ["ps2"]
    argv = worker_argv(ps, python="python")
    assert argv[:4] == ["python", "-m", "prefect", "worker"]
    assert argv[argv.index("--pool") + 1] == "drbook-process-server" and argv.count("--work-queue") == 1
    assert worker_env(ps, environ={}) == {"DRBOOK_PROCESS_SERVER": "ps2", "PREFECT_WORKER_HEARTBEAT_SECONDS": "10"}
    assert worker_env(ps, environ={"PREFECT_WORKER_HEARTBEAT_SECONDS": "5"}) == {"DRBOOK_PROCESS_SERVER": "ps2"}
    assert worker_queues(ProcessServerConfig(name="ps1")) == ["ps1", "default"]
    for bad, why in [({"name": "ps 1"}, "name"), ({"name": "p", "address": "not-an-ip"}, "address"),
                     ({"name": "p", "work_queue": "default"}, "the stages'"), ({"name": "p", "max_cycles": 0}, "max_cycles")]:
        with pytest.raises(ValidationError, match=why):
            ProcessServerConfig(**bad)


def test_runs_without_a_process_anywhere_are_settled_and_live_ones_spared():
    from drbook.replication.schedule import ScheduleBounds

    now = T0 + dt.timedelta(minutes=10)
    old = T0  # 600 s ago: past both bounds
    runs = [ActiveRun(run_id="stuck-submitting", state="PENDING", since=old, items=["a"], queue="ps1"),
            ActiveRun(run_id="zombie", state="RUNNING", since=old, items=["b"], queue="ps1"),
            ActiveRun(run_id="long-cycle", state="RUNNING", since=old, items=["c"], queue="ps1"),
            ActiveRun(run_id="just-ended-its-cycle", state="RUNNING", since=old, items=["d"], queue="ps1"),
            ActiveRun(run_id="young", state="RUNNING", since=now - dt.timedelta(seconds=30), items=["e"], queue="ps1"),
            ActiveRun(run_id="queued", state="SCHEDULED", since=old, items=["f"], queue="ps1")]
    left = left_behind(runs, set(), held={"c": "replication-engine@ps1"}, now=now,
                       last_points={"b": now - dt.timedelta(minutes=5), "d": now - dt.timedelta(seconds=5)},
                       bounds=ScheduleBounds())
    assert [r.run_id for r in left.cancel] == ["stuck-submitting"]
    assert [r.run_id for r in left.crash] == ["zombie"]
    assert "never started" in left.why["stuck-submitting"] and "process is gone" in left.why["zombie"]


def test_a_run_waiting_in_a_live_queue_stays_busy_however_long_it_waits():
    from drbook.replication.schedule import busy_items

    now = T0 + dt.timedelta(minutes=30)
    runs = [ActiveRun(run_id="r1", state="SCHEDULED", since=T0, items=["a"], queue="ps1"),
            ActiveRun(run_id="r2", state="SCHEDULED", since=T0, items=["b"], queue="gone")]
    busy = busy_items({}, runs, now, live_queues={"ps1"})
    assert "waits in queue ps1" in busy["a"] and "b" not in busy


def test_a_process_servers_last_sign_is_its_later_poll_or_heartbeat():
    from drbook.scaleout.queues import QueueState, last_signs

    ps = [ProcessServerConfig(name="ps1"), ProcessServerConfig(name="ps2"), ProcessServerConfig(name="ps3")]
    queues = {"ps1": QueueState(name="ps1", concurrency_limit=4, last_polled=T0),
              "ps2": QueueState(name="ps2", concurrency_limit=4, last_polled=T0 - dt.timedelta(seconds=40))}
    beats = {"drbook-ps2": T0 - dt.timedelta(seconds=5), "drbook-ps1": None, "someone-else": T0}
    assert last_signs(ps, queues, beats) == {"ps1": T0, "ps2": T0 - dt.timedelta(seconds=5), "ps3": None}


def test_the_process_server_list_shows_who_runs_what_and_what_is_away():
    from drbook.config import AzureConfig, SiteConfig
    from drbook.scaleout.queues import QueueState
    from drbook.scaleout.status import server_rows

    items = [item("a"), item("b"), item("c")]
    ps = servers("ps1", "ps2")
    d1 = decide(None, units_of(items), ps, polled(T0, ps1=1, ps2=1), T0, TAKEOVER)
    t = T0 + dt.timedelta(seconds=40)
    d2 = decide(d1.assignment, units_of(items), ps, {"ps1": t, "ps2": T0}, t, TAKEOVER)
    cfg = SiteConfig.model_construct(site="s", azure=AzureConfig.model_construct(), process_servers=ps)
    queues = {"ps1": QueueState(name="ps1", concurrency_limit=4, last_polled=t),
              "ps2": QueueState(name="ps2", concurrency_limit=4, last_polled=T0)}
    rows = {r.name: r for r in server_rows(cfg, d2.assignment, queues, t)}
    homes = sorted(m for m in "abc" if d1.assignment.server_of([m]) == "ps2")
    assert rows["ps2"].status == "lost" and rows["ps2"].last_polled_s == 40.0 and rows["ps2"].items == []
    assert rows["ps2"].away == homes and rows["ps1"].taken_over == homes and rows["ps1"].items == ["a", "b", "c"]
    assert server_rows(cfg, None, {}, t)[0].status == "unknown"
