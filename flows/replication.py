"""Replication flows: enable (push the agent if needed + initial copy), one cycle of items
or groups (with the RPO check after it), retention purge, and point verification."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from pydantic import Field
from prefect.artifacts import create_table_artifact

from drbook.failover.points import POINT_ID_PATTERN
from drbook.progress import tracked
from drbook.replication.enable import refuse_other_group
from drbook.replication import monitor
from drbook.replication.selection import select_for_replication
from drbook.site import open_site
from drbook.tasks.policy import ONCE, REMOTE


def _row(point, seconds: float | None = None) -> dict:
    return {
        "item": point.item, "point": point.id, "consistency": point.consistency, "group": point.group,
        "blocks_changed": sum(d.blocks_changed for d in point.disks), "bytes_sent": sum(d.bytes_sent for d in point.disks),
        "resync": point.resync, "seconds": None if seconds is None else round(seconds, 2),
    }


@task(name="enable-replication", **REMOTE)
def enable_one(site_path: str, machine: str, policy: str, group: str | None) -> dict:
    import time

    from drbook.mobility import ensure_agent

    from drbook.reprotect.reenable import protect_again, returns_from_failback

    site = open_site(site_path)
    cfg = site.machine(machine)
    t0 = time.monotonic()
    if returns_from_failback(site, machine):
        with tracked(f"first cycle of {machine} after failback", artifact_key=f"initial-copy-{machine}") as progress:
            item, point = protect_again(site, machine, progress=progress)
        return {**_row(point, time.monotonic() - t0), "state": item.state.value}
    ensure_agent(site.vault, cfg)
    with tracked(f"initial copy of {machine}", artifact_key=f"initial-copy-{machine}") as progress:
        item = site.engine.enable_replication(cfg, site.cfg.policy(policy), group=group, progress=progress)
    point = site.engine.points.get(machine, item.last_point_id)
    return {**_row(point, time.monotonic() - t0), "state": item.state.value}


@flow(name="enable-replication", log_prints=True)
def enable_replication_flow(machines: list[str], policy: str = "default", group: str | None = None,
                            site_path: str | None = None) -> list[dict]:
    """Protect machines: push the agent if needed, then the initial copy of every disk.

    Args:
        machines: machine names from the site config
        policy: replication policy name from the site config
        group: replication group; its members share recovery points (one barrier)
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    vault = site.create_vault()
    for m in machines:  # every machine is checked before any initial copy starts
        refuse_other_group(vault, m, group)
    site.engine.ensure_containers()
    rows = [enable_one(sp, m, policy, group) for m in machines]
    create_table_artifact(rows, key="enable-replication", description="initial copy per machine")
    return rows


@task(name="replicate-cycle", **REMOTE)
def cycle_task(site_path: str, names: list[str], group: str | None, want: str) -> list[dict]:
    import time

    site = open_site(site_path)
    t0 = time.monotonic()
    label = f"group {group}" if group else names[0]
    with tracked(f"cycle of {label}") as progress:
        if group:
            points = site.engine.run_group_cycle(group, names, want=want, progress=progress)
        else:
            points = [site.engine.run_cycle(names[0], want=want, progress=progress)]
    return [_row(p, time.monotonic() - t0) for p in points]


@task(name="check-rpo", **ONCE)
def check_rpo(site_path: str, names: list[str]) -> list[dict]:
    site = open_site(site_path)
    return [d.model_dump(mode="json") for d in monitor.check_rpo(site.vault, names, site=site.cfg.site)]


@flow(name="replicate-cycle", log_prints=True)
def replicate_flow(machines: list[str] | None = None, group: str | None = None, all_items: bool = False,
                   want: Literal["crash", "app"] = "crash", site_path: str | None = None) -> list[dict]:
    """One replication cycle: a recovery point for each item (one shared point per group).

    Args:
        machines: protected items to cycle (or name a group, or set all_items)
        group: one replication group
        all_items: every protected item
        want: crash-consistent, or app-consistent (the quiesce hooks run)
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    rows = []
    for plan in select_for_replication(site.vault.items(), machines or [], group=group, all_items=all_items):
        rows += cycle_task(sp, plan.members, plan.group, want)
    check_rpo(sp, [r["item"] for r in rows])
    create_table_artifact(rows, key="replicate-cycle", description="recovery points of this cycle")
    return rows


@flow(name="retention-purge", log_prints=True)
def retention_flow(dry_run: bool = False, site_path: str | None = None) -> list[dict]:
    """Purge the recovery points each item's policy no longer keeps.

    Args:
        dry_run: only say what would be purged
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    results = [site.engine.apply_retention(i.name, dry_run=dry_run).model_dump()
               for i in site.vault.items() if i.last_point_id]
    log = get_run_logger()
    for r in results:
        for line in r["actions"]:
            log.info(line)
    return results


@flow(name="verify-point", log_prints=True)
def verify_point_flow(machine: str, point: Annotated[str, Field(pattern=POINT_ID_PATTERN)],
                      site_path: str | None = None) -> dict:
    """Re-read a recovery point's snapshots and check every block against its manifest.

    Args:
        machine: the protected item
        point: the recovery point id (`drbook points MACHINE`)
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    with tracked(f"verify {machine} {point}", artifact_key="verify-point") as progress:
        report = site.engine.verify_point(machine, point, progress=progress)
    return {**report.model_dump(mode="json"), "summary": report.summary()}
