"""The facts a plan's script template is rendered with, per machine.

Known before the run (from the vault and the plan): machine, item, os, group, plan,
direction. Known once the machine is up (post actions on the recovered VM): vm_name, ip,
resource_group, point_id, point_time, consistency, run_id. A plan is checked before it
runs by rendering each template with SAMPLE values for the second kind, so a template
naming a fact that does not exist is refused before anything moves."""

from __future__ import annotations

from pydantic import BaseModel

from drbook.models import ProtectedItem

RUN_FACTS = ("vm_name", "ip", "resource_group", "point_id", "point_time", "consistency", "run_id")
SAMPLE = {"vm_name": "sample-vm", "ip": "10.0.0.4", "resource_group": "sample-rg", "point_id": "pt-20260101000000-00000000",
          "point_time": "2026-01-01T00:00:00+00:00", "consistency": "crash", "run_id": "00000000-0000-0000-0000-000000000000"}


class RunFacts(BaseModel):
    vm_name: str = ""
    ip: str = ""
    resource_group: str = ""
    point_id: str = ""
    point_time: str = ""
    consistency: str = ""
    run_id: str = ""


def machine_facts(item: ProtectedItem, *, plan: str, group: str, direction: str, run: RunFacts | None = None) -> dict:
    """The template's values for one machine; `run` None: the sample values (a check, not a run)."""
    facts = {"machine": item.machine, "item": item.name, "os": item.os, "group": group, "plan": plan,
             "direction": direction, "replication_group": item.group or ""}
    facts.update(SAMPLE if run is None else run.model_dump())
    return facts
