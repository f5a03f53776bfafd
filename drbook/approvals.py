"""Human approvals of paused runs (failover, failback): list what waits, answer one.

Prefect 3.8.8 has no `prefect flow-run resume`; this is drbook's. An answer that the run's
form refuses (validation) leaves the run paused, and the error says why.
"""

from __future__ import annotations

import getpass
import json

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.input import keyset_from_paused_state
from prefect.exceptions import ObjectNotFound

from drbook.errors import DRError, NotFoundError
from drbook.failover.approval import require_point_value
from drbook.runs import require_run_id


def waiting_approvals() -> list[dict]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
        )
        flows = {}
        rows = []
        for r in runs:
            if r.flow_id not in flows:
                flows[r.flow_id] = client.read_flow(r.flow_id).name
            params = r.parameters or {}
            rows.append({
                "run_id": str(r.id),
                "flow": flows[r.flow_id],
                "name": r.name,
                "machines": ", ".join(params.get("machines") or []),
                "plan": params.get("plan"),  # a recovery plan's run: its approval, then its manual steps
                "planned": params.get("planned"),
                "point": params.get("point"),
                "site_path": params.get("site_path"),  # None: the deployment's worker site
                "since": r.state.timestamp.isoformat() if r.state and r.state.timestamp else None,
            })
    return rows


def form_schema(client, run) -> dict:
    """The JSON schema of the form a paused run waits for (what the UI draws); {} if none."""
    keyset = keyset_from_paused_state(run.state)
    try:
        return json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
    except Exception:  # a run paused without a form, or one whose schema is gone
        return {}


def answer(run_id: str, *, approve: bool, comment: str = "", approver: str | None = None, point: str | None = None) -> None:
    """Resume a paused run with a filled-in form. The approver defaults to the OS user; a
    `point` must be one of the form's choices (an id, a keyword or a full label), else the
    run is left paused and the error lists the choices."""
    rid = require_run_id(run_id)
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(rid)
        except ObjectNotFound:
            raise NotFoundError(f"no flow run {run_id}") from None
        if run.state_type != StateType.PAUSED:
            raise DRError(f"flow run {run_id} is not waiting for approval (it is {run.state_name})")
        schema = form_schema(client, run)
    answer_input: dict = {"approve": approve, "approver": approver or getpass.getuser(), "comment": comment}
    if point:
        choices = schema.get("properties", {}).get("point", {}).get("enum")
        answer_input["point"] = require_point_value(choices, point) if choices else point
    try:
        resume_flow_run(rid, run_input=answer_input)
    except RuntimeError as exc:
        raise DRError(f"the run refused the answer and stays paused: {exc}") from None
