"""Recovery plans on the lab, on a site of the module's own: a plan drill brings its groups
up in order (the database before the applications, the applications in parallel), runs the
post script on each recovered VM, reports an optional machine's failure and goes on; a
critical failure stops the plan and the drill is swept; a plan failover asks for approval,
fails the first group over, and a manual step answered "not done" stops it there.

The lab has no guest OS: run command answers with what the lab is told to answer (the ARM
emulator's /_lab/run-command-output). What drbook sent is read back from the emulator's
record of run commands: the rendered script, with each machine's own facts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from drbook.errors import ApprovalRejected, PlanStopped
from drbook.failover.build import resources_of_run, resources_of_site
from drbook.models import ItemState
from drbook.plans.record import PlanRunRecord
from drbook.vault import plan_run_key
from tests.lab_site import arm, run_in_thread, sdk, site  # noqa: F401  (fixtures)

pytestmark = pytest.mark.lab

OK = "Enable succeeded: \n[stdout]\napp checked\ndrbook-exit-status=0\n\n[stderr]\n"
FAILED = "Enable succeeded: \n[stdout]\ndrbook-exit-status=3\n\n[stderr]\nno such service\n"


@pytest.fixture(scope="module")
def site_path(lab, tmp_path_factory, prefect_fast) -> str:
    """A site of the module's own whose plans folder is the module's own."""
    from tests.conftest import make_site

    path = Path(make_site(lab, tmp_path_factory.mktemp("site")))
    doc = yaml.safe_load(path.read_text())
    doc["plans_dir"] = str(path.parent / "plans")
    (path.parent / "plans").mkdir()
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def protected(site, site_path):
    from drbook.flows.prepare_azure import prepare_azure_flow
    from drbook.flows.replication import enable_replication_flow

    prepare_azure_flow(site_path=site_path)
    enable_replication_flow(["db01", "app01", "app02"], site_path=site_path)
    return site


@pytest.fixture
def guest_answers(arm):  # noqa: F811
    """What each VM's run command answers this test (by VM name); back to the default after."""
    set_vms: list[str] = []

    def answer(vm: str, output: str) -> None:
        arm.set_run_command_output(output, vm=vm)
        set_vms.append(vm)

    yield answer
    for vm in set_vms:
        arm.clear_run_command_output(vm)


def _cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "drbook.cli", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def _write_plan(site, name: str, groups: list[dict]) -> None:
    folder = site.cfg.plans_folder(site.path)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "groups": groups}, sort_keys=False))


def _span(record: PlanRunRecord, label: str) -> tuple[float, float]:
    step = next(s for s in record.steps if s.label == label)
    assert step.finished is not None, label
    return step.started.timestamp(), step.finished.timestamp()


def test_a_plan_drill_recovers_group_by_group_runs_its_scripts_and_reports(protected, site_path, arm, sdk,  # noqa: F811
                                                                            guest_answers):
    from drbook.flows.drill import drill_cleanup_flow
    from drbook.flows.plan import plan_drill_flow

    site = protected
    _write_plan(site, "tiers", [
        {"name": "database", "machines": ["db01"]},
        {"name": "applications", "machines": ["app01", {"name": "app02", "critical": False}],
         "post": [{"script": "plan_check_app.sh.j2"}, {"wait": 1}]},
    ])
    guest_answers("app01-vm", OK)
    guest_answers("app02-vm", FAILED)  # app02 is optional: reported, and the plan goes on
    result = plan_drill_flow("tiers", site_path=site_path)

    assert result["status"] == "succeeded-with-failures", result["why"]
    record = site.vault.get(plan_run_key(result["run_id"]), PlanRunRecord)
    by_machine = {m.machine: m for m in record.machines}
    assert {m: r.status for m, r in by_machine.items()} == {"db01": "succeeded", "app01": "succeeded", "app02": "succeeded"}
    assert all(r.verified and r.bytes_verified > 0 for r in by_machine.values())
    # Order: the database group is up before the application group starts; its machines in parallel.
    db = _span(record, "recover db01")
    app01, app02 = _span(record, "recover app01"), _span(record, "recover app02")
    assert db[1] <= min(app01[0], app02[0])
    assert max(app01[0], app02[0]) < min(app01[1], app02[1]), "app01 and app02 recover at the same time"
    scripts = {s.machine: s for s in record.steps if s.kind == "script"}
    assert scripts["app01"].status == "succeeded" and scripts["app01"].output == "app checked"
    assert scripts["app02"].status == "failed" and scripts["app02"].error == "exit status 3"
    assert [s.status for s in record.steps if s.kind == "wait"] == ["succeeded"]
    # What drbook sent: the template rendered with each machine's own facts.
    rg = f"/resourceGroups/{record.resource_group}/".lower()
    sent = {c["vmName"]: "\n".join(c["script"]) for c in arm.run_commands()
            if rg in c["vmId"].lower() and "drbook-exit-status" in "\n".join(c["script"])}
    assert set(sent) == {"app01-vm", "app02-vm"}
    for m in ("app01", "app02"):
        assert by_machine[m].ip in sent[f"{m}-vm"] and by_machine[m].point_id in sent[f"{m}-vm"]
    # The report: the table and both charts, inline.
    html = Path(result["report"]).read_text()
    assert html.count("<svg") == 2 and "app02" in html and "exit status 3" in html
    # The CLI: the dry run, and the report drawn again from the run's record.
    shown = _cli("plan", "show", "tiers", "--site", site_path, "--json")
    assert [(r["group"], r["kind"]) for r in json.loads(shown.stdout)["steps"]] == [
        ("database", "recover"), ("applications", "recover"), ("applications", "script"), ("applications", "wait")]
    again = _cli("report", result["run_id"], "--site", site_path)
    assert Path(again.stdout.strip()).read_text().count("<svg") == 2
    cleanup = drill_cleanup_flow(result["drill_id"], site_path=site_path)
    assert cleanup["left"] == [] and resources_of_run(site.azure, result["run_id"]) == []


def test_a_critical_failure_stops_the_plan_and_the_drill_is_swept(protected, site_path, guest_answers):
    from drbook.flows.plan import plan_drill_flow

    site = protected
    _write_plan(site, "stops", [
        {"name": "database", "machines": ["db01"], "post": [{"script": "plan_check_app.sh.j2"}]},
        {"name": "applications", "machines": ["app01"]},
    ])
    guest_answers("db01-vm", FAILED)
    state = plan_drill_flow("stops", site_path=site_path, return_state=True)
    assert state.is_failed()
    with pytest.raises(PlanStopped, match="plan stops stopped: script plan_check_app.sh.j2 in group database: critical "
                                          "machine db01 failed: plan_check_app.sh.j2 on db01: exit status 3"):
        state.result()
    record = next(r for r in site.vault.list("plan-runs/", PlanRunRecord) if r.plan == "stops")
    assert record.status == "stopped"
    assert {m.machine: m.status for m in record.machines} == {"db01": "succeeded", "app01": "not-run"}
    assert not any(s.label == "recover app01" for s in record.steps), "nothing after the stop ran"
    assert resources_of_run(site.azure, record.run_id) == [], "a stopped drill is swept"


def _paused_plan_run(site_path: str, timeout: float = 60, after: str | None = None) -> tuple[str, str]:
    from drbook.approvals import waiting_approvals

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in waiting_approvals():
            if row["flow"] == "plan-failover" and row["site_path"] == site_path and row["since"] != after:
                return row["run_id"], row["since"]
        time.sleep(0.2)
    raise AssertionError(f"no paused plan-failover run of {site_path}")


def test_a_plan_failover_stops_at_a_manual_step_answered_not_done(protected, site_path, sdk):  # noqa: F811
    from drbook.approvals import answer
    from drbook.flows.plan import plan_failover_flow

    site = protected
    _write_plan(site, "manual", [
        {"name": "database", "machines": ["db01"], "post": [{"manual": "Check the database answers, then say done."}]},
        {"name": "applications", "machines": ["app01"]},
    ])
    # A rejected approval: nothing changes.
    thread, out = run_in_thread(plan_failover_flow, "manual", point="latest-processed", approval_timeout=300,
                                site_path=site_path)
    run_id, _ = _paused_plan_run(site_path)
    answer(run_id, approve=False, approver="tester", comment="not now")
    thread.join(timeout=60)
    assert isinstance(out.get("error"), ApprovalRejected), out
    assert {site.vault.item(m).state for m in ("db01", "app01")} == {ItemState.PROTECTED}
    assert resources_of_site(site.azure, site.cfg.site) == []

    thread, out = run_in_thread(plan_failover_flow, "manual", point="latest-processed", approval_timeout=300,
                                site_path=site_path)
    run_id, since = _paused_plan_run(site_path)
    answer(run_id, approve=True, approver="tester", comment="go")
    paused_again, _ = _paused_plan_run(site_path, after=since)
    assert paused_again == run_id
    answer(run_id, approve=False, approver="tester", comment="the database does not answer")
    thread.join(timeout=120)
    assert isinstance(out.get("error"), PlanStopped), out
    assert "not done by tester: the database does not answer" in str(out["error"])
    assert site.vault.item("db01").state == ItemState.FAILED_OVER, "what ran before the stop stays failed over"
    assert site.vault.item("app01").state == ItemState.PROTECTED, "nothing after the stop ran"
    built = {r.tags.get("drbook-item") for r in resources_of_site(site.azure, site.cfg.site)}
    assert built == {"db01"}
    record = site.vault.get(plan_run_key(run_id), PlanRunRecord)
    manual = next(s for s in record.steps if s.kind == "manual")
    assert manual.status == "not-done" and manual.output == "not done by tester: the database does not answer"
    actions = [e.action for e in site.vault.audit_log("db01")]
    assert "failover-approved" in actions and "plan-manual-not-done" in actions

