"""test-failover: bring machines up from a recovery point in the isolated test network,
verify them byte for byte, report; `test-failover-cleanup` removes the drill and proves it."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.transactions import transaction

from drbook import state as statelib
from drbook.errors import DRError
from drbook.failover import points as pointlib
from drbook.failover.build import TAG_RUN, delete_resource_group, resources_of_run
from drbook.failover.recovery import choose_points, offered_sizes, plan_recovery
from drbook.models import DrillRecord, new_id, utcnow
from drbook.report import markdown, table_rows, write_html
from drbook.site import open_site
from drbook.vault import drill_key
from drbook.flows.common import current_run_id, parallel
from drbook.flows.recover import build_machine
from drbook.tasks import azure as azure_tasks
from drbook.tasks import replication as replication_tasks


@flow(name="test-failover", log_prints=True)
def drill_flow(machines: list[str], point: pointlib.PointChoice = pointlib.LATEST_PROCESSED,
               site_path: str | None = None) -> dict:
    """Test failover: bring machines up from a recovery point in the isolated test network,
    verify every block, write a report. `test-failover-cleanup` removes the drill.

    Args:
        machines: protected items to drill
        point: latest (a final cycle first), latest-processed (the newest point), latest-app-consistent, or a point id
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    log = get_run_logger()
    site = open_site(site_path)
    sp = str(site.path)
    started = time.monotonic()
    began = utcnow()
    run_id = current_run_id()
    drill_id = new_id("drill")
    items = [site.vault.item(m) for m in machines]
    for item in items:
        statelib.require(item, "test-failover")
    if pointlib.needs_final_cycle(point):
        replication_tasks.final_cycles(sp, [i.name for i in items])
    points = {i.name: replication_tasks.points_of(site, i.name) for i in items}
    chosen = choose_points(site.cfg, items, points, point)
    rg = f"drbook-{drill_id}"
    record = DrillRecord(drill_id=drill_id, items=machines, point_ids={k: v.id for k, v in chosen.items()},
                         resource_group=rg, report={"flow_run_id": run_id})
    site.vault.put(drill_key(drill_id), record)
    sizes = offered_sizes(site.azure, site.cfg.azure.location)
    plans = plan_recovery(site.cfg, items, chosen, run_id=run_id, purpose="drill", resource_group=rg, sizes=sizes,
                          taken=set())
    try:
        with transaction():
            azure_tasks.ensure_resource_group(sp, rg, {TAG_RUN: run_id, "drbook-drill": drill_id})
            rows = parallel(lambda p: build_machine(sp, p, chosen[p.item].consistency, started, began), plans)
    except BaseException as exc:
        error = str(exc)
        leftovers = azure_tasks.sweep_run(sp, run_id)
        delete_resource_group(site.azure, rg)
        site.vault.update(drill_key(drill_id), DrillRecord,
                          lambda r: r.model_copy(update={"status": "failed", "finished": utcnow(),
                                                         "report": {**r.report, "error": error, "swept": leftovers}}))
        raise
    finished = utcnow()
    html = write_html(site.path.parent / "reports" / f"{drill_id}.html", kind="drill", run_label=drill_id, rows=rows,
                      resource_group=rg, started=record.started.isoformat(), finished=finished.isoformat(), flow_run_id=run_id)
    create_markdown_artifact(markdown("drill", drill_id, rows, rg), key=_artifact_key(drill_id), description="drill report")
    create_table_artifact(table_rows(rows), key=f"{_artifact_key(drill_id)}-table", description="drill results per machine")
    result = {
        "drill_id": drill_id,
        "flow_run_id": run_id,
        "report": str(html),
        "vms": [{"machine": r.machine, "resource_group": r.resource_group, "vm_name": r.vm_name, "disks": r.disks} for r in rows],
        "results": [r.model_dump(mode="json") for r in rows],
    }
    site.vault.update(drill_key(drill_id), DrillRecord, lambda r: r.model_copy(update={
        "status": "succeeded", "finished": finished, "report": {**r.report, **result}}))
    log.info("drill %s: %d machines up and verified; report %s", drill_id, len(rows), html)
    return result


def _artifact_key(drill_id: str) -> str:
    return drill_id.lower().replace("_", "-")


@flow(name="test-failover-cleanup", log_prints=True)
def drill_cleanup_flow(drill_id: str, site_path: str | None = None) -> dict:
    """Delete everything a drill made, and prove nothing tagged with it is left.

    Args:
        drill_id: the drill (drill-...), as the drill's report names it
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    record = site.vault.get(drill_key(drill_id), DrillRecord)
    run_id = record.report.get("flow_run_id", "")
    deleted = azure_tasks.sweep_run(str(site.path), run_id) if run_id else []
    delete_resource_group(site.azure, record.resource_group)
    left = resources_of_run(site.azure, run_id) if run_id else []
    if left:
        raise DRError(f"cleanup of {drill_id} left {len(left)} resources: {', '.join(r.id for r in left)}")
    site.vault.update(drill_key(drill_id), DrillRecord, lambda r: r.model_copy(update={"status": "cleaned-up"}))
    return {"drill_id": drill_id, "deleted": deleted, "left": [], "resource_group_deleted": record.resource_group}

