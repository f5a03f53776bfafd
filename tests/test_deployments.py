"""deployments/prefect.yaml: validated as Prefect validates it (offline), registered and run
by the lab's process-server worker (lab)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from drbook.deploy import POOL, DeploymentRef, existing_deployments, missing, prefect_yaml, read_deployments
from drbook.errors import DeployError

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"

# flow name / deployment name -> entrypoint, and whether it runs on a schedule.
EXPECTED = {
    "prepare-azure/prepare-azure": ("drbook.flows.prepare_azure.prepare_azure_flow", False),
    "discover/discover": ("drbook.flows.discover.discover_flow", False),
    "push-mobility/push-mobility": ("drbook.flows.push_mobility.push_mobility_flow", False),
    "enable-replication/enable-replication": ("drbook.flows.replication.enable_replication_flow", False),
    "replicate-cycle/replicate": ("drbook.flows.replication.replicate_flow", False),
    "replication-dispatcher/continuous-replication": ("drbook.flows.continuous.dispatch_flow", True),
    "rpo-monitor/rpo-monitor": ("drbook.flows.rpo_monitor.rpo_monitor_flow", True),
    "retention-purge/retention": ("drbook.flows.replication.retention_flow", True),
    "verify-point/verify-point": ("drbook.flows.replication.verify_point_flow", False),
    "test-failover/test-failover": ("drbook.flows.drill.drill_flow", False),
    "scheduled-drill/weekly-drill": ("drbook.flows.drill.scheduled_drill_flow", True),
    "test-failover-cleanup/test-failover-cleanup": ("drbook.flows.drill.drill_cleanup_flow", False),
    "failover/failover": ("drbook.flows.failover.failover_flow", False),
    "commit/commit": ("drbook.flows.failover.commit_flow", False),
    "reprotect/reprotect": ("drbook.flows.reprotect.reprotect_flow", False),
    "failback/failback": ("drbook.flows.reprotect.failback_flow", False),
    "reconcile/reconcile": ("drbook.flows.reconcile.reconcile_flow", True),
    "plan-test-failover/plan-test-failover": ("drbook.flows.plan.plan_drill_flow", False),
    "plan-failover/plan-failover": ("drbook.flows.plan.plan_failover_flow", False),
    "plan-failback/plan-failback": ("drbook.flows.plan.plan_failback_flow", False),
}


def _doc() -> dict:
    return yaml.safe_load(PREFECT_YAML.read_text())


def _flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)


# -- offline -------------------------------------------------------------------------------------
def test_the_packaged_file_is_the_repository_file():
    assert prefect_yaml().resolve() == PREFECT_YAML.resolve()


def test_prefect_yaml_validates_against_prefects_own_model():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(_doc())
    assert len(model.deployments) == len(EXPECTED)
    assert model.pull == []  # no set_working_directory pointing at the deployer's directory


@pytest.mark.parametrize("full_name", sorted(EXPECTED))
def test_every_entrypoint_loads_and_names_its_flow(full_name):
    flow_name, name = full_name.split("/")
    entrypoint, _ = EXPECTED[full_name]
    (deployment,) = [d for d in _doc()["deployments"] if d["name"] == name]
    assert deployment["entrypoint"] == entrypoint
    assert _flow(entrypoint).name == flow_name


@pytest.mark.parametrize("deployment", _doc()["deployments"], ids=lambda d: d["name"])
def test_every_deployment_runs_on_the_process_server_with_the_site(deployment):
    assert deployment["enforce_parameter_schema"] is True
    assert deployment["description"].strip()
    pool = deployment["work_pool"]
    assert pool["name"] == POOL
    assert pool["job_variables"]["env"] == {"DRBOOK_SITE": "{{ $DRBOOK_SITE }}", "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}
    assert "site_path" not in deployment.get("parameters", {})  # the flows read $DRBOOK_SITE


@pytest.mark.parametrize("deployment", _doc()["deployments"], ids=lambda d: d["name"])
def test_every_deployments_parameters_validate_against_its_flow(deployment):
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    schema = parameter_schema(_flow(deployment["entrypoint"])).model_dump_for_openapi()
    params = deployment.get("parameters", {})
    validate(params, schema, raise_on_error=True, ignore_required=True)
    assert set(params) <= set(schema["properties"]), "a parameter the flow does not take"


@pytest.mark.parametrize("deployment", _doc()["deployments"], ids=lambda d: d["name"])
def test_every_flow_parameter_has_a_description_for_the_run_form(deployment):
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(_flow(deployment["entrypoint"])).model_dump_for_openapi()
    undescribed = [name for name, prop in schema["properties"].items() if not prop.get("description")]
    assert not undescribed, f"{deployment['entrypoint']}: no description (docstring Args) for {undescribed}"


def test_every_schedule_parses_and_only_the_expected_deployments_have_one():
    from prefect._vendor.croniter import croniter  # what Prefect's CronSchedule validates with
    from prefect.cli.deploy._models import RawScheduleConfig
    from prefect.client.schemas.schedules import CronSchedule

    scheduled = set()
    for d in _doc()["deployments"]:
        for item in d.get("schedules") or []:
            s = RawScheduleConfig.model_validate(item)  # exactly one of cron / interval / rrule
            if s.cron:
                CronSchedule(cron=s.cron, timezone=s.timezone)
                assert croniter(s.cron).get_next(float) > 0, s.cron
            if s.interval is not None:
                assert s.interval.total_seconds() >= 30, d["name"]
            scheduled.add(d["name"])
    assert scheduled == {full.split("/")[1] for full, (_, sched) in EXPECTED.items() if sched}


def test_a_failover_never_runs_on_a_schedule():
    (failover,) = [d for d in _doc()["deployments"] if d["name"] == "failover"]
    assert not failover.get("schedules") and not failover.get("schedule")


def test_an_invalid_prefect_yaml_is_refused_in_one_line(tmp_path):
    # `prefect deploy` would only warn and skip this file.
    bad = tmp_path / "prefect.yaml"
    bad.write_text(yaml.safe_dump({"deployments": [{"name": "x", "entrypoint": "a.b", "schedules": [{"cron": "* * * * *",
                                                                                                    "interval": 60}]}]}))
    with pytest.raises(DeployError) as err:
        read_deployments(bad)
    assert "\n" not in str(err.value) and err.value.exit_code == 9
    bad.write_text("deployments:\n  - name: x\n    description: a: b\n")
    with pytest.raises(DeployError, match="cannot read"):
        read_deployments(bad)


def test_duplicate_names_and_missing_entrypoints_are_refused(tmp_path):
    f = tmp_path / "prefect.yaml"
    f.write_text(yaml.safe_dump({"deployments": [{"name": "x", "entrypoint": "a.b"}, {"name": "x", "entrypoint": "a.c"}]}))
    with pytest.raises(DeployError, match="unique: x"):
        read_deployments(f)
    f.write_text(yaml.safe_dump({"deployments": [{"name": "x"}]}))
    with pytest.raises(DeployError, match="name and an entrypoint"):
        read_deployments(f)


def test_missing_names_what_the_server_lacks():
    assert missing(["a/a", "b/b"], {"a/a", "c/c"}) == ["b/b"]
    assert DeploymentRef(name="d", entrypoint="m.f", flow_name="f").full_name == "f/d"


def test_deploy_is_a_command():
    from typer.testing import CliRunner

    from drbook.cli import app

    result = CliRunner().invoke(app, ["deploy", "--help"])
    assert result.exit_code == 0 and "--prefect-file" in result.output


# -- on the lab ----------------------------------------------------------------------------------
def test_lab_up_runs_the_worker_and_registers_every_deployment(lab_control):
    import urllib.request

    assert lab_control.services()["worker"]
    with urllib.request.urlopen(lab_control.status()["worker"]["health_url"], timeout=5) as r:
        assert r.status == 200
    assert not missing(sorted(EXPECTED), existing_deployments())


def test_a_discover_run_completes_on_the_worker(lab_control):
    from prefect.deployments import run_deployment

    started = time.monotonic()
    run = run_deployment("discover/discover", timeout=240)
    took = time.monotonic() - started
    assert run.state.is_completed(), run.state
    # The worker, not this process, ran it: a process of its own per run.
    assert run.work_pool_name == POOL
    print(f"\ndiscover/discover on the worker: {took:.1f}s from run_deployment to completed "
          f"({(run.start_time - run.created).total_seconds():.1f}s until it started)")


def test_a_run_with_invalid_parameters_is_refused_before_anything_runs(lab_control):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    def runs() -> int:
        with get_client(sync_client=True) as client:
            return client.count_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["test-failover"])))

    before = runs()
    with pytest.raises(PrefectHTTPStatusError) as err:
        run_deployment("test-failover/test-failover", parameters={"machines": ["app01"], "point": "bogus"}, timeout=0)
    assert err.value.response.status_code == 409
    assert "point" in err.value.response.text
    assert runs() == before
