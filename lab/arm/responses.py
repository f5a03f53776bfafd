"""HTTP in, backend call, HTTP out: one small function per ARM operation.

Each handler gets the backend and the parsed request, calls the backend, and turns what it
answers (a resource, a list, or an outcome from models/outcomes.py) into a Response: the status
code and the long-running-operation headers are decided here, as ARM's resource providers send
them. Most handlers run entirely under the store's lock (`locked`), so bodies, which are live
state, are serialised before anyone else can change them; disk creation and grant access do
their blob work between two locked steps so one slow copy does not stall every other request.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .exceptions import ArmError
from .models import ArmBackend
from .models.disks import DiskPlan
from .models.outcomes import Deletion, Operation, Written
from .models.vms import power_lock
from .settings import retry_headers


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    base_url: str
    api_version: str = ""
    op_type: str = ""

    def q(self, name: str) -> str | None:
        for k, v in self.query.items():
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise ArmError("The request content must be a JSON object.", code="InvalidRequestContent", status=400)
        return self.body


@dataclass
class Response:
    status: int
    payload: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def encode(body: Any) -> bytes:
    return b"" if body is None else json.dumps(body, separators=(",", ":")).encode()


def error_response(exc: ArmError) -> Response:
    return Response(exc.status, encode(exc.body()), dict(exc.headers))


# == answers ==================================================================================


def ok(body: Any = None) -> Response:
    return Response(200, encode(body))


def listing(items: list[Any]) -> Response:
    return ok({"value": items})


def _retry_after(op: Operation) -> dict[str, str]:
    return retry_headers(max(op["deadline"] - time.time(), 0.01))


def _op_urls(r: Request, op: Operation) -> tuple[str, str]:
    """The operation's status URL and its result URL."""
    sub = op["resourceId"].split("/")[2]
    v = r.api_version
    if op["namespace"] == "Microsoft.Resources":
        url = f"{r.base_url}/subscriptions/{sub}/operationresults/{op['id']}?api-version={v}"
        return url, url
    base = f"{r.base_url}/subscriptions/{sub}/providers/{op['namespace']}/locations/{op['location']}"
    if op["opType"].lower().startswith(("microsoft.compute/disks/", "microsoft.compute/snapshots/")):
        return (f"{base}/DiskOperations/{op['id']}?api-version={v}",
                f"{base}/DiskOperationResults/{op['id']}?api-version={v}")
    return f"{base}/operations/{op['id']}?api-version={v}", f"{base}/operationResults/{op['id']}?api-version={v}"


LroHeaders = Callable[[Request, Operation], dict[str, str]]


def async_headers(r: Request, op: Operation) -> dict[str, str]:
    """Compute and Network: Azure-AsyncOperation, plus Location for POST and DELETE."""
    status_url, result_url = _op_urls(r, op)
    headers = {"Azure-AsyncOperation": status_url}
    if r.method in ("POST", "DELETE"):
        headers["Location"] = result_url
    return {**headers, **_retry_after(op)}


def location_headers(r: Request, op: Operation) -> dict[str, str]:
    """Resources (group delete) and Storage (account create): Location only."""
    return {"Location": _op_urls(r, op)[1], **_retry_after(op)}


def accepted(r: Request, op: Operation, lro: LroHeaders = async_headers) -> Response:
    """202: the change goes on in the operation the headers point to."""
    return Response(202, b"", lro(r, op))


def written(r: Request, w: Written, *, created: int = 201) -> Response:
    """A PUT/PATCH: `created` (201, or 202 for disks) for a new resource, else 200; the body as it now stands."""
    headers = async_headers(r, w.operation) if w.operation is not None else {}
    return Response(created if w.created else 200, encode(w.resource), headers)


def deleted(r: Request, d: Deletion, lro: LroHeaders = async_headers) -> Response:
    """204 when nothing was there, 200 when gone at once, else 202 with the operation."""
    if not d.existed:
        return Response(204)
    if d.operation is None:
        return Response(200)
    return accepted(r, d.operation, lro)


def locked(fn: Callable[[ArmBackend, Request], Response]) -> Callable[[ArmBackend, Request], Response]:
    def run(b: ArmBackend, r: Request) -> Response:
        with b.store.txn():
            b.settle()
            return fn(b, r)

    run.__name__ = fn.__name__
    return run


def in_txn(b: ArmBackend, fn: Callable[[], Response]) -> Response:
    with b.store.txn():
        b.settle()
        return fn()


def vm_locked(fn: Callable[[ArmBackend, Request], Response]) -> Callable[[ArmBackend, Request], Response]:
    """A change to a VM: under the VM's power lock (models/vms.py), then the store's lock."""
    def run(b: ArmBackend, r: Request) -> Response:
        p = r.params
        with power_lock(f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/providers/Microsoft.Compute/"
                        f"virtualMachines/{p['name']}"):
            return locked(fn)(b, r)

    run.__name__ = fn.__name__
    return run


P = Callable[[ArmBackend, Request], Response]

# == Microsoft.Resources ======================================================================


@locked
def rg_put(b, r):
    return written(r, b.put_rg(r.params["sub"], r.params["rg"], r.json()))


@locked
def rg_get(b, r):
    return ok(b.get_rg(r.params["sub"], r.params["rg"]))


@locked
def rg_head(b, r):
    return Response(204 if b.rg_exists(r.params["sub"], r.params["rg"]) else 404)


@locked
def rg_patch(b, r):
    return ok(b.patch_rg(r.params["sub"], r.params["rg"], r.json()))


@locked
def rg_delete(b, r):
    return deleted(r, b.delete_rg(r.params["sub"], r.params["rg"]), location_headers)


@locked
def rg_list(b, r):
    return listing(b.list_rgs(r.params["sub"], r.q("$filter"), r.q("$top")))


@locked
def resources_list(b, r):
    return listing(b.list_resources(r.params["sub"], r.params.get("rg"), r.q("$filter"), r.q("$expand"),
                                    r.q("$top")))


@locked
def tags_get(b, r):
    return ok(b.get_tags(r.params["scope"]))


@locked
def tags_put(b, r):
    return ok(b.put_tags(r.params["scope"], r.json()))


@locked
def tags_patch(b, r):
    return ok(b.patch_tags(r.params["scope"], r.json()))


@locked
def tags_delete(b, r):
    b.delete_tags(r.params["scope"])
    return ok()


# == long-running operation status ============================================================


@locked
def op_status(b, r):
    op = b.operation(r.params["sub"], r.params["opid"])
    headers = _retry_after(op) if op["status"] == "InProgress" else {}
    return Response(200, encode(b.op_status_body(op)), headers)


def op_result(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        b.settle()
        op = b.operation(r.params["sub"], r.params["opid"])
        if op["status"] == "InProgress":
            url = f"{r.base_url}{r.path}?api-version={r.api_version}"
            return Response(202, b"", {"Location": url, **_retry_after(op)})
        if op["status"] == "Failed":
            err = dict(op["error"])
            status = int(err.pop("status", 500))
            return Response(status, encode({"error": err}))
        if op.get("result") is not None:
            return Response(200, encode(op["result"]))
        return Response(204 if op["namespace"] != "Microsoft.Resources" else 200)


# == Microsoft.Compute: disks and snapshots ===================================================


def _disk_put(kind: str) -> P:
    def run(b: ArmBackend, r: Request) -> Response:
        with b.store.txn():
            b.settle()
            plan = b.disk_put_plan(kind, r.params["sub"], r.params["rg"], r.params["name"], r.json())
            if not isinstance(plan, DiskPlan):
                return written(r, plan, created=202)
        lock = b.snapshot_family_lock(plan)  # an incremental snapshot: one copy at a time per disk
        with lock if lock is not None else contextlib.nullcontext():
            if plan.import_uri or plan.copy_blob:
                b.disk_blob_work(plan)  # raises InvalidVhd & co. before anything is recorded
            return in_txn(b, lambda: written(r, b.disk_put_commit(plan), created=202))

    return run


def _grant(kind: str) -> P:
    def run(b: ArmBackend, r: Request) -> Response:
        with b.store.txn():
            b.settle()
            plan = b.grant_plan(kind, r.params["sub"], r.params["rg"], r.params["name"], r.json())
        try:
            b.grant_blob_work(plan)
        except BaseException:
            with b.store.txn():
                b.grant_abort(plan)
            raise
        return in_txn(b, lambda: accepted(r, b.grant_commit(kind, plan, r.base_url)))

    return run


def _kind(kind: str, method: str) -> P:
    @locked
    def run(b, r):
        p = r.params
        if method == "get":
            return ok(b.get_disk(kind, p["sub"], p["rg"], p["name"]))
        if method == "patch":
            return written(r, b.patch_disk(kind, p["sub"], p["rg"], p["name"], r.json()))
        if method == "delete":
            return deleted(r, b.delete_disk(kind, p["sub"], p["rg"], p["name"]))
        if method == "list":
            return listing(b.list_disks(kind, p["sub"], p.get("rg")))
        if method == "revoke":
            return accepted(r, b.revoke(kind, p["sub"], p["rg"], p["name"]))
        raise AssertionError(method)

    return run


# == Microsoft.Compute: virtual machines and sizes ============================================


@vm_locked
def vm_put(b, r):
    return written(r, b.put_vm(r.params["sub"], r.params["rg"], r.params["name"], r.json()))


@locked
def vm_get(b, r):
    return ok(b.get_vm(r.params["sub"], r.params["rg"], r.params["name"], r.q("$expand")))


@vm_locked
def vm_patch(b, r):
    return written(r, b.patch_vm(r.params["sub"], r.params["rg"], r.params["name"], r.json()))


@vm_locked
def vm_delete(b, r):
    return deleted(r, b.delete_vm(r.params["sub"], r.params["rg"], r.params["name"]))


@locked
def vm_list(b, r):
    return listing(b.list_vms(r.params["sub"], r.params.get("rg"), r.params.get("loc")))


@locked
def vm_instance_view(b, r):
    return ok(b.instance_view(r.params["sub"], r.params["rg"], r.params["name"]))


@locked
def vm_available_sizes(b, r):
    return listing(b.vm_available_sizes(r.params["sub"], r.params["rg"], r.params["name"]))


def _vm_action(action: str) -> P:
    @vm_locked
    def run(b, r):
        return accepted(r, b.vm_action(action, r.params["sub"], r.params["rg"], r.params["name"]))

    return run


@locked
def vm_run_command(b, r):
    return accepted(r, b.run_command(r.params["sub"], r.params["rg"], r.params["name"], r.json()))


@locked
def vm_sizes(b, r):
    return listing(b.vm_sizes(r.params["sub"], r.params["loc"]))


# == Microsoft.Network ========================================================================


def _net_top(type_: str, method: str) -> P:
    put = {"virtualNetworks": "put_vnet", "networkSecurityGroups": "put_nsg", "networkInterfaces": "put_nic",
           "publicIPAddresses": "put_pip"}[type_]

    @locked
    def run(b, r):
        p = r.params
        if method == "put":
            return written(r, getattr(b, put)(p["sub"], p["rg"], p["name"], r.json()))
        if method == "get":
            return ok(b.net_get_top(p["sub"], p["rg"], type_, p["name"]))
        if method == "patch":
            return ok(b.net_patch_tags(p["sub"], p["rg"], type_, p["name"], r.json()))
        if method == "delete":
            return deleted(r, b.net_delete_top(p["sub"], p["rg"], type_, p["name"]))
        if method == "list":
            return listing(b.net_list(p["sub"], p.get("rg"), type_))
        raise AssertionError(method)

    return run


def _net_child(parent_type: str, child_type: str, method: str) -> P:
    put = {"subnets": "put_subnet", "securityRules": "put_rule", "virtualNetworkPeerings": "put_peering"}[child_type]

    @locked
    def run(b, r):
        p = r.params
        if method == "put":
            return written(r, getattr(b, put)(p["sub"], p["rg"], p["parent"], p["name"], r.json()))
        if method == "get":
            return ok(b.get_child(p["sub"], p["rg"], parent_type, p["parent"], child_type, p["name"]))
        if method == "delete":
            return deleted(r, b.delete_child(p["sub"], p["rg"], parent_type, p["parent"], child_type, p["name"]))
        if method == "list":
            return listing(b.list_children(p["sub"], p["rg"], parent_type, p["parent"], child_type))
        raise AssertionError(method)

    return run


@locked
def nsg_default_rules(b, r):
    return listing(b.list_default_rules(r.params["sub"], r.params["rg"], r.params["parent"]))


# == Microsoft.Storage ========================================================================


@locked
def sa_put(b, r):
    w = b.put_account(r.params["sub"], r.params["rg"], r.params["name"], r.json())
    if w.created:  # the account comes with the operation's result, not with this answer
        return accepted(r, w.operation, location_headers)
    return written(r, w)


@locked
def sa_get(b, r):
    return ok(b.get_account(r.params["sub"], r.params["rg"], r.params["name"]))


@locked
def sa_patch(b, r):
    return ok(b.patch_account(r.params["sub"], r.params["rg"], r.params["name"], r.json()))


@locked
def sa_delete(b, r):
    return deleted(r, b.delete_account(r.params["sub"], r.params["rg"], r.params["name"]))


@locked
def sa_list(b, r):
    return listing(b.list_accounts(r.params["sub"], r.params.get("rg")))


@locked
def sa_keys(b, r):
    return ok({"keys": b.list_keys(r.params["sub"], r.params["rg"], r.params["name"])})


@locked
def sa_name_check(b, r):
    return ok(b.check_name_availability(r.params["sub"], r.json()))


# == the lab's own control endpoints (no auth, no api-version) ================================


def lab_health(b: ArmBackend, r: Request) -> Response:
    return Response(200, encode({"status": "ok", "subscriptionId": b.config.subscription_id,
                                 "location": b.config.location}))


def lab_reset(b: ArmBackend, r: Request) -> Response:
    b.reset()
    return Response(200, encode({"status": "reset"}))


def lab_operations(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        if r.method == "POST":
            b.settings.set_operation(r.json())
        return Response(200, encode({"operations": b.store.settings.get("operations", {}),
                                     "defaultDuration": b.settings.default_duration}))


def lab_faults(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        if r.method == "POST":
            b.settings.set_fault(r.json())
        if r.method == "DELETE":
            b.store.settings["faults"] = {}
            b.store.touch()
        return Response(200, encode({"faults": b.store.settings.get("faults", {})}))


def lab_snapshot_limits(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        if r.method == "POST":
            b.settings.set_snapshot_limits(r.json())
        return Response(200, encode(b.settings.snapshot_limits()))


def lab_snapshot_families(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        return Response(200, encode({"families": b.snapshot_families()}))


def lab_run_command_output(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        b.settings.set_run_command_output(r.json())
        return Response(200, encode({"runCommandOutput": b.store.settings.get("runCommandOutput", {})}))


def lab_run_commands(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        if r.method == "DELETE":
            b.store.data["runCommands"] = []
            b.store.touch()
        return Response(200, encode({"value": b.store.data.get("runCommands", [])}))


def lab_guest_disks(b: ArmBackend, r: Request) -> Response:
    with b.store.txn():
        b.settle()
        return Response(200, encode({"disks": b.guest_disks(str(r.json().get("vm") or ""), r.base_url)}))


def new_request_id() -> str:
    return str(uuid.uuid4())
