"""Prefect tasks that act on the source site: quiesce and shut down (planned failover)."""

from __future__ import annotations

from prefect import get_run_logger, task

from drbook.errors import CommandFailed
from drbook.site import open_site
from drbook.tasks.policy import ONCE, REMOTE


@task(name="stop-source-applications", **REMOTE)
def quiesce_for_shutdown(site_path: str, machine: str) -> list[str]:
    """Stop the source's applications (its stop hooks): what the last cycle then reads is
    all there will ever be. Without stop hooks nothing guarantees that, and the log says so."""
    site = open_site(site_path)
    cfg = site.machine_of(machine)
    shell = site.shell_for(cfg)
    outputs = []
    try:
        if not cfg.stop_hooks:
            get_run_logger().warning("%s has no stop hooks: writes after the last cycle would be lost", machine)
        for hook in cfg.stop_hooks:
            result = shell.run(hook, timeout=120)
            if result.exit_status != 0:
                raise CommandFailed(f"{machine}: quiesce hook failed ({result.exit_status}): {hook}",
                                    exit_status=result.exit_status, stderr=result.stderr[-500:])
            outputs.append(result.stdout.strip())
    finally:
        shell.close()
    get_run_logger().info("%s applications stopped: %s", machine, "; ".join(outputs) or "no hooks")
    return outputs


@task(name="shut-down-source", **ONCE)
def shut_down_source(site_path: str, machine: str) -> str:
    """A VMware VM is powered off through vCenter; a physical server shuts down over SSH."""
    site = open_site(site_path)
    cfg = site.machine_of(machine)
    if cfg.vm_name:
        from drbook.adapters.vsphere import from_site

        with from_site(site.cfg) as vc:
            vc.power_off(cfg.vm_name)
            return f"{cfg.vm_name} powered off in vCenter"
    shell = site.shell_for(cfg)
    try:
        shell.run(cfg.shutdown_command, timeout=60)
    finally:
        shell.close()
    return f"{machine}: {cfg.shutdown_command}"
