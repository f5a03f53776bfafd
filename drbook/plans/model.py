"""A recovery plan as its YAML file says it (pydantic): ordered groups, each recovering its
machines in parallel, with pre and post actions (script, manual, wait).

Field-level rules live here; rules that need the site (machines, replication groups,
templates) are in drbook.plans.validate."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from drbook.failover.points import PointChoice

Direction = Literal["test-failover", "failover", "failback"]
DIRECTIONS: tuple[Direction, ...] = ("test-failover", "failover", "failback")
MAX_MACHINES = 100  # per plan, as ASR's recovery plans

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$")


def _plan_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-48 lowercase letters, digits or '-', starting and ending with a letter or digit")
    return v


def _instructions(v: str) -> str:
    if not v.strip():
        raise ValueError("a manual action needs instructions: what the person must do, and how to tell it is done")
    return v.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class _Action(_Strict):
    directions: list[Direction] = Field(
        list(DIRECTIONS), min_length=1, description="the runs this action belongs to (scripts may differ per direction)")
    critical: bool | None = Field(None, description="a failure stops the plan; default: the group's")

    def applies(self, direction: Direction) -> bool:
        return direction in self.directions


class ScriptAction(_Action):
    """A template from templates/ rendered with each machine's facts and run on every machine
    of the group: on the recovered VM (run command; post actions only) or on the source (SSH)."""

    script: str = Field(description="template name under templates/, e.g. repoint_web.sh.j2")
    on: Literal["recovered", "source"] | None = Field(
        None, description="default: source for a pre action (nothing is recovered yet), recovered for a post action")
    timeout_s: int = Field(600, gt=0, le=3600)

    @property
    def kind(self) -> str:
        return "script"

    def where(self, phase: str) -> Literal["recovered", "source"]:
        return self.on or ("source" if phase == "pre" else "recovered")


class ManualAction(_Action):
    """A person's step: the run pauses, its form shows the instructions and asks done / not done."""

    manual: Annotated[str, AfterValidator(_instructions)]
    timeout_s: int = Field(86400, gt=0, le=7 * 86400, description="seconds to wait for the answer; then: not done")

    @property
    def kind(self) -> str:
        return "manual"


class WaitAction(_Action):
    wait: float = Field(gt=0, le=3600, description="seconds")

    @property
    def kind(self) -> str:
        return "wait"


def _action_kind(v: object) -> str | None:
    """Which action a mapping is, by its one key that names a kind (script, manual, wait)."""
    if isinstance(v, _Action):
        return v.kind  # type: ignore[attr-defined]
    if isinstance(v, dict):
        kinds = [k for k in ("script", "manual", "wait") if k in v]
        return kinds[0] if len(kinds) == 1 else None
    return None


Action = Annotated[
    Annotated[ScriptAction, Tag("script")] | Annotated[ManualAction, Tag("manual")] | Annotated[WaitAction, Tag("wait")],
    Discriminator(_action_kind, custom_error_type="action_kind",
                  custom_error_message="an action is one of `script: TEMPLATE`, `manual: INSTRUCTIONS` or `wait: SECONDS`"),
]


class PlanMachine(_Strict):
    name: str
    critical: bool | None = Field(None, description="default: the group's")


class PlanGroup(_Strict):
    name: str = Field(min_length=1, max_length=64)
    machines: list[str | PlanMachine] = Field(min_length=1)
    critical: bool = Field(True, description="a failed machine or action stops the plan (optional: reported, the plan goes on)")
    pre: list[Action] = []
    post: list[Action] = []

    def members(self) -> list[PlanMachine]:
        return [m if isinstance(m, PlanMachine) else PlanMachine(name=m) for m in self.machines]

    def is_critical(self, machine: str) -> bool:
        for m in self.members():
            if m.name == machine and m.critical is not None:
                return m.critical
        return self.critical


class Plan(_Strict):
    name: Annotated[str, AfterValidator(_plan_name)]
    description: str = ""
    point: PointChoice | None = Field(
        None, description="the recovery point for every machine; default: the run's (drill latest-processed, failover latest)")
    failback_order: Literal["reverse", "forward"] = "reverse"
    groups: list[PlanGroup] = Field(min_length=1)

    @field_validator("groups")
    @classmethod
    def _size(cls, groups: list[PlanGroup]) -> list[PlanGroup]:
        n = sum(len(g.machines) for g in groups)
        if n > MAX_MACHINES:
            raise ValueError(f"{n} machines: a plan holds at most {MAX_MACHINES}")
        return groups

    def machines(self) -> list[str]:
        return [m.name for g in self.groups for m in g.members()]

    def ordered_groups(self, direction: Direction) -> list[PlanGroup]:
        if direction == "failback" and self.failback_order == "reverse":
            return list(reversed(self.groups))
        return list(self.groups)
