"""The protected item's state machine (DESIGN.md §3): which moves are legal, and why.

Pure: no I/O. drbook.vault checks every move here before it writes anything, and flows
ask `require()` before they touch Azure or vCenter, so an illegal step is refused with
a message that says what the item is and what it needs.

The cycle: unprotected -> initial-replication -> protected -> failed-over (uncommitted)
-> committed -> reprotecting -> reprotected -> failed-back -> protected. Besides it: an
initial copy or a reprotect can be abandoned, an uncommitted failover rolled back,
replication disabled where nothing is in flight or uncommitted (initial-replication,
protected, committed, failed-back), and after a failback replication may restart with a
full copy when the old replica is unusable. TRANSITIONS says why for each move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from drbook.errors import StateTransitionError
from drbook.models import ItemState

S = ItemState


@dataclass(frozen=True)
class Move:
    action: str
    why: str


# Every legal move. Anything not listed is refused; in particular no state moves to
# itself, so a second failover (failed-over -> failed-over) or a second enable is refused.
TRANSITIONS: dict[tuple[ItemState, ItemState], Move] = {
    (S.UNPROTECTED, S.INITIAL_REPLICATION): Move(
        "enable-replication", "replication is enabled: the initial copy of every disk starts"),
    (S.INITIAL_REPLICATION, S.PROTECTED): Move(
        "initial-replication-complete", "the initial copy finished and the first recovery point exists"),
    (S.INITIAL_REPLICATION, S.UNPROTECTED): Move(
        "disable-replication", "the initial copy was abandoned; there is no point to fail over to yet"),
    (S.PROTECTED, S.FAILED_OVER): Move(
        "failover", "Azure VMs were built from a recovery point; the failover is not yet committed"),
    (S.PROTECTED, S.UNPROTECTED): Move(
        "disable-replication", "replication is disabled while the source is production; nothing runs in Azure"),
    (S.FAILED_OVER, S.COMMITTED): Move(
        "commit", "the chosen point becomes final and the other recovery points are deleted"),
    (S.FAILED_OVER, S.PROTECTED): Move(
        "rollback-failover",
        "an uncommitted failover is undone (Azure VMs deleted); no point was deleted, so replication resumes"),
    (S.COMMITTED, S.REPROTECTING): Move(
        "reprotect", "the Azure VMs' disks start replicating back to the on-premises VMs"),
    (S.COMMITTED, S.UNPROTECTED): Move(
        "disable-replication", "the machine stays in Azure for good (a migration); there is nothing to protect"),
    (S.REPROTECTING, S.REPROTECTED): Move(
        "reprotect-complete", "the on-premises disks caught up with the Azure VMs and track their changes"),
    (S.REPROTECTING, S.COMMITTED): Move(
        "abandon-reprotect", "reprotect was abandoned; the Azure VMs stay production and reprotect can run again"),
    (S.REPROTECTED, S.FAILED_BACK): Move(
        "failback", "the Azure VMs were stopped, synced a last time, and the on-premises VMs run again"),
    (S.REPROTECTED, S.COMMITTED): Move(
        "stop-reverse-replication", "reverse replication stopped; the Azure VMs stay production"),
    (S.FAILED_BACK, S.PROTECTED): Move(
        "re-enable-replication", "replication to Azure resumes from the existing replica (changed blocks only)"),
    (S.FAILED_BACK, S.INITIAL_REPLICATION): Move(
        "re-enable-replication", "replication to Azure restarts with a full copy (the old replica is unusable)"),
    (S.FAILED_BACK, S.UNPROTECTED): Move(
        "disable-replication", "the machine is back on-premises and is not protected again"),
}

# What each operation needs. A flow calls `require(item, action)` before it touches anything.
ACTIONS: dict[str, frozenset[ItemState]] = {
    "enable-replication": frozenset({S.UNPROTECTED}),
    "replicate": frozenset({S.INITIAL_REPLICATION, S.PROTECTED}),
    "test-failover": frozenset({S.PROTECTED}),
    "failover": frozenset({S.PROTECTED}),
    "change-recovery-point": frozenset({S.FAILED_OVER}),
    "rollback-failover": frozenset({S.FAILED_OVER}),
    "commit": frozenset({S.FAILED_OVER, S.FAILED_BACK}),  # a failover's commit, or a failback's
    "reprotect": frozenset({S.COMMITTED}),
    "abandon-reprotect": frozenset({S.REPROTECTING}),
    "reverse-replicate": frozenset({S.REPROTECTING, S.REPROTECTED}),
    "failback": frozenset({S.REPROTECTED}),
    "re-enable-replication": frozenset({S.FAILED_BACK}),
    "disable-replication": frozenset({S.INITIAL_REPLICATION, S.PROTECTED, S.COMMITTED, S.FAILED_BACK}),
}

_ORDER = list(ItemState)


class HasState(Protocol):
    name: str
    state: ItemState


def _sorted(states: Iterable[ItemState]) -> list[ItemState]:
    return sorted(states, key=_ORDER.index)


def _join(states: Iterable[ItemState], *, source: ItemState | None = None) -> str:
    """"a, b or c"; with `source`, each target carries the action that reaches it."""
    values = [s.value if source is None else f"{s.value} ({TRANSITIONS[(source, s)].action})" for s in _sorted(states)]
    if not values:
        return "nothing"
    if len(values) == 1:
        return values[0]
    return f"{', '.join(values[:-1])} or {values[-1]}"


def allowed_from(state: ItemState | str) -> list[ItemState]:
    """The states an item in `state` may move to, in lifecycle order."""
    state = ItemState(state)
    return _sorted(to for (frm, to) in TRANSITIONS if frm == state)


def is_allowed(current: ItemState | str, target: ItemState | str) -> bool:
    return (ItemState(current), ItemState(target)) in TRANSITIONS


def move(current: ItemState | str, target: ItemState | str) -> Move:
    """The legal move from `current` to `target`; KeyError when there is none."""
    return TRANSITIONS[(ItemState(current), ItemState(target))]


def check_transition(item_name: str, current: ItemState | str, target: ItemState | str) -> Move:
    """Return the move, or raise StateTransitionError naming the item, both states and what is allowed."""
    current, target = ItemState(current), ItemState(target)
    found = TRANSITIONS.get((current, target))
    if found is not None:
        return found
    why = f" (it is already {current.value})" if current == target else ""
    raise StateTransitionError(
        f"cannot move {item_name} from {current.value} to {target.value}{why}; "
        f"from {current.value} it may move to {_join(allowed_from(current), source=current)}"
    )


def require_state(item: HasState, states: Iterable[ItemState | str], *, action: str) -> None:
    """Refuse `action` unless the item is in one of `states`:
    "cannot commit db01: it is protected; commit needs one of failed-over or failed-back"."""
    wanted = {ItemState(s) for s in states}
    if ItemState(item.state) in wanted:
        return
    needs = _join(wanted) if len(wanted) < 2 else f"one of {_join(wanted)}"
    raise StateTransitionError(f"cannot {action} {item.name}: it is {ItemState(item.state).value}; {action} needs {needs}")


def require(item: HasState, action: str) -> None:
    """`require_state` with the states ACTIONS lists for `action`."""
    try:
        states = ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}") from None
    require_state(item, states, action=action)
