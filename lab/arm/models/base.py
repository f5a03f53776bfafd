"""Shared machinery of the backends: configuration, records, and long-running operations.

A resource is stored as ``{"body": <ARM JSON>, "lab": <what only the emulator knows>}``.
A long-running operation is a record in ``store.operations``; it finishes once its duration
has passed (checked lazily at every request, so nothing runs behind the lock's back), by calling
``_complete_<action>`` (or ``_failed_<action>`` when the lab asked it to fail). Completions are
named, not closures, so operations survive a restart.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..blobs import DiskBlobs
from ..exceptions import ArmError, InvalidParameter, error_from_dict, resource_group_not_found, \
    resource_not_found, subscription_not_found
from ..ids import ResourceId, parse_id, rg_id
from ..settings import LabSettings
from ..store import Store
from . import regions

OPERATION_RETENTION = 300.0  # a finished operation's status, for pollers (also across a restart)


@dataclass(frozen=True)
class ArmConfig:
    subscription_id: str
    location: str = "westeurope"
    blob_endpoint: str | None = None
    blob_account: str | None = None
    blob_key: str | None = None
    ca_bundle: str | None = None
    state_dir: Path | None = None
    default_duration: float = 0.05


def now_iso(ts: float | None = None) -> str:
    return dt.datetime.fromtimestamp(ts if ts is not None else time.time(), dt.timezone.utc).isoformat() \
        .replace("+00:00", "Z")


_BAD_NAME = re.compile(r"[\\/\"'\[\]:|<>+=;,?*@&#%]")


def check_name(name: str, what: str, max_len: int = 80) -> None:
    if not name or len(name) > max_len or _BAD_NAME.search(name) or name.endswith("."):
        raise ArmError(f"Resource name '{name}' is invalid for {what}: it must be 1-{max_len} characters, "
                       "must not end with '.', and must not contain \\/\"'[]:|<>+=;,?*@&#%.",
                       code="InvalidResourceName", status=400)


def tags_of(body: dict[str, Any]) -> dict[str, str]:
    tags = body.get("tags") or {}
    if not isinstance(tags, dict):
        raise InvalidParameter("tags must be an object of name/value strings.", target="tags")
    return {str(k): str(v) for k, v in tags.items()}


class Base:
    def __init__(self, store: Store, config: ArmConfig, blobs: DiskBlobs, settings: LabSettings) -> None:
        self.store = store
        self.config = config
        self.blobs = blobs
        self.settings = settings

    # -- scopes ------------------------------------------------------------------------------
    def check_sub(self, sub: str) -> None:
        if sub.lower() != self.config.subscription_id.lower():
            raise subscription_not_found(sub)

    def require_rg(self, sub: str, rg: str) -> dict[str, Any]:
        self.check_sub(sub)
        group = self.store.resource_group(sub, rg)
        if group is None:
            raise resource_group_not_found(rg)
        return group

    def writable_rg(self, sub: str, rg: str) -> dict[str, Any]:
        group = self.require_rg(sub, rg)
        if group["body"]["properties"]["provisioningState"] == "Deleting":
            raise ArmError(f"The resource group '{group['body']['name']}' is in deprovisioning state and "
                           "cannot perform this operation.", code="ResourceGroupBeingDeleted", status=409)
        return group

    def rid(self, sub: str, rg: str, namespace: str, type_: str, name: str) -> ResourceId:
        """The id of a new or existing resource, with the resource group's stored casing."""
        group = self.require_rg(sub, rg)
        existing = group["resources"].get(
            str(ResourceId(sub, group["body"]["name"], namespace, type_, name)).lower())
        if existing:
            return parse_id(existing["body"]["id"])
        return ResourceId(self.config.subscription_id, group["body"]["name"], namespace, type_, name)

    def prepare_put(self, sub: str, rg: str, namespace: str, type_: str, name: str, body: dict[str, Any],
                    *, max_name: int = 80) -> tuple[ResourceId, dict[str, Any] | None, str, dict[str, str]]:
        """Checks every top-level PUT shares: group, name, location, and no operation in flight."""
        self.writable_rg(sub, rg)
        check_name(name, f"{namespace}/{type_}", max_name)
        rid = self.rid(sub, rg, namespace, type_, name)
        location = regions.check(body.get("location"), f"{namespace}/{type_}")
        existing = self.get(rid)
        if existing:
            self.busy(existing)
            if existing["body"]["location"] != location:
                raise ArmError(f"The resource '{rid.name}' already exists in location "
                               f"'{existing['body']['location']}' in resource group '{rid.resource_group}'. "
                               f"A resource with the same name cannot be created in location '{location}'.",
                               code="InvalidResourceLocation", status=409)
        return rid, existing, location, tags_of(body)

    # -- records -----------------------------------------------------------------------------
    def get(self, rid: ResourceId | str) -> dict[str, Any] | None:
        if isinstance(rid, str):
            try:
                rid = parse_id(rid)
            except ArmError:
                return None
        group = self.store.resource_group(rid.subscription, rid.resource_group)
        if not group:
            return None
        return group["resources"].get(str(rid.parent).lower())

    def require(self, rid: ResourceId) -> dict[str, Any]:
        self.require_rg(rid.subscription, rid.resource_group)
        record = self.get(rid)
        if record is None:
            raise resource_not_found(f"{rid.namespace}/{rid.type}", rid.name, rid.resource_group)
        return record

    def save(self, record: dict[str, Any]) -> dict[str, Any]:
        rid = parse_id(record["body"]["id"])
        group = self.store.resource_group(rid.subscription, rid.resource_group)
        group["resources"][rid.key] = record
        self.store.touch()
        return record

    def remove(self, resource_id: str) -> dict[str, Any] | None:
        rid = parse_id(resource_id)
        group = self.store.resource_group(rid.subscription, rid.resource_group)
        if not group:
            return None
        self.store.touch()
        return group["resources"].pop(rid.key, None)

    def new_record(self, rid: ResourceId, location: str, tags: dict[str, str], properties: dict[str, Any],
                   **top: Any) -> dict[str, Any]:
        body = {"id": str(rid), "name": rid.name, "type": f"{rid.namespace}/{rid.type}", "location": location,
                "tags": tags, **top, "properties": properties}
        return {"body": body, "lab": {"created": time.time()}}

    def rg_id(self, sub: str, rg: str) -> str:
        return rg_id(sub, rg)

    # -- long-running operations -------------------------------------------------------------
    def busy(self, record: dict[str, Any]) -> None:
        """Refuse a second change while an operation on the same resource is running."""
        op_id = record["lab"].get("op")
        op = self.store.operations.get(op_id) if op_id else None
        if op and op["status"] == "InProgress":
            raise ArmError(f"Operation '{op['opType']}' on resource '{record['body']['name']}' is still in "
                           "progress; retry after it completes.", code="AnotherOperationInProgress", status=409)

    def start_op(self, op_type: str, resource_id: str, action: str, *, namespace: str, location: str,
                 args: dict[str, Any] | None = None, record: dict[str, Any] | None = None) -> dict[str, Any]:
        duration, failure = self.settings.plan(op_type)
        now = time.time()
        op = {"id": str(uuid.uuid4()), "opType": op_type, "namespace": namespace, "location": location,
              "resourceId": resource_id, "action": action, "args": args or {}, "start": now,
              "deadline": now + duration, "status": "InProgress", "failWith": failure}
        self.store.operations[op["id"]] = op
        if record is not None:
            record["lab"]["op"] = op["id"]
        self.store.touch()
        return op

    def settle(self) -> None:
        """Finish every operation whose time has come, oldest deadline first."""
        now = time.time()
        due = sorted((op for op in self.store.operations.values()
                      if op["status"] == "InProgress" and op["deadline"] <= now), key=lambda o: o["deadline"])
        for op in due:
            try:
                if op.get("failWith"):
                    raise error_from_dict(op["failWith"])
                result = getattr(self, f"_complete_{op['action']}")(op)
                op["status"] = "Succeeded"
                if result is not None:
                    op["result"] = result
            except ArmError as exc:
                op["status"] = "Failed"
                op["error"] = exc.as_dict()
                failed = getattr(self, f"_failed_{op['action']}", None)
                if failed:
                    failed(op)
            op["end"] = time.time()
            record = self.get(op["resourceId"])
            if record and record["lab"].get("op") == op["id"]:
                record["lab"].pop("op", None)
            self.store.touch()
        if due:
            self._prune(now)

    def _prune(self, now: float) -> None:
        ops = self.store.operations
        for op_id in [k for k, o in ops.items() if o["status"] != "InProgress"
                      and now - o.get("end", now) > OPERATION_RETENTION]:
            del ops[op_id]

    def operation(self, sub: str, op_id: str) -> dict[str, Any]:
        self.check_sub(sub)
        op = self.store.operations.get(op_id)
        if op is None:
            raise ArmError(f"The operation '{op_id}' was not found.", code="NotFound", status=404)
        return op

    @staticmethod
    def op_status_body(op: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"name": op["id"], "status": op["status"], "startTime": now_iso(op["start"])}
        if op["status"] != "InProgress":
            body["endTime"] = now_iso(op.get("end"))
        if op["status"] == "Succeeded" and op.get("result") is not None:
            body["properties"] = {"output": op["result"]}
        if op["status"] == "Failed":
            err = dict(op["error"])
            err.pop("status", None)
            body["error"] = err
        return body
