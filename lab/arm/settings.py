"""What a test asks of the emulator: how long an operation type takes, how it ends, and faults.

Operation types are ARM's RBAC operation names, e.g. ``Microsoft.Compute/virtualMachines/write``,
``Microsoft.Compute/virtualMachines/delete``, ``Microsoft.Compute/disks/beginGetAccess/action``.
A setting's key may be a glob (``Microsoft.Compute/*``, ``*``); the exact name wins, then the
longest matching pattern. Settings live in the store, so they persist and reset with it.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from .exceptions import ArmError
from .store import Store

DEFAULT_DURATION = 0.05
DEFAULT_RUN_COMMAND_OUTPUT = "Enable succeeded: \n[stdout]\n\n[stderr]\n"
# Azure's documented limits on incremental snapshots of one disk: 500 at any time, 7 created
# within 5 minutes (learn.microsoft.com/azure/virtual-machines/disks-incremental-snapshots).
SNAPSHOT_LIMITS = {"maxPerDisk": 500, "maxPerWindow": 7, "windowSeconds": 300.0}
INJECTED_FAILURE = {"code": "InternalOperationError", "message": "The lab injected a provisioning failure."}


def _lookup(table: dict[str, Any], op_type: str) -> dict[str, Any] | None:
    key = op_type.lower()
    if key in table:
        return table[key]
    matches = [p for p in table if fnmatch.fnmatchcase(key, p)]
    return table[max(matches, key=len)] if matches else None


def _error(data: dict[str, Any] | None, default: dict[str, str]) -> dict[str, Any]:
    data = data or {}
    return {"code": str(data.get("code") or default["code"]),
            "message": str(data.get("message") or default["message"]),
            "status": int(data.get("status") or 500)}


class LabSettings:
    def __init__(self, store: Store, default_duration: float = DEFAULT_DURATION) -> None:
        self.store = store
        self.default_duration = default_duration

    def _table(self, name: str) -> dict[str, Any]:
        return self.store.settings.setdefault(name, {})

    # -- operation durations and outcomes (POST /_lab/operations) ------------------------
    def set_operation(self, body: dict[str, Any]) -> dict[str, Any]:
        op = str(body.get("operation") or "*").lower()
        table = self._table("operations")
        if body.get("clear"):
            table.pop(op, None)
        else:
            entry = table.setdefault(op, {})
            if "duration" in body:
                duration = float(body["duration"])
                if duration < 0:
                    raise ArmError("duration must be >= 0", code="InvalidLabSetting")
                entry["duration"] = duration
            if "outcome" in body:
                outcome = str(body["outcome"]).lower()
                if outcome not in ("succeed", "fail"):
                    raise ArmError("outcome must be 'succeed' or 'fail'", code="InvalidLabSetting")
                entry["outcome"] = outcome
            if body.get("error"):
                entry["error"] = _error(body["error"], INJECTED_FAILURE)
        self.store.touch()
        return table

    def plan(self, op_type: str) -> tuple[float, dict[str, Any] | None]:
        """Duration of a new operation of this type, and the error it ends with (None: success)."""
        entry = _lookup(self._table("operations"), op_type) or {}
        duration = float(entry.get("duration", self.default_duration))
        failure = None
        if entry.get("outcome") == "fail":
            failure = entry.get("error") or _error(None, INJECTED_FAILURE)
        fault = _lookup(self._table("faults"), op_type)
        if fault and fault.get("failProvisioning", 0) > 0:
            fault["failProvisioning"] -= 1
            failure = fault.get("error") or _error(None, INJECTED_FAILURE)
            self.store.touch()
        return duration, failure

    # -- faults (POST /_lab/faults) --------------------------------------------------------
    def set_fault(self, body: dict[str, Any]) -> dict[str, Any]:
        op = str(body.get("operation") or "*").lower()
        table = self._table("faults")
        if body.get("clear"):
            table.pop(op, None)
        else:
            entry = table.setdefault(op, {})
            for src, dst, kind in (("latency", "latency", float), ("throttle", "throttle", int),
                                   ("retry_after", "retryAfter", float), ("server_error", "serverError", int),
                                   ("fail_provisioning", "failProvisioning", int)):
                if src in body:
                    value = kind(body[src])
                    if value < 0:
                        raise ArmError(f"{src} must be >= 0", code="InvalidLabSetting")
                    entry[dst] = value
            if body.get("error"):
                entry["error"] = _error(body["error"], INJECTED_FAILURE)
        self.store.touch()
        return table

    def take_fault(self, op_type: str) -> tuple[float, ArmError | None]:
        """Latency to add to this request, and the throttling/server error to answer instead."""
        fault = _lookup(self._table("faults"), op_type)
        if not fault:
            return 0.0, None
        latency = float(fault.get("latency", 0.0))
        if fault.get("throttle", 0) > 0:
            fault["throttle"] -= 1
            self.store.touch()
            retry_after = fault.get("retryAfter", 1.0)
            return latency, ArmError(
                f"The request for operation '{op_type}' was throttled by the lab.", code="TooManyRequests",
                status=429, headers=retry_headers(retry_after))
        if fault.get("serverError", 0) > 0:
            fault["serverError"] -= 1
            self.store.touch()
            return latency, ArmError("The lab injected an internal server error.",
                                     code="InternalServerError", status=500)
        return latency, None

    # -- incremental-snapshot limits (POST /_lab/snapshot-limits) ---------------------------
    def set_snapshot_limits(self, body: dict[str, Any]) -> dict[str, Any]:
        table = self._table("snapshotLimits")
        if body.get("clear"):
            table.clear()
        for src, dst, kind in (("max_per_disk", "maxPerDisk", int), ("max_per_window", "maxPerWindow", int),
                               ("window_seconds", "windowSeconds", float)):
            if body.get(src) is not None:
                try:
                    value = kind(body[src])
                except (TypeError, ValueError):
                    raise ArmError(f"{src} must be a number", code="InvalidLabSetting") from None
                if value < 0:
                    raise ArmError(f"{src} must be >= 0", code="InvalidLabSetting")
                table[dst] = value
        self.store.touch()
        return self.snapshot_limits()

    def snapshot_limits(self) -> dict[str, Any]:
        """maxPerDisk (existing incremental snapshots of one disk), maxPerWindow (created within
        windowSeconds): Azure's values unless the lab lowered them."""
        return {**SNAPSHOT_LIMITS, **self.store.settings.get("snapshotLimits", {})}

    # -- run command output (POST /_lab/run-command-output) ---------------------------------
    def set_run_command_output(self, body: dict[str, Any]) -> None:
        key = str(body.get("vm") or "*").lower()
        table = self._table("runCommandOutput")
        if body.get("clear"):
            table.pop(key, None)
        else:
            table[key] = {"output": str(body.get("output", DEFAULT_RUN_COMMAND_OUTPUT)),
                          "code": str(body.get("code") or "ProvisioningState/succeeded")}
        self.store.touch()

    def run_command_output(self, vm_id: str, vm_name: str) -> dict[str, str]:
        table = self._table("runCommandOutput")
        for key in (vm_id.lower(), vm_name.lower(), "*"):
            if key in table:
                return table[key]
        return {"output": DEFAULT_RUN_COMMAND_OUTPUT, "code": "ProvisioningState/succeeded"}


def retry_headers(seconds: float) -> dict[str, str]:
    """When to poll again. ARM writes whole seconds in Retry-After, and the SDKs parse that header
    as an int; below one second the lab writes Retry-After-Ms instead, which azure-core's pollers
    and retry policy also honour (a missing or zero delay would make them wait 30 s)."""
    if seconds >= 1:
        return {"Retry-After": str(math.ceil(seconds))}
    return {"Retry-After-Ms": str(max(10, math.ceil(seconds * 1000)))}
