"""The protected item's state machine: every legal move, every illegal one refused."""

from __future__ import annotations

import itertools

import pytest

from drbook import state
from drbook.errors import StateTransitionError
from drbook.models import ItemState as S
from drbook.models import ProtectedItem

CYCLE = [
    S.UNPROTECTED, S.INITIAL_REPLICATION, S.PROTECTED, S.FAILED_OVER, S.COMMITTED,
    S.REPROTECTING, S.REPROTECTED, S.FAILED_BACK, S.PROTECTED,
]

LEGAL = {
    (S.UNPROTECTED, S.INITIAL_REPLICATION),
    (S.INITIAL_REPLICATION, S.PROTECTED),
    (S.INITIAL_REPLICATION, S.UNPROTECTED),
    (S.PROTECTED, S.FAILED_OVER),
    (S.PROTECTED, S.UNPROTECTED),
    (S.FAILED_OVER, S.COMMITTED),
    (S.FAILED_OVER, S.PROTECTED),
    (S.COMMITTED, S.REPROTECTING),
    (S.COMMITTED, S.UNPROTECTED),
    (S.REPROTECTING, S.REPROTECTED),
    (S.REPROTECTING, S.COMMITTED),
    (S.REPROTECTED, S.FAILED_BACK),
    (S.REPROTECTED, S.COMMITTED),
    (S.FAILED_BACK, S.PROTECTED),
    (S.FAILED_BACK, S.INITIAL_REPLICATION),
    (S.FAILED_BACK, S.UNPROTECTED),
}
ALL = list(itertools.product(S, S))
ILLEGAL = [pair for pair in ALL if pair not in LEGAL]


def test_the_table_is_exactly_the_documented_moves():
    assert set(state.TRANSITIONS) == LEGAL
    assert all(m.action and m.why for m in state.TRANSITIONS.values())


def test_the_design_cycle_is_legal_end_to_end():
    for frm, to in zip(CYCLE, CYCLE[1:]):
        assert state.check_transition("db01", frm, to) == state.TRANSITIONS[(frm, to)]


@pytest.mark.parametrize("frm,to", sorted(LEGAL), ids=lambda s: s.value)
def test_legal_move(frm, to):
    assert state.is_allowed(frm, to)
    assert to in state.allowed_from(frm)
    assert state.check_transition("db01", frm, to).action


@pytest.mark.parametrize("frm,to", ILLEGAL, ids=lambda s: s.value)
def test_illegal_move_is_refused_with_a_clear_message(frm, to):
    assert not state.is_allowed(frm, to)
    with pytest.raises(StateTransitionError) as caught:
        state.check_transition("db01", frm, to)
    msg = str(caught.value)
    assert msg.startswith(f"cannot move db01 from {frm.value} to {to.value}")
    allowed = state.allowed_from(frm)
    assert allowed, "every state has a way out"
    for a in allowed:
        assert a.value in msg.split("may move to", 1)[1]
    assert caught.value.exit_code == 5 and not caught.value.retryable


def test_second_failover_is_refused():
    with pytest.raises(StateTransitionError, match=r"cannot move db01 from failed-over to failed-over \(it is already failed-over\); from failed-over it may move to protected \(rollback-failover\) or committed \(commit\)"):
        state.check_transition("db01", S.FAILED_OVER, S.FAILED_OVER)


def test_no_state_moves_to_itself():
    assert all(frm != to for frm, to in state.TRANSITIONS)


def test_states_are_accepted_as_strings():
    assert state.allowed_from("failed-over") == [S.PROTECTED, S.COMMITTED]
    assert state.move("protected", "failed-over").action == "failover"
    with pytest.raises(ValueError):
        state.allowed_from("burning")


def test_every_state_is_reachable_from_unprotected():
    seen, todo = {S.UNPROTECTED}, [S.UNPROTECTED]
    while todo:
        for nxt in state.allowed_from(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S)


def _item(s: S) -> ProtectedItem:
    return ProtectedItem(name="db01", machine="db01", state=s)


def test_require_state_message():
    with pytest.raises(StateTransitionError) as caught:
        state.require_state(_item(S.PROTECTED), {S.FAILED_OVER}, action="commit")
    assert str(caught.value) == "cannot commit db01: it is protected; commit needs failed-over"
    state.require_state(_item(S.FAILED_OVER), {S.FAILED_OVER}, action="commit")


def test_require_state_with_several_states():
    with pytest.raises(StateTransitionError) as caught:
        state.require(_item(S.FAILED_OVER), "disable-replication")
    assert str(caught.value) == (
        "cannot disable-replication db01: it is failed-over; disable-replication needs one of "
        "initial-replication, protected, committed or failed-back"
    )


@pytest.mark.parametrize("action", sorted(state.ACTIONS))
@pytest.mark.parametrize("current", list(S), ids=lambda s: s.value)
def test_require_action_table(action, current):
    if current in state.ACTIONS[action]:
        state.require(_item(current), action)
    else:
        with pytest.raises(StateTransitionError, match=rf"^cannot {action} db01: it is {current.value}; {action} needs "):
            state.require(_item(current), action)


def test_actions_that_move_need_the_state_they_move_from():
    """An action named like a move is allowed exactly where that move starts."""
    for (frm, _), m in state.TRANSITIONS.items():
        if m.action in state.ACTIONS:
            assert frm in state.ACTIONS[m.action], (m.action, frm)


def test_unknown_action_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown action 'explode'"):
        state.require(_item(S.PROTECTED), "explode")
