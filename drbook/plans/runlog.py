"""The plan run's record as it runs: every step's start and end, every machine's result,
saved to the vault after each change (one writer: this run; threads share a lock)."""

from __future__ import annotations

import threading

from drbook.models import utcnow
from drbook.plans.record import MachineStatus, PlanMachineResult, PlanRunRecord, StepRecord, StepStatus
from drbook.plans.steps import PlanStep
from drbook.vault import Vault, plan_run_key


class RunLog:
    def __init__(self, vault: Vault, record: PlanRunRecord) -> None:
        self.vault = vault
        self.record = record
        self._lock = threading.Lock()
        self._save()

    def _save(self) -> None:
        self.vault.put(plan_run_key(self.record.run_id), self.record)

    def begin(self, step: PlanStep, *, machine: str | None = None, critical: bool | None = None) -> int:
        if machine is None:
            label = step.label()
        elif step.kind == "recover":
            label = f"recover {machine}"
        else:
            label = f"{step.label()} · {machine}"
        with self._lock:
            self.record.steps.append(StepRecord(group=step.group, phase=step.phase, kind=step.kind, label=label,
                                                machine=machine, critical=step.critical if critical is None else critical))
            self._save()
            return len(self.record.steps) - 1

    def begin_other(self, *, group: str, kind: str, label: str) -> int:
        """A step that is not one of the plan's (a failover's sources step before the groups)."""
        with self._lock:
            self.record.steps.append(StepRecord(group=group, phase="pre", kind=kind, label=label))  # type: ignore[arg-type]
            self._save()
            return len(self.record.steps) - 1

    def end(self, index: int, status: StepStatus, *, output: str = "", error: str = "") -> None:
        with self._lock:
            s = self.record.steps[index]
            self.record.steps[index] = s.model_copy(update={"finished": utcnow(), "status": status, "output": output,
                                                            "error": error})
            self._save()

    def machine(self, name: str, status: MachineStatus, **values) -> None:
        with self._lock:
            self.record.machines = [m.model_copy(update={"status": status, **values}) if m.machine == name else m
                                    for m in self.record.machines]
            self._save()

    def add_output(self, name: str, text: str) -> None:
        with self._lock:
            self.record.machines = [m.model_copy(update={"script_output": (m.script_output + text).strip() + "\n"})
                                    if m.machine == name else m for m in self.record.machines]
            self._save()

    def update(self, **values) -> PlanRunRecord:
        with self._lock:
            self.record = self.record.model_copy(update=values)
            self._save()
            return self.record

    def result_of(self, name: str) -> PlanMachineResult:
        return next(m for m in self.record.machines if m.machine == name)
