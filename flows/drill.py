"""test-failover: bring machines up from a recovery point in the isolated test network,
verify them byte for byte, report; `test-failover-cleanup` removes the drill and proves it;
`scheduled-drill` does both, unattended, and never leaves anything behind.

The three flows share the same steps (`start_drill`, `_bring_up`, `clean_up`): a drill
run by a person stays up for inspection, a scheduled one is cleaned up in the same run."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.transactions import transaction

from drbook import state as statelib
from drbook.errors import DRError
from drbook.failover import points as pointlib
from drbook.failover.build import TAG_RUN, delete_resource_group, resources_of_run
from drbook.failover.drills import drill_targets, outcome_markdown, require_no_live_drill
from drbook.failover.recovery import choose_points, offered_sizes, plan_recovery
from drbook.models import DrillRecord, ProtectedItem, RecoveryPoint, new_id, utcnow
from drbook.report import markdown, table_rows, write_html
from drbook.site import Site, open_site
from drbook.vault import DRILLS_PREFIX, drill_key
from drbook.flows.common import current_run_id, parallel
from drbook.flows.recover import build_machine
from drbook.tasks import azure as azure_tasks
from drbook.tasks import replication as replication_tasks


@flow(name="test-failover", log_prints=True)
def drill_flow(machines: list[str], point: pointlib.PointChoice = pointlib.LATEST_PROCESSED,
               site_path: str | None = None) -> dict:
    """Test failover: bring machines up from a recovery point in the isolated test network,
    verify every block, write a report. The VMs stay up for a person to look at;
    `test-failover-cleanup` removes the drill.

    Args:
        machines: protected items to drill
        point: latest (a final cycle first), latest-processed (the newest point), latest-app-consistent, or a point id
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    drill = start_drill(site, machines, point)
    return _bring_up(site, drill)


@flow(name="scheduled-drill", log_prints=True)
def scheduled_drill_flow(machines: list[str] | None = None, group: str | None = None,
                         point: pointlib.PointChoice = pointlib.LATEST_PROCESSED,
                         site_path: str | None = None) -> dict:
    """Unattended drill (the weekly schedule): test failover into the isolated test network,
    byte verification, report, then cleanup — always, also when a step fails. A failed
    verification or step fails the run after the cleanup, naming what went wrong. The run
    never leaves anything in Azure.

    Args:
        machines: protected items to drill; empty with no group: every protected item whose state allows a drill (the others are skipped and logged)
        group: a replication group to drill (all its members, at one shared point), instead of machines
        point: latest (a final cycle first), latest-processed (the newest point), latest-app-consistent, or a point id
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    log = get_run_logger()
    site = open_site(site_path)
    selection = drill_targets(site.vault.items(), machines, group)
    for name, why in selection.skipped.items():
        log.warning("not drilling %s: %s", name, why)
    drill = start_drill(site, selection.machines, point)
    error: str | None = None
    try:
        result = _bring_up(site, drill)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.error("drill %s failed: %s; cleaning up before the run fails", drill.drill_id, error)
        raise
    finally:
        # Always, also after a failure: an unattended drill leaves nothing behind.
        cleanup = clean_up(site, drill.drill_id)
        create_markdown_artifact(outcome_markdown(drill.drill_id, selection.machines, error, cleanup),
                                 key=f"{artifact_key(drill.drill_id)}-outcome", description="scheduled drill outcome")
    log.info("drill %s verified and cleaned up; nothing left in Azure", drill.drill_id)
    return {**result, "cleanup": cleanup, "skipped": selection.skipped}


@flow(name="test-failover-cleanup", log_prints=True)
def drill_cleanup_flow(drill_id: str, site_path: str | None = None) -> dict:
    """Delete everything a drill made, and prove nothing tagged with it is left.

    Args:
        drill_id: the drill (drill-...), as the drill's report names it
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    return clean_up(open_site(site_path), drill_id)


# -- the steps the flows share ---------------------------------------------------------------

@dataclass
class _Drill:
    drill_id: str
    run_id: str
    items: list[ProtectedItem]
    chosen: dict[str, RecoveryPoint]
    record: DrillRecord
    started: float  # monotonic, for the RTO
    began: dt.datetime  # the instant the drill acts for, for the RPO


def start_drill(site: Site, machines: list[str], point: str) -> _Drill:
    """Refusals first (nothing touched), then the points, then the drill's record in the vault:
    from then on the drill is live and blocks any other drill of its machines."""
    started, began = time.monotonic(), utcnow()
    run_id, drill_id = current_run_id(), new_id("drill")
    items = [site.vault.item(m) for m in machines]
    for item in items:
        statelib.require(item, "test-failover")
    # The check and the record are one step: two drills of a machine cannot both pass it.
    with site.vault.leases([f"drill-{m}" for m in machines], holder=f"drill {drill_id} (run {run_id})", duration_s=30):
        require_no_live_drill(site.vault.list(DRILLS_PREFIX, DrillRecord), machines)
        if pointlib.needs_final_cycle(point):
            replication_tasks.final_cycles(str(site.path), [i.name for i in items])
        points = replication_tasks.points_of_each(site, [i.name for i in items])
        chosen = choose_points(site.cfg, items, points, point)
        record = DrillRecord(drill_id=drill_id, items=machines, point_ids={k: v.id for k, v in chosen.items()},
                             resource_group=f"drbook-{drill_id}", report={"flow_run_id": run_id})
        site.vault.put(drill_key(drill_id), record)
    return _Drill(drill_id=drill_id, run_id=run_id, items=items, chosen=chosen, record=record, started=started,
                  began=began)


def _bring_up(site: Site, drill: _Drill) -> dict:
    """Build, verify and start every machine, then the report. On failure everything the run
    made is swept and the record says `failed` (it then blocks no later drill)."""
    log = get_run_logger()
    sp, rg, drill_id, run_id = str(site.path), drill.record.resource_group, drill.drill_id, drill.run_id
    sizes = offered_sizes(site.azure, site.cfg.azure.location)
    plans = plan_recovery(site.cfg, drill.items, drill.chosen, run_id=run_id, purpose="drill", resource_group=rg,
                          sizes=sizes, taken=set())
    try:
        with transaction():
            azure_tasks.ensure_resource_group(sp, rg, drill_tags(drill))
            rows = parallel(lambda p: build_machine(sp, p, drill.chosen[p.item].consistency, drill.started, drill.began),
                            plans)
    except BaseException as exc:
        error = str(exc)
        leftovers = azure_tasks.sweep_run(sp, run_id)
        delete_resource_group(site.azure, rg)
        finish_drill(site, drill_id, "failed", {"error": error, "swept": leftovers})
        raise
    finished = utcnow()
    html = write_html(site.path.parent / "reports" / f"{drill_id}.html", kind="drill", run_label=drill_id, rows=rows,
                      resource_group=rg, started=drill.record.started.isoformat(), finished=finished.isoformat(),
                      flow_run_id=run_id)
    create_markdown_artifact(markdown("drill", drill_id, rows, rg), key=artifact_key(drill_id), description="drill report")
    create_table_artifact(table_rows(rows), key=f"{artifact_key(drill_id)}-table", description="drill results per machine")
    result = {
        "drill_id": drill_id,
        "flow_run_id": run_id,
        "report": str(html),
        "vms": [{"machine": r.machine, "resource_group": r.resource_group, "vm_name": r.vm_name, "disks": r.disks} for r in rows],
        "results": [r.model_dump(mode="json") for r in rows],
    }
    finish_drill(site, drill_id, "succeeded", result, finished=finished)
    log.info("drill %s: %d machines up and verified; report %s", drill_id, len(rows), html)
    return result


def drill_tags(drill: _Drill) -> dict[str, str]:
    """The drill's resource group's tags: its run (reconcile finds it) and the drill."""
    return {TAG_RUN: drill.run_id, "drbook-drill": drill.drill_id}


def finish_drill(site: Site, drill_id: str, status: str, report: dict, finished: dt.datetime | None = None) -> None:
    """The drill's record says how it ended (failed: it then blocks no later drill)."""
    site.vault.update(drill_key(drill_id), DrillRecord, lambda r: r.model_copy(update={
        "status": status, "finished": finished or utcnow(), "report": {**r.report, **report}}))


def clean_up(site: Site, drill_id: str) -> dict:
    """Delete what the drill made and prove nothing tagged with its run is left. A failed
    drill keeps its status (the record says it failed); any other becomes `cleaned-up`."""
    record = site.vault.get(drill_key(drill_id), DrillRecord)
    run_id = record.report.get("flow_run_id", "")
    deleted = azure_tasks.sweep_run(str(site.path), run_id) if run_id else []
    delete_resource_group(site.azure, record.resource_group)
    left = resources_of_run(site.azure, run_id) if run_id else []
    if left:
        raise DRError(f"cleanup of {drill_id} left {len(left)} resources: {', '.join(r.id for r in left)}")
    cleanup = {"drill_id": drill_id, "deleted": deleted, "left": [], "resource_group_deleted": record.resource_group}
    site.vault.update(drill_key(drill_id), DrillRecord, lambda r: r.model_copy(update={
        "status": "failed" if r.status == "failed" else "cleaned-up", "report": {**r.report, "cleanup": cleanup}}))
    return cleanup


def artifact_key(drill_id: str) -> str:
    return drill_id.lower().replace("_", "-")
