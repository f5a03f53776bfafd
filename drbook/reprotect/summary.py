"""What people read about a reprotect or failback: the approval's summary and table rows."""

from __future__ import annotations

from drbook.failover.approval import HOW_TO_ANSWER
from drbook.reprotect.cycle import cycle_lag
from drbook.reprotect.model import ReprotectRecord


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def failback_summary(records: list[ReprotectRecord], run_id: str) -> str:
    names = ", ".join(r.item for r in records)
    out = [f"## Waiting for approval: failback of {names}", "",
           "Nothing has been changed yet. " + HOW_TO_ANSWER.format(run_id=run_id), "",
           "### What happens when you approve", "",
           "- Each Azure VM runs its stop hooks, is **powered off and deallocated**: the business stops in Azure.",
           "- A **final reverse cycle** carries the last changes; then every on-premises disk is **verified byte for "
           "byte** against the Azure disk as it was at shutdown.",
           "- Only then the on-premises machine is **powered on** (a VMware VM) or declared ready (a physical "
           "server), and must answer over SSH.",
           "- Any failure before that **starts the Azure VM again**: nothing is lost, the business goes on in Azure.",
           "", "| machine | Azure VM | target | kind | cycles | last cycle (lag) |", "|---|---|---|---|---|---|"]
    for r in records:
        out.append(f"| {r.item} | `{r.vm_name}` | {r.target} | {r.target_kind} | {r.cycle_count} | "
                   f"{_age(cycle_lag(r))} ago |")
    return "\n".join(out) + "\n"


def reprotect_table(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("item", "target", "target_kind", "cycle", "ranges", "bytes_changed",
                               "bytes_moved", "seconds", "lag_seconds")} for r in rows]
