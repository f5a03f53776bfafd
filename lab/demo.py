"""`make demo`: the whole first-milestone lifecycle on the lab, stage by stage.

lab up -> discover -> push the agent -> protect (app01+app02 as a replication group, db01
alone) with the workload writers running -> replication cycles -> points, verify ->
prepare-azure (twice: the second changes nothing) -> the recovery plan plans/lab.yaml: its
steps (a dry run), a plan drill (db01, then app01 and app02 with a post script) with its
report and charts -> drill cleanup -> a planned plan failover approved with `drbook approve`,
its manual step (the DNS change) answered with `drbook approve` -> commit.
It ends with a table of each stage: time, RPO, RTO and bytes verified, and the Prefect UI
page of every run it started.

Every stage command is a run of that stage's deployment on the lab's process-server worker
(what `drbook-lab up` starts and registers), followed by the CLI: the same run the UI would
start. When the lab has no deployments (an older lab), the demo says so and runs the stages
in its own process (`--local`).

The demo starts from an empty recovery site each time (it resets the lab's ARM emulator
and the drbook containers in Azurite), so it can run again and again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

console = Console()
PROTECTED = ("app01", "app02", "db01")  # what the demo protects (the lab's spares, spare01 and phys01, stay out)
STAGES: list[dict] = []
RUNS: list[tuple[str, str]] = []  # (what, UI URL) of every run the demo started
# Commands that start a run of a deployment (the others read the vault or answer approvals).
STAGE_COMMANDS = {"discover", "push-mobility", "protect", "replicate", "verify", "retention", "prepare-azure",
                  "test-failover", "test-failover-cleanup", "failover", "commit", "reconcile", "reprotect", "failback"}
MODE: list[str] = []  # ["--local"] when the lab has no deployments


@contextmanager
def stage(name: str, **extra):
    console.rule(f"[bold]{name}")
    t0 = time.monotonic()
    row = {"stage": name, "seconds": None, "rpo": "", "rto": "", "verified": "", **extra}
    STAGES.append(row)
    yield row
    row["seconds"] = time.monotonic() - t0


def drbook(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI, as a person would (JSON answers are read, not shown)."""
    if args and (args[0] in STAGE_COMMANDS or (args[0] == "plan" and args[1] != "show")):
        args = (*args, *MODE)
    console.print(f"[dim]$ drbook {' '.join(args)}[/dim]")
    proc = subprocess.run([sys.executable, "-m", "drbook.cli", *args], text=True, capture_output=True)
    for line in proc.stderr.splitlines():  # "started <deployment> run <name> (<id>): <UI URL>"
        if line.startswith("started ") and "/runs/flow-run/" in line:
            console.print(f"[cyan]{line}[/cyan]", soft_wrap=True, highlight=False)
            RUNS.append((f"drbook {' '.join(args)}", line.rsplit(": ", 1)[-1]))
    if "--json" not in args:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        if check:
            raise SystemExit(f"demo: `drbook {' '.join(args)}` failed ({proc.returncode})")
    return proc


def _fresh_recovery_site(lab) -> None:
    """Forget what an earlier demo left in the lab's Azure (ARM state, drbook containers)."""
    from lab.arm.control import ArmLabControl

    ArmLabControl(lab.status()["arm"]["base_url"], lab.certs.ca_cert).reset()
    from drbook.adapters.blobstore import blob_service_from

    st = lab.status()
    svc = blob_service_from(st["azurite"]["blob_endpoint"], st["azurite"]["account"], st["azurite"]["key"], st["ca_bundle"])
    for c in svc.list_containers():
        if c.name.startswith("drbook-"):
            svc.delete_container(c.name)


def main() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lab.control import Lab

    lab = Lab()
    # drbook in this process (the mode check, the list of waiting approvals) must reach the
    # lab's Prefect too: Prefect reads its settings when first imported, so setting the
    # environment later (below, for the CLI's subprocesses) would leave this process on a
    # temporary server of its own.
    with temporary_settings(updates={PREFECT_API_URL: lab.prefect_api_url}):
        _demo(lab)


def _demo(lab) -> None:  # noqa: ANN001 - lab.control.Lab
    import json

    from lab.cli import print_status
    from lab.workload_control import start_workload, writer

    with stage("lab up"):
        status = lab.up()
        # What `eval "$(drbook-lab env)"` does in a shell: drbook finds the site and Prefect.
        os.environ.update(lab.drbook_env())
        for m in status["machines"]:
            writer(lab, m["name"]).stop()
        _fresh_recovery_site(lab)
        print_status(lab.status())
        console.print(f"Prefect UI: {status['prefect']['ui_url']}  (flow runs, artifacts and approvals of this demo)")
        _choose_mode()

    with stage("discover"):
        drbook("discover")

    with stage("push-mobility"):
        drbook("push-mobility", *PROTECTED)  # not --all: the spares would be registered as items too

    with stage("protect (initial copy)"):
        drbook("protect", "app01", "app02", "--group", "app")
        drbook("protect", "db01")
        drbook("items")

    with stage("replicate with the workload running"):
        for m in PROTECTED:  # the lab's spares (failback targets) run no workload
            console.print(start_workload(lab, m, rate=2, seconds=600, seed=7, background=True))
        for _ in range(2):
            time.sleep(2)
            # The worker's scheduled replication may be cycling an item right now: never two
            # cycles at once, so this one is refused (exit 6, lease held) and the point comes anyway.
            if drbook("replicate", "--all", "--once", check=False).returncode not in (0, 6):
                raise SystemExit("demo: `drbook replicate --all --once` failed")
        drbook("points", "db01")

    with stage("scheduled replication, no command typed"):
        _wait_for_scheduled_point("db01", after=json.loads(drbook("points", "db01", "--json").stdout)[0]["time"])

    points = json.loads(drbook("points", "db01", "--json").stdout)
    with stage("verify a point") as row:
        drbook("verify", "db01", "--point", points[0]["id"])
        row["verified"] = f"{sum(d['size_bytes'] for d in points[0]['disks']) / 2**20:.0f} MiB"

    with stage("prepare-azure"):
        drbook("prepare-azure", "--dry-run")
        drbook("prepare-azure")
        drbook("prepare-azure")

    _guest_answers(lab)
    with stage("recovery plan lab: its steps (a dry run)"):
        drbook("plan", "show", "lab")
    with stage("plan drill (database, then applications)") as row:
        drill = json.loads(drbook("plan", "test-failover", "lab", "--json").stdout)
        _fill(row, drill["machines"])
        plan_table(drill)
        console.print(f"plan report (timeline and RPO charts): {drill['report']}")
    with stage("drill cleanup"):
        drbook("test-failover-cleanup", drill["drill_id"])

    with stage("planned plan failover, approved; its manual step answered") as row:
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            proc=drbook("plan", "failover", "lab", "--planned", "--json", "--approval-timeout", "300", check=False)))
        runner.start()
        run_id, since = _wait_for_approval("plan-failover")
        from drbook.runs import url_of

        console.print(f"[cyan]the failover waits for approval; the UI shows it paused: {url_of(run_id)}[/cyan]",
                      soft_wrap=True, highlight=False)
        drbook("approvals")
        drbook("approve", run_id, "--comment", "demo: planned failover of the lab plan")
        again, _ = _wait_for_approval("plan-failover", after=since)
        console.print("[cyan]the plan waits for its manual step (the DNS change) after the application group[/cyan]")
        drbook("approve", again, "--comment", "demo: app.example.internal points at the recovered servers")
        runner.join()
        if result["proc"].returncode != 0:  # its error line is printed above
            raise SystemExit(f"demo: the plan failover failed (exit {result['proc'].returncode})")
        failover = json.loads(result["proc"].stdout)
        _fill(row, failover["machines"])
        plan_table(failover)
        console.print(f"plan report (timeline and RPO charts): {failover['report']}")

    with stage("commit"):
        drbook("commit", "db01", "app01", "app02")
        drbook("items")

    _round_trip(lab, "db01")

    for m in status["machines"]:
        writer(lab, m["name"]).stop()
    summary = Table(title="drbook demo: the lifecycle on the lab")
    for col in ("stage", "time", "RPO", "RTO", "bytes verified"):
        summary.add_column(col)
    for r in STAGES:
        summary.add_row(r["stage"], f"{r['seconds']:.1f} s", r["rpo"], r["rto"], r["verified"])
    console.print(summary)
    if RUNS:
        runs_table = Table(title="the runs of this demo in the Prefect UI")
        runs_table.add_column("command")
        runs_table.add_column("run")
        for what, url in RUNS:
            runs_table.add_row(what, url)
        console.print(runs_table, soft_wrap=True)


def _round_trip(lab, machine: str) -> None:  # noqa: ANN001 - lab.control.Lab
    """Home again: the guest writes in Azure, reprotect (changed blocks only) while it runs,
    a failback approved with `drbook approve`, its commit, and protection again with a delta."""
    import json

    from drbook.site import open_site
    from lab.workload_control import azure_control_dir, start_azure_workload, stop_writer

    site = open_site(os.environ["DRBOOK_SITE"])
    ref = site.vault.item(machine).azure_vms[0]
    vm_id = (f"/subscriptions/{site.cfg.azure.subscription_id}/resourceGroups/{ref.resource_group}"
             f"/providers/Microsoft.Compute/virtualMachines/{ref.vm_name}")
    with stage(f"guest writes in Azure ({machine})"):
        message, _ = start_azure_workload(lab, machine, vm_id, rate=0.25, seconds=900, seed=9)
        console.print(message)
        time.sleep(3)
    with stage("reprotect (changed blocks only, the VM running)") as row:
        cycles = [json.loads(drbook("reprotect", machine, "--json").stdout)[0] for _ in range(2)]
        for c in cycles:
            console.print(f"reverse cycle {c['cycle']}: {c['bytes_changed'] / 2**20:.2f} MiB changed in Azure, "
                          f"{c['bytes_moved'] / 2**20:.2f} MiB moved back, {c['seconds']:.1f} s")
        row["verified"] = f"{sum(c['bytes_moved'] for c in cycles) / 2**20:.1f} MiB moved"
    with stage("failback, approved") as row:
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            proc=drbook("failback", machine, "--json", "--approval-timeout", "300", check=False)))
        runner.start()
        run_id, _ = _wait_for_approval("failback")
        drbook("approve", run_id, "--comment", "demo: the data center is back")
        runner.join()
        console.print(stop_writer(azure_control_dir(lab, machine)))
        if result["proc"].returncode != 0:
            raise SystemExit(f"demo: the failback failed (exit {result['proc'].returncode})")
        [back] = json.loads(result["proc"].stdout)
        console.print(f"{machine}: {back['target_state']}; every disk equals the Azure disk at shutdown "
                      f"({back['bytes_verified'] / 2**20:.0f} MiB verified); {back['health']}")
        row["verified"] = f"{back['bytes_verified'] / 2**20:.0f} MiB"
    with stage("commit the failback"):
        drbook("commit", machine)
    with stage("protect again (a delta against the replica)") as row:
        drbook("protect", machine)
        drbook("items")
        newest = max(site.engine.points.points(machine), key=lambda p: p.time)
        sent = sum(d.bytes_sent for d in newest.disks)
        size = sum(d.size_bytes for d in newest.disks)
        console.print(f"{machine}: the first cycle after failback sent {sent / 2**20:.2f} MiB of {size / 2**20:.0f} MiB")
        row["verified"] = f"{sent / 2**20:.2f} MiB sent"


def _choose_mode() -> None:
    """Deployment runs on the lab's worker when the lab registered the deployments; else --local."""
    from drbook.cli import DEPLOYMENTS
    from drbook.errors import DRError
    from drbook.runs import read_deployment

    try:
        for name in DEPLOYMENTS.values():
            read_deployment(name)
    except DRError as exc:
        MODE.append("--local")
        console.print(f"[yellow]the lab has no deployments ({exc}); the stages run in this process (--local)[/yellow]")
    else:
        console.print("every stage below is a run of its deployment on the lab's process-server worker")


def _wait_for_scheduled_point(item: str, after: str, timeout: float = 120) -> None:
    """A point the lab's worker made on its own: the continuous-replication deployment (every
    30 s) starts a cycle when the policy says one is due."""
    import datetime as dt

    from drbook.site import open_site

    site = open_site(os.environ["DRBOOK_SITE"])
    since = dt.datetime.fromisoformat(after.replace("Z", "+00:00"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newer = [p for p in site.engine.points.points(item) if p.time > since]
        if newer:
            console.print(f"the worker's scheduled replication made {newer[-1].id} of {item} "
                          f"({newer[-1].time:%H:%M:%S}) with no command typed")
            return
        time.sleep(2)
    console.print(f"[yellow]no scheduled point of {item} within {timeout:.0f}s: is the lab's "
                  f"continuous-replication deployment paused (a test session running)?[/yellow]")


def _wait_for_approval(flow: str, after: str | None = None, timeout: float = 300) -> tuple[str, str]:
    """The paused run of `flow` (paused since another instant than `after`) and since when."""
    from drbook.approvals import waiting_approvals

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [a for a in waiting_approvals() if a["flow"] == flow and a["since"] != after]
        if waiting:
            return waiting[0]["run_id"], waiting[0]["since"]
        time.sleep(0.5)
    raise SystemExit(f"demo: the {flow} run never asked for an answer")


def _guest_answers(lab) -> None:  # noqa: ANN001 - lab.control.Lab
    """The lab has no guest OS: what run command answers on the recovered application servers
    is what the lab says a healthy guest would print for the plan's post script."""
    from lab.arm.control import ArmLabControl

    control = ArmLabControl(lab.status()["arm"]["base_url"], lab.status()["ca_bundle"])
    for vm in ("app01-vm", "app02-vm"):
        control.set_run_command_output("Enable succeeded: \n[stdout]\napplication answers\ndrbook-exit-status=0\n\n"
                                       "[stderr]\n", vm=vm)


def plan_table(result: dict) -> None:
    from drbook.cli import _plan_result

    _plan_result(result, as_json=False)


def _fill(row: dict, results: list[dict]) -> None:
    row["rpo"] = f"{max(r['rpo_seconds'] or 0 for r in results):.1f} s"
    row["rto"] = f"{max(r['rto_seconds'] or 0 for r in results):.1f} s"
    row["verified"] = f"{sum(r['bytes_verified'] for r in results) / 2**20:.0f} MiB"


if __name__ == "__main__":
    main()
