"""A plan's steps, decisions after each step, and its scripts' exit status (pure)."""

from __future__ import annotations

import subprocess

import pytest

from drbook.models import ProtectedItem
from drbook.plans import decide
from drbook.plans.model import Plan
from drbook.plans.record import PlanMachineResult, PlanRunRecord, StepRecord
from drbook.plans.scripts import read_result, wrap
from drbook.plans.steps import dry_run, plan_steps

PLAN = Plan.model_validate({
    "name": "lab",
    "groups": [
        {"name": "database", "machines": ["db01"], "pre": [{"script": "stop.sh.j2", "on": "source", "directions": ["failover"]}]},
        {"name": "applications", "machines": ["app01", {"name": "app02", "critical": False}],
         "post": [{"script": "check.sh.j2"}, {"manual": "Change the DNS record\nthen say done", "directions": ["failover"]},
                  {"wait": 2, "critical": False}]},
    ],
})


def test_steps_run_group_by_group_with_actions_for_the_direction_only():
    drill = [(s.group, s.phase, s.kind, s.machines) for s in plan_steps(PLAN, "test-failover")]
    assert drill == [("database", "recover", "recover", ["db01"]),
                     ("applications", "recover", "recover", ["app01", "app02"]),
                     ("applications", "post", "script", ["app01", "app02"]),
                     ("applications", "post", "wait", ["app01", "app02"])]
    failover = plan_steps(PLAN, "failover")
    assert [s.kind for s in failover] == ["script", "recover", "recover", "script", "manual", "wait"]
    assert [s.number for s in failover] == [1, 2, 3, 4, 5, 6]
    assert failover[4].label() == "manual: Change the DNS record"
    assert failover[5].critical is False and failover[3].critical is True


def test_failback_reverses_the_groups_unless_the_plan_says_forward():
    assert [s.group for s in plan_steps(PLAN, "failback") if s.kind == "recover"] == ["applications", "database"]
    forward = PLAN.model_copy(update={"failback_order": "forward"})
    assert [s.group for s in plan_steps(forward, "failback") if s.kind == "recover"] == ["database", "applications"]


def test_dry_run_says_what_each_step_would_do():
    rows = dry_run(PLAN, "failover")
    assert rows[0]["what"].startswith("render stop.sh.j2 with each machine's facts and run it on each source machine (SSH)")
    assert "fail over to the production network" in rows[2]["what"] and "app01, app02" in rows[2]["what"]
    assert rows[4]["what"] == "pause for a person (done / not done; not done stops the plan): Change the DNS record\nthen say done"
    assert rows[5]["critical"] == "optional"


def test_a_replication_group_completes_or_rolls_back_together():
    items = {"a": ProtectedItem(name="a", machine="a", group="g"), "b": ProtectedItem(name="b", machine="b"),
             "c": ProtectedItem(name="c", machine="c", group="g")}
    assert decide.units(["a", "b", "c"], items) == [["a", "c"], ["b"]]


def test_a_critical_failure_stops_the_plan_an_optional_one_does_not():
    critical = {"app01": True, "app02": False}
    assert decide.after_machines({}, critical, "group x") == decide.StepVerdict(go_on=True)
    optional = decide.after_machines({"app02": "boom"}, critical, "group x")
    assert optional.go_on and optional.failed == ["app02"]
    stop = decide.after_machines({"app01": "disk did not verify", "app02": "boom"}, critical, "group x")
    assert not stop.go_on and stop.why == "group x: critical machine app01 failed: disk did not verify"


def test_not_done_stops_the_plan_unless_the_step_is_optional():
    assert decide.after_manual(True, True, "s", "done by ann").go_on
    assert decide.after_manual(False, False, "s", "not done by ann").go_on
    stop = decide.after_manual(False, True, "manual step in group app", "not done by ann: DNS is down")
    assert not stop.go_on and "not done by ann: DNS is down" in stop.why


def test_final_status():
    record = PlanRunRecord(run_id="r", plan="lab", direction="failover",
                           machines=[PlanMachineResult(machine="a", group="g", status="succeeded")],
                           steps=[StepRecord(group="g", phase="recover", kind="recover", label="recover a", status="succeeded")])
    assert decide.final_status(record, None) == "succeeded"
    record.machines.append(PlanMachineResult(machine="b", group="g", status="failed"))
    assert decide.final_status(record, None) == "succeeded-with-failures"
    assert decide.final_status(record, decide.StepVerdict(go_on=False, why="x")) == "stopped"


@pytest.mark.parametrize("script, status", [("echo hello\n", 0), ("echo oops >&2\nexit 3\n", 3),
                                            ("set -e\nfalse\necho never\n", 1)])
def test_a_wrapped_script_reports_its_exit_status(script, status):
    out = subprocess.run(["sh", "-c", wrap(script, "linux")], capture_output=True, text=True, timeout=10)
    result = read_result(out.stdout + out.stderr)
    assert result.exit_status == status and result.ok is (status == 0)
    assert "drbook-exit-status" not in result.output
    if status == 0:
        assert result.output == "hello"


def test_run_commands_sections_are_read_as_stdout_then_stderr():
    result = read_result("Enable succeeded: \n[stdout]\nchecked\ndrbook-exit-status=2\n\n[stderr]\nno such service\n")
    assert result.exit_status == 2 and result.output == "checked\nno such service"
    assert read_result("Enable succeeded: \n[stdout]\nok\ndrbook-exit-status=0\n\n[stderr]\n").output == "ok"


def test_output_without_a_status_line_is_a_failure():
    result = read_result("Enable succeeded: \n[stdout]\n\n[stderr]\n")
    assert result.exit_status is None and not result.ok and "did not run to its end" in result.problem()


def test_a_script_holding_the_heredoc_end_is_refused():
    with pytest.raises(ValueError, match="DRBOOK_PLAN_SCRIPT_END"):
        wrap("echo\nDRBOOK_PLAN_SCRIPT_END\nrm -rf /\n", "linux")
