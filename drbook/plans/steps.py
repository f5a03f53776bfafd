"""A plan as the ordered steps one run takes (pure): what `drbook plan show` prints and what
the plan flows walk through. Each group: its pre actions, its machines recovered in
parallel, its post actions; groups one after another (in failback, reversed unless the
plan says otherwise). An action not meant for the run's direction is not a step."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from drbook.plans.model import Action, Direction, ManualAction, Plan, PlanGroup, ScriptAction, WaitAction

Phase = Literal["pre", "recover", "post"]

_RECOVER = {"test-failover": "bring up in the isolated test network, verify every block",
            "failover": "fail over to the production network, verify every block",
            "failback": "fail back to the on-premises target, verify every block"}


class PlanStep(BaseModel):
    number: int  # 1-based, in run order
    group: str
    phase: Phase
    kind: Literal["recover", "script", "manual", "wait"]
    machines: list[str]
    critical: bool
    action: Action | None = None

    def label(self) -> str:
        """Short: the step's name in the timeline and the steps table."""
        a = self.action
        if isinstance(a, ScriptAction):
            return f"script {a.script} on {'the recovered VMs' if a.where(self.phase) == 'recovered' else 'the sources'}"
        if isinstance(a, ManualAction):
            first = a.manual.splitlines()[0]
            return f"manual: {first[:60]}{'…' if len(first) > 60 else ''}"
        if isinstance(a, WaitAction):
            return f"wait {a.wait:g} s"
        return f"recover {', '.join(self.machines)}"

    def describe(self, direction: Direction) -> str:
        """What the step would do, for a dry run."""
        a = self.action
        where = "" if self.critical else " (optional: a failure is reported and the plan goes on)"
        if isinstance(a, ScriptAction):
            target = "each recovered VM (run command)" if a.where(self.phase) == "recovered" else "each source machine (SSH)"
            return f"render {a.script} with each machine's facts and run it on {target}: {', '.join(self.machines)}{where}"
        if isinstance(a, ManualAction):
            return f"pause for a person (done / not done; not done stops the plan): {a.manual}"
        if isinstance(a, WaitAction):
            return f"wait {a.wait:g} seconds"
        together = ", in parallel" if len(self.machines) > 1 else ""
        return f"{_RECOVER[direction]}{together}: {', '.join(self.machines)}{where}"


def _action_step(number: int, group: PlanGroup, phase: Phase, action: Action) -> PlanStep:
    critical = group.critical if action.critical is None else action.critical
    return PlanStep(number=number, group=group.name, phase=phase, kind=action.kind, machines=[m.name for m in group.members()],
                    critical=critical, action=action)


def plan_steps(plan: Plan, direction: Direction) -> list[PlanStep]:
    steps: list[PlanStep] = []
    for group in plan.ordered_groups(direction):
        for action in group.pre:
            if action.applies(direction):
                steps.append(_action_step(len(steps) + 1, group, "pre", action))
        machines = [m.name for m in group.members()]
        steps.append(PlanStep(number=len(steps) + 1, group=group.name, phase="recover", kind="recover", machines=machines,
                              critical=any(group.is_critical(m) for m in machines)))
        for action in group.post:
            if action.applies(direction):
                steps.append(_action_step(len(steps) + 1, group, "post", action))
    return steps


def dry_run(plan: Plan, direction: Direction) -> list[dict]:
    """The rows `drbook plan show` prints: nothing is read or touched."""
    return [{"step": s.number, "group": s.group, "phase": s.phase, "kind": s.kind,
             "critical": "yes" if s.critical else "optional", "what": s.describe(direction)}
            for s in plan_steps(plan, direction)]
