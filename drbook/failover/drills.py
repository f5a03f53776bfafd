"""What a drill decides before it touches anything (pure): which machines a scheduled drill
takes, and which earlier drills still up block a new one.

A drill brings a machine up in the isolated test network with the machine's own IP. Two
drills of one machine at once would fight over that IP (Azure answers
PrivateIPAddressIsAllocated, after the disks were imported) and over the report. So a new
drill is refused at once while an earlier drill of any of its machines is live, and the
refusal names the live drill and the command that removes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import BaseModel

from drbook import state as statelib
from drbook.errors import InvalidParameters, PreflightError
from drbook.models import DrillRecord, ProtectedItem

# A drill is live while its VMs may be up: `running` (building, or its run crashed and
# nobody cleaned up: the record cannot tell), `succeeded` (up, awaiting a person's look and
# `test-failover-cleanup`). A `failed` drill swept its own resources; a `cleaned-up` one
# is gone.
LIVE_STATUSES = frozenset({"running", "succeeded"})


DRILL_ID_PATTERN = r"^drill-[0-9]{14}-[0-9a-f]{8}$"  # drbook.models.new_id("drill")


def require_drill_id(drill_id: str) -> str:
    """A drill id as drills make them, refused before anything runs (it becomes a vault key)."""
    if re.fullmatch(DRILL_ID_PATTERN, drill_id):
        return drill_id
    raise InvalidParameters(f"{drill_id!r} is not a drill id (drill-YYYYMMDDhhmmss-xxxxxxxx, as `drbook "
                            "test-failover` and the drill's report name it)")


def cleanup_command(drill_id: str) -> str:
    return f"drbook test-failover-cleanup {drill_id}"


def blocking_drills(records: Iterable[DrillRecord], machines: Iterable[str]) -> list[DrillRecord]:
    """The live drills of any of `machines`, oldest first."""
    wanted = set(machines)
    live = [r for r in records if r.status in LIVE_STATUSES and wanted & set(r.items)]
    return sorted(live, key=lambda r: (r.started, r.drill_id))


def describe_blocking(record: DrillRecord, machines: Iterable[str]) -> str:
    """One live drill, as the refusal names it: what it holds, why it counts as live, the way out."""
    held = ", ".join(sorted(set(machines) & set(record.items)))
    run = record.report.get("flow_run_id") or "unknown"
    where = f"drill {record.drill_id} of {held} (flow run {run}, started {record.started:%Y-%m-%d %H:%M:%S} UTC, " \
            f"resource group {record.resource_group or 'none yet'})"
    if record.status == "succeeded":
        return f"{where} is still up; remove it with `{cleanup_command(record.drill_id)}`"
    return (f"{where} is still running, or its run crashed and left the record running; if flow run {run} is no "
            f"longer running, `{cleanup_command(record.drill_id)}` removes what it made and closes the record "
            f"(`drbook reconcile` removes a crashed run's Azure resources, but not the record)")


def require_no_live_drill(records: Iterable[DrillRecord], machines: Iterable[str]) -> None:
    """Refuse a drill of `machines` while an earlier drill of any of them is live."""
    machines = list(machines)
    blocking = blocking_drills(records, machines)
    if blocking:
        lines = "; ".join(describe_blocking(r, machines) for r in blocking)
        raise PreflightError(f"cannot drill {', '.join(machines)}: {lines}. Nothing was changed")


class DrillSelection(BaseModel):
    """The machines a scheduled drill takes, and the protected items it leaves out, with why."""

    machines: list[str]
    skipped: dict[str, str] = {}


def drill_targets(items: list[ProtectedItem], machines: list[str] | None, group: str | None) -> DrillSelection:
    """`machines` by name, or the members of replication `group`, or, with neither, every
    protected item whose state allows a drill (the others are skipped, each with its reason:
    a weekly drill of the whole site should not fail because one machine is still on its
    initial copy or failed over). Named machines are not filtered: a drill of a machine that
    cannot be drilled is refused by the state machine, naming it."""
    by_name = {i.name: i for i in items}
    if machines and group:
        raise PreflightError(f"give machines or a replication group, not both (machines {', '.join(machines)}, "
                             f"group {group})")
    if machines:
        unknown = [m for m in machines if m not in by_name]
        if unknown:
            raise PreflightError(f"no protected item {', '.join(unknown)}; protected items: "
                                 f"{', '.join(sorted(by_name)) or 'none'}")
        return DrillSelection(machines=list(dict.fromkeys(machines)))
    if group:
        members = sorted(i.name for i in items if i.group == group)
        if not members:
            groups = sorted({i.group for i in items if i.group})
            raise PreflightError(f"no protected item is in replication group {group!r}; groups: "
                                 f"{', '.join(groups) or 'none'}")
        return DrillSelection(machines=members)
    allowed = statelib.ACTIONS["test-failover"]
    chosen = sorted(i.name for i in items if i.state in allowed)
    skipped = {i.name: f"it is {i.state.value}; a drill needs {', '.join(sorted(s.value for s in allowed))}"
               for i in sorted(items, key=lambda i: i.name) if i.state not in allowed}
    if not chosen:
        raise PreflightError("nothing to drill: no protected item is in a state that allows a drill"
                             + (f" ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""))
    return DrillSelection(machines=chosen, skipped=skipped)


def outcome_markdown(drill_id: str, machines: list[str], error: str | None, cleanup: dict) -> str:
    """What a scheduled drill's run page shows last: whether it verified, and that it left nothing."""
    verdict = f"**FAILED**: {error}" if error else "**Succeeded**: every disk verified byte for byte"
    return "\n".join([
        f"# drbook scheduled drill {drill_id}",
        "",
        f"Machines: {', '.join(machines)}",
        "",
        verdict,
        "",
        f"Cleanup: {len(cleanup['deleted'])} resources deleted, resource group `{cleanup['resource_group_deleted']}` "
        f"deleted, nothing tagged with the run is left in Azure.",
    ]) + "\n"
