"""drbook/runs.py's decisions with plain data (no service): UI URLs, what a state means, which
error and exit code a run's outcome gives; and the CLI's choices before any run exists."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from drbook import runs
from drbook.errors import ApprovalRejected, DRError, NotFoundError, StateTransitionError

RUN = runs.RunRef(id="6f1d3c1e-0000-4000-8000-000000000001", name="red-hyena", deployment="failover/failover",
                  url="http://127.0.0.1:14200/v2/runs/flow-run/6f1d3c1e-0000-4000-8000-000000000001",
                  work_pool="drbook-process-server")
REPO = Path(__file__).resolve().parents[1]


# -- URLs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ui, api, base", [
    (None, "http://127.0.0.1:14200/api", "http://127.0.0.1:14200/v2"),  # derived as Prefect derives it
    (None, "http://127.0.0.1:14200/api/", "http://127.0.0.1:14200/v2"),
    ("http://prefect.example:4200", "http://10.0.0.5:4200/api", "http://prefect.example:4200/v2"),  # the UI's own wins
    ("http://prefect.example:4200/", None, "http://prefect.example:4200/v2"),
    ("https://dr.example/prefect/v2", None, "https://dr.example/prefect/v2"),  # already the V2 UI
    ("https://dr.example/prefect", None, "https://dr.example/prefect/v2"),  # a UI served under a path
    (None, None, None),
])
def test_ui_base(ui, api, base):
    assert runs.ui_base(ui, api) == base


def test_run_url_is_the_v2_flow_run_page():
    assert runs.run_url("http://h:1/v2", "abc") == "http://h:1/v2/runs/flow-run/abc"
    assert runs.run_url(None, "abc") is None


# -- what a state means -----------------------------------------------------------------------------
@pytest.mark.parametrize("state_type, name, expected", [
    ("SCHEDULED", "Scheduled", runs.WAITING),
    ("SCHEDULED", "Late", runs.LATE),
    ("PENDING", "Submitting", runs.WAITING),
    ("RUNNING", "Running", runs.RUNNING),
    ("PAUSED", "Paused", runs.PAUSED),
    ("PAUSED", "Suspended", runs.PAUSED),  # suspend_flow_run: waits without a process
    ("COMPLETED", "Completed", runs.COMPLETED),
    ("FAILED", "Failed", runs.FAILED),
    ("CRASHED", "Crashed", runs.CRASHED),
    ("CANCELLING", "Cancelling", runs.CANCELLING),
    ("CANCELLED", "Cancelled", runs.CANCELLED),
])
def test_phase(state_type, name, expected):
    assert runs.phase(state_type, name) == expected


def test_phase_takes_prefect_enums_too():
    from prefect.client.schemas.objects import StateType

    assert runs.phase(StateType.PAUSED, "Suspended") == runs.PAUSED
    assert runs.FINAL == {runs.COMPLETED, runs.FAILED, runs.CRASHED, runs.CANCELLED}


# -- outcome -> error and exit code -----------------------------------------------------------------
def test_a_drbook_error_named_in_the_failed_state_keeps_its_message_and_exit_code():
    msg = ("Flow run encountered an exception: ApprovalRejected: failover of app01 not approved "
           "(rejected by ana); nothing was changed")
    err = runs.failure(RUN, "FAILED", "Failed", msg)
    assert isinstance(err, runs.RunFailed)
    assert err.exit_code == ApprovalRejected.exit_code == 8
    assert str(err) == "failover of app01 not approved (rejected by ana); nothing was changed"
    assert err.run == RUN


def test_state_machine_refusal_in_a_failed_run_exits_5():
    err = runs.failure(RUN, "FAILED", "Failed", "Flow run encountered an exception: StateTransitionError: db01 is committed")
    assert err.exit_code == StateTransitionError.exit_code == 5


def test_an_error_that_is_not_drbooks_is_a_failed_run():
    err = runs.failure(RUN, "FAILED", "Failed", "Flow run encountered an exception: KeyError: 'x'")
    assert type(err) is runs.RunFailed and err.exit_code == 10
    assert str(err) == "failover/failover run red-hyena failed: Flow run encountered an exception: KeyError: 'x'"


@pytest.mark.parametrize("state_type, cls, code", [
    ("CRASHED", runs.RunCrashed, 11),
    ("CANCELLED", runs.RunCancelled, 12),
])
def test_crashed_and_cancelled_have_their_own_codes(state_type, cls, code):
    # A crash's message may even name a drbook error: the outcome decides, not the message.
    err = runs.failure(RUN, state_type, state_type.title(), "Flow run infrastructure exited with non-zero status code -9.")
    assert type(err) is cls and err.exit_code == code
    assert "red-hyena" in str(err)


def test_a_failed_state_with_no_message_says_its_state():
    err = runs.failure(RUN, "FAILED", "Failed", None)
    assert str(err) == "failover/failover run red-hyena failed: state Failed"


def test_run_error_codes_are_distinct_from_every_other_drbook_code():
    from drbook import errors

    others = {c.exit_code for c in vars(errors).values()
              if isinstance(c, type) and issubclass(c, DRError) and not issubclass(c, errors.RunError)}
    mine = {runs.RunFailed.exit_code, runs.RunCrashed.exit_code, runs.RunCancelled.exit_code,
            runs.ResultUnavailable.exit_code}
    assert len(mine) == 4 and not (mine & others)
    assert runs.InvalidParameters.exit_code == runs.DeploymentNotFound.exit_code == 2


@dataclass
class FakeState:
    """What read_flow_run returns, as far as outcome() looks: type, name, message, result()."""

    type: str
    name: str
    message: str | None = None
    value: Any = None
    raises: BaseException | None = None

    def result(self):
        if self.raises is not None:
            raise self.raises
        return self.value


def test_a_completed_run_returns_its_result():
    assert runs.outcome(RUN, FakeState("COMPLETED", "Completed", value={"rows": [1]})) == {"rows": [1]}


def test_a_completed_run_whose_result_cannot_be_read_here_exits_13_with_why():
    state = FakeState("COMPLETED", "Completed", raises=FileNotFoundError("/srv/prefect/storage/abc"))
    with pytest.raises(runs.ResultUnavailable) as info:
        runs.outcome(RUN, state)
    assert info.value.exit_code == 13
    assert "/srv/prefect/storage/abc" in str(info.value) and RUN.url in str(info.value)


def test_a_failed_run_raises_the_flows_own_drbook_error_when_it_was_persisted():
    original = NotFoundError("no protected item 'nosuch' (known: none)")
    state = FakeState("FAILED", "Failed", "Flow run encountered an exception: NotFoundError: ...", raises=original)
    with pytest.raises(NotFoundError) as info:
        runs.outcome(RUN, state)
    assert info.value is original


def test_a_failed_run_without_its_exception_falls_back_to_the_message():
    state = FakeState("FAILED", "Failed", "Flow run encountered an exception: ApprovalRejected: nobody approved in time",
                      raises=RuntimeError("result not persisted"))
    with pytest.raises(runs.RunFailed) as info:
        runs.outcome(RUN, state)
    assert info.value.exit_code == 8 and str(info.value) == "nobody approved in time"


def test_a_crashed_run_is_not_asked_for_a_result():
    state = FakeState("CRASHED", "Crashed", "process exited", raises=AssertionError("must not be called"))
    with pytest.raises(runs.RunCrashed):
        runs.outcome(RUN, state)


# -- what the follower says --------------------------------------------------------------------------
def test_the_approval_hint_names_the_command_and_the_page():
    hint = runs.approval_hint(RUN)
    assert f"drbook approve {RUN.id}" in hint and RUN.url in hint and "Resume" in hint


def test_a_late_run_with_no_worker_says_how_to_start_one():
    assert "prefect worker start --pool drbook-process-server" in runs.late_hint(RUN, pool_ready=False)
    assert "not picked it up yet" in runs.late_hint(RUN, pool_ready=True)


def test_a_multi_line_log_shows_its_first_line():
    assert runs.first_line("one line") == "one line"
    assert runs.first_line("Traceback:\n  File x\nKeyError") == "Traceback: … (full text in the UI)"


def test_parameters_left_unset_take_the_deployments_defaults_but_false_is_sent():
    assert runs.pick_parameters({"machines": ["db01"], "group": None, "dry_run": False}) == \
        {"machines": ["db01"], "dry_run": False}


def test_parameters_are_checked_as_the_server_would_before_a_run_exists():
    schema = {"type": "object", "properties": {"point": {"type": "string", "pattern": "^[a-z-]+$"},
                                               "machines": {"type": "array", "items": {"type": "string"}}},
              "required": ["machines"]}
    runs.validate_parameters("d/d", schema, {"point": "latest"}, {"machines": ["db01"]})
    with pytest.raises(runs.InvalidParameters) as info:
        runs.validate_parameters("d/d", schema, {}, {"machines": ["db01"], "point": "no such point"})
    assert info.value.exit_code == 2 and "'point'" in str(info.value) and "\n" not in str(info.value)
    runs.validate_parameters("d/d", None, {}, {"anything": 1})  # no schema stored: the server decides


def test_worker_site_is_drbook_site_of_the_job_variables():
    @dataclass
    class Dep:
        job_variables: dict

    assert runs.worker_site(Dep({"env": {"DRBOOK_SITE": "/etc/drbook/site.yaml"}})) == "/etc/drbook/site.yaml"
    assert runs.worker_site(Dep({})) is None


# -- the CLI's deployments are the ones deployments/prefect.yaml registers ----------------------------
def _yaml_deployments() -> dict[str, str]:
    """deployment name -> "flow name/deployment name", from the entrypoints' flows."""
    import importlib

    doc = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    out = {}
    for d in doc["deployments"]:
        module, _, attr = d["entrypoint"].rpartition(".")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue  # another part of the issue; the deployment tests check every entrypoint
        out[d["name"]] = (f"{fn.name}/{d['name']}", fn)
    return out


def test_every_stage_command_names_a_deployment_of_prefect_yaml():
    from drbook.cli import DEPLOYMENTS

    registered = {full for full, _ in _yaml_deployments().values()}
    assert set(DEPLOYMENTS.values()) <= registered, set(DEPLOYMENTS.values()) - registered


@pytest.mark.parametrize("command, params", [
    ("discover", {}),
    ("push-mobility", {"machines": ["app01"], "force": False}),
    ("protect", {"machines": ["app01", "app02"], "policy": "default", "group": "app"}),
    ("replicate", {"machines": [], "all_items": True, "want": "crash"}),
    ("verify", {"machine": "db01", "point": "pt-20260101000000-0123abcd"}),
    ("retention", {"dry_run": True}),
    ("prepare-azure", {"dry_run": False}),
    ("test-failover", {"machines": ["db01"], "point": "latest-processed"}),
    ("test-failover-cleanup", {"drill_id": "drill-20260101000000-0123abcd"}),
    ("failover", {"machines": ["app01"], "point": "latest", "planned": True, "approval_timeout": 300}),
    ("commit", {"machines": ["app01"], "dry_run": False}),
    ("reconcile", {"dry_run": True}),
])
def test_what_each_command_sends_validates_against_its_flows_schema(command, params):
    from prefect.utilities.callables import parameter_schema

    from drbook.cli import DEPLOYMENTS

    by_full = {full: fn for full, fn in _yaml_deployments().values()}
    fn = by_full[DEPLOYMENTS[command]]
    runs.validate_parameters(DEPLOYMENTS[command], parameter_schema(fn).model_dump_for_openapi(), {}, params)


# -- the CLI refuses before any run exists ------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drbook.cli", *args], capture_output=True, text=True, timeout=120)


def test_site_without_local_is_refused_in_one_line():
    proc = _cli("discover", "--site", "/nowhere/site.yaml")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--local" in proc.stderr and "DRBOOK_SITE" in proc.stderr


def test_no_wait_with_local_is_refused():
    proc = _cli("test-failover", "db01", "--local", "--no-wait")
    assert proc.returncode == 2 and "--no-wait" in proc.stderr


def test_the_readme_documents_every_exit_code_of_the_error_tree():
    import re
    from pathlib import Path

    from drbook import errors

    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    paragraph = text[text.index("Exit codes:"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    documented = {int(n) for n in re.findall(r"(?:^|[;:,]\s)(\d+)\s", paragraph)}
    codes = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, DRError)}
    assert codes - documented == set(), f"exit codes without a word in the README: {sorted(codes - documented)}"
