"""What a plan run did, step by step and machine by machine: the vault keeps it
(plan-runs/<run id>) and the report is drawn from it (drbook.plans.report)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from drbook.models import Doc, utcnow
from drbook.plans.model import Direction

StepKind = Literal["recover", "script", "manual", "wait", "sources"]  # sources: a failover's stop, last cycle, shutdown
StepStatus = Literal["running", "succeeded", "failed", "not-done", "skipped"]
MachineStatus = Literal["succeeded", "failed", "not-run"]
RunStatus = Literal["running", "succeeded", "succeeded-with-failures", "stopped", "rejected", "failed"]


class StepRecord(Doc):
    """One step of the plan as it ran: a machine's recovery, or an action (on one machine for
    a script, on the group for a manual action or a wait)."""

    group: str
    phase: Literal["pre", "recover", "post"]
    kind: StepKind
    label: str  # e.g. "recover db01", "script repoint.sh.j2 on app01", "manual: Change the DNS record"
    machine: str | None = None
    critical: bool = True
    started: dt.datetime = Field(default_factory=utcnow)
    finished: dt.datetime | None = None
    status: StepStatus = "running"
    output: str = ""  # a script's output; a manual action's answer (who, comment)
    error: str = ""


class PlanMachineResult(Doc):
    """A machine of the plan: what it came up from and how it went (not-run: the plan
    stopped before its group)."""

    machine: str
    group: str
    critical: bool = True
    status: MachineStatus = "not-run"
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    point_id: str = ""
    point_time: dt.datetime | None = None
    consistency: str = ""
    rpo_seconds: float | None = None
    rto_seconds: float | None = None
    bytes_verified: int = 0
    verified: bool = False
    vm_name: str = ""
    ip: str = ""
    error: str = ""
    script_output: str = ""


class PlanRunRecord(Doc):
    run_id: str  # the Prefect flow run's id
    plan: str
    plan_file: str = ""
    direction: Direction
    status: RunStatus = "running"
    started: dt.datetime = Field(default_factory=utcnow)
    finished: dt.datetime | None = None
    drill_id: str | None = None  # a test failover: its drill (cleanup: test-failover-cleanup)
    resource_group: str = ""
    why: str = ""  # why it stopped or failed, in one line
    machines: list[PlanMachineResult] = []
    steps: list[StepRecord] = []
    report_path: str = ""
