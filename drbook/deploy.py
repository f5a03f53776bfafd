"""`drbook deploy`: register drbook's deployments on a Prefect server, for the process server
(a Prefect worker of the process pool) to run.

    validate prefect.yaml  ->  load every entrypoint  ->  ensure the pool  ->  prefect deploy
    ->  read back: every deployment exists  ->  RPO alert automations (drbook.alerts)

`prefect deploy` is the registrar, but it only warns and skips a prefect.yaml that does not
validate, and stops at the first deployment that fails: so the file is validated here first,
the deployments whose entrypoint loads are deployed by name, and what the server holds
afterwards is the proof. Anything missing is one DeployError naming it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from importlib.resources import as_file, files
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from drbook.errors import DeployError, DRError

POOL = "drbook-process-server"
POOL_TYPE = "process"


class DeploymentRef(BaseModel):
    name: str
    entrypoint: str
    flow_name: str | None = None  # known once the entrypoint loaded
    error: str | None = None  # why the entrypoint did not load

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


class DeployResult(BaseModel):
    pool: str
    pool_created: bool
    deployments: list[str]
    alerts: list[str] | None = None  # None: drbook.alerts is not there (yet)
    process_servers: list[str] = []  # each process server's work queue, made with its limit


def prefect_yaml() -> Path:
    """The packaged deployments/prefect.yaml (drbook.deployments; the repository's own file in
    an editable install)."""
    with as_file(files("drbook.deployments") / "prefect.yaml") as path:
        return Path(path)


def read_deployments(path: Path) -> list[DeploymentRef]:
    """Validated exactly as `prefect deploy` validates it (PrefectYamlModel), but refused here
    instead of skipped."""
    from prefect.cli.deploy._models import PrefectYamlModel

    try:
        raw = yaml.safe_load(path.read_text())
        model = PrefectYamlModel.model_validate(raw if isinstance(raw, dict) else {})
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"{path}: cannot read: {' '.join(str(exc).split())}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DeployError(f"{path}: {where}: {first['msg']} ({exc.error_count()} errors)") from None
    refs = []
    for d in model.deployments:
        if not d.name or not d.entrypoint:
            raise DeployError(f"{path}: every deployment needs a name and an entrypoint ({d.name or d.entrypoint})")
        refs.append(DeploymentRef(name=d.name, entrypoint=d.entrypoint))
    names = [r.name for r in refs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise DeployError(f"{path}: deployment names must be unique: {', '.join(dupes)}")
    if not refs:
        raise DeployError(f"{path}: no deployments")
    return refs


def load_entrypoints(refs: list[DeploymentRef]) -> list[DeploymentRef]:
    """Each deployment with its flow's name, or why its entrypoint does not load."""
    from prefect.flows import load_flow_from_entrypoint

    out = []
    for ref in refs:
        try:
            flow = load_flow_from_entrypoint(ref.entrypoint)
            out.append(ref.model_copy(update={"flow_name": flow.name}))
        except Exception as exc:  # whatever the import raised: reported, never deployed
            out.append(ref.model_copy(update={"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}))
    return out


def missing(expected: list[str], existing: set[str]) -> list[str]:
    return [name for name in expected if name not in existing]


def deploy(site_path: Path, prefect_file: Path | None = None, *, say=lambda msg: None) -> DeployResult:
    """Register every deployment of `prefect_file` (default: the packaged one) on the Prefect
    server of PREFECT_API_URL (or the active profile), for the site `site_path`. Idempotent."""
    from drbook.config import load_site

    site_path = Path(site_path).resolve()
    load_site(site_path)  # a missing or invalid site config: a ConfigError (exit 2) before anything is registered
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        raise DeployError("no Prefect server: set PREFECT_API_URL (or a Prefect profile) to the server the worker uses")
    path = Path(prefect_file or prefect_yaml()).resolve()
    with tempfile.TemporaryDirectory(prefix="drbook-deploy-plans-") as tmp:
        drills, bad_plans = plan_drill_deployments(site_path)
        if drills:
            path = with_deployments(path, drills, Path(tmp) / "prefect.yaml")
            say(f"weekly drills of {len(drills)} recovery plans: {', '.join(d['name'] for d in drills)}")
        return _deploy_file(path, site_path, api_url, bad_plans, say)


def plan_drill_deployments(site_path: Path) -> tuple[list[dict], list[str]]:
    """A weekly unattended drill per recovery plan of the site (Sunday 04:00 UTC, an hour after
    the machines' weekly drill), and the plans that do not load (named with why)."""
    from drbook.config import load_site
    from drbook.plans.load import list_plans, load_plan

    folder = load_site(site_path).plans_folder(site_path)
    drills, bad = [], []
    for file in list_plans(folder):
        try:
            plan = load_plan(file).plan
        except DRError as exc:
            bad.append(f"weekly-drill-{file.stem} ({exc})")
            continue
        drills.append({
            "name": f"weekly-drill-{plan.name}",
            "entrypoint": "drbook.flows.plan.scheduled_plan_drill_flow",
            "description": f"Unattended weekly drill of recovery plan {plan.name} ({file}): its groups in order, "
                           "manual steps skipped, every block verified, a report with charts, then cleanup.",
            "tags": ["drbook", "drill", "plan", "scheduled"],
            "parameters": {"plan": plan.name},
            "schedules": [{"cron": "0 4 * * 0", "timezone": "UTC"}],
            "concurrency_limit": {"limit": 1, "collision_strategy": "CANCEL_NEW"},
            "enforce_parameter_schema": True,
        })
    return drills, bad


def with_deployments(path: Path, extra: list[dict], out: Path) -> Path:
    """prefect.yaml with `extra` deployments added (each on the process-server pool as the first
    deployment of the file is)."""
    doc = yaml.safe_load(path.read_text())
    pool = doc["deployments"][0]["work_pool"]
    doc["deployments"] = doc["deployments"] + [{**d, "work_pool": pool} for d in extra]
    doc.pop("definitions", None)  # its anchors are resolved in what safe_load read
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def _deploy_file(path: Path, site_path: Path, api_url: str, bad_plans: list[str], say) -> DeployResult:
    refs = load_entrypoints(read_deployments(path))
    pool_created = ensure_pool(POOL)
    if pool_created:
        say(f"created work pool {POOL} ({POOL_TYPE})")
    servers = _ensure_process_server_queues(site_path, say)
    loadable = [r for r in refs if r.error is None]
    if loadable:
        say(f"deploying {len(loadable)} deployments from {path}")
        _prefect_deploy(path, [r.name for r in loadable], site_path, api_url)
    broken = [r for r in refs if r.error is not None]
    absent = missing([r.full_name for r in loadable], existing_deployments())
    if broken or absent or bad_plans:
        why = ([f"{r.name} ({r.entrypoint}: {r.error})" for r in broken] + [f"{n} (not on the server after deploy)" for n in absent]
               + bad_plans)
        raise DeployError(f"{len(why)} of {len(refs) + len(bad_plans)} deployments not registered: {'; '.join(why)}")
    return DeployResult(pool=POOL, pool_created=pool_created, deployments=[r.full_name for r in loadable],
                        alerts=_ensure_alerts(site_path), process_servers=servers)


def _ensure_process_server_queues(site_path: Path, say) -> list[str]:
    """Each process server's work queue with its concurrency limit (drbook.scaleout.queues)."""
    from drbook.config import load_site
    from drbook.scaleout.queues import ensure_queues

    servers = load_site(site_path).process_servers
    for change in ensure_queues(servers):
        say(change)
    return [f"{ps.name} (queue {ps.queue}, at most {ps.max_cycles} cycles)" for ps in servers]


def ensure_pool(name: str = POOL) -> bool:
    """The process work pool; True when this call created it. A pool of that name and another
    type is refused: its workers would not run our deployments the way they expect."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE,
                                                       base_job_template=ProcessWorker.get_default_base_job_template()))
                return True
            except ObjectAlreadyExists:  # a worker starting at the same moment made it
                pool = client.read_work_pool(name)
        if pool.type != POOL_TYPE:
            raise DeployError(f"work pool {name} exists with type {pool.type}; drbook needs a {POOL_TYPE} pool")
        return False


def _prefect_deploy(path: Path, names: list[str], site_path: Path, api_url: str) -> None:
    argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(path)]
    for name in names:
        argv += ["--name", name]
    env = {**os.environ, "DRBOOK_SITE": str(site_path), "PREFECT_API_URL": api_url}
    # A neutral directory: deploy may write files where it runs, never into a checkout or site-packages.
    with tempfile.TemporaryDirectory(prefix="drbook-deploy-") as cwd:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        raise DeployError(f"prefect deploy failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")


def existing_deployments() -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])))
        flows = {f.id: f.name for f in client.read_flows(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])))}
    return {f"{flows.get(d.flow_id)}/{d.name}" for d in deployments}


def _ensure_alerts(site_path: Path) -> list[str] | None:
    """The RPO alert automations, when drbook.alerts provides them."""
    try:
        alerts = importlib.import_module("drbook.alerts")
    except ModuleNotFoundError as exc:
        if exc.name != "drbook.alerts":
            raise
        return None
    ensure = getattr(alerts, "ensure_alerts", None)
    if ensure is None:
        return None
    from drbook.config import load_site

    made = ensure(load_site(site_path))
    return [str(a) for a in made] if isinstance(made, (list, tuple)) else []
