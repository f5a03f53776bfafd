"""The `drbook` command line. Each command is a thin door into a flow or into drbook/."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from drbook.errors import DRError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Disaster recovery to Azure, as Prefect runbooks.")

console = Console(stderr=True, soft_wrap=True)  # an error is one line, however long
out = Console(width=None if sys.stdout.isatty() else 180)


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# -- running flows from the CLI ---------------------------------------------------------------
# A stage command starts a run of its deployment on the process-server worker and follows it
# (drbook/runs.py): the same run the UI, a schedule or an automation would start. --local runs
# the flow in this process instead (tests, a one-box quick start): an explicit choice.
SiteOpt = typer.Option(None, "--site", help="with --local: site config YAML (default: $DRBOOK_SITE, else "
                       "~/.config/drbook/site.yaml); a deployment run uses its worker's site")
LocalOpt = typer.Option(False, "--local", help="run the flow in this process instead of on the worker")
NoWaitOpt = typer.Option(False, "--no-wait", help="start the run on the worker, print its id and UI URL, exit")

# Each stage's deployment ("flow name/deployment name", deployments/prefect.yaml).
DEPLOYMENTS = {
    "discover": "discover/discover",
    "push-mobility": "push-mobility/push-mobility",
    "protect": "enable-replication/enable-replication",
    "replicate": "replicate-cycle/replicate",
    "verify": "verify-point/verify-point",
    "retention": "retention-purge/retention",
    "prepare-azure": "prepare-azure/prepare-azure",
    "test-failover": "test-failover/test-failover",
    "test-failover-cleanup": "test-failover-cleanup/test-failover-cleanup",
    "failover": "failover/failover",
    "commit": "commit/commit",
    "reprotect": "reprotect/reprotect",
    "failback": "failback/failback",
    "reconcile": "reconcile/reconcile",
    "plan-test-failover": "plan-test-failover/plan-test-failover",
    "plan-failover": "plan-failover/plan-failover",
    "plan-failback": "plan-failback/plan-failback",
}


# Each stage's flow, for --local (its deployment's entrypoint): imported only to run it
# (Prefect and the SDKs take seconds to import; a refused argument should not wait for them).
FLOWS = {
    "discover": "drbook.flows.discover.discover_flow",
    "push-mobility": "drbook.flows.push_mobility.push_mobility_flow",
    "protect": "drbook.flows.replication.enable_replication_flow",
    "replicate": "drbook.flows.replication.replicate_flow",
    "verify": "drbook.flows.replication.verify_point_flow",
    "retention": "drbook.flows.replication.retention_flow",
    "prepare-azure": "drbook.flows.prepare_azure.prepare_azure_flow",
    "test-failover": "drbook.flows.drill.drill_flow",
    "test-failover-cleanup": "drbook.flows.drill.drill_cleanup_flow",
    "failover": "drbook.flows.failover.failover_flow",
    "commit": "drbook.flows.failover.commit_flow",
    "reprotect": "drbook.flows.reprotect.reprotect_flow",
    "failback": "drbook.flows.reprotect.failback_flow",
    "reconcile": "drbook.flows.reconcile.reconcile_flow",
    "plan-test-failover": "drbook.flows.plan.plan_drill_flow",
    "plan-failover": "drbook.flows.plan.plan_failover_flow",
    "plan-failback": "drbook.flows.plan.plan_failback_flow",
}


def _stage(command: str, params: dict, *, local: bool, no_wait: bool, site: Optional[Path],
           as_json: bool = False, bars: bool = False, note: Optional[str] = None):
    """Run a stage: a run of its deployment, followed to its end (its result returned, or its
    outcome raised as a DRError with that outcome's exit code); --local runs its flow here
    (`note` is said first), once the site config and the names given are checked."""
    from drbook.errors import InvalidParameters

    if local:
        if no_wait:
            raise InvalidParameters("--no-wait starts a run on the worker; it does not go with --local")
        site_path = _site_path(site)
        _check_local(site_path, params)
        from importlib import import_module

        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        module, name = FLOWS[command].rsplit(".", 1)
        flow_fn = getattr(import_module(module), name)
        if note:
            console.print(note)
        # Short CLI runs do not need heartbeats (1 s per run joining the thread; DESIGN.md §6).
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), \
                _bars() if bars else nullcontext():
            return flow_fn(**params, site_path=site_path)
    if site is not None:
        # The worker runs the flow with its own site (DRBOOK_SITE in the deployment's job
        # variables): a path on this machine means nothing on the worker's host, and a run must be
        # the same whoever starts it. Another site is another deployment (`drbook deploy`).
        raise InvalidParameters("--site chooses the site of a run in this process: add --local; a deployment run "
                                "uses its worker's site (DRBOOK_SITE in the deployment's job variables)")
    from drbook import runs

    ref = runs.start(DEPLOYMENTS[command], params)
    if no_wait:
        if as_json:
            emit_json(ref.public())
        else:
            sys.stdout.write(f"{ref.id}\n{ref.url or '(no UI URL: set PREFECT_UI_URL)'}\n")
        raise typer.Exit(0)
    console.print(f"started {ref.label} ({ref.id}): {ref.url or 'set PREFECT_UI_URL to see its page'}")
    return runs.follow(ref, console=console)


def _check_local(site_path: str, params: dict) -> None:
    """Before a run in this process exists (it starts by asking the Prefect server): the site
    config is valid and names the machines and the policy given (a ConfigError, exit 2)."""
    from drbook.config import load_site

    cfg = load_site(Path(site_path))
    if params.get("plan"):
        from drbook.plans.load import load_plan, plan_path

        load_plan(plan_path(params["plan"], cfg.plans_folder(Path(site_path))))  # its YAML and fields; the flow checks the rest
    for name in [*(params.get("machines") or []), *([params["machine"]] if params.get("machine") else [])]:
        cfg.machine(name)
    if params.get("policy"):
        cfg.policy(params["policy"])


@contextmanager
def _bars():
    """A rich progress bar for long work (initial copy, cycles, verification); none when stderr
    is not a terminal (rich would leave an empty line there, and a bar in a log is noise)."""
    if not console.is_terminal:
        yield
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from drbook.progress import cli_progress

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        token = cli_progress.set(bar)
        try:
            yield
        finally:
            cli_progress.reset(token)


def _site_path(site: Optional[Path]) -> str:
    from drbook.config import default_site_path

    path = site or default_site_path()
    if not Path(path).exists():
        from drbook.errors import ConfigError

        raise ConfigError(f"{path}: no site config (pass --site or set DRBOOK_SITE; the lab's: eval \"$(drbook-lab env)\")")
    return str(path)


@app.command("discover")
def discover_cmd(as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                 local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Inventory of vCenter and the site's physical servers; says what changed."""
    result = _stage("discover", {}, local=local, no_wait=no_wait, site=site, as_json=as_json)
    if as_json:
        emit_json(result)
        return
    from drbook.discovery import Inventory, render_inventory

    out.print(render_inventory(Inventory.model_validate(result["inventory"])))
    ch = result["changes"]
    console.print(f"changes since last discovery: {len(ch['new'])} new, {len(ch['removed'])} removed, {len(ch['changed'])} changed")


@app.command("push-mobility")
def push_mobility_cmd(
    machines: list[str] = typer.Argument(None),
    all_machines: bool = typer.Option(False, "--all", help="every machine of the site"),
    force: bool = typer.Option(False, help="reinstall even when the same version is there"),
    as_json: bool = typer.Option(False, "--json"),
    site: Optional[Path] = SiteOpt,
    local: bool = LocalOpt,
    no_wait: bool = NoWaitOpt,
) -> None:
    """Install or upgrade the mobility agent on machines (SSH for Linux, WinRM for Windows)."""
    if local:
        names = _machines_or_all(_site_path(site), machines, all_machines)
    elif all_machines:
        names = _machines_or_all(_worker_site_path("push-mobility"), machines, all_machines)
    else:
        names = _machines_or_all(None, machines, all_machines)
    rows = _stage("push-mobility", {"machines": names, "force": force}, local=local,
                  no_wait=no_wait, site=site, as_json=as_json)
    if as_json:
        emit_json(rows)
        return
    _table("mobility agent", rows, ["machine", "action", "version", "sha256", "seconds", "error"])
    if any(r.get("error") for r in rows):
        raise typer.Exit(1)


def _machines_or_all(site_path: str | None, machines: list[str] | None, all_machines: bool) -> list[str]:
    """The machines named, checked against the site config when it is here (a deployment run
    checks them on the worker: its first step fails naming an unknown machine)."""
    from drbook.config import load_site

    if not all_machines and not machines:
        raise typer.BadParameter("name machines or pass --all")
    if site_path is None:
        return list(machines or [])
    cfg = load_site(Path(site_path))
    if all_machines:
        return [m.name for m in cfg.machines]
    for m in machines or []:
        cfg.machine(m)
    return list(machines or [])


def _worker_site_path(command: str) -> str:
    """The worker's site config (DRBOOK_SITE of the deployment), when this machine can read it:
    `--all` names the worker's machines."""
    from drbook.errors import InvalidParameters
    from drbook.runs import read_deployment, worker_site

    path = worker_site(read_deployment(DEPLOYMENTS[command]))
    if not path or not Path(path).exists():
        raise InvalidParameters(f"--all names the machines of the worker's site config ({path or 'unknown'}), "
                                "which this machine cannot read: name the machines")
    return path


@app.command("items")
def items_cmd(as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt) -> None:
    """Protected items and their state."""
    from drbook.site import open_site

    items = open_site(_site_path(site)).vault.items()
    rows = [
        {"name": i.name, "state": i.state.value, "group": i.group, "policy": i.policy.name, "agent": i.agent_version,
         "last_point": i.last_point_id, "last_point_time": i.last_point_time.isoformat() if i.last_point_time else None,
         "rpo_breached": i.rpo_breached, "disks": len(i.disks)}
        for i in items
    ]
    if as_json:
        emit_json(rows)
    else:
        _table("protected items", rows, ["name", "state", "group", "agent", "last_point_time", "rpo_breached", "disks"])


@app.command("protect")
def protect_cmd(
    machines: list[str],
    policy: str = typer.Option("default", help="policy name from the site config"),
    group: Optional[str] = typer.Option(None, help="replication group (members share recovery points)"),
    site: Optional[Path] = SiteOpt,
    local: bool = LocalOpt,
    no_wait: bool = NoWaitOpt,
) -> None:
    """Push the agent if needed, enable replication, run the initial copy."""
    result = _stage("protect", {"machines": machines, "policy": policy, "group": group},
                    local=local, no_wait=no_wait, site=site, bars=True)
    _table("protected", result, ["item", "state", "point", "consistency", "bytes_sent", "seconds"])


@app.command("replicate")
def replicate_cmd(
    machines: list[str] = typer.Argument(None),
    group: Optional[str] = typer.Option(None, help="one replication group"),
    all_items: bool = typer.Option(False, "--all", help="every protected item"),
    once: bool = typer.Option(True, "--once", help="run one cycle (the schedule lives in deployments/)"),
    app_consistent: bool = typer.Option(False, "--app", help="an app-consistent cycle (quiesce hooks)"),
    site: Optional[Path] = SiteOpt,
    local: bool = LocalOpt,
    no_wait: bool = NoWaitOpt,
) -> None:
    """Run one replication cycle."""
    if not (machines or group or all_items):
        raise typer.BadParameter("name machines, --group or --all")

    result = _stage("replicate",
                    {"machines": machines or [], "group": group, "all_items": all_items,
                     "want": "app" if app_consistent else "crash"},
                    local=local, no_wait=no_wait, site=site, bars=True)
    _table("replication cycle", result, ["item", "point", "consistency", "group", "blocks_changed", "bytes_sent", "resync", "seconds"])


@app.command("points")
def points_cmd(machine: str, as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt) -> None:
    """Recovery points of a machine, newest first."""
    from drbook.site import open_site

    s = open_site(_site_path(site))
    s.machine(machine)  # refused before the vault (Azure Storage) is asked
    from drbook.tasks.replication import points_of

    s.vault.item(machine)
    points = [p.public() for p in points_of(s, machine)]
    if as_json:
        emit_json(points)
        return
    _table(f"recovery points of {machine}", [
        {"id": p["id"], "time": p["time"], "consistency": p["consistency"], "group": p["group"],
         "disks": ", ".join(f"{d['disk']} ({d['size_bytes'] // 2**20} MiB)" for d in p["disks"])} for p in points
    ], ["id", "time", "consistency", "group", "disks"])


@app.command("verify")
def verify_cmd(machine: str, point: str = typer.Option(..., "--point"), site: Optional[Path] = SiteOpt,
               local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Re-read a point's snapshots and check every block against its manifest."""
    _point(point, ids_only=True)

    report = _stage("verify", {"machine": machine, "point": point}, local=local, no_wait=no_wait,
                    site=site, bars=True)
    out.print(report)
    if not report.get("ok"):
        raise typer.Exit(7)


@app.command("retention")
def retention_cmd(dry_run: bool = typer.Option(False, "--dry-run", help="say what would be purged"),
                  site: Optional[Path] = SiteOpt, local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Purge recovery points the policy no longer keeps."""
    for r in _stage("retention", {"dry_run": dry_run}, local=local, no_wait=no_wait, site=site):
        for line in r["actions"]:
            out.print(line)
        verb = "would keep" if dry_run else "kept"
        out.print(f"{r['item']}: {verb} {len(r['kept'])} points, {'would purge' if dry_run else 'purged'} {len(r['purged'])}")


@app.command("prepare-azure")
def prepare_azure_cmd(dry_run: bool = typer.Option(False, "--dry-run"), as_json: bool = typer.Option(False, "--json"),
                      site: Optional[Path] = SiteOpt, local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Create the recovery site (idempotent); --dry-run lists what it would create."""
    result = _stage("prepare-azure", {"dry_run": dry_run}, local=local, no_wait=no_wait,
                    site=site, as_json=as_json)
    if as_json:
        emit_json(result)
        return
    verb = {"create": "Would create" if dry_run else "Created", "update": "Would update" if dry_run else "Updated",
            "unchanged": "Unchanged"}
    for s in result["steps"]:
        out.print(f"{verb[s['action']]}: {s['kind']} {s['name']} {s['detail']}".rstrip())
    if not result["changed"]:
        out.print("Nothing to change: the recovery site is as configured.")


@app.command("test-failover")
def test_failover_cmd(machines: list[str], point: str = typer.Option("latest-processed", "--point"),
                      as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                      local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Drill: bring machines up from a point in the isolated test network, verify, report."""
    _point(point)

    result = _stage("test-failover", {"machines": machines, "point": point}, local=local, no_wait=no_wait,
                    site=site, as_json=as_json)
    if as_json:
        emit_json({"drill_id": result["drill_id"], "vms": result["vms"], "report": result["report"],
                   "results": result["results"]})
        return
    result_table(f"drill {result['drill_id']}", result["results"])
    console.print(f"report: {result['report']}")


@app.command("test-failover-cleanup")
def test_failover_cleanup_cmd(drill_id: str, site: Optional[Path] = SiteOpt, local: bool = LocalOpt,
                              no_wait: bool = NoWaitOpt) -> None:
    """Delete everything a drill made, and prove nothing is left."""
    from drbook.failover.drills import require_drill_id

    require_drill_id(drill_id)

    result = _stage("test-failover-cleanup", {"drill_id": drill_id}, local=local,
                    no_wait=no_wait, site=site)
    out.print(f"{drill_id}: deleted {len(result['deleted'])} resources and resource group "
              f"{result['resource_group_deleted']}; nothing tagged with the drill is left")


@app.command("failover")
def failover_cmd(machines: list[str], point: str = typer.Option("latest", "--point"),
                 planned: bool = typer.Option(False, "--planned", help="shut the source down first: zero data loss"),
                 approval_timeout: int = typer.Option(3600, min=1, help="seconds to wait for approval"),
                 as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                 local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Fail over to Azure, after a human approves (`drbook approve RUN_ID` or the Prefect UI)."""
    _point(point)

    # A deployment run says so itself when it pauses, with its run id.
    result = _stage("failover",
                    {"machines": machines, "point": point, "planned": planned, "approval_timeout": approval_timeout},
                    local=local, no_wait=no_wait, site=site, as_json=as_json,
                    note="waiting for approval: see `drbook approvals`, answer with `drbook approve RUN_ID`")
    if as_json:
        emit_json({"run_id": result["run_id"], "vms": result["vms"], "report": result["report"],
                   "results": result["results"]})
        return
    result_table(f"failover {result['run_id']}", result["results"])


@app.command("approvals")
def approvals_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Flow runs waiting for a human's approval."""
    from drbook.approvals import waiting_approvals

    rows = waiting_approvals()
    if as_json:
        emit_json(rows)
    else:
        _table("waiting for approval", rows, ["run_id", "flow", "name", "plan", "machines", "planned", "since"])


@app.command("approve")
def approve_cmd(run_id: str, reject: bool = typer.Option(False, "--reject"),
                comment: str = typer.Option("", "--comment"), approver: Optional[str] = typer.Option(None),
                point: Optional[str] = typer.Option(None, "--point", help="change the recovery point choice")) -> None:
    """Answer a waiting approval (approve, or --reject)."""
    from drbook.failover.points import point_choice
    from drbook.runs import require_run_id

    require_run_id(run_id)  # before the Prefect server is asked
    if point:
        _point(point_choice(point))  # a keyword, an id, or a form's label (which starts with the id)
    from drbook.approvals import answer

    answer(run_id, approve=not reject, comment=comment, approver=approver, point=point)
    console.print(f"{'rejected' if reject else 'approved'}: {run_id}")


@app.command("commit")
def commit_cmd(machines: list[str], dry_run: bool = typer.Option(False, "--dry-run", help="say what would be deleted"),
               force: bool = typer.Option(False, "--force", help="commit a failback whose verification did not pass"),
               reason: Optional[str] = typer.Option(None, "--reason", help="why --force (goes into the audit log)"),
               site: Optional[Path] = SiteOpt, local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """End a failover (delete the other recovery points; state committed) or a failback (delete
    the failover's Azure VMs, NICs, disks and snapshots)."""
    from drbook.errors import InvalidParameters

    if force and not (reason or "").strip():
        raise InvalidParameters("--force needs --reason TEXT: the audit log records why a failback was committed unverified")
    if reason and not force:
        raise InvalidParameters("--reason goes with --force")
    committed = _stage("commit", {"machines": machines, "dry_run": dry_run, "force_reason": reason if force else None},
                       local=local, no_wait=no_wait, site=site)
    for item, r in committed.items():
        for line in r["actions"]:
            out.print(line)
        if r.get("failback"):
            verb = "would commit" if dry_run else "committed"
            out.print(f"{item}: failback {verb} ({len(r['actions'])} Azure resources"
                      f"{'' if r.get('verified') else ', forced: ' + str(r.get('forced'))})")
        elif dry_run:
            out.print(f"{item}: would commit (keep point {r['kept_point']}, delete {len(r['deleted_points'])} others)")
        else:
            out.print(f"{item}: committed (kept point {r['kept_point']}, deleted {len(r['deleted_points'])} others)")


@app.command("reprotect")
def reprotect_cmd(machines: list[str],
                  target: Optional[str] = typer.Option(None, "--target", help="site config machine to write (another "
                                                       "VM or a physical server); default: the machine itself"),
                  as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                  local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Replicate failed-over machines back on-premises (changed blocks only) while they run in
    Azure; run again for the next reverse cycle."""
    rows = _stage("reprotect", {"machines": machines, "target": target}, local=local, no_wait=no_wait, site=site,
                  bars=True)
    if as_json:
        emit_json(rows)
        return
    _table("reverse cycle", rows, ["item", "target", "target_kind", "cycle", "bytes_changed", "bytes_moved",
                                   "seconds", "lag_seconds"])


@app.command("failback")
def failback_cmd(machines: list[str], approval_timeout: int = typer.Option(3600, min=1, help="seconds to wait for approval"),
                 as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                 local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Fail back home after a human approves (`drbook approve RUN_ID` or the Prefect UI)."""
    rows = _stage("failback", {"machines": machines, "approval_timeout": approval_timeout}, local=local,
                  no_wait=no_wait, site=site, as_json=as_json,
                  note="waiting for approval: see `drbook approvals`, answer with `drbook approve RUN_ID`")
    if as_json:
        emit_json(rows)
        return
    _table("failback", rows, ["item", "target", "final_bytes_moved", "bytes_verified", "verified", "target_state"])


@app.command("reconcile")
def reconcile_cmd(dry_run: bool = typer.Option(False, "--dry-run"), site: Optional[Path] = SiteOpt,
                  local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Remove what crashed runs left in Azure (found by their tags)."""
    r = _stage("reconcile", {"dry_run": dry_run}, local=local, no_wait=no_wait, site=site)
    verb = "would remove" if dry_run else "removed"
    for rid, ids in r["removed"].items():
        out.print(f"run {rid}: {verb} {len(ids)} resources")
    if not r["orphan_runs"]:
        out.print(f"nothing left behind ({r['runs_seen']} runs with resources, all live or completed)")


@app.command("deploy")
def deploy_cmd(
    prefect_file: Optional[Path] = typer.Option(None, "--prefect-file", exists=True, dir_okay=False,
                                                help="default: the prefect.yaml installed with drbook"),
    as_json: bool = typer.Option(False, "--json"),
    site: Optional[Path] = SiteOpt,
) -> None:
    """Register every stage's deployment on the Prefect server (PREFECT_API_URL), for the process
    server to run: the work pool, the deployments, the RPO alerts. Idempotent."""
    from drbook.deploy import deploy

    result = deploy(Path(_site_path(site)), prefect_file, say=console.print)
    if as_json:
        emit_json(result.model_dump())
        return
    out.print(f"{len(result.deployments)} deployments on work pool {result.pool}"
              f"{' (created)' if result.pool_created else ''}: {', '.join(result.deployments)}")
    if result.alerts is not None:
        out.print(f"RPO alerts: {', '.join(result.alerts) or 'none'}")
    out.print(f"process servers: {', '.join(result.process_servers)}")
    out.print("on each process server's host: drbook process-server start NAME (a Prefect worker of its queues)")


# -- process servers (scale-out) ----------------------------------------------------------------
ps_app = typer.Typer(no_args_is_help=True, help="Process servers: Prefect workers that run replication, each "
                                                "serving its own machines (drbook.scaleout).")
app.add_typer(ps_app, name="process-server")


@ps_app.command("list")
def ps_list_cmd(as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt) -> None:
    """Each process server: online or lost (its queue polled or not), the machines whose cycles it
    runs, those it took over and those of its own run elsewhere."""
    from drbook.models import utcnow
    from drbook.scaleout.queues import read_queues
    from drbook.scaleout.status import server_rows
    from drbook.site import open_site
    from drbook.tasks.scaleout import read_assignment

    s = open_site(_site_path(site))
    queues = read_queues()  # the Prefect server first: without it nothing here is known
    rows = [r.model_dump() for r in server_rows(s.cfg, read_assignment(s), queues, utcnow())]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["last poll"] = "never" if r["last_polled_s"] is None else f"{r['last_polled_s']:.0f} s ago"
        r["machines"] = f"{len(r['items'])}: {' '.join(r['items'])}" if r["items"] else "0"
        for k in ("taken_over", "away"):
            r[k] = " ".join(r[k])
    _table("process servers", rows, ["name", "queue", "address", "status", "last poll", "max_cycles", "machines",
                                     "taken_over", "away"])


@ps_app.command("rebalance")
def ps_rebalance_cmd(dry_run: bool = typer.Option(False, "--dry-run", help="say what would move"),
                     as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt) -> None:
    """Spread the machines again over the process servers online, by load (disks and the last
    day's churn) and weight; pins stay. The next cycles run where they were moved."""
    from drbook.models import utcnow
    from drbook.site import open_site
    from drbook.tasks.scaleout import dispatcher_lease, place

    s = open_site(_site_path(site))
    with dispatcher_lease(s, "rebalance"):
        decision = place(s, s.vault.items(), utcnow(), rebalance=True, dry_run=dry_run)
    moves = [m.model_dump() for m in decision.moves]
    if as_json:
        emit_json({"dry_run": dry_run, "moves": moves, "lost": decision.lost()})
        return
    _table("would move" if dry_run else "moved", moves, ["unit", "from_server", "to_server"])
    if decision.lost():
        out.print(f"lost (left out): {', '.join(decision.lost())}")


@ps_app.command("start")
def ps_start_cmd(name: str, healthcheck: bool = typer.Option(False, "--with-healthcheck",
                                                             help="serve the worker's /health (Prefect's webserver)"),
                 site: Optional[Path] = SiteOpt) -> None:
    """Run this host's process server NAME: a Prefect worker of drbook's pool polling its queue
    (and `default` when it runs the stages), with DRBOOK_PROCESS_SERVER=NAME for every run it
    starts. Replaces this process with the worker."""
    from drbook.config import load_site
    from drbook.deploy import ensure_pool
    from drbook.scaleout.queues import ensure_queues
    from drbook.scaleout.worker import process_server, worker_argv, worker_env

    site_path = _site_path(site)
    cfg = load_site(Path(site_path))
    ps = process_server(cfg, name)
    ensure_pool()
    ensure_queues(cfg.process_servers)
    argv = worker_argv(ps, healthcheck=healthcheck)
    console.print(f"process server {ps.name}: {' '.join(argv[1:])}")
    os.execve(argv[0], argv, {**os.environ, **worker_env(ps), "DRBOOK_SITE": str(Path(site_path).resolve())})


def _point(choice: str, *, ids_only: bool = False) -> None:
    from drbook.failover.points import require_point_choice

    require_point_choice(choice, ids_only=ids_only)


# -- recovery plans ---------------------------------------------------------------------------
plan_app = typer.Typer(no_args_is_help=True, help="Recovery plans: ordered groups, scripts, manual steps (plans/*.yaml).")
app.add_typer(plan_app, name="plan")
DirectionOpt = typer.Option("test-failover", "--direction", help="test-failover, failover or failback")


@plan_app.command("show")
def plan_show_cmd(plan: str, direction: str = DirectionOpt, as_json: bool = typer.Option(False, "--json"),
                  site: Optional[Path] = SiteOpt) -> None:
    """The plan's steps in order and what each would do: a dry run that changes nothing."""
    from drbook.errors import InvalidParameters

    if direction not in ("test-failover", "failover", "failback"):
        raise InvalidParameters(f"--direction {direction!r}: give test-failover, failover or failback")
    from drbook.plans.load import plan_path
    from drbook.plans.validate import require_valid
    from drbook.plans.steps import dry_run
    from drbook.site import open_site

    s = open_site(_site_path(site))
    loaded = require_valid(plan_path(plan, s.cfg.plans_folder(s.path)), items={i.name: i for i in s.vault.items()})
    rows = dry_run(loaded.plan, direction)  # type: ignore[arg-type]
    if as_json:
        emit_json({"plan": loaded.plan.name, "file": str(loaded.path), "direction": direction,
                   "point": loaded.plan.point, "steps": rows})
        return
    _table(f"plan {loaded.plan.name} ({direction}), {loaded.path}", rows, ["step", "group", "phase", "critical", "what"])


@plan_app.command("list")
def plan_list_cmd(site: Optional[Path] = SiteOpt) -> None:
    """The plans in the site's plans folder."""
    from drbook.config import load_site
    from drbook.plans.load import list_plans

    path = Path(_site_path(site))
    for p in list_plans(load_site(path).plans_folder(path)):
        out.print(f"{p.stem}\t{p}")


def _plan_result(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    _table(f"plan {result['plan']} ({result['direction']}): {result['status']}", [
        {"group": m["group"], "machine": m["machine"], "status": m["status"], "point": m["point_id"],
         "RPO": "" if m["rpo_seconds"] is None else f"{m['rpo_seconds']:.1f} s",
         "RTO": "" if m["rto_seconds"] is None else f"{m['rto_seconds']:.1f} s",
         "verified": "yes" if m["verified"] else "no", "ip": m["ip"], "error": m["error"]} for m in result["machines"]
    ], ["group", "machine", "status", "point", "RPO", "RTO", "verified", "ip", "error"])
    if result.get("drill_id"):
        console.print(f"drill {result['drill_id']} (remove it: drbook test-failover-cleanup {result['drill_id']})")
    console.print(f"report: {result['report']}")


@plan_app.command("test-failover")
def plan_test_failover_cmd(plan: str, point: Optional[str] = typer.Option(None, "--point", help="overrides the plan's"),
                           as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                           local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Drill a plan: its groups in order into the isolated test network, verified, reported."""
    if point:
        _point(point)
    _plan_result(_stage("plan-test-failover", {"plan": plan, "point": point}, local=local, no_wait=no_wait, site=site,
                        as_json=as_json), as_json)


@plan_app.command("failover")
def plan_failover_cmd(plan: str, point: Optional[str] = typer.Option(None, "--point", help="overrides the plan's"),
                      planned: bool = typer.Option(False, "--planned", help="shut the sources down first: zero data loss"),
                      approval_timeout: int = typer.Option(3600, min=1, help="seconds to wait for approval"),
                      as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                      local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Fail a plan over to Azure after a human approves; its manual steps wait for `drbook approve`."""
    if point:
        _point(point)
    _plan_result(_stage("plan-failover", {"plan": plan, "point": point, "planned": planned,
                                          "approval_timeout": approval_timeout},
                        local=local, no_wait=no_wait, site=site, as_json=as_json,
                        note="waiting for approval: see `drbook approvals`, answer with `drbook approve RUN_ID`"), as_json)


@plan_app.command("failback")
def plan_failback_cmd(plan: str, approval_timeout: int = typer.Option(3600, min=1, help="seconds to wait for approval"),
                      as_json: bool = typer.Option(False, "--json"), site: Optional[Path] = SiteOpt,
                      local: bool = LocalOpt, no_wait: bool = NoWaitOpt) -> None:
    """Fail a plan back on-premises after a human approves (groups in reverse order unless the
    plan says forward); every machine must be reprotected (`drbook reprotect`)."""
    _plan_result(_stage("plan-failback", {"plan": plan, "approval_timeout": approval_timeout}, local=local,
                        no_wait=no_wait, site=site, as_json=as_json,
                        note="waiting for approval: see `drbook approvals`, answer with `drbook approve RUN_ID`"), as_json)


@app.command("report")
def report_cmd(run_id: str, open_it: bool = typer.Option(False, "--open", help="open it in a browser"),
               site: Optional[Path] = SiteOpt) -> None:
    """A plan run's report (HTML with its charts), drawn again from its record; prints its path."""
    from drbook.plans.record import PlanRunRecord
    from drbook.plans.report import write_html
    from drbook.runs import require_run_id
    from drbook.site import open_site
    from drbook.vault import plan_run_key

    require_run_id(run_id)
    s = open_site(_site_path(site))
    record = s.vault.get(plan_run_key(run_id), PlanRunRecord)
    points = {m.machine: s.engine.points.points(m.machine) for m in record.machines}
    path = write_html(s.path.parent / "reports" / f"plan-{record.plan}-{run_id}.html", record, points=points)
    out.print(str(path))
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


def _table(title: str, rows: list[dict], columns: list[str]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    out.print(table)


def result_table(title: str, results: list[dict]) -> None:
    _table(title, [
        {"machine": r["machine"], "vm": r["vm_name"], "ip": r["ip"], "point": r["point_id"],
         "consistency": r["consistency"], "RPO": f"{r['rpo_seconds']:.1f} s", "RTO": f"{r['rto_seconds']:.1f} s",
         "verified": f"{'yes' if r['verified'] else 'NO'} ({r['bytes_verified'] / 2**20:.0f} MiB)"}
        for r in results
    ], ["machine", "vm", "ip", "point", "consistency", "RPO", "RTO", "verified"])


def run_cli(command: typer.Typer, errors: Console, args: list[str] | None = None) -> None:
    """Run a Typer app with drbook's exit-code contract: one line on stderr and a documented
    code. A DRError exits with its exit_code; a usage error 2; an unreachable Prefect API 1;
    Ctrl-C 130. The lab's CLI uses it too.

    Typer bundles its own click (typer._click): its exceptions are not the `click` package's,
    and with standalone_mode=False a typer.Exit comes back as the call's return value.
    Prefect and httpx are not imported here (seconds at every start): an exception of theirs
    can only come from a command that imported them."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    try:
        code = command(args=args, standalone_mode=False)
    except DRError as exc:
        errors.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except NoArgsIsHelpError as exc:  # the help is already on stdout; stderr says what was wrong
        path = exc.ctx.command_path if exc.ctx is not None else "the command"
        errors.print(f"error: Missing command (see: {path} --help)", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        errors.print(f"error: {exc.format_message()}{hint}", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except ClickException as exc:
        errors.print(f"error: {exc.format_message()}", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except (typer.Abort, KeyboardInterrupt):
        raise SystemExit(130) from None
    except Exception as exc:
        if _is(exc, "prefect.exceptions", "ParameterTypeError"):  # a flow refused its parameters before running
            errors.print(f"[red]error:[/red] invalid parameters: {' '.join(str(exc).split())}", soft_wrap=True)
            raise SystemExit(2) from None
        # The Prefect API (the only HTTP drbook's CLI speaks outside adapters); a flow run in
        # this process (--local) meets it as Prefect's RuntimeError("Failed to reach API at ...").
        http = exc if _is(exc, "httpx", "HTTPError") else None
        if isinstance(exc, RuntimeError) and str(exc).startswith("Failed to reach API"):
            http = exc.__cause__ if _is(exc.__cause__, "httpx", "HTTPError") else None
        if http is not None:
            errors.print(f"[red]error:[/red] cannot reach the Prefect API at {_prefect_url(http)}: "
                         f"{type(http).__name__}: {' '.join(str(http).split()) or 'no answer'}", soft_wrap=True)
            raise SystemExit(1) from None
        # a bug, or a library error an adapter did not translate
        if os.environ.get("DRBOOK_DEBUG"):
            raise
        errors.print(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
                     "(DRBOOK_DEBUG=1 shows the traceback)", soft_wrap=True, markup=False, highlight=False)
        raise SystemExit(1) from None
    if isinstance(code, int) and not isinstance(code, bool):
        raise SystemExit(code)


def _is(exc: BaseException | None, module: str, name: str) -> bool:
    """isinstance(exc, module.name), without importing the module: if nothing imported it, exc
    cannot be one."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def _prefect_url(http: BaseException) -> str:
    """The Prefect API the failed request went to: the configured one, or the one a caller
    chose for itself (`drbook-lab up` talks to the lab's server with no PREFECT_API_URL set)."""
    from prefect.settings import get_current_settings

    configured = str(get_current_settings().api.url or "")
    try:
        asked = str(http.request.url)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for an error without its request
        asked = ""
    if asked and not (configured and asked.startswith(configured)):
        return asked.split("/api/", 1)[0] + "/api" if "/api/" in asked else asked
    return configured or "(no PREFECT_API_URL)"


def main() -> None:
    run_cli(app, console)


if __name__ == "__main__":
    main()
