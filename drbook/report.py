"""Drill and failover reports: markdown for the Prefect UI, table rows, and an HTML file."""

from __future__ import annotations

from pathlib import Path

from drbook.failover.recovery import MachineResult
from drbook.templating import environment as templates


def table_rows(rows: list[MachineResult]) -> list[dict]:
    return [
        {
            "machine": r.machine, "vm": r.vm_name, "size": r.size, "ip": f"{r.ip} ({r.ip_note})", "point": r.point_id,
            "consistency": r.consistency, "rpo_s": round(r.rpo_seconds, 1), "rto_s": round(r.rto_seconds, 1),
            "verified": "yes" if r.verified else "NO", "mib_verified": round(r.bytes_verified / 2**20, 1),
            "power": r.power_state,
        }
        for r in rows
    ]


def markdown(kind: str, run_label: str, rows: list[MachineResult], resource_group: str) -> str:
    ok = all(r.verified for r in rows)
    lines = [
        f"# drbook {kind} {run_label}",
        "",
        f"**{'All disks verified byte for byte against their recovery points' if ok else 'VERIFICATION FAILED'}** "
        f"· resource group `{resource_group}`",
        "",
        "| machine | VM | IP | point | consistency | RPO | RTO | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.machine} | {r.vm_name} | {r.ip} | {r.point_id} | {r.consistency} | {r.rpo_seconds:.1f} s "
            f"| {r.rto_seconds:.1f} s | {'yes' if r.verified else 'NO'} ({r.bytes_verified / 2**20:.1f} MiB) |"
        )
    for r in rows:
        if r.script_output:
            lines += ["", f"## Post-failover script on {r.machine}", "", "```", r.script_output.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_html(path: Path, *, kind: str, run_label: str, rows: list[MachineResult], resource_group: str,
               started: str, finished: str, flow_run_id: str) -> Path:
    html = templates().get_template("drill_report.html.j2").render(
        kind=kind, run_label=run_label, rows=rows, resource_group=resource_group, started=started, finished=finished,
        flow_run_id=flow_run_id, all_verified=all(r.verified for r in rows),
        max_rto=max((r.rto_seconds for r in rows), default=0),
        scripts={r.machine: r.script_output for r in rows if r.script_output},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html)
    return path


def render_post_failover_script(**facts) -> str:
    return templates().get_template("post_failover.sh.j2").render(**facts)
