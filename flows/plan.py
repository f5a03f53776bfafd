"""Recovery plans: one plan (plans/NAME.yaml) drives a drill, a failover and a failback. Groups run one after another, the machines of a group in parallel, with the
group's pre and post actions around them (drbook.plans.steps). Every step is recorded
(drbook.plans.runlog), and the run ends with a report with charts (drbook.plans.report).

A machine completes or rolls back on its own (a replication group: together). An optional
machine or action that fails is reported and the plan goes on; a critical one stops the
plan: nothing after it runs, and what ran before stays as its state machine says (a
failover's finished groups stay failed over; a drill is swept, as any failed drill)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from prefect import flow, get_run_logger, pause_flow_run
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.transactions import transaction
from pydantic import Field

from drbook import state as statelib
from drbook.errors import PlanStopped
from drbook.failover import outcome
from drbook.failover import points as pointlib
from drbook.failover.build import delete_resource_group
from drbook.failover.recovery import MachineResult, offered_sizes, plan_recovery, taken_ips
from drbook.models import AuditEntry, AzureVmRef, FailoverRecord, ProtectedItem, RecoveryPoint, utcnow
from drbook.plans import decide
from drbook.plans.facts import RunFacts, machine_facts
from drbook.plans.load import LoadedPlan, plan_path
from drbook.plans.validate import require_valid
from drbook.plans.model import Direction, ManualAction, ScriptAction, WaitAction
from drbook.plans.record import PlanMachineResult, PlanRunRecord
from drbook.plans.report import publish_artifacts, write_html
from drbook.plans.runlog import RunLog
from drbook.plans.steps import PlanStep, plan_steps
from drbook.site import Site, open_site
from drbook.templating import render
from drbook.vault import failover_key
from drbook.flows.common import current_run_id, parallel
from drbook.flows.drill import clean_up, drill_tags, finish_drill, start_drill
from drbook.flows.failover import ask_approval, stop_sources_and_choose_points
from drbook.flows.recover import build_machine
from drbook.tasks import azure as azure_tasks
from drbook.tasks import plan as plan_tasks
from drbook.tasks import replication as replication_tasks

GROUP_WIDTH = 16  # machines of a group recovered at once (bench/bench_plans.py: 8 -> 16)


class ManualStepAnswer(RunInput):
    """A manual action's form: the instructions above it, done or not done below."""

    approve: bool = Field(False, title="Done", description="on: done, the plan goes on; off: not done, the plan stops")
    approver: str = Field(title="Your name", min_length=1, pattern=r"\S", max_length=200,
                          description="the audit log records who answered")
    comment: str = Field("", title="Comment", max_length=2000)


@flow(name="plan-test-failover", log_prints=True)
def plan_drill_flow(plan: str, point: pointlib.PointChoice | None = None, site_path: str | None = None) -> dict:
    """Drill a recovery plan: its groups in order into the isolated test network, each machine
    verified byte for byte, the plan's scripts and manual steps, a report with charts. The VMs
    stay up for inspection; `test-failover-cleanup DRILL_ID` removes them.

    Args:
        plan: the plan's name (plans/NAME.yaml in the site's plans folder) or a path to its file
        point: overrides the plan's point: latest, latest-processed, latest-app-consistent or a point id
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    run = _drill(plan, point, site_path, unattended=False)
    return run.finish()


@flow(name="scheduled-plan-drill", log_prints=True)
def scheduled_plan_drill_flow(plan: str, point: pointlib.PointChoice | None = None, site_path: str | None = None) -> dict:
    """Unattended drill of a recovery plan (a weekly schedule): as plan-test-failover, its
    manual steps skipped (nobody is there to answer), then cleaned up, always.

    Args:
        plan: the plan's name (plans/NAME.yaml in the site's plans folder) or a path to its file
        point: overrides the plan's point
        site_path: site config YAML; default $DRBOOK_SITE
    """
    run = _drill(plan, point, site_path, unattended=True)
    try:
        return run.finish()
    finally:
        if run.drill_id:
            cleanup = clean_up(run.site, run.drill_id)
            run.log.update(why=(run.log.record.why + f" · cleaned up: {len(cleanup['deleted'])} resources deleted").strip(" ·"))


@flow(name="plan-failover", log_prints=True)
def plan_failover_flow(plan: str, point: pointlib.PointChoice | None = None, planned: bool = False,
                       approval_timeout: int = 3600, site_path: str | None = None) -> dict:
    """Fail a recovery plan over to Azure after a human approves: groups in order, the plan's
    scripts and manual steps, a report with charts. Planned: every source's applications stop
    and a final cycle runs first, then the sources shut down (last group first).

    Args:
        plan: the plan's name (plans/NAME.yaml in the site's plans folder) or a path to its file
        point: overrides the plan's point (default latest)
        planned: stop the applications, take a last point and shut the sources down first
        approval_timeout: seconds to wait for the approval; then nothing changes
        site_path: site config YAML; default $DRBOOK_SITE
    """
    site = open_site(site_path)
    loaded = _load(site, plan)
    machines = loaded.plan.machines()
    items = _items(site, machines, "failover")
    run_id = current_run_id()
    choice = point or loaded.plan.point or pointlib.LATEST
    steps = plan_steps(loaded.plan, "failover")
    with site.vault.leases([f"failover-{m}" for m in machines], holder=f"plan failover {run_id}", duration_s=30):
        site.vault.put(failover_key(run_id), FailoverRecord(run_id=run_id, items=machines, planned=planned))
        decision = ask_approval(site, list(items.values()), point=choice, planned=planned, run_id=run_id,
                                approval_timeout=approval_timeout, what=f"plan {loaded.plan.name} ({', '.join(machines)})",
                                extra=_steps_markdown(loaded, steps, "failover"))
        run = _PlanRun(site=site, loaded=loaded, direction="failover", run_id=run_id, items=items,
                       purpose="failover", resource_group=site.cfg.azure.resource_group, started=time.monotonic(),
                       began=utcnow())
        run.open_log()
        sources = run.log.begin_other(
            group="sources", kind="sources",
            label="stop applications, last cycle, shut down; points" if planned else "recovery points")
        try:
            run.items = _items(site, machines, "failover")  # again under the leases: states may have moved
            run.chosen = _failover_points(site, loaded, run.items, decision.point, planned)
            run.log.end(sources, "succeeded")
        except BaseException as exc:
            run.log.end(sources, "failed", error=f"{type(exc).__name__}: {exc}")
            outcome.update_record(site.vault, run_id, status="failed", finished=utcnow(),
                                  report={"error": f"{type(exc).__name__}: {exc}", "built": "nothing was built in Azure"})
            run.log.update(status="failed", finished=utcnow(), why=f"{type(exc).__name__}: {exc}")
            raise
        try:
            run.walk(steps)
        except BaseException as exc:
            # Not a step's failure (those are verdicts): what moved stays failed over (its state
            # says so); the record says the run failed and where.
            why = f"{type(exc).__name__}: {exc}"
            outcome.update_record(site.vault, run_id, status="failed", finished=utcnow(),
                                  point_ids={r.item: r.point_id for r in run.rows},
                                  report={"plan": loaded.plan.name, "plan_run": run_id, "error": why})
            run.log.update(status="failed", finished=utcnow(), why=why)
            raise
        rows = run.rows
        status = "succeeded" if rows else "rolled-back"
        outcome.update_record(site.vault, run_id, status=status, finished=utcnow(),
                              point_ids={r.item: r.point_id for r in rows},
                              vms=[AzureVmRef(machine=r.machine, resource_group=r.resource_group, vm_name=r.vm_name,
                                              disks=r.disks, nics=[r.nic], ip=r.ip) for r in rows],
                              report={"plan": loaded.plan.name, "plan_run": run_id})
        return run.finish()


@flow(name="plan-failback", log_prints=True)
def plan_failback_flow(plan: str, approval_timeout: int = 3600, site_path: str | None = None) -> dict:
    """Fail a recovery plan back on-premises after a human approves: groups in reverse order
    (unless the plan says forward), each machine's Azure VM stopped, a final reverse cycle,
    every disk verified, the on-premises machine brought up; the plan's failback scripts and
    manual steps between; a report with charts. Every machine must be reprotected.

    Args:
        plan: the plan's name or a path to its file
        approval_timeout: seconds to wait for the approval; then nothing changes
        site_path: site config YAML; default $DRBOOK_SITE
    """
    from drbook.flows.reprotect import ask_failback_approval

    site = open_site(site_path)
    loaded = _load(site, plan)
    machines = loaded.plan.machines()
    _items(site, machines, "failback")  # every machine reprotected, before anyone is asked
    run_id = current_run_id()
    steps = plan_steps(loaded.plan, "failback")
    with site.vault.leases([f"failover-{m}" for m in machines], holder=f"plan failback {run_id}", duration_s=30):
        ask_failback_approval(site, machines, run_id, approval_timeout,
                              what=f"plan {loaded.plan.name} ({', '.join(machines)})",
                              extra=_steps_markdown(loaded, steps, "failback"))
        run = _PlanRun(site=site, loaded=loaded, direction="failback", run_id=run_id,
                       items=_items(site, machines, "failback"), purpose="failback",
                       resource_group=site.cfg.azure.resource_group, started=time.monotonic(), began=utcnow())
        run.chosen = {m: site.engine.points.get(m, i.failover_point_id) for m, i in run.items.items()}
        run.open_log()
        try:
            run.walk(steps)
        except BaseException as exc:
            run.log.update(status="failed", finished=utcnow(), why=f"{type(exc).__name__}: {exc}")
            raise
        return run.finish()


# -- one run of a plan ------------------------------------------------------------------------

@dataclass
class _PlanRun:
    site: Site
    loaded: LoadedPlan
    direction: Direction
    run_id: str
    items: dict[str, ProtectedItem]
    purpose: str  # drill | failover (MachinePlan's purpose) | failback
    resource_group: str
    started: float  # monotonic: RTOs count from here
    began: dt.datetime  # the instant the run acts for: RPOs count to here
    unattended: bool = False
    drill_id: str | None = None
    chosen: dict[str, RecoveryPoint] = field(default_factory=dict)
    results: dict[str, MachineResult] = field(default_factory=dict)
    back: dict[str, dict] = field(default_factory=dict)  # failback: each machine's fail_back_one row
    stopped: decide.StepVerdict | None = None
    log: RunLog = None  # type: ignore[assignment]

    @property
    def sp(self) -> str:
        return str(self.site.path)

    @property
    def rows(self) -> list[MachineResult]:
        return list(self.results.values())

    def group(self, step: PlanStep):  # noqa: ANN201 - a drbook.plans.model.PlanGroup
        return next(g for g in self.loaded.plan.groups if g.name == step.group)

    def open_log(self) -> None:
        plan = self.loaded.plan
        machines = [PlanMachineResult(machine=m.name, group=g.name, critical=g.is_critical(m.name))
                    for g in plan.ordered_groups(self.direction) for m in g.members()]
        self.log = RunLog(self.site.vault, PlanRunRecord(
            run_id=self.run_id, plan=plan.name, plan_file=str(self.loaded.path), direction=self.direction,
            drill_id=self.drill_id, resource_group=self.resource_group, machines=machines))

    def walk(self, steps: list[PlanStep]) -> None:
        """Every step in order, until one stops the plan."""
        logger = get_run_logger()
        for step in steps:
            logger.info("plan %s step %d (%s, %s): %s", self.loaded.plan.name, step.number, step.group, step.phase,
                        step.label())
            if step.kind == "recover":
                verdict = self.recover(step)
            elif isinstance(step.action, ScriptAction):
                verdict = self.script(step, step.action)
            elif isinstance(step.action, ManualAction):
                verdict = self.manual(step, step.action)
            else:
                verdict = self.wait(step, step.action)
            if not verdict.go_on:
                logger.error("plan %s stops: %s", self.loaded.plan.name, verdict.why)
                self.stopped = verdict
                return

    # -- the steps
    def recover(self, step: PlanStep) -> decide.StepVerdict:
        if self.direction == "failback":
            return self.fail_back(step)
        items = [self.items[m] for m in step.machines]
        taken = ({r.ip for r in self.rows} if self.purpose == "drill"
                 else taken_ips(self.site.azure, self.resource_group))
        plans = {p.item: p for p in plan_recovery(
            self.site.cfg, items, {m: self.chosen[m] for m in step.machines}, run_id=self.run_id,
            purpose=self.purpose, resource_group=self.resource_group,  # type: ignore[arg-type]
            sizes=offered_sizes(self.site.azure, self.site.cfg.azure.location), taken=taken)}
        group = self.group(step)
        critical = {m: group.is_critical(m) for m in step.machines}
        errors: dict[str, str] = {}
        for failed in parallel(lambda unit: self._recover_unit(step, unit, plans, critical),
                               decide.units(step.machines, self.items), max_workers=GROUP_WIDTH):
            errors.update(failed)
        return decide.after_machines(errors, critical, f"group {step.group}")

    def _recover_unit(self, step: PlanStep, unit: list[str], plans: dict, critical: dict[str, bool]) -> dict[str, str]:
        """One machine (or one replication group) completes or rolls back as a whole."""
        steps = {m: self.log.begin(step, machine=m, critical=critical[m]) for m in unit}
        for m in unit:
            self.log.machine(m, "not-run", started=utcnow())
        moved: list[str] = []
        try:
            with transaction():
                rows = parallel(lambda m: build_machine(self.sp, plans[m], self.chosen[m].consistency, self.started,
                                                        self.began), unit)
            for row in rows:
                if self.purpose == "failover":
                    outcome.mark_failed_over(self.site.vault, row, self.run_id)
                    moved.append(row.item)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            for m in moved:
                outcome.roll_back(self.site.vault, m, self.run_id)
            for m in unit:
                plan_tasks.sweep_machine(self.sp, self.run_id, m)
                self.log.end(steps[m], "failed", error=why)
                self.log.machine(m, "failed", finished=utcnow(), error=why, point_id=self.chosen[m].id,
                                 point_time=self.chosen[m].time, consistency=self.chosen[m].consistency)
            return {m: why for m in unit}
        for row in rows:
            self.results[row.item] = row
            self.log.end(steps[row.item], "succeeded", output=row.script_output)
            self.log.machine(row.item, "succeeded", finished=utcnow(), point_id=row.point_id, point_time=row.point_time,
                             consistency=row.consistency, rpo_seconds=row.rpo_seconds, rto_seconds=row.rto_seconds,
                             bytes_verified=row.bytes_verified, verified=row.verified, vm_name=row.vm_name, ip=row.ip,
                             script_output=row.script_output)
        return {}

    def fail_back(self, step: PlanStep) -> decide.StepVerdict:
        """The group's machines home in parallel, each on its own: a failure (its Azure VM then
        runs again) stops the plan when the machine is critical."""
        from drbook.flows.reprotect import fail_back_one

        group = self.group(step)
        critical = {m: group.is_critical(m) for m in step.machines}

        def one(m: str) -> dict[str, str]:
            index = self.log.begin(step, machine=m, critical=critical[m])
            self.log.machine(m, "not-run", started=utcnow())
            try:
                row = fail_back_one(self.sp, m, self.run_id)
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                self.log.end(index, "failed", error=why)
                self.log.machine(m, "failed", finished=utcnow(), error=why)
                return {m: why}
            self.back[m] = row
            self.log.end(index, "succeeded", output=f"{row['target_state']}; {row['health']}")
            self.log.machine(m, "succeeded", finished=utcnow(), point_id=self.chosen[m].id,
                             point_time=self.chosen[m].time, consistency="crash", rpo_seconds=0.0,
                             rto_seconds=time.monotonic() - self.started, bytes_verified=row["bytes_verified"],
                             verified=row["verified"], vm_name=row["target"])
            return {}

        errors: dict[str, str] = {}
        for failed in parallel(one, step.machines, max_workers=GROUP_WIDTH):
            errors.update(failed)
        return decide.after_machines(errors, critical, f"group {step.group}")

    def recovered(self, machine: str) -> bool:
        return machine in (self.back if self.direction == "failback" else self.results)

    def script(self, step: PlanStep, action: ScriptAction) -> decide.StepVerdict:
        group = self.group(step)
        critical = {m: action.critical if action.critical is not None else group.is_critical(m) for m in step.machines}
        where = action.where(step.phase)
        targets = [m for m in step.machines if where == "source" or self.recovered(m)]
        for m in step.machines:
            if m not in targets:  # its recovery failed (an optional machine): nothing to run on
                self.log.end(self.log.begin(step, machine=m, critical=critical[m]), "skipped",
                             error="not recovered: nothing to run the script on")
        errors = {m: e for m, e in zip(targets, parallel(lambda m: self._script_on(step, action, m, critical[m]), targets))
                  if e}
        return decide.after_machines(errors, critical, f"script {action.script} in group {step.group}")

    def _script_on(self, step: PlanStep, action: ScriptAction, machine: str, critical: bool) -> str:
        index = self.log.begin(step, machine=machine, critical=critical)
        item = self.items[machine]
        row = self.results.get(machine)
        facts = machine_facts(item, plan=self.loaded.plan.name, group=step.group, direction=self.direction,
                              run=RunFacts(vm_name=row.vm_name if row else "", ip=row.ip if row else "",
                                           resource_group=row.resource_group if row else "",
                                           point_id=self.chosen[machine].id,
                                           point_time=self.chosen[machine].time.isoformat(),
                                           consistency=self.chosen[machine].consistency, run_id=self.run_id))
        try:
            script = render(action.script, **facts)
            on_azure = (action.where(step.phase) == "recovered") != (self.direction == "failback")
            if on_azure and self.direction == "failback":  # the failed-over VM, before it is stopped
                ref = item.azure_vms[0]
                result = plan_tasks.script_on_vm(self.sp, ref.resource_group, ref.vm_name, item.os, script)
            elif on_azure:
                assert row is not None
                result = plan_tasks.script_on_vm(self.sp, row.resource_group, row.vm_name, item.os, script)
            else:  # over SSH: the source, or in failback the machine it came home to
                host = self.back[machine]["target"] if self.direction == "failback" and machine in self.back else machine
                result = plan_tasks.script_on_source(self.sp, host, script, float(action.timeout_s))
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            self.log.end(index, "failed", error=why)
            return why
        self.log.end(index, "succeeded" if result.ok else "failed", output=result.output,
                     error="" if result.ok else result.problem())
        self.log.add_output(machine, f"$ {action.script} on the {'recovered VM' if action.where(step.phase) == 'recovered' else 'source'}\n{result.output}\n")
        return "" if result.ok else f"{action.script} on {machine}: {result.problem()}"

    def manual(self, step: PlanStep, action: ManualAction) -> decide.StepVerdict:
        index = self.log.begin(step)
        if self.unattended:
            self.log.end(index, "skipped", output="unattended drill: nobody to answer")
            return decide.StepVerdict(go_on=True)
        instructions = (f"## Plan {self.loaded.plan.name}, group {step.group}: a manual step\n\n{action.manual}\n\n"
                        f"Answer **done** to go on, **not done** to stop the plan"
                        f"{'' if step.critical else ' (this step is optional: the plan goes on either way)'}. "
                        f"In the UI: this run's menu → Resume; or `drbook approve {self.run_id}` "
                        f"(`--reject` for not done).")
        create_markdown_artifact(instructions, description=f"waiting for a person: {step.label()}")
        get_run_logger().info("waiting for a person (plan %s, group %s): %s", self.loaded.plan.name, step.group,
                              action.manual)
        try:
            answer = pause_flow_run(wait_for_input=ManualStepAnswer.with_initial_data(description=instructions),
                                    timeout=action.timeout_s, poll_interval=1, key=f"plan-step-{step.number}")
        except FlowPauseTimeout:
            answer = None
        done = bool(answer and answer.approve)
        said = (f"{'done' if done else 'not done'} by {answer.approver}" + (f": {answer.comment}" if answer.comment else "")
                if answer else f"no answer within {action.timeout_s} s")
        for m in step.machines:
            self.site.vault.audit(AuditEntry(actor=answer.approver if answer else "drbook", item=m,
                                             action="plan-manual-done" if done else "plan-manual-not-done",
                                             flow_run_id=self.run_id,
                                             detail={"plan": self.loaded.plan.name, "step": step.label(), "answer": said}))
        self.log.end(index, "succeeded" if done else "not-done", output=said)
        return decide.after_manual(done, step.critical, f"manual step in group {step.group}", said)

    def wait(self, step: PlanStep, action: WaitAction) -> decide.StepVerdict:
        index = self.log.begin(step)
        time.sleep(action.wait)
        self.log.end(index, "succeeded")
        return decide.StepVerdict(go_on=True)

    # -- the end
    def finish(self) -> dict:
        """Status, report and artifacts; a stopped plan then fails its run (PlanStopped)."""
        record = self.log.update(status=decide.final_status(self.log.record, self.stopped), finished=utcnow(),
                                 why=self.stopped.why if self.stopped else self.log.record.why)
        points = replication_tasks.points_of_each(self.site, self.loaded.plan.machines())
        html = write_html(self.site.path.parent / "reports" / f"plan-{self.loaded.plan.name}-{self.run_id}.html", record,
                          points=points)
        record = self.log.update(report_path=str(html))
        publish_artifacts(record, key=f"plan-{self.loaded.plan.name}")
        result = {"run_id": self.run_id, "plan": record.plan, "direction": record.direction, "status": record.status,
                  "why": record.why, "drill_id": self.drill_id, "report": str(html),
                  "machines": [m.model_dump(mode="json") for m in record.machines]}
        if self.stopped:
            raise PlanStopped(f"plan {record.plan} stopped: {self.stopped.why}; report {html}")
        return result


def _load(site: Site, plan: str) -> LoadedPlan:
    """The plan, refused (file, line, reason) before anything runs."""
    path = plan_path(plan, site.cfg.plans_folder(site.path))
    return require_valid(path, items={i.name: i for i in site.vault.items()})


def _items(site: Site, machines: list[str], action: str) -> dict[str, ProtectedItem]:
    items = {m: site.vault.item(m) for m in machines}
    for item in items.values():
        statelib.require(item, action)
    return items


def _steps_markdown(loaded: LoadedPlan, steps: list[PlanStep], direction: Direction) -> str:
    lines = ["", f"### Plan {loaded.plan.name}: the steps, in order", "", "| # | group | step | what |", "|---|---|---|---|"]
    lines += [f"| {s.number} | {s.group} | {s.phase} | {s.describe(direction)} |" for s in steps]
    return "\n".join(lines) + "\n"


def _failover_points(site: Site, loaded: LoadedPlan, items: dict[str, ProtectedItem], choice: str,
                     planned: bool) -> dict[str, RecoveryPoint]:
    """Planned: the sources stop last group first (the applications before the database)."""
    order = [m.name for g in reversed(loaded.plan.groups) for m in g.members()]
    return stop_sources_and_choose_points(site, order, [items[m] for m in order], choice, planned)


def _drill(plan: str, point: str | None, site_path: str | None, *, unattended: bool) -> _PlanRun:
    site = open_site(site_path)
    loaded = _load(site, plan)
    machines = loaded.plan.machines()
    items = _items(site, machines, "test-failover")
    drill = start_drill(site, machines, point or loaded.plan.point or pointlib.LATEST_PROCESSED)
    run = _PlanRun(site=site, loaded=loaded, direction="test-failover", run_id=drill.run_id, items=items,
                   purpose="drill", resource_group=drill.record.resource_group, started=drill.started,
                   began=drill.began, unattended=unattended, drill_id=drill.drill_id, chosen=drill.chosen)
    run.open_log()
    try:
        azure_tasks.ensure_resource_group(run.sp, run.resource_group, drill_tags(drill))
        run.walk(plan_steps(loaded.plan, "test-failover"))
    except BaseException as exc:
        # Not a step's failure (those are verdicts): the drill cannot go on.
        run.stopped = decide.StepVerdict(go_on=False, why=f"{type(exc).__name__}: {exc}")
        _sweep_failed_drill(run)
        run.log.update(status="failed", finished=utcnow(), why=run.stopped.why)
        raise
    if run.stopped:
        _sweep_failed_drill(run)
    else:
        finish_drill(site, drill.drill_id, "succeeded", {"plan_run": run.run_id,
                                                         "results": [r.model_dump(mode="json") for r in run.rows]})
    return run


def _sweep_failed_drill(run: _PlanRun) -> None:
    """A stopped or broken plan drill is a failed drill: swept, as any failed drill (its record
    then blocks no later one)."""
    swept = azure_tasks.sweep_run(run.sp, run.run_id)
    delete_resource_group(run.site.azure, run.resource_group)
    finish_drill(run.site, run.drill_id, "failed", {"error": run.stopped.why, "swept": swept, "plan_run": run.run_id})
