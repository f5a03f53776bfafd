"""Prefect tasks a recovery plan's steps use: its scripts (on a recovered VM through run
command, on a source over SSH), and the removal of one machine's resources of a run."""

from __future__ import annotations

from prefect import task

from drbook.failover import build
from drbook.failover.build import TAG_ITEM
from drbook.plans.scripts import ScriptResult, read_result, wrap
from drbook.site import open_site
from drbook.tasks.policy import AZURE, ONCE, REMOTE


@task(name="plan-script-on-vm", **AZURE)
def script_on_vm(site_path: str, resource_group: str, vm_name: str, os: str, script: str) -> ScriptResult:
    site = open_site(site_path)
    return read_result(site.azure.run_shell_script(resource_group, vm_name, wrap(script, os)))


@task(name="plan-script-on-source", **REMOTE)
def script_on_source(site_path: str, machine: str, script: str, timeout: float) -> ScriptResult:
    site = open_site(site_path)
    shell = site.shell_for(site.machine_of(machine))
    try:
        result = shell.run("sh -s", stdin=script.encode(), timeout=timeout)
    finally:
        shell.close()
    return ScriptResult(exit_status=result.exit_status, output=(result.stdout + result.stderr).strip())


@task(name="sweep-machine", **ONCE)
def sweep_machine(site_path: str, run_id: str, item: str) -> list[str]:
    """Every resource of the run tagged with this item, VMs first (what its rolled-back
    transaction may have left)."""
    site = open_site(site_path)
    found = [r for r in build.resources_of_run(site.azure, run_id) if r.tags.get(TAG_ITEM) == item]
    return [r.id for r in build.deletion_order(found) if site.azure.delete_resource(r.type, r.resource_group, r.name)]
