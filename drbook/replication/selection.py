"""Which cycles to run (pure): members of one replication group share a cycle (one
barrier, one point id), every other item cycles alone. Replication and the final cycle
before a failover or drill both ask here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from drbook.errors import PreflightError
from drbook.models import ItemState, ProtectedItem


class CyclePlan(BaseModel):
    """One cycle: `group` None is an item alone, else the group's members in this cycle."""

    group: str | None
    members: list[str]


def plan_cycles(items: Mapping[str, ProtectedItem], names: Iterable[str]) -> list[CyclePlan]:
    """Items alone first, in the order named, then one cycle per group."""
    alone: list[CyclePlan] = []
    groups: dict[str, list[str]] = {}
    for name in names:
        group = items[name].group
        if group:
            groups.setdefault(group, []).append(name)
        else:
            alone.append(CyclePlan(group=None, members=[name]))
    return alone + [CyclePlan(group=g, members=members) for g, members in groups.items()]


def plan_final_cycles(items: Mapping[str, ProtectedItem], names: Iterable[str]) -> list[CyclePlan]:
    """The last cycle before a failover or drill: a group shares one point only when
    several of its members go; a lone member cycles alone (no barrier to hold)."""
    return [CyclePlan(group=p.group if len(p.members) > 1 else None, members=p.members)
            for p in plan_cycles(items, names)]


def select_for_replication(items: Iterable[ProtectedItem], machines: Iterable[str] = (), *, group: str | None = None,
                           all_items: bool = False) -> list[CyclePlan]:
    """The cycles `drbook replicate` runs: one group, every protected item, or the machines
    named. A named machine that is not protected is refused before anything runs."""
    everything = {i.name: i for i in items}
    protected = {n: i for n, i in everything.items() if i.state == ItemState.PROTECTED}
    if group:
        chosen = [n for n, i in protected.items() if i.group == group]
        if not chosen:
            raise PreflightError(f"replication group {group!r} has no protected members")
    elif all_items:
        chosen = sorted(protected)
    else:
        chosen = list(machines)
        for m in chosen:
            if m not in everything:
                raise PreflightError(f"cannot replicate {m}: no protected item of that name "
                                     f"(known: {', '.join(sorted(everything)) or 'none'}); `drbook protect {m}` first")
            if m not in protected:
                raise PreflightError(f"cannot replicate {m}: it is {everything[m].state.value}; "
                                     "replication cycles need protected")
    return plan_cycles(protected, chosen)
