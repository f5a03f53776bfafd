"""Runs of deployments, as the CLI starts and follows them (DESIGN.md §4, "Runs.").

    start(deployment, parameters)   read the deployment, validate the parameters against its
                                    schema (exit 2 before anything exists), create the run
    follow(run)                     poll its state, logs and progress artifacts until it ends;
                                    a paused run (an approval) is shown with how to answer it
    result                          a completed run's persisted result, read back with
                                    `state.result()`; a failed run raises the flow's own
                                    drbook error when it can be read back (its message and
                                    exit code), else a RunError below

The CLI is a client: the run executes on a process-server worker, exactly as one started
from the UI, a schedule or an automation would. Reading the result back needs the worker's
result storage to be readable here: on one host the default local storage is (the result
record names an absolute path); across hosts the worker needs a shared result storage block
(PREFECT_DEFAULT_RESULT_STORAGE_BLOCK, e.g. Azure Blob) that this machine can read too.

Decisions (URLs, what a state means, which error and exit code) are pure functions at the
top, tested with plain data; the I/O that applies them follows.

    DRError
    ├── InvalidParameters   the deployment refuses the parameters; no run exists      (2)
    ├── DeploymentNotFound  the stage is not deployed on this Prefect server          (2)
    └── RunError            a run did not complete; carries its id, name and UI URL
        ├── RunFailed       failed, with an error that is not drbook's                (10)
        │                   (a drbook error keeps its own exit code: 4, 5, 6, 7, 8 ...)
        ├── RunCrashed      its process or infrastructure died                        (11)
        ├── RunCancelled    someone cancelled it                                      (12)
        └── ResultUnavailable  completed, but its result cannot be read here           (13)
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from uuid import UUID

from drbook.errors import (DeploymentNotFound, DRError, InvalidParameters, ResultUnavailable, RunCancelled,
                           RunCrashed, RunError, RunFailed)

POLL_SECONDS = 0.5
# The worker sends a run's last log lines shortly after its final state: keep reading this long.
LOG_TAIL_SECONDS = 1.5
V2 = "v2"  # the V2 UI is mounted at /v2 in Prefect 3.8.8 (`/runs/flow-run/{id}` is V1's page)


@dataclass(frozen=True)
class RunRef:
    id: str
    name: str
    deployment: str  # "flow name/deployment name"
    url: str | None
    work_pool: str | None = None

    @property
    def label(self) -> str:
        return f"{self.deployment} run {self.name}"

    def public(self) -> dict:
        return {"flow_run_id": self.id, "name": self.name, "deployment": self.deployment, "ui_url": self.url,
                "work_pool": self.work_pool}


# -- pure decisions -------------------------------------------------------------------------------
def ui_base(ui_url: str | None, api_url: str | None) -> str | None:
    """The V2 UI's base URL: PREFECT_UI_URL when set, else the API URL without its /api (as
    Prefect itself derives it), then /v2 unless the configured URL already points there."""
    base = ui_url
    if not base and api_url:
        base = api_url.rstrip("/")
        base = base[: -len("/api")] if base.endswith("/api") else base
    if not base:
        return None
    base = base.rstrip("/")
    return base if base.endswith(f"/{V2}") else f"{base}/{V2}"


def run_url(base: str | None, run_id: str) -> str | None:
    return f"{base}/runs/flow-run/{run_id}" if base else None


# What a state means to the person following the run.
WAITING, LATE, RUNNING, PAUSED, COMPLETED, FAILED, CRASHED, CANCELLED, CANCELLING = (
    "waiting", "late", "running", "paused", "completed", "failed", "crashed", "cancelled", "cancelling")
FINAL = {COMPLETED, FAILED, CRASHED, CANCELLED}


def phase(state_type: str, state_name: str | None = None) -> str:
    """Prefect's state type (and name: "Late" is a SCHEDULED state) as one of the phases above.
    A suspended run (suspend_flow_run) is PAUSED too: it waits for its input without a process."""
    t = str(getattr(state_type, "value", state_type)).upper()
    if t == "SCHEDULED":
        return LATE if (state_name or "").lower() == "late" else WAITING
    return {"PENDING": WAITING, "RUNNING": RUNNING, "PAUSED": PAUSED, "COMPLETED": COMPLETED, "FAILED": FAILED,
            "CRASHED": CRASHED, "CANCELLED": CANCELLED, "CANCELLING": CANCELLING}.get(t, RUNNING)


_EXCEPTION_IN_MESSAGE = re.compile(r"encountered an exception:\s*(?P<name>[A-Za-z_][\w.]*):\s*(?P<text>.*)", re.S)


def _drbook_error_classes() -> dict[str, type[DRError]]:
    found: dict[str, type[DRError]] = {}
    todo = [DRError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def drbook_error_in(message: str | None) -> tuple[type[DRError], str] | None:
    """A failed state's message names the exception ("Flow run encountered an exception:
    ApprovalRejected: ..."): the drbook error class it names and its text, if it is one."""
    m = _EXCEPTION_IN_MESSAGE.search(message or "")
    if not m:
        return None
    cls = _drbook_error_classes().get(m.group("name").rsplit(".", 1)[-1])
    return (cls, m.group("text").strip()) if cls else None


def failure(run: RunRef, state_type: str, state_name: str | None, message: str | None) -> RunError:
    """The error of a run that ended without completing, from its final state alone (used when
    the flow's own exception cannot be read back). A drbook error named in the message keeps
    its exit code and text; otherwise the outcome decides: failed 10, crashed 11, cancelled 12."""
    p = phase(state_type, state_name)
    why = " ".join((message or "").split()) or f"state {state_name or state_type}"
    if p == CRASHED:
        return RunCrashed(f"{run.label} crashed (its process or infrastructure died): {why}", run=run)
    if p == CANCELLED:
        return RunCancelled(f"{run.label} was cancelled: {why}", run=run)
    named = drbook_error_in(message)
    if named:
        cls, text = named
        return RunFailed(" ".join(text.split()), run=run, exit_code=cls.exit_code)
    return RunFailed(f"{run.label} failed: {why}", run=run)


def approval_hint(run: RunRef) -> str:
    where = f" or in the UI ({run.url}: Open menu → Resume)" if run.url else " or in the Prefect UI (Open menu → Resume)"
    return f"{run.label} waits for approval: `drbook approve {run.id}` (or --reject){where}"


def late_hint(run: RunRef, pool_ready: bool | None) -> str:
    pool = run.work_pool or "its work pool"
    if pool_ready is False:
        return (f"{run.label} is late: no worker is polling {pool} (start one: `drbook-lab up` on the lab, "
                f"`prefect worker start --pool {pool}` on a site); it starts when one does")
    return f"{run.label} is late: the workers of {pool} have not picked it up yet"


def first_line(message: str) -> str:
    lines = message.strip().splitlines() or [""]
    return lines[0] + (" … (full text in the UI)" if len(lines) > 1 else "")


def require_run_id(run_id: str) -> UUID:
    """A flow run id (a UUID), refused before anything is asked of the server."""
    try:
        return UUID(run_id)
    except ValueError:
        raise InvalidParameters(f"{run_id!r} is not a flow run id (see `drbook approvals`)") from None


def pick_parameters(given: dict[str, Any]) -> dict[str, Any]:
    """What the CLI sends: what the person gave; an option left unset (None) lets the
    deployment's own default apply, as a run from the UI would."""
    return {k: v for k, v in given.items() if v is not None}


# -- I/O: start -----------------------------------------------------------------------------------
def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _ui_base() -> str | None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    try:
        ui = PREFECT_UI_URL.value()
    except Exception:  # derived setting; never let a URL stop a run
        ui = None
    return ui_base(ui, PREFECT_API_URL.value())


def _server_detail(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    try:
        detail = response.json().get("detail") if response is not None else None
    except Exception:
        detail = None
    return " ".join(str(detail or exc).split())


def read_deployment(name: str):
    from prefect.exceptions import ObjectNotFound

    with _client() as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeploymentNotFound(
                f"no deployment {name} on the Prefect server ({_api_url()}): register them with `drbook deploy` "
                "(the lab: `drbook-lab up`), or run this stage in this process with --local") from None
        except Exception as exc:
            if type(exc).__name__ in {"ConnectError", "ConnectTimeout", "HTTPStatusError", "PrefectHTTPStatusError"}:
                raise DRError(f"cannot reach the Prefect server at {_api_url()}: {_server_detail(exc)}") from None
            raise


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(PREFECT_API_URL is not set: a temporary local server)"


def worker_site(deployment) -> str | None:
    """The site config path a deployment's runs get (DRBOOK_SITE in its job variables)."""
    env = (getattr(deployment, "job_variables", None) or {}).get("env") or {}
    return env.get("DRBOOK_SITE")


def validate_parameters(deployment_name: str, schema: dict | None, defaults: dict, parameters: dict) -> None:
    """Check the parameters as the server would (enforce_parameter_schema): defaults merged,
    against the deployment's stored schema. One line, exit 2, before any run exists."""
    if not isinstance(schema, dict) or not schema:
        return
    from prefect.utilities.schema_tools import ValidationError, validate

    try:
        validate({**(defaults or {}), **parameters}, schema, raise_on_error=True)
    except ValidationError as exc:
        raise InvalidParameters(f"{deployment_name}: invalid parameters: {' '.join(str(exc).split())}") from None


def start(deployment_name: str, parameters: dict[str, Any]) -> RunRef:
    """Create a run of the deployment (it starts when the worker picks it up)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    deployment = read_deployment(deployment_name)
    parameters = pick_parameters(parameters)
    validate_parameters(deployment_name, deployment.parameter_openapi_schema, deployment.parameters, parameters)
    try:
        flow_run = run_deployment(deployment.id, parameters=parameters, timeout=0, as_subflow=False)
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code in (409, 422):  # enforce_parameter_schema refused them
            raise InvalidParameters(f"{deployment_name}: the server refused the parameters: {_server_detail(exc)}") from None
        raise
    rid = str(flow_run.id)
    return RunRef(id=rid, name=flow_run.name, deployment=deployment_name, url=run_url(_ui_base(), rid),
                  work_pool=deployment.work_pool_name)


# -- I/O: follow ----------------------------------------------------------------------------------
@dataclass
class _Watch:
    """What the follower has shown so far."""

    phase: str | None = None
    state_name: str | None = None
    late_warned: bool = False
    seen_logs: set = field(default_factory=set)
    last_log_time: Any = None
    bars: dict = field(default_factory=dict)  # artifact id -> rich task id


def _log_level() -> int:
    """Show the run's logs from the level this process would log at (PREFECT_LOGGING_LEVEL)."""
    from prefect.settings import PREFECT_LOGGING_LEVEL

    level = PREFECT_LOGGING_LEVEL.value()
    if isinstance(level, int):
        return level
    named = logging.getLevelName(str(level).upper())
    return named if isinstance(named, int) else logging.INFO


def _new_logs(client, run_id: UUID, watch: _Watch, level: int) -> list:
    from datetime import timedelta

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]), level=LogFilterLevel(ge_=level))
    if watch.last_log_time is not None:  # logs arrive in batches, not always in order: look back a little
        flt.timestamp = LogFilterTimestamp(after_=watch.last_log_time - timedelta(seconds=10))
    logs = client.read_logs(log_filter=flt, sort=LogSort.TIMESTAMP_ASC, limit=200)
    fresh = [entry for entry in logs if entry.id not in watch.seen_logs]
    for entry in fresh:
        watch.seen_logs.add(entry.id)
        if watch.last_log_time is None or entry.timestamp > watch.last_log_time:
            watch.last_log_time = entry.timestamp
    return fresh


def _progress_artifacts(client, run_id: UUID) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    return client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["progress"])))


def _pool_ready(client, pool: str | None) -> bool | None:
    if not pool:
        return None
    try:
        status = client.read_work_pool(pool).status
    except Exception:
        return None
    return None if status is None else str(getattr(status, "value", status)).upper() == "READY"


def follow(run: RunRef, *, console=None, poll: float = POLL_SECONDS) -> Any:
    """Follow a run until it ends; return its result or raise what its outcome means.
    Ctrl-C stops following, not the run (it goes on on the worker)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    console = console or Console(stderr=True, soft_wrap=True)
    rid = UUID(run.id)
    watch = _Watch()
    level = _log_level()
    try:
        with _client() as client, Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                           console=console, transient=True) as bars:
            ended_at = None
            while True:
                flow_run = client.read_flow_run(rid)
                state = flow_run.state
                p = phase(state.type, state.name) if state else WAITING
                if (p, state.name if state else None) != (watch.phase, watch.state_name):
                    watch.phase, watch.state_name = p, state.name if state else None
                    _announce(console, run, p, state, escape)
                if p == LATE and not watch.late_warned:
                    watch.late_warned = True
                    console.print(f"[yellow]{escape(late_hint(run, _pool_ready(client, run.work_pool)))}[/yellow]")
                for entry in _new_logs(client, rid, watch, level):
                    style = "red" if entry.level >= logging.ERROR else "yellow" if entry.level >= logging.WARNING else "dim"
                    console.print(f"[{style}]{_clock(entry.timestamp)} {escape(first_line(entry.message))}[/{style}]")
                for art in _progress_artifacts(client, rid):
                    task = watch.bars.get(art.id)
                    if task is None:
                        task = watch.bars[art.id] = bars.add_task(art.description or art.key or "progress", total=100)
                    try:
                        bars.update(task, completed=float(art.data or 0))
                    except (TypeError, ValueError):
                        pass
                if p in FINAL:
                    ended_at = ended_at or time.monotonic()
                    if time.monotonic() - ended_at >= LOG_TAIL_SECONDS:
                        break
                time.sleep(poll)
    except KeyboardInterrupt:
        console.print(f"stopped following; {run.label} goes on on the worker: {run.url or run.id} "
                      f"(to stop it: prefect flow-run cancel {run.id})")
        raise
    return outcome(run, state)


def _clock(ts) -> str:
    try:
        return ts.astimezone().strftime("%H:%M:%S")
    except Exception:
        return "--:--:--"


def _announce(console, run: RunRef, p: str, state, escape) -> None:
    name = state.name if state else "Scheduled"
    line = f"{_clock(state.timestamp) if state else '--:--:--'} {escape(run.label)}: {escape(name)}"
    if p == PAUSED:
        console.print(f"[bold yellow]{line}[/bold yellow]")
        console.print(f"[yellow]{escape(approval_hint(run))}[/yellow]")
    elif p in (FAILED, CRASHED, CANCELLED):
        console.print(f"[red]{line}[/red]")
    else:
        console.print(f"[bold]{line}[/bold]")


def url_of(run_id: str) -> str | None:
    """The UI page of a flow run, from this process's Prefect settings."""
    return run_url(_ui_base(), run_id)


def outcome(run: RunRef, state) -> Any:
    """A final state's meaning: the result of a completed run, else the error to raise."""
    p = phase(state.type, state.name)
    if p == COMPLETED:
        try:
            return state.result()
        except Exception as exc:
            raise ResultUnavailable(
                f"{run.label} completed, but its result cannot be read here ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())}): the worker's result storage must be readable from this "
                f"machine (a shared PREFECT_DEFAULT_RESULT_STORAGE_BLOCK); see {run.url or run.id}", run=run) from None
    if p == FAILED:
        try:
            state.result()  # raises the flow's own exception when it was persisted
        except DRError as exc:  # the flow's drbook error: its message and exit code
            raise exc from None
        except Exception:
            pass
    raise failure(run, state.type, state.name, state.message)


def run(deployment_name: str, parameters: dict[str, Any], *, wait: bool = True, console=None,
        started: Callable[[RunRef], None] | None = None) -> Any:
    """Start a run and (unless wait is false) follow it to its end."""
    ref = start(deployment_name, parameters)
    if started:
        started(ref)
    if not wait:
        return ref
    return follow(ref, console=console)
