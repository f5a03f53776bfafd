"""Which process server runs each machine's cycles, and what happens when one is lost (pure).

Units
    The dispatcher starts one cycle per lone item or per replication group (its members share
    one barrier), so a group is placed as one unit: all its members on one process server.

Home and server
    Each unit has a *home* (where it belongs) and a *server* (who runs its cycles now). The
    home is the process server a member's machine is pinned to (`process_servers[].machines`),
    else the one chosen when the unit was first seen: the least loaded (load / weight) of the
    servers online then. Placements are sticky: a new process server does not pull machines
    to itself until `drbook rebalance`, so cycles do not wander.

Lost and back
    A process server is online while its work queue is polled (its worker asks for runs every
    few seconds); one whose queue has not been polled for `takeover.after_s` (or never was) is
    lost: its units move, each to the least loaded online server, and an event says so. When
    it polls again for `takeover.return_after_s` it is online again and its units come home
    (unless `takeover.automatic_return` is false: then they stay until `drbook rebalance`).
    With no process server online nothing moves: there is nowhere to go.

Load
    A unit's load is one per member (a cycle's fixed cost: a process, an SSH session, an agent
    scan) plus its members' measured churn in GiB per day, plus their disks in TiB. The
    dispatcher, every tick, knows only the first and the last (cheap: the item documents);
    `drbook rebalance` adds the churn of the last day's points. A placement keeps the load it
    was placed with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, Field

from drbook.config import ProcessServerConfig, TakeoverConfig
from drbook.models import Doc, ItemState, ProtectedItem, utcnow

GIB = 1024 ** 3
TIB = 1024 ** 4
ASSIGNMENT_KEY = "process-servers/assignment.json"

MoveWhy = Literal["new", "takeover", "return", "rebalance", "unconfigured"]


class Unit(BaseModel):
    """What one cycle replicates: an item alone, or a group's protected members."""

    key: str  # the item's name, or "group:<name>"
    members: list[str]
    machines: list[str]
    load: float


class Placement(BaseModel):
    members: list[str]
    server: str  # runs the unit's cycles now
    home: str  # where it belongs; differs while it is taken over
    since: dt.datetime
    load: float = 0.0


class ServerState(BaseModel):
    status: Literal["online", "lost"]
    last_polled: dt.datetime | None = None
    lost_at: dt.datetime | None = None
    back_since: dt.datetime | None = None  # a lost one polling again since then


class Assignment(Doc):
    """The vault's record (ASSIGNMENT_KEY): each unit's placement, each server's state."""

    units: dict[str, Placement] = {}
    servers: dict[str, ServerState] = {}
    updated: dt.datetime = Field(default_factory=utcnow)

    def server_of(self, members: Iterable[str]) -> str | None:
        """The server running the cycles of these items (one cycle's members share one)."""
        wanted = set(members)
        return next((p.server for p in self.units.values() if wanted & set(p.members)), None)


class Move(BaseModel):
    unit: str
    from_server: str | None
    to_server: str
    why: MoveWhy


class ServerEvent(BaseModel):
    server: str
    kind: Literal["lost", "returned"]
    last_polled: dt.datetime | None
    moves: list[Move] = []


class Decision(BaseModel):
    assignment: Assignment
    moves: list[Move]
    events: list[ServerEvent]

    def lost(self) -> list[str]:
        return sorted(n for n, s in self.assignment.servers.items() if s.status == "lost")

    def server_for(self, members: Iterable[str], servers: list[ProcessServerConfig]) -> ProcessServerConfig:
        """The process server whose queue a cycle of these items goes to (a unit the
        assignment does not know yet, e.g. protected since this tick began: the first)."""
        name = self.assignment.server_of(members)
        return next((ps for ps in servers if ps.name == name), servers[0])


def unit_key(item: ProtectedItem) -> str:
    return f"group:{item.group}" if item.group else item.name


def units_of(items: Iterable[ProtectedItem], churn_gib_per_day: Mapping[str, float] | None = None) -> list[Unit]:
    """The units of the protected items (the ones the dispatcher replicates), with their load."""
    churn = churn_gib_per_day or {}
    grouped: dict[str, list[ProtectedItem]] = {}
    for item in items:
        if item.state == ItemState.PROTECTED:
            grouped.setdefault(unit_key(item), []).append(item)
    units = []
    for key, members in sorted(grouped.items()):
        load = sum(1.0 + churn.get(m.name, 0.0) + sum(d.size_bytes for d in m.disks) / TIB for m in members)
        units.append(Unit(key=key, members=sorted(m.name for m in members), machines=sorted(m.machine for m in members),
                          load=round(load, 6)))
    return units


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    return t if t is None or t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def server_states(previous: Mapping[str, ServerState], servers: Iterable[ProcessServerConfig],
                  polls: Mapping[str, dt.datetime | None], now: dt.datetime,
                  takeover: TakeoverConfig) -> tuple[dict[str, ServerState], list[ServerEvent]]:
    """Each configured server's state now, and the servers that were lost or came back."""
    states: dict[str, ServerState] = {}
    events: list[ServerEvent] = []
    for ps in servers:
        polled = _aware(polls.get(ps.queue))
        fresh = polled is not None and (now - polled).total_seconds() <= takeover.after_s
        before = previous.get(ps.name)
        if fresh and (before is None or before.status == "online"):
            states[ps.name] = ServerState(status="online", last_polled=polled)
        elif fresh:
            back_since = _aware(before.back_since) or now
            if (now - back_since).total_seconds() >= takeover.return_after_s:
                states[ps.name] = ServerState(status="online", last_polled=polled)
                events.append(ServerEvent(server=ps.name, kind="returned", last_polled=polled))
            else:
                states[ps.name] = before.model_copy(update={"last_polled": polled, "back_since": back_since})
        elif before is not None and before.status == "lost":
            states[ps.name] = before.model_copy(update={"last_polled": polled, "back_since": None})
        else:
            states[ps.name] = ServerState(status="lost", last_polled=polled, lost_at=now)
            events.append(ServerEvent(server=ps.name, kind="lost", last_polled=polled))
    return states, events


def decide(previous: Assignment | None, units: Iterable[Unit], servers: list[ProcessServerConfig],
           polls: Mapping[str, dt.datetime | None], now: dt.datetime, takeover: TakeoverConfig,
           *, rebalance: bool = False) -> Decision:
    """The placement of every unit now. `rebalance`: forget every home that is not a pin and
    spread all units again over the servers online (the operator's command)."""
    previous = previous or Assignment()
    states, events = server_states(previous.servers, servers, polls, now, takeover)
    configured = {ps.name: ps for ps in servers}
    online = [ps.name for ps in servers if states[ps.name].status == "online"]
    pins = {m: ps.name for ps in servers for m in ps.machines}
    load = {name: 0.0 for name in configured}

    def least_loaded(among: list[str]) -> str:
        return min(among, key=lambda n: (load[n] / configured[n].weight, among.index(n)))

    placed: dict[str, Placement] = {}
    moves: list[Move] = []
    pending: list[tuple[Unit, Placement | None, str | None]] = []
    for unit in sorted(units, key=lambda u: (-u.load, u.key)):
        before = previous.units.get(unit.key)
        pin = next((pins[m] for m in unit.machines if m in pins), None)
        home = pin or (None if rebalance or before is None else before.home)
        if home is not None and home not in configured:
            home = None
        gone = before is not None and before.server not in configured  # removed from the site config
        stay = None if gone else _stays(before, home, online, takeover, rebalance)
        if stay is not None:
            placed[unit.key] = Placement(members=unit.members, server=stay, home=home or stay, since=before.since,
                                         load=unit.load)
            load[stay] = load.get(stay, 0.0) + unit.load
        else:
            pending.append((unit, before, home))

    for unit, before, home in pending:
        if not online:  # nowhere to go: keep what was, or wait at home
            server = before.server if before and before.server in configured else (home or least_loaded(list(configured)))
            placed[unit.key] = Placement(members=unit.members, server=server, home=home or server,
                                         since=before.since if before else now, load=unit.load)
            load[server] = load.get(server, 0.0) + unit.load
            continue
        server = home if home in online else least_loaded(online)
        home = home or server
        placed[unit.key] = Placement(members=unit.members, server=server, home=home, since=now, load=unit.load)
        load[server] += unit.load
        if before is None or before.server != server:
            moves.append(Move(unit=unit.key, from_server=before.server if before else None, to_server=server,
                              why=_why(before, server, home, states, configured, rebalance)))

    for event in events:
        event.moves = [m for m in moves if m.from_server == event.server or (event.kind == "returned" and m.to_server == event.server)]
    return Decision(assignment=Assignment(units=dict(sorted(placed.items())), servers=states, updated=now),
                    moves=moves, events=events)


def _stays(before: Placement | None, home: str | None, online: list[str], takeover: TakeoverConfig,
           rebalance: bool) -> str | None:
    """Where a placed unit stays without moving, or None when it must be placed again."""
    if before is None or rebalance:
        return None
    if home is not None and before.server == home:
        return home if (home in online or not online) else None
    # Away from home (taken over): back when home is online again, unless returns are manual.
    if home in online and takeover.automatic_return:
        return None
    return before.server if (before.server in online or not online) else None


def _why(before: Placement | None, server: str, home: str, states: Mapping[str, ServerState],
         configured: Mapping[str, ProcessServerConfig], rebalance: bool) -> MoveWhy:
    if before is None:
        return "new"
    if rebalance:
        return "rebalance"
    if before.server not in configured:
        return "unconfigured"
    if states[before.server].status == "lost":
        return "takeover"
    return "return" if server == home else "rebalance"
