"""reprotect, failback and their commit.

reprotect: leases held -> each machine's record begun (or resumed) -> a reverse cycle ->
reprotected. Run again (or on a schedule) it runs the next cycle.
failback: leases held -> approval pause (nothing touched before a yes) -> per machine: the
Azure VM stopped and deallocated, a final cycle, both sides verified against the reverse
manifest, the on-premises machine brought up and checked -> failed-back. Any failure before
the target is brought up starts the Azure VM again: the business goes on in Azure.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from pydantic import Field, create_model

from drbook import state as statelib
from drbook.errors import ApprovalRejected
from drbook.failover.approval import HOW_TO_ANSWER
from drbook.models import AuditEntry
from drbook.reprotect import failback as fb
from drbook.reprotect.summary import failback_summary, reprotect_table
from drbook.site import open_site
from drbook.flows.common import current_run_id, parallel
from drbook.tasks import reprotect as rt


class FailbackApproval(RunInput):
    approve: bool = Field(False, title="Approve", description="on: fail back now; off: nothing changes")
    approver: str = Field(title="Approver", min_length=1, pattern=r"\S", max_length=200,
                          description="your name: the audit log records who approved")
    comment: str = Field("", title="Comment", max_length=2000)


def failback_form(description: str) -> type[FailbackApproval]:
    form = create_model("FailbackApproval", __base__=FailbackApproval)
    form._description = description  # as RunInput.with_initial_data does, keeping the fields' titles
    return form


def _leases(site, machines: list[str], run_id: str, what: str):  # noqa: ANN001, ANN202
    # One lease name for every lifecycle stage of a machine: a second reprotect or failback
    # (or a failover, or a commit) of it is refused while one runs.
    return site.vault.leases([f"failover-{m}" for m in machines], holder=f"{what} {run_id}", duration_s=30)


@flow(name="reprotect", log_prints=True)
def reprotect_flow(machines: list[str], target: str | None = None, site_path: str | None = None) -> list[dict]:
    """Replicate failed-over machines back on-premises while they keep running in Azure.

    Args:
        machines: committed (or already reprotecting) items
        target: the site config machine to write (default: each machine itself); one machine only
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    run_id = current_run_id()
    if target and len(machines) != 1:
        from drbook.errors import InvalidParameters

        raise InvalidParameters("--target names one machine's target: reprotect one machine with it")
    with _leases(site, machines, run_id, "reprotect"):
        for m in machines:
            rt.begin(sp, m, target, run_id)
        rows = parallel(lambda m: rt.reverse_cycle(sp, m), machines)
        for m in machines:
            rt.finish(sp, m, run_id)
    create_table_artifact(reprotect_table(rows), key="reprotect", description="reverse cycle per machine")
    return rows


@flow(name="failback", log_prints=True)
def failback_flow(machines: list[str], approval_timeout: int = 3600, site_path: str | None = None) -> list[dict]:
    """Bring reprotected machines home after a human approves: stop the Azure VMs, a last
    reverse cycle, verify byte for byte, bring the on-premises machines up.

    Args:
        machines: reprotected items
        approval_timeout: seconds to wait for the approval; then nothing changes
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    run_id = current_run_id()
    for m in machines:
        statelib.require(site.vault.item(m), "failback")
    with _leases(site, machines, run_id, "failback"):
        ask_failback_approval(site, machines, run_id, approval_timeout)
        rows = parallel(lambda m: fail_back_one(sp, m, run_id), machines)
    create_table_artifact(rows, key="failback", description="failback per machine")
    return rows


def ask_failback_approval(site, machines: list[str], run_id: str, approval_timeout: int, *, what: str = "",  # noqa: ANN001
                          extra: str = "") -> None:
    """Pause for a person's yes or no on what the failback will do (`extra`: more markdown under
    it, e.g. a plan's steps); the answer goes to the audit log. A no (or no answer in time)
    raises ApprovalRejected: nothing was changed."""
    log = get_run_logger()
    what = what or ", ".join(machines)
    records = [fb.require_record(site, m) for m in machines]
    summary = failback_summary(records, run_id) + extra
    create_markdown_artifact(summary, description=f"waiting for approval: failback of {what}")
    log.info("waiting for an approval of the failback of %s. %s", what, HOW_TO_ANSWER.format(run_id=run_id))
    try:
        answer = pause_flow_run(wait_for_input=failback_form(summary), timeout=approval_timeout, poll_interval=1,
                                key="failback-approval")
    except FlowPauseTimeout:
        answer = None
    approved = answer is not None and answer.approve
    for m in machines:
        site.vault.audit(AuditEntry(actor=(answer.approver if answer else "drbook"), item=m,
                                    action="failback-approved" if approved else "failback-rejected",
                                    flow_run_id=run_id, detail={"comment": answer.comment if answer else "timed out"}))
    if not approved:
        why = f"rejected by {answer.approver}" if answer else "nobody approved in time"
        raise ApprovalRejected(f"failback of {what} not approved ({why}); nothing was changed")


def fail_back_one(sp: str, machine: str, run_id: str) -> dict:
    """Stop the Azure VM, a final cycle, verify, bring the target up, check it: failed-back.
    Any failure before the target comes up starts the Azure VM again."""
    rt.stop_azure_vm(sp, machine)
    try:
        cycle = rt.reverse_cycle(sp, machine, final=True)
        check = rt.verify(sp, machine)
        fb.require_verified(machine, check)
    except BaseException:
        rt.restart_azure_vm(sp, machine)
        raise
    up = rt.bring_up_target(sp, machine)
    health = rt.health_check(sp, machine)
    rt.mark_failed_back(sp, machine, run_id)
    return {"item": machine, "target": cycle["target"], "final_bytes_moved": cycle["bytes_moved"],
            "bytes_verified": sum(v["bytes_verified"] for v in check.disks.values()), "verified": check.ok,
            "target_state": up, "health": health}
