"""Replication flows: enable (push the agent if needed + initial copy), one cycle of items
or groups (with the RPO check after it), retention purge, and point verification."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from drbook.errors import PreflightError
from drbook.models import ItemState, ReplicationGroup, utcnow
from drbook.progress import tracked
from drbook.replication.events import emit_rpo_event
from drbook.replication.rpo import decide_rpo
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

    from drbook.mobility import push_agent, register

    site = open_site(site_path)
    cfg = site.machine(machine)
    item = site.vault.find_item(machine)
    if item is None or not item.agent_version:
        shell = site.shell_for(cfg)
        try:
            register(site.vault, cfg, push_agent(shell, cfg))
        finally:
            shell.close()
    t0 = time.monotonic()
    with tracked(f"initial copy of {machine}", artifact_key=f"initial-copy-{machine}") as progress:
        item = site.engine.enable_replication(cfg, site.cfg.policy(policy), group=group, progress=progress)
    if group and item.group != group:
        raise PreflightError(f"{machine} is already in replication group {item.group!r}, not {group!r}")
    point = site.engine.points.get(machine, item.last_point_id)
    return {**_row(point, time.monotonic() - t0), "state": item.state.value}


@flow(name="enable-replication", log_prints=True)
def enable_replication_flow(machines: list[str], policy: str = "default", group: str | None = None,
                            site_path: str | None = None) -> list[dict]:
    site = open_site(site_path)
    sp = str(site.path)
    site.engine.ensure_containers()
    rows = [enable_one(sp, m, policy, group) for m in machines]
    if group:
        _join_group(site, group, machines)
    create_table_artifact(rows, key="enable-replication", description="initial copy per machine")
    return rows


def _join_group(site, group: str, machines: list[str]) -> None:
    key = f"groups/{group}.json"
    if site.vault.find(key, ReplicationGroup) is None:
        site.vault.put(key, ReplicationGroup(name=group, members=sorted(machines)), create_only=True)
    else:
        site.vault.update(key, ReplicationGroup,
                          lambda g: g.model_copy(update={"members": sorted(set(g.members) | set(machines))}))


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
    out = []
    for name in names:
        item = site.vault.item(name)
        decision = decide_rpo(item, item.last_point_time, item.policy, utcnow())
        if decision.changed:
            emit_rpo_event(decision)
            site.vault.update(f"items/{name}.json", type(item),
                              lambda i, b=decision.breached: i.model_copy(update={"rpo_breached": b}))
        out.append(decision.model_dump(mode="json"))
    return out


def select_items(site, machines: list[str], group: str | None, all_items: bool) -> list[tuple[str | None, list[str]]]:
    """Which cycles to run: (group, members) for each group, (None, [item]) for the rest."""
    items = {i.name: i for i in site.vault.items() if i.state == ItemState.PROTECTED}
    if group:
        chosen = [n for n, i in items.items() if i.group == group]
        if not chosen:
            raise PreflightError(f"replication group {group!r} has no protected members")
    elif all_items:
        chosen = sorted(items)
    else:
        for m in machines:
            if m not in items:
                state = site.vault.item(m).state.value
                raise PreflightError(f"cannot replicate {m}: it is {state}; replication cycles need protected")
        chosen = list(machines)
    groups: dict[str, list[str]] = {}
    plan: list[tuple[str | None, list[str]]] = []
    for n in chosen:
        g = items[n].group
        if g:
            groups.setdefault(g, []).append(n)
        else:
            plan.append((None, [n]))
    plan += [(g, members) for g, members in groups.items()]
    return plan


@flow(name="replicate-cycle", log_prints=True)
def replicate_flow(machines: list[str], group: str | None = None, all_items: bool = False, want: str = "crash",
                   site_path: str | None = None) -> list[dict]:
    site = open_site(site_path)
    sp = str(site.path)
    rows = []
    for g, names in select_items(site, machines, group, all_items):
        rows += cycle_task(sp, names, g, want)
    check_rpo(sp, [r["item"] for r in rows])
    create_table_artifact(rows, key="replicate-cycle", description="recovery points of this cycle")
    return rows


@flow(name="retention-purge", log_prints=True)
def retention_flow(dry_run: bool = False, site_path: str | None = None) -> list[dict]:
    site = open_site(site_path)
    results = [site.engine.apply_retention(i.name, dry_run=dry_run).model_dump()
               for i in site.vault.items() if i.last_point_id]
    log = get_run_logger()
    for r in results:
        for line in r["actions"]:
            log.info(line)
    return results


@flow(name="verify-point", log_prints=True)
def verify_point_flow(machine: str, point: str, site_path: str | None = None) -> dict:
    site = open_site(site_path)
    with tracked(f"verify {machine} {point}", artifact_key="verify-point") as progress:
        report = site.engine.verify_point(machine, point, progress=progress)
    return {**report.model_dump(mode="json"), "summary": report.summary()}
