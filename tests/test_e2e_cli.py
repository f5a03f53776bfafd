"""The CLI as a client of the deployments, on the lab: a stage command is a run of its
deployment on the lab's process-server worker, followed to its end, with the run's outcome as
the exit code; --no-wait only starts it; --local still runs the flow in the CLI's process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from uuid import UUID

import pytest

from drbook import runs
from drbook.errors import DRError

RUN_LINE = re.compile(r"^started (?P<deployment>\S+) run (?P<name>\S+) \((?P<id>[0-9a-f-]{36})\): (?P<url>\S+)$", re.M)


@pytest.fixture(scope="module")
def lab_env(lab_control) -> dict:
    """What `eval "$(drbook-lab env)"` gives a shell: the lab's site and Prefect server."""
    return {**os.environ, **lab_control.drbook_env()}


def _cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drbook.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _flow_run(run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def test_discover_is_a_run_of_its_deployment_followed_to_its_result(lab, lab_env):
    proc = _cli(lab_env, "discover", "--json")
    assert proc.returncode == 0, proc.stderr
    started = RUN_LINE.search(proc.stderr)
    assert started and started["deployment"] == "discover/discover", proc.stderr
    assert started["url"].endswith(f"/v2/runs/flow-run/{started['id']}")
    assert f"{started['name']}: Completed" in proc.stderr
    # The result came back from the worker's process: the same inventory, as JSON.
    result = json.loads(proc.stdout)
    assert {vm["name"] for vm in result["inventory"]["vms"]} >= {m["name"] for m in lab["machines"] if m["vm_name"]}
    run = _flow_run(started["id"])
    assert run.deployment_id is not None and run.state.is_completed()


def test_test_failover_no_wait_starts_the_run_and_its_first_step_names_the_unknown_machine(lab_env):
    proc = _cli(lab_env, "test-failover", "no-such-machine", "--no-wait")
    assert proc.returncode == 0, proc.stderr
    run_id, url = proc.stdout.split()
    assert url.endswith(f"/v2/runs/flow-run/{run_id}")
    run = _flow_run(run_id)
    assert run.deployment_id is not None and run.parameters["machines"] == ["no-such-machine"]
    # Following it (as the CLI does without --no-wait): the flow's own drbook error comes back.
    ref = runs.RunRef(id=run_id, name=run.name, deployment="test-failover/test-failover", url=url)
    with pytest.raises(DRError) as info:
        runs.follow(ref, poll=0.5)
    assert "no-such-machine" in str(info.value)
    assert info.value.exit_code == 1  # NotFoundError: a document is missing


def test_a_failed_run_exits_with_its_drbook_error(lab_env):
    proc = _cli(lab_env, "verify", "no-such-machine", "--point", "pt-20260101000000-0123abcd")
    assert proc.returncode == 1, proc.stderr
    assert "no-such-machine" in proc.stderr.strip().splitlines()[-1]


def test_parameters_refused_exit_2_before_any_run_exists(lab_env):
    """The CLI refuses a malformed --point itself; a parameter that gets past it is checked
    against the deployment's schema before a run is created (runs.start)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    def runs_of_drills() -> int:
        with get_client(sync_client=True) as client:
            return client.count_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["test-failover"])))

    before = runs_of_drills()
    proc = _cli(lab_env, "test-failover", "db01", "--point", "not a point")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--point 'not a point' is not a recovery point" in proc.stderr
    with pytest.raises(runs.InvalidParameters) as info:
        runs.start("test-failover/test-failover", {"machines": ["db01"], "point": "not a point"})
    assert info.value.exit_code == 2 and "'point'" in str(info.value)
    assert runs_of_drills() == before


def test_the_servers_own_refusal_is_exit_2_too(lab, monkeypatch):
    """enforce_parameter_schema: the server answers 409; the CLI says so in one line, exit 2."""
    monkeypatch.setattr(runs, "validate_parameters", lambda *a, **k: None)  # skip the CLI's own check
    with pytest.raises(runs.InvalidParameters) as info:
        runs.start("test-failover/test-failover", {"machines": ["db01"], "point": "not a point"})
    assert info.value.exit_code == 2 and "refused" in str(info.value)


def test_an_unknown_deployment_says_how_to_register_it(lab):
    with pytest.raises(runs.DeploymentNotFound) as info:
        runs.start("discover/no-such-deployment", {})
    assert info.value.exit_code == 2 and "drbook deploy" in str(info.value) and "--local" in str(info.value)


def test_local_runs_the_flow_in_the_cli_process_as_before(lab_env, site_path):
    proc = _cli(lab_env, "discover", "--local", "--site", site_path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert not RUN_LINE.search(proc.stderr)  # no deployment run was started
    assert json.loads(proc.stdout)["inventory"]["vms"]
