"""Properties of two pure modules, with hypothesis (derandomized: the same examples every
run, no example database).

(a) drbook/state.py, the protected item's state machine: the table of legal moves is exactly
    the lifecycle written out below by hand; random sequences of attempted moves from
    unprotected only follow that lifecycle, and every refusal names the item and both
    states; `require` passes exactly where the action's states (also written out below) say.
(b) drbook/replication/retention.py: keep and purge partition the points; the newest point,
    a pinned point and a point younger than the retention are never purged; the decision
    does not depend on the input's order; commit keeps exactly the failed-over point and
    refuses when that point is not among the points.

The truths are the tables and arithmetic in this file (integer microseconds, exact
fractions), not a second reading of drbook's own tables.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drbook import state
from drbook.errors import StateTransitionError
from drbook.models import ItemState, Policy, RecoveryPoint
from drbook.replication.retention import commit_reasons, decide_retention, retention_reasons

S = ItemState
UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
US = dt.timedelta(microseconds=1)


def props(examples: int):  # noqa: ANN201 - a hypothesis settings decorator
    return settings(derandomize=True, database=None, max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- (a) the state machine -------------------------------------------------------------------

# DESIGN.md §3, written out by hand: the cycle, then the side moves drbook/state.py's
# docstring lists. (from, to) -> the action that makes the move.
LIFECYCLE: dict[tuple[ItemState, ItemState], str] = {
    # the cycle
    (S.UNPROTECTED, S.INITIAL_REPLICATION): "enable-replication",
    (S.INITIAL_REPLICATION, S.PROTECTED): "initial-replication-complete",
    (S.PROTECTED, S.FAILED_OVER): "failover",
    (S.FAILED_OVER, S.COMMITTED): "commit",
    (S.COMMITTED, S.REPROTECTING): "reprotect",
    (S.REPROTECTING, S.REPROTECTED): "reprotect-complete",
    (S.REPROTECTED, S.FAILED_BACK): "failback",
    (S.FAILED_BACK, S.PROTECTED): "re-enable-replication",
    # an initial copy or a reprotect abandoned
    (S.INITIAL_REPLICATION, S.UNPROTECTED): "disable-replication",
    (S.REPROTECTING, S.COMMITTED): "abandon-reprotect",
    (S.REPROTECTED, S.COMMITTED): "stop-reverse-replication",
    # an uncommitted failover rolled back
    (S.FAILED_OVER, S.PROTECTED): "rollback-failover",
    # replication disabled where nothing is in flight or uncommitted
    (S.PROTECTED, S.UNPROTECTED): "disable-replication",
    (S.COMMITTED, S.UNPROTECTED): "disable-replication",
    (S.FAILED_BACK, S.UNPROTECTED): "disable-replication",
    # after a failback, a full copy when the old replica is unusable
    (S.FAILED_BACK, S.INITIAL_REPLICATION): "re-enable-replication",
}

DESIGN_CYCLE = [S.UNPROTECTED, S.INITIAL_REPLICATION, S.PROTECTED, S.FAILED_OVER, S.COMMITTED,
                S.REPROTECTING, S.REPROTECTED, S.FAILED_BACK, S.PROTECTED]

# What each operation needs, written out by hand.
NEEDS: dict[str, set[ItemState]] = {
    "enable-replication": {S.UNPROTECTED},
    "replicate": {S.INITIAL_REPLICATION, S.PROTECTED},
    "test-failover": {S.PROTECTED},
    "failover": {S.PROTECTED},
    "change-recovery-point": {S.FAILED_OVER},
    "rollback-failover": {S.FAILED_OVER},
    "commit": {S.FAILED_OVER, S.FAILED_BACK},  # a failback is committed too
    "reprotect": {S.COMMITTED},
    "abandon-reprotect": {S.REPROTECTING},
    "reverse-replicate": {S.REPROTECTING, S.REPROTECTED},
    "failback": {S.REPROTECTED},
    "re-enable-replication": {S.FAILED_BACK},
    "disable-replication": {S.INITIAL_REPLICATION, S.PROTECTED, S.COMMITTED, S.FAILED_BACK},
}


def successors(frm: ItemState) -> list[ItemState]:
    return [to for (f, to) in LIFECYCLE if f == frm]


def reachable_from(start: ItemState) -> set[ItemState]:
    seen, todo = {start}, deque([start])
    while todo:
        for nxt in successors(todo.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


REACHABLE = reachable_from(S.UNPROTECTED)


@dataclass
class FakeItem:
    """Enough of a ProtectedItem for drbook.state.HasState."""

    name: str
    state: ItemState | str


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=16)


def spelled(s: ItemState, as_str: bool) -> ItemState | str:
    """The state machine accepts a state or its string value."""
    return s.value if as_str else s


def test_transitions_are_exactly_the_hand_written_lifecycle():
    assert set(state.TRANSITIONS) == set(LIFECYCLE), (
        f"moves not in the lifecycle: {sorted((a.value, b.value) for a, b in set(state.TRANSITIONS) - set(LIFECYCLE))}; "
        f"missing: {sorted((a.value, b.value) for a, b in set(LIFECYCLE) - set(state.TRANSITIONS))}")
    assert {k: m.action for k, m in state.TRANSITIONS.items()} == LIFECYCLE
    assert all(m.why for m in state.TRANSITIONS.values())
    assert all((a, b) in LIFECYCLE for a, b in zip(DESIGN_CYCLE, DESIGN_CYCLE[1:]))
    assert REACHABLE == set(S), "every state is reachable from unprotected"
    assert all(state.allowed_from(s) for s in S), "every state has a way out"
    assert {a: set(v) for a, v in state.ACTIONS.items()} == NEEDS


def test_every_move_an_action_names_is_required_from_its_source():
    """A move whose action is an operation flows `require()` is allowed from its source state."""
    for (frm, _to), action in LIFECYCLE.items():
        if action in NEEDS:
            state.require(FakeItem("db01", frm), action)


# An attempt: (True, i) the i-th legal next state in the table (three attempts in four, so
# that sequences get deep into the cycle); (False, i) any state, legal or not.
ATTEMPTS = st.lists(st.tuples(st.integers(0, 3).map(bool), st.integers(0, len(S) - 1)), min_size=20, max_size=60)


@props(120)
@given(name=NAMES, as_str=st.booleans(), attempts=ATTEMPTS)
def test_random_move_sequences_follow_the_lifecycle(name, as_str, attempts):
    item = FakeItem(name, S.UNPROTECTED)
    history = [S.UNPROTECTED]
    for follow, i in attempts:
        current = S(item.state)
        nexts = successors(current)
        target = nexts[i % len(nexts)] if follow else list(S)[i]
        legal = (current, target) in LIFECYCLE
        assert state.is_allowed(current, target) == legal
        assert (target in state.allowed_from(current)) == legal
        try:
            found = state.check_transition(name, spelled(current, as_str), spelled(target, as_str))
        except StateTransitionError as exc:
            msg = str(exc)
            assert not legal, f"{current.value} -> {target.value} is in the lifecycle but was refused: {msg}"
            assert msg.startswith(f"cannot move {name} from {current.value} to {target.value}"), msg
            assert exc.exit_code == 5 and not exc.retryable
            assert S(item.state) == current  # a refusal changes nothing
            continue
        assert legal, f"{current.value} -> {target.value} is not in the lifecycle but was allowed"
        assert found.action == LIFECYCLE[(current, target)]
        if found.action in NEEDS:
            state.require(item, found.action)
        assert target != current, "no state moves to itself"
        if target == S.FAILED_OVER:
            assert current == S.PROTECTED, "failed-over is entered only from protected"
            assert S.PROTECTED in history, "an item that was never protected cannot fail over"
        if target == S.COMMITTED:
            assert current in {S.FAILED_OVER, S.REPROTECTING, S.REPROTECTED}
            assert S.FAILED_OVER in history, "nothing is committed that was never failed over"
        item.state = spelled(target, as_str)
        history.append(target)
        assert target in REACHABLE
    assert set(history) <= REACHABLE
    if S.PROTECTED not in history:
        assert not {S.FAILED_OVER, S.COMMITTED, S.REPROTECTING, S.REPROTECTED, S.FAILED_BACK} & set(history)


@props(40)
@given(name=NAMES, as_str=st.booleans())
def test_require_passes_iff_the_state_is_in_the_actions_set(name, as_str):
    """Every action in ACTIONS against every state (the name and spelling are random)."""
    for action, current in itertools.product(sorted(state.ACTIONS), S):
        item = FakeItem(name, spelled(current, as_str))
        if current in NEEDS[action]:
            state.require(item, action)
            continue
        with pytest.raises(StateTransitionError) as caught:
            state.require(item, action)
        msg = str(caught.value)
        assert action in msg and name in msg and current.value in msg, msg
        assert msg.startswith(f"cannot {action} {name}: it is {current.value}; {action} needs "), msg
        assert all(s.value in msg.split(" needs ", 1)[1] for s in NEEDS[action]), msg
        assert S(item.state) == current


@props(40)
@given(action=st.text(max_size=24).filter(lambda a: a not in NEEDS), current=st.sampled_from(list(S)), name=NAMES)
def test_an_unknown_action_is_a_value_error(action, current, name):
    with pytest.raises(ValueError, match="unknown action"):
        state.require(FakeItem(name, current), action)


# -- (b) retention ---------------------------------------------------------------------------

# PolicyConfig (drbook/config.py) allows 0 < retention_hours <= 10 years.
MAX_RETENTION_HOURS = 10 * 365 * 24
ZONES = [UTC, None, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]
IDS = st.text(alphabet="abpz019-", min_size=1, max_size=5)


def micros(t: dt.datetime) -> int:
    """The instant as integer microseconds since the epoch; a naive time is UTC."""
    return ((t.replace(tzinfo=UTC) if t.tzinfo is None else t) - EPOCH) // US


def dressed(instant: dt.datetime, zone: dt.tzinfo | None) -> dt.datetime:
    """The UTC `instant` in `zone`; None: a naive UTC time."""
    return instant.replace(tzinfo=None) if zone is None else instant.astimezone(zone)


@dataclass
class Scenario:
    points: list[RecoveryPoint]
    hours: float
    now: dt.datetime
    pinned: set[str]

    @property
    def policy(self) -> Policy:
        return Policy(retention_hours=self.hours)

    def age_us(self, p: RecoveryPoint) -> int:
        return micros(self.now) - micros(p.time)

    def younger(self, p: RecoveryPoint) -> bool:
        return self.age_us(p) < Fraction(self.hours) * 3600 * 10**6

    def older(self, p: RecoveryPoint) -> bool:
        return self.age_us(p) > Fraction(self.hours) * 3600 * 10**6

    def older_by_more_than_a_microsecond(self, p: RecoveryPoint) -> bool:
        return self.age_us(p) > Fraction(self.hours) * 3600 * 10**6 + 1

    def newest(self) -> RecoveryPoint:
        # the latest time; among equal times the greatest id (the module sorts by (time, id))
        return max(self.points, key=lambda p: (micros(p.time), p.id))


NOWS = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1))
HOURS = st.one_of(
    st.sampled_from([1e-6, 1 / 3600, 0.75, 1.0, 24.0, 168.0, float(MAX_RETENTION_HOURS)]),
    st.floats(min_value=1e-6, max_value=MAX_RETENTION_HOURS, allow_nan=False, allow_infinity=False))
SPAN = 2**32
# One point: where it sits ("boundary": at the cutoff give or take a few microseconds or seconds;
# "spread": from a day in the future to three windows and a day ago; "tie": the instant of
# an earlier point), then its jitter, spread position, tie choice, zone, consistency and
# whether a failover or drill pins it (one in four).
POINT = st.tuples(st.sampled_from(["boundary", "spread", "tie"]),
                  st.one_of(st.integers(-3, 3), st.integers(-5 * 10**6, 5 * 10**6)), st.integers(0, SPAN),
                  st.integers(0, 9), st.sampled_from(ZONES), st.sampled_from(["crash", "app", "inconsistent"]),
                  st.integers(0, 3).map(lambda x: x == 0))
STALLS = st.sampled_from([0, 0, 1, 2])
OTHER_PINS = st.lists(IDS.map(lambda x: "other-" + x), max_size=2)  # other items' drills


@st.composite
def scenarios(draw, min_points: int = 0) -> Scenario:  # noqa: ANN001
    now_utc = draw(NOWS).replace(tzinfo=UTC)
    hours = draw(HOURS)
    delta = dt.timedelta(hours=hours)
    day_us, window_us = 86400 * 10**6, delta // US
    ids = draw(st.lists(IDS, unique=True, min_size=min_points, max_size=10))
    specs = draw(st.lists(POINT, min_size=len(ids), max_size=len(ids)))
    # replication stalled: every point moved back by a window and a day, so all are old
    stall = draw(STALLS) * (delta + dt.timedelta(days=1))
    instants: list[dt.datetime] = []
    points = []
    for pid, (kind, jitter, at, tie, zone, consistency, _pin) in zip(ids, specs):
        if kind == "tie" and instants:
            instant = instants[tie % len(instants)]
        elif kind == "boundary":
            instant = now_utc - delta + jitter * US
        else:
            instant = now_utc + day_us * US - (at * (3 * window_us + 2 * day_us) // SPAN) * US
        instants.append(instant)
        points.append(RecoveryPoint(id=pid, item="db01", time=dressed(instant - stall, zone), consistency=consistency))
    pinned = {pid for pid, spec in zip(ids, specs) if spec[-1]} | set(draw(OTHER_PINS))
    return Scenario(points, hours, dressed(now_utc, draw(st.sampled_from(ZONES))), pinned)


def _ids(points: list[RecoveryPoint]) -> list[str]:
    return [p.id for p in points]


@props(60)
@given(sc=scenarios())
def test_keep_and_purge_partition_the_points(sc):
    keep, purge = decide_retention(sc.points, sc.policy, sc.now, sc.pinned)
    assert sorted(_ids(keep) + _ids(purge)) == sorted(_ids(sc.points))  # none lost, none duplicated
    assert not set(_ids(keep)) & set(_ids(purge))
    by_id = {p.id: p for p in sc.points}
    assert all(by_id[p.id] == p for p in keep + purge)  # the points themselves, unchanged
    for side in (keep, purge):  # each newest first
        keys = [(micros(p.time), p.id) for p in side]
        assert keys == sorted(keys, reverse=True)
    reasons = retention_reasons(sc.points, sc.policy, sc.now, sc.pinned)
    assert set(reasons) == set(by_id)
    assert {i for i, r in reasons.items() if r.startswith("keep: ")} == set(_ids(keep))
    assert {i for i, r in reasons.items() if r.startswith("purge: ")} == set(_ids(purge))


@props(60)
@given(sc=scenarios(min_points=1))
def test_the_newest_point_is_never_purged(sc):
    keep, purge = decide_retention(sc.points, sc.policy, sc.now, sc.pinned)
    newest = sc.newest()
    assert newest.id in _ids(keep) and newest.id not in _ids(purge)
    assert keep, "an item is never left with nothing to fail over to"


@props(50)
@given(sc=scenarios(min_points=1))
def test_a_pinned_point_is_never_purged(sc):
    _keep, purge = decide_retention(sc.points, sc.policy, sc.now, sc.pinned)
    assert not sc.pinned & set(_ids(purge))


@props(120)
@given(sc=scenarios())
def test_only_points_older_than_the_retention_are_purged(sc):
    keep, purge = decide_retention(sc.points, sc.policy, sc.now, sc.pinned)
    kept, purged = set(_ids(keep)), set(_ids(purge))
    newest = sc.newest().id if sc.points else None
    for p in sc.points:
        if sc.younger(p):
            assert p.id in kept, f"{p.id} is {sc.age_us(p)} us old, younger than {sc.hours} h, and was purged"
        if p.id in purged:
            assert sc.older(p) and p.id not in sc.pinned and p.id != newest
        # the converse (the module's last rule): every other point goes
        # timedelta rounds the float hours to the microsecond: beyond that, exact
        if sc.older_by_more_than_a_microsecond(p) and p.id not in sc.pinned and p.id != newest:
            assert p.id in purged, f"{p.id} is {sc.age_us(p)} us old, older than {sc.hours} h, and was kept"


@props(50)
@given(sc=scenarios(), data=st.data())
def test_the_decision_does_not_depend_on_the_input_order(sc, data):
    first = decide_retention(sc.points, sc.policy, sc.now, sc.pinned)
    again = decide_retention(list(sc.points), sc.policy, sc.now, set(sc.pinned))
    shuffled = data.draw(st.permutations(sc.points), label="shuffled")
    other = decide_retention(iter(shuffled), sc.policy, sc.now, iter(sorted(sc.pinned)))
    assert first == again == other
    assert retention_reasons(shuffled, sc.policy, sc.now, sc.pinned) == retention_reasons(
        sc.points, sc.policy, sc.now, sc.pinned)


# -- commit ----------------------------------------------------------------------------------


@props(50)
@given(sc=scenarios(min_points=1), data=st.data())
def test_commit_keeps_exactly_the_failed_over_point(sc, data):
    chosen = data.draw(st.sampled_from(_ids(sc.points)), label="failed_over_point")
    shuffled = data.draw(st.permutations(sc.points), label="shuffled")
    reasons = commit_reasons(iter(shuffled), chosen)
    assert set(reasons) == set(_ids(sc.points))
    assert [i for i, r in reasons.items() if r.startswith("keep: ")] == [chosen]
    assert all(r.startswith("purge: ") for i, r in reasons.items() if i != chosen)


@props(50)
@given(sc=scenarios(), missing=st.one_of(st.none(), IDS))
def test_commit_without_its_point_among_the_points_refuses(sc, missing):
    if missing is not None and missing in _ids(sc.points):
        missing = "gone-" + missing
    with pytest.raises(StateTransitionError) as caught:
        commit_reasons(iter(sc.points), missing)
    msg = str(caught.value)
    assert "nothing was deleted" in msg and f"{len(sc.points)} recovery points" in msg, msg
    assert (missing or "(none recorded)") in msg, msg


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.sampled_from(["rpo_threshold_minutes", "crash_frequency_minutes", "app_frequency_minutes", "retention_hours"]),
       st.one_of(st.floats(max_value=0.0), st.floats(min_value=87600.0 * 60 + 1), st.just(float("nan")),
                 st.just(float("inf"))))
def test_a_policy_from_anywhere_refuses_numbers_that_would_purge_everything_or_crash(field_name, value):
    """Not only the site config: a Policy read from the vault or built in code (retention
    with 0, a negative, NaN or infinity would purge every point but the newest, or crash)."""
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        Policy(**{field_name: value})
