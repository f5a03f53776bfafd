"""failover (planned or unplanned) and commit.

failover: leases held throughout -> approval pause (nothing touched before a yes) ->
planned: quiesce and shut the source down, last cycle -> point choice -> build + verify in
the production network (rolled back as a whole on any failure) -> state failed-over.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, pause_flow_run, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.transactions import transaction

from drbook import state as statelib
from drbook.errors import ApprovalRejected
from drbook.failover import approval as approvallib
from drbook.failover import outcome
from drbook.failover import points as pointlib
from drbook.failover.commit import CommitResult, commit_item, require_committable
from drbook.failover.recovery import choose_points, offered_sizes, plan_recovery, taken_ips
from drbook.models import AuditEntry, AzureVmRef, FailoverRecord, ProtectedItem, utcnow
from drbook.report import markdown, table_rows, write_html
from drbook.site import Site, open_site
from drbook.tasks.policy import ONCE
from drbook.vault import failover_key
from drbook.flows.common import current_run_id, parallel
from drbook.flows.recover import build_machine
from drbook.tasks import azure as azure_tasks
from drbook.tasks import replication as replication_tasks
from drbook.tasks import source as source_tasks


# The approval form's fixed fields; each run builds its own form on it (approvallib.approval_form),
# because the recovery point is a choice among the points that exist when it pauses.
FailoverApproval = approvallib.FailoverApprovalBase


@flow(name="failover", log_prints=True)
def failover_flow(machines: list[str], point: pointlib.PointChoice = pointlib.LATEST, planned: bool = False,
                  approval_timeout: int = 3600, site_path: str | None = None) -> dict:
    """Fail over to Azure after a human approves: planned (shut the sources down first, no
    data lost) or unplanned (the site is gone).

    Args:
        machines: protected items to fail over
        point: latest (a final cycle first when the source answers), latest-processed, latest-app-consistent, or a point id
        planned: stop the applications, take a last point and shut the sources down first
        approval_timeout: seconds to wait for the approval; then nothing changes
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    run_id = current_run_id()
    items = [site.vault.item(m) for m in machines]
    for item in items:
        statelib.require(item, "failover")
    record = FailoverRecord(run_id=run_id, items=machines, planned=planned)
    # Held from before the approval to the end: a second failover of a machine is refused.
    with site.vault.leases([f"failover-{m}" for m in machines], holder=f"failover {run_id}", duration_s=30):
        site.vault.put(failover_key(run_id), record)
        decision = ask_approval(site, items, point=point, planned=planned, run_id=run_id,
                                approval_timeout=approval_timeout, what=", ".join(machines))
        point = decision.point
        started = time.monotonic()
        approved_at = utcnow()

        try:
            # Decide again under the leases: the states read before the pause may have moved.
            items = [site.vault.item(m) for m in machines]
            for item in items:
                statelib.require(item, "failover")
            chosen = stop_sources_and_choose_points(site, machines, items, point, planned)
            rg = site.cfg.azure.resource_group
            sizes = offered_sizes(site.azure, site.cfg.azure.location)
            plans = plan_recovery(site.cfg, items, chosen, run_id=run_id, purpose="failover", resource_group=rg,
                                  sizes=sizes, taken=taken_ips(site.azure, rg))
        except BaseException as exc:
            outcome.update_record(site.vault, run_id, status="failed", finished=utcnow(),
                                  report={"error": f"{type(exc).__name__}: {exc}", "built": "nothing was built in Azure"})
            raise
        moved: list[str] = []
        try:
            with transaction():
                rows = parallel(lambda p: build_machine(sp, p, chosen[p.item].consistency, started, approved_at), plans)
            for row in rows:
                outcome.mark_failed_over(site.vault, row, run_id)
                moved.append(row.item)
        except BaseException:
            # Completes or rolls back: the items already moved go back (rollback-failover), then
            # every resource of this run is swept.
            reverted = [outcome.roll_back(site.vault, name, run_id) for name in moved]
            swept = azure_tasks.sweep_run(sp, run_id)
            outcome.update_record(site.vault, run_id, status="rolled-back", finished=utcnow(),
                                  report={"swept": swept, "reverted": reverted})
            raise
        finished = utcnow()
        html = write_html(site.path.parent / "reports" / f"failover-{run_id}.html", kind="failover", run_label=run_id,
                          rows=rows, resource_group=rg, started=record.started.isoformat(),
                          finished=finished.isoformat(), flow_run_id=run_id)
        create_markdown_artifact(markdown("failover", run_id, rows, rg), key="failover-report", description="failover report")
        create_table_artifact(table_rows(rows), key="failover-table", description="failover results per machine")
        result = {
            "run_id": run_id,
            "planned": planned,
            "report": str(html),
            "vms": [{"machine": r.machine, "resource_group": r.resource_group, "vm_name": r.vm_name, "disks": r.disks}
                    for r in rows],
            "results": [r.model_dump(mode="json") for r in rows],
        }
        site.vault.update(failover_key(run_id), FailoverRecord, lambda r: r.model_copy(update={
            "status": "succeeded", "finished": finished, "point_ids": {x.item: x.point_id for x in rows},
            "vms": [AzureVmRef(machine=x.machine, resource_group=x.resource_group, vm_name=x.vm_name, disks=x.disks,
                               nics=[x.nic], ip=x.ip) for x in rows],
            "report": result}))
        return result


@flow(name="commit", log_prints=True)
def commit_flow(machines: list[str], dry_run: bool = False, force_reason: str | None = None,
                site_path: str | None = None) -> dict:
    """End a failover (the other recovery points go, the state becomes committed) or a failback
    (the failover's Azure VMs, NICs, disks and snapshots go; refused until verified unless
    `force_reason` says why, which goes into the audit log).

    Args:
        machines: failed-over or failed-back items to commit
        dry_run: only say what would be deleted
        force_reason: commit a failback whose verification did not pass, for this reason
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    from drbook.reprotect.failback import failed_back
    from drbook.tasks import reprotect as rt

    site = open_site(site_path)
    run_id = current_run_id()
    back = failed_back(site, machines)
    forward = [m for m in machines if m not in back]
    require_committable(site, forward)
    results = {m: commit_one(str(site.path), m, run_id, dry_run).model_dump() for m in forward}
    results |= {m: rt.commit_failback(str(site.path), m, run_id, force_reason, dry_run) for m in back}
    log = get_run_logger()
    for r in results.values():
        for line in r["actions"]:
            log.info(line)
    return results


@task(name="commit-item", **ONCE)
def commit_one(site_path: str, machine: str, run_id: str, dry_run: bool) -> CommitResult:
    return commit_item(open_site(site_path), machine, run_id=run_id, dry_run=dry_run)


def ask_approval(site: Site, items: list[ProtectedItem], *, point: str, planned: bool, run_id: str,
                 approval_timeout: int, what: str, extra: str = "") -> approvallib.ApprovalDecision:
    """Pause for a person's yes or no on a summary of exactly what will happen (`extra`: more
    markdown under it, e.g. a plan's steps); the answer goes to the audit log and the run's
    FailoverRecord. A no (or no answer in time) raises ApprovalRejected: nothing was changed."""
    log = get_run_logger()
    machines = [i.name for i in items]
    rg = site.cfg.azure.resource_group
    points_by_item = replication_tasks.points_of_each(site, [i.name for i in items])
    preview = approvallib.preview_points(site.cfg, items, points_by_item, point, planned)
    preview_plans = plan_recovery(site.cfg, [i for i in items if i.name in preview], preview, run_id=run_id,
                                  purpose="failover", resource_group=rg,
                                  sizes=offered_sizes(site.azure, site.cfg.azure.location),
                                  taken=taken_ips(site.azure, rg))
    options = approvallib.point_options(items, points_by_item, point)
    summary = approvallib.approval_summary(cfg=site.cfg, run_id=run_id, items=items, planned=planned, choice=point,
                                           chosen=preview, plans=preview_plans, options=options, now=utcnow())
    summary += extra
    # No key: on the run's Artifacts tab the card then opens this summary itself (a keyed
    # card opens the key's history across runs).
    create_markdown_artifact(summary, description=f"waiting for approval: failover of {what}")
    log.info("waiting for an approval of the failover of %s. %s", what, approvallib.HOW_TO_ANSWER.format(run_id=run_id))
    try:
        answer = pause_flow_run(wait_for_input=approvallib.approval_form(options, point, summary),
                                timeout=approval_timeout, poll_interval=1, key="failover-approval")
    except FlowPauseTimeout:
        answer = None
    decision = approvallib.decide(answer, point)
    for m in machines:
        site.vault.audit(AuditEntry(actor=decision.approver or "drbook", item=m, action=decision.audit_action,
                                    flow_run_id=run_id, detail={"point": decision.point, "planned": planned,
                                                                "comment": decision.comment}))
    site.vault.update(failover_key(run_id), FailoverRecord, lambda r: r.model_copy(update={
        "status": decision.status, "approver": decision.approver, "comment": decision.comment,
        "finished": None if decision.approved else utcnow()}))
    if not decision.approved:
        raise ApprovalRejected(f"failover of {what} not approved ({decision.why}); nothing was changed")
    log.info("approved by %s (point %s): %s", decision.approver, decision.point, decision.comment)
    return decision


def stop_sources_and_choose_points(site: Site, machines: list[str], items: list[ProtectedItem], choice: str,
                                   planned: bool) -> dict:
    """What happens before anything is built, in `machines` order: planned, the sources'
    applications stop, a final cycle runs and the sources shut down (its points are the final
    ones); `latest`, a final cycle where the source answers; then the points."""
    sp = str(site.path)
    steps = pointlib.failover_steps(planned, choice)
    if steps.stop_applications:
        for m in machines:
            source_tasks.quiesce_for_shutdown(sp, m)
    finals = replication_tasks.final_cycles(sp, machines) if steps.final_cycle else []
    if steps.final_cycle_required:
        chosen = pointlib.require_final_points(machines, finals)
    else:
        chosen = choose_points(site.cfg, items, replication_tasks.points_of_each(site, [i.name for i in items]), choice)
    if steps.shut_down_sources:
        for m in machines:
            source_tasks.shut_down_source(sp, m)
    return chosen
