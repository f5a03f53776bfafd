"""What a plan run does after each step (pure): which machines complete or roll back
together, whether the plan goes on, and how the run ends."""

from __future__ import annotations

from pydantic import BaseModel

from drbook.models import ProtectedItem
from drbook.plans.record import PlanRunRecord, RunStatus


def units(machines: list[str], items: dict[str, ProtectedItem]) -> list[list[str]]:
    """The machines that complete or roll back together: a replication group's members share
    one point, so one failing member takes its group back with it; any other machine alone."""
    out: dict[str, list[str]] = {}
    for m in machines:
        key = f"group:{items[m].group}" if items[m].group else f"machine:{m}"
        out.setdefault(key, []).append(m)
    return list(out.values())


class StepVerdict(BaseModel):
    go_on: bool
    failed: list[str] = []  # machines (a recover or script step) that failed
    why: str = ""


def after_machines(errors: dict[str, str], critical: dict[str, bool], step: str) -> StepVerdict:
    """A step on machines ended with `errors` (machine -> why): a critical machine's failure
    stops the plan; an optional one's is reported and the plan goes on."""
    failed = sorted(errors)
    stoppers = [m for m in failed if critical.get(m, True)]
    if stoppers:
        return StepVerdict(go_on=False, failed=failed,
                           why=f"{step}: critical {'machine' if len(stoppers) == 1 else 'machines'} "
                               f"{', '.join(stoppers)} failed: {errors[stoppers[0]]}")
    return StepVerdict(go_on=True, failed=failed)


def after_manual(done: bool, critical: bool, step: str, answer: str) -> StepVerdict:
    if done or not critical:
        return StepVerdict(go_on=True)
    return StepVerdict(go_on=False, why=f"{step}: answered not done ({answer}); the plan stops here")


def final_status(record: PlanRunRecord, stopped: StepVerdict | None) -> RunStatus:
    if stopped is not None:
        return "stopped"
    if any(m.status == "failed" for m in record.machines) or any(s.status in ("failed", "not-done") for s in record.steps):
        return "succeeded-with-failures"
    return "succeeded"
