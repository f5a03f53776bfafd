"""Scheduled replication (pure): which cycles are due now, and which items are busy.

The dispatcher flow (flows/continuous.py) reads the vault, the items' locks and the live
runs of the cycle deployment, asks here, and starts one deployment run per due cycle.

When is an item due?
    Only protected items replicate on a schedule (an initial copy is the enable flow's;
    failed-over and later states do not replicate from the source). An item is due when
    its newest point of any kind is older than its interval: `crash_frequency_minutes`,
    or `app_frequency_minutes` when that is shorter and the machine can make app points.
    The cycle asks for an app-consistent point when the newest *app* point is older than
    `app_frequency_minutes` (or there is none) and the machine has quiesce hooks; else a
    crash-consistent one. So an app point is taken on the first crash tick after it falls
    due (at most one crash interval late), and a machine whose quiesce hooks fail, or that
    has none, never makes cycles back to back: the next try waits for the next tick.

Groups
    Members share one cycle (one barrier, one point id). The group is due when any
    protected member is due, and wants an app point when any member does: the group runs
    at the pace of its most demanding member, so when members' policies differ the
    strictest (shortest) frequencies win. Members that are not protected stay out of the
    group's cycle, as they do for `drbook replicate --group`.

Busy (never two cycles of one item at once, no stacking, no item blocked forever)
    - the item's lock in the vault (`locks/item-<name>`, the lease every cycle takes) is
      held. A lease lasts 15 s and only a live process renews it, so a cycle whose worker
      died stops counting within 15 s;
    - a run of the cycle deployment for the item is scheduled or pending (it has not
      reached its lease yet), unless it has waited longer than `pending_s` (no worker took
      it: it must not block the item forever);
    - a run is running but younger than `running_grace_s`: the window between the run
      starting on the worker and its cycle taking the lease (process start, imports,
      reading the vault, retry back-offs). An older running run counts only through the
      lease, so a run whose worker died blocks nothing once its lease expired.
    The lease remains the hard guarantee: a second cycle that slips through these checks
    fails at once with LeaseHeldError (not retried) and touches nothing.
A group is busy when any member is.

Starting early (the RPO goal: never above twice the frequency)
    A cycle is not a point the moment it is due: the dispatcher sees it only on its next
    tick, the worker picks the run up, a process starts, the cycle reads and commits. The
    newest point is as old as the gap between two snapshots plus that whole latency, so a
    cycle started only when due leaves the RPO at the frequency plus a tick plus the latency
    (measured: 119.9 s for a 30 s policy). So an item falls due early by its *lead*: what its
    newest finished cycle took from being asked for to its end, plus half a dispatcher tick
    (start_leads). The lead is capped at the interval: a machine whose cycles take longer
    than its frequency replicates back to back, which is the best its RPO can get.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from typing import Literal

from pydantic import BaseModel

from drbook.models import ItemState, ProtectedItem

RunState = Literal["SCHEDULED", "PENDING", "RUNNING"]
# Two dispatcher runs at once (a slow tick overlapping the next) would both see an item free
# and start it twice: the dispatcher holds this lock while it decides and starts, and so does
# `drbook process-server rebalance` while it moves units between process servers.
DISPATCHER_LOCK = "replication-dispatcher"


class ScheduleBounds(BaseModel):
    """How long a live run of the cycle deployment counts as busy without the item's lease."""

    pending_s: float = 300.0
    running_grace_s: float = 120.0


class ActiveRun(BaseModel):
    """A run of the cycle deployment that is not finished, as the dispatcher saw it."""

    run_id: str
    state: RunState
    since: dt.datetime  # scheduled start for SCHEDULED/PENDING, start time for RUNNING
    items: list[str]
    queue: str | None = None  # the work queue it waits in (its process server's)


class FinishedRun(BaseModel):
    """A finished run of the cycle deployment: when it was asked for and when it ended."""

    run_id: str
    requested: dt.datetime
    ended: dt.datetime
    items: list[str]


class ItemReason(BaseModel):
    item: str
    group: str | None
    status: Literal["due", "not-due", "busy", "not-replicating"]
    want: Literal["crash", "app"] | None = None
    due_at: dt.datetime | None = None
    why: str


class DueCycle(BaseModel):
    """One cycle to start: `group` None is an item alone, else the group's members."""

    group: str | None
    members: list[str]
    want: Literal["crash", "app"]
    why: str

    @property
    def label(self) -> str:
        return f"group {self.group}" if self.group else self.members[0]

    def parameters(self) -> dict:
        """The cycle deployment's parameters for this cycle."""
        return {"group": self.group, "machines": self.members, "want": self.want}


class Schedule(BaseModel):
    cycles: list[DueCycle]
    reasons: list[ItemReason]


def _aware(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def busy_items(held: Mapping[str, str], runs: Iterable[ActiveRun], now: dt.datetime,
               bounds: ScheduleBounds = ScheduleBounds(), live_queues: Collection[str] = ()) -> dict[str, str]:
    """item -> why it is busy, from the held item locks (item -> holder) and the live runs.
    `live_queues`: the queues of the process servers online: a run scheduled there waits for
    a slot (the queue's concurrency limit) and will run, however long it has waited."""
    now = _aware(now)
    busy = {item: f"its lock is held by {holder}" for item, holder in held.items()}
    for run in runs:
        age = (now - _aware(run.since)).total_seconds()
        if run.state == "RUNNING":
            counts = age <= bounds.running_grace_s
            why = f"run {run.run_id} started {age:.0f}s ago"
        elif run.state == "SCHEDULED" and run.queue in live_queues:
            counts = True
            why = f"run {run.run_id} waits in queue {run.queue} ({max(age, 0):.0f}s)"
        else:
            counts = age <= bounds.pending_s
            why = f"run {run.run_id} is {run.state.lower()} ({max(age, 0):.0f}s)"
        if counts:
            for item in run.items:
                busy.setdefault(item, why)
    return busy


def start_leads(items: Iterable[str], finished: Iterable[FinishedRun], tick_s: float = 0.0) -> dict[str, float]:
    """item -> seconds its next cycle should start before it is due: the time its newest
    finished cycle took from being asked for to its end, plus half the dispatcher's tick
    `tick_s` (an item waits that long on average to be seen due). An item with no finished
    cycle yet gets the half tick alone."""
    newest: dict[str, FinishedRun] = {}
    for run in finished:
        for name in run.items:
            if name not in newest or _aware(run.ended) > _aware(newest[name].ended):
                newest[name] = run
    leads = {}
    for name in items:
        run = newest.get(name)
        took = max(0.0, (_aware(run.ended) - _aware(run.requested)).total_seconds()) if run else 0.0
        leads[name] = took + tick_s / 2
    return leads


def _item_clock(item: ProtectedItem, app_capable: bool, now: dt.datetime,
                lead_s: float = 0.0) -> tuple[dt.datetime, Literal["crash", "app"]]:
    """(when the item's next cycle falls due, which kind it wants). `lead_s`: how early
    (start_leads), at most the interval."""
    pol = item.policy
    interval = pol.crash_frequency_minutes
    if app_capable:
        interval = min(interval, pol.app_frequency_minutes)
    early = dt.timedelta(seconds=min(max(lead_s, 0.0), interval * 60))
    due_at = now if item.last_point_time is None else _aware(item.last_point_time) + dt.timedelta(minutes=interval) - early
    app_due = app_capable and (item.last_app_point_time is None or
                               now - _aware(item.last_app_point_time) >= dt.timedelta(minutes=pol.app_frequency_minutes))
    return due_at, "app" if app_due else "crash"


def decide_schedule(items: Iterable[ProtectedItem], now: dt.datetime, *, busy: Mapping[str, str] | None = None,
                    app_capable: Collection[str] = (), leads: Mapping[str, float] | None = None) -> Schedule:
    """The cycles due at `now`: items alone first (by name), then one cycle per group (by
    name), each with a reason for every item. `busy`: item -> why (busy_items);
    `app_capable`: the items whose machines have quiesce hooks; `leads`: item -> seconds
    early (start_leads)."""
    now = _aware(now)
    busy = busy or {}
    leads = leads or {}
    reasons: list[ItemReason] = []
    clocks: dict[str, tuple[dt.datetime, Literal["crash", "app"]]] = {}
    alone: list[str] = []
    groups: dict[str, list[str]] = {}
    for item in sorted(items, key=lambda i: i.name):
        if item.state != ItemState.PROTECTED:
            reasons.append(ItemReason(item=item.name, group=item.group, status="not-replicating",
                                      why=f"it is {item.state.value}; scheduled cycles need protected"))
            continue
        clocks[item.name] = _item_clock(item, item.name in app_capable, now, leads.get(item.name, 0.0))
        if item.group:
            groups.setdefault(item.group, []).append(item.name)
        else:
            alone.append(item.name)

    cycles: list[DueCycle] = []
    units = [(None, [n]) for n in alone] + sorted(groups.items())
    for group, members in units:
        due_at = min(clocks[m][0] for m in members)
        want: Literal["crash", "app"] = "app" if any(clocks[m][1] == "app" for m in members) else "crash"
        blocked = {m: busy[m] for m in members if m in busy}
        for m in members:
            own_due, own_want = clocks[m]
            if blocked:
                who = "" if m in blocked else f" (group {group}: {', '.join(sorted(blocked))})"
                reasons.append(ItemReason(item=m, group=group, status="busy", due_at=own_due,
                                          why=(blocked.get(m) or next(iter(blocked.values()))) + who))
            elif due_at <= now:
                why = f"due since {own_due:%H:%M:%S}"
                if leads.get(m):
                    why += f" (starting up to {leads[m]:.0f}s early: the time a cycle takes to land)"
                if own_due > now:
                    why = f"group {group} is due (its member {min(members, key=lambda x: clocks[x][0])} is)"
                reasons.append(ItemReason(item=m, group=group, status="due", want=want, due_at=own_due, why=why))
            else:
                reasons.append(ItemReason(item=m, group=group, status="not-due", due_at=due_at,
                                          why=f"not yet due until {due_at:%H:%M:%S}"))
        if not blocked and due_at <= now:
            cycles.append(DueCycle(group=group, members=members, want=want,
                                   why=f"{'group ' + group if group else members[0]}: {want} point due"))
    return Schedule(cycles=cycles, reasons=reasons)
