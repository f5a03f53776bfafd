"""push-mobility: install or upgrade the agent on many machines at once, verify it, and
register it in the vault (only after a verified install)."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from drbook.errors import DRError
from drbook.site import open_site
from drbook.tasks.policy import REMOTE


@task(name="push-agent", **REMOTE)
def push_one(site_path: str, machine: str, force: bool = False) -> dict:
    from drbook.mobility import install_agent

    site = open_site(site_path)
    return install_agent(site.create_vault(), site.machine(machine), force=force).model_dump(mode="json")


@flow(name="push-mobility", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def push_mobility_flow(machines: list[str], force: bool = False, site_path: str | None = None) -> list[dict]:
    """Install or upgrade the mobility agent on machines, verify it, register it in the vault.

    Args:
        machines: machine names from the site config
        force: reinstall even when the same agent version is already there
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    futures = {m: push_one.submit(sp, m, force) for m in machines}
    rows = []
    for machine, fut in futures.items():
        try:
            rows.append(fut.result())
        except DRError as exc:
            rows.append({"machine": machine, "action": "failed", "error": str(exc)})
    create_table_artifact(rows, key="push-mobility", description="mobility agent per machine")
    return rows
