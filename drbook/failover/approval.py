"""What a failover's approver decides on: the summary above the form, the form itself, and
what an answer means (pure: plain data in, markdown / a model / a decision out).

The open-source Prefect UI has no user identity, so the approver types their name (required:
the audit log records it). The recovery point is a choice among the points that exist, not
free text. The UI labels a choice with its value only, so a point's value carries its time
and consistency ("pt-... (2026-11-21 12:00:00Z, app)"); `point_choice` turns it back into the
id the flow understands.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field, create_model
from prefect.input import RunInput

from drbook.config import SiteConfig
from drbook.errors import DRError, PreflightError
from drbook.failover import points as pointlib
from drbook.failover.points import point_choice
from drbook.failover.build import MachinePlan
from drbook.models import ProtectedItem, RecoveryPoint

# Most choices a form offers (newest first): a select of hundreds helps nobody; older points
# stay reachable with the flow's `point` parameter, which is always among the choices.
MAX_POINT_CHOICES = 50

HOW_TO_ANSWER = ("Approve in the UI: open this run's menu (⋮ Open menu) → Resume, fill in the form; "
                 "or run `drbook approve {run_id}` (`--reject` to say no).")


class PointOption(BaseModel):
    """One choice of the form's point select: `value` is what the UI shows and posts."""

    value: str
    point_id: str | None = Field(None, description="None for the keywords")
    time: dt.datetime | None = None
    consistency: str | None = None


def point_label(point_id: str, time: dt.datetime, consistency: str) -> str:
    return f"{point_id} ({time.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z, {consistency})"


def shared_points(items: list[ProtectedItem], points_by_item: dict[str, list[RecoveryPoint]]) -> list[PointOption]:
    """Point ids every machine of the failover can use, newest first: a replication group
    fails over to one shared group point, so several machines share only group points; one
    machine alone may use any of its own."""
    per_item: list[dict[str, RecoveryPoint]] = []
    for item in items:
        pts = points_by_item.get(item.name, [])
        if len(items) > 1:
            pts = [p for p in pts if p.group]
        per_item.append({p.id: p for p in pts})
    if not per_item:
        return []
    shared = set.intersection(*(set(d) for d in per_item))
    options = []
    for pid in shared:
        members = [d[pid] for d in per_item]
        time = min(p.time for p in members)
        kinds = {p.consistency for p in members}
        consistency = "app" if kinds == {"app"} else "inconsistent" if "inconsistent" in kinds else "crash"
        options.append(PointOption(value=point_label(pid, time, consistency), point_id=pid, time=time,
                                   consistency=consistency))
    return sorted(options, key=lambda o: o.time, reverse=True)


def point_options(items: list[ProtectedItem], points_by_item: dict[str, list[RecoveryPoint]],
                  requested: str, limit: int = MAX_POINT_CHOICES) -> list[PointOption]:
    """The keywords, then the newest `limit` shared points, and the requested point if older."""
    shared = shared_points(items, points_by_item)
    chosen = shared[:limit] + [o for o in shared[limit:] if o.point_id == requested]
    return [PointOption(value=k) for k in pointlib.KEYWORDS] + chosen


def form_value_of(values: list[str], choice: str) -> str | None:
    """The form value meaning `choice` (a keyword, a point id or a full label); None if none does."""
    for v in values:
        if choice in (v, point_choice(v)):
            return v
    return None


def approval_form(options: list[PointOption], default_point: str, description: str) -> type[FailoverApprovalBase]:
    """The run's approval form: built per run, because the point is a choice among the points
    that exist now (a Literal: the UI draws a select, the server refuses anything else).
    `description` is the markdown the UI shows above the fields."""
    values = tuple(o.value for o in options)
    default = form_value_of(list(values), default_point) or pointlib.LATEST
    model = create_model(
        "FailoverApproval",
        __base__=FailoverApprovalBase,
        point=(Literal[values], Field(default, title="Recovery point",  # type: ignore[valid-type]
                                      description="latest: a final cycle first; latest-processed: the newest point "
                                                  "that exists; or one point (time, consistency)")),
    )
    # As RunInput.with_initial_data does; it would drop the fields' titles and descriptions.
    model._description = description
    return model


class FailoverApprovalBase(RunInput):
    """Fields every failover approval has; `approval_form` adds the point choice."""

    approve: bool = Field(False, title="Approve", description="on: fail over now; off: nothing changes")
    approver: str = Field(title="Approver", min_length=1, pattern=r"\S", max_length=200,
                          description="your name: the audit log records who approved")
    comment: str = Field("", title="Comment", max_length=2000)
    point: str = Field(pointlib.LATEST, title="Recovery point")


class ApprovalDecision(BaseModel):
    """What an answer (or its absence) means for the failover."""

    approved: bool
    status: Literal["running", "rejected"]
    approver: str | None
    comment: str
    point: str
    audit_action: Literal["failover-approved", "failover-rejected", "failover-approval-timed-out"]
    why: str = ""


def decide(answer: FailoverApprovalBase | None, requested: str) -> ApprovalDecision:
    if answer is None:
        return ApprovalDecision(approved=False, status="rejected", approver=None, comment="timed out",
                                point=requested, audit_action="failover-approval-timed-out",
                                why="nobody approved in time")
    point = point_choice(answer.point) if answer.point else requested
    if not answer.approve:
        return ApprovalDecision(approved=False, status="rejected", approver=answer.approver, comment=answer.comment,
                                point=point, audit_action="failover-rejected", why=f"rejected by {answer.approver}")
    return ApprovalDecision(approved=True, status="running", approver=answer.approver, comment=answer.comment,
                            point=point, audit_action="failover-approved")


# -- the summary ---------------------------------------------------------------------------------
def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _utc(t: dt.datetime) -> str:
    return f"{t.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} TiB"


def preview_points(cfg: SiteConfig, items: list[ProtectedItem], points_by_item: dict[str, list[RecoveryPoint]],
                   choice: str, planned: bool) -> dict[str, RecoveryPoint]:
    """The points the failover would use were it approved now. `latest` (and every planned
    failover) takes a final cycle first; until then the newest point stands in for it. A
    choice that cannot be met is refused before anyone is asked (PreflightError)."""
    from drbook.failover.recovery import choose_points

    stand_in = pointlib.LATEST_PROCESSED if planned or pointlib.needs_final_cycle(choice) else choice
    try:
        return choose_points(cfg, items, points_by_item, stand_in)
    except PreflightError:
        if stand_in != choice or planned:
            return {}  # the final cycle will make the point; nothing to show yet
        raise


def approval_summary(*, cfg: SiteConfig, run_id: str, items: list[ProtectedItem], planned: bool, choice: str,
                     chosen: dict[str, RecoveryPoint], plans: list[MachinePlan], options: list[PointOption],
                     now: dt.datetime) -> str:
    """The markdown an approver reads: machines, the point (time, age = RPO, consistency),
    planned or not, the target resource group and networks, what will be created."""
    machines = [i.name for i in items]
    steps = pointlib.failover_steps(planned, choice)
    kind = "planned" if planned else "unplanned"
    out = [f"## Waiting for approval: {kind} failover of {', '.join(machines)} to Azure", "",
           "Nothing has been changed yet. " + HOW_TO_ANSWER.format(run_id=run_id), ""]

    out += ["### What happens when you approve", ""]
    if planned:
        out += ["- **Planned**: the applications are stopped, a final replication cycle takes the last point "
                "(no data lost), and the **source machines are shut down** before Azure starts them. "
                "A source that does not answer stops the failover with nothing changed in Azure."]
    else:
        out += ["- **Unplanned**: the source machines are **not shut down** (the site is assumed lost); "
                "if they still run, two copies will run after the failover."]
    if steps.final_cycle and not planned:
        out += ["- Point `latest`: a **final replication cycle runs first** when the source answers; "
                "if it does not, the newest existing point (below) is used."]
    elif planned:
        out += ["- The recovery point is the final cycle's (below: the newest existing point, for reference)."]
    else:
        out += [f"- Recovery point: `{choice}`."]
    out += [""]

    out += ["### Machines and recovery points", "",
            "| machine | recovery point | time | age (RPO now) | consistency |", "|---|---|---|---|---|"]
    for m in machines:
        p = chosen.get(m)
        if p is None:
            out += [f"| {m} | (the final cycle's) | — | — | — |"]
        else:
            rpo = pointlib.rpo_seconds(p.time, now)
            out += [f"| {m} | `{p.id}` | {_utc(p.time)} | {_age(rpo)} | {p.consistency} |"]
    out += [""]

    out += ["### Target", "", f"- Subscription `{cfg.azure.subscription_id}`, location `{cfg.azure.location}`",
            f"- Resource group **`{cfg.azure.resource_group}`**"]
    for i in items:
        mc = next((x for x in cfg.machines if x.name == i.machine), None)
        mapping = cfg.mapping_for(mc.network if mc else None)
        if mapping is not None:
            out += [f"- {i.name}: source network `{mapping.source_network}` → vnet **`{mapping.target_vnet}`** / "
                    f"subnet `{mapping.target_subnet}` ({mapping.address_prefix}) — the production network"]
    out += [""]

    out += ["### Will be created", ""]
    if plans:
        out += ["| machine | VM (size) | managed disks | NIC | IP |", "|---|---|---|---|---|"]
        for p in plans:
            disks = ", ".join(f"`{d.name}` ({_size(d.point_disk.size_bytes)})" for d in p.disks)
            ip = p.nic.static_ip or "dynamic"
            out += [f"| {p.machine} | `{p.vm_name}` ({p.size}) | {disks} | `{p.nic_name}` | {ip} ({p.nic.note}) |"]
        n_disks = sum(len(p.disks) for p in plans)
        out += ["", f"In total {len(plans)} VM(s), {n_disks} managed disk(s), {len(plans)} NIC(s), all tagged with "
                f"this run; any failure removes all of them."]
    else:
        out += ["One VM, one NIC and one managed disk per source disk for each machine, from the final cycle's point."]
    out += [""]

    ids = [o for o in options if o.point_id]
    out += ["### Points you can choose in the form", "",
            "`latest`, `latest-processed` (the newest point, no final cycle), `latest-app-consistent`"
            + (", or one of:" if ids else "; no single point is shared by all these machines."), ""]
    if ids:
        out += ["| point | time | age | consistency |", "|---|---|---|---|"]
        out += [f"| `{o.point_id}` | {_utc(o.time)} | {_age((now - o.time).total_seconds())} | {o.consistency} |"
                for o in ids]
    return "\n".join(out) + "\n"


def require_point_value(values: list[str], choice: str) -> str:
    """For `drbook approve --point`: the form's value for `choice`, or a refusal naming the choices."""
    value = form_value_of(values, choice)
    if value is None:
        raise DRError(f"{choice!r} is not a recovery point this run offers; choose one of: "
                      + ", ".join(point_choice(v) for v in values))
    return value
