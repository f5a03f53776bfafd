"""Prefect tasks of reprotect and failback: each adapts one drbook.reprotect step."""

from __future__ import annotations

from prefect import task

from drbook.progress import tracked
from drbook.reprotect import failback as fb
from drbook.reprotect import start
from drbook.reprotect.cycle import cycle_lag, run_cycle
from drbook.reprotect.model import ReprotectRecord, Verification, reprotect_key
from drbook.site import open_site
from drbook.tasks.policy import AZURE, ONCE, REMOTE


def _record(site, machine: str) -> ReprotectRecord:  # noqa: ANN001
    return fb.require_record(site, machine)


@task(name="begin-reprotect", **ONCE)
def begin(site_path: str, machine: str, target: str | None, run_id: str) -> ReprotectRecord:
    return start.begin(open_site(site_path), machine, target, run_id)


@task(name="reverse-cycle", **REMOTE)
def reverse_cycle(site_path: str, machine: str, final: bool = False) -> dict:
    site = open_site(site_path)
    with tracked(f"reverse cycle of {machine}", artifact_key=f"reverse-cycle-{machine}") as progress:
        def step(disk: str, done: int, total: int) -> None:
            progress(done, total)
        record = run_cycle(site, _record(site, machine), final=final, progress=step)
    last = record.last_cycle()
    return {"item": machine, "target": record.target, "target_kind": record.target_kind, "cycle": last.number,
            "ranges": last.ranges, "bytes_changed": last.bytes_changed,
            "bytes_moved": last.bytes_moved, "zero_bytes": last.zero_bytes, "seconds": last.seconds,
            "lag_seconds": round(cycle_lag(record) or 0.0, 1), "final": final}


@task(name="finish-reprotect", **ONCE)
def finish(site_path: str, machine: str, run_id: str) -> str:
    return start.finish_first_cycle(open_site(site_path), machine, run_id).status


@task(name="stop-azure-vm", **AZURE)
def stop_azure_vm(site_path: str, machine: str) -> list[str]:
    site = open_site(site_path)
    return fb.stop_azure_vm(site, _record(site, machine))


@task(name="restart-azure-vm", **AZURE)
def restart_azure_vm(site_path: str, machine: str) -> str:
    site = open_site(site_path)
    return fb.restart_azure_vm(site, _record(site, machine))


@task(name="verify-failback", **REMOTE)
def verify(site_path: str, machine: str) -> Verification:
    site = open_site(site_path)
    result = fb.verify(site, _record(site, machine))
    site.vault.update(reprotect_key(machine), ReprotectRecord, lambda r: r.model_copy(update={"verification": result}))
    return result


@task(name="bring-up-target", **REMOTE)
def bring_up_target(site_path: str, machine: str) -> str:
    site = open_site(site_path)
    return fb.bring_up_target(site, _record(site, machine))


@task(name="health-check", **REMOTE)
def health_check(site_path: str, machine: str) -> str:
    site = open_site(site_path)
    return fb.health_check(site, _record(site, machine))


@task(name="mark-failed-back", **ONCE)
def mark_failed_back(site_path: str, machine: str, run_id: str) -> str:
    site = open_site(site_path)
    return fb.mark_failed_back(site, _record(site, machine), run_id).status


@task(name="commit-failback", **ONCE)
def commit_failback(site_path: str, machine: str, run_id: str, force_reason: str | None, dry_run: bool = False) -> dict:
    return fb.commit_failback(open_site(site_path), machine, run_id=run_id, force_reason=force_reason, dry_run=dry_run)
