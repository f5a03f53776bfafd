"""A small client for the emulator's lab-only endpoints (/_lab/*)."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any


class ArmLabControl:
    def __init__(self, base_url: str, ca_bundle: str | Path) -> None:
        self.base_url = base_url.rstrip("/")
        self._ctx = ssl.create_default_context(cafile=str(ca_bundle))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}/_lab/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self._ctx, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    def reset(self) -> None:
        """Forget every resource, operation, setting and recorded run command (and the disks' blobs)."""
        self._call("POST", "reset")

    def set_operation(self, operation: str = "*", *, duration: float | None = None, outcome: str | None = None,
                      error_code: str | None = None, error_message: str | None = None,
                      clear: bool = False) -> dict[str, Any]:
        """How long operations of this type take and whether they end Failed (with that error)."""
        body: dict[str, Any] = {"operation": operation, "clear": clear}
        if duration is not None:
            body["duration"] = duration
        if outcome is not None:
            body["outcome"] = outcome
        if error_code or error_message:
            body["error"] = {"code": error_code, "message": error_message}
        return self._call("POST", "operations", body)

    def inject_fault(self, operation: str = "*", *, latency: float | None = None, throttle: int | None = None,
                     retry_after: float | None = None, server_error: int | None = None,
                     fail_provisioning: int | None = None, error_code: str | None = None,
                     error_message: str | None = None, clear: bool = False) -> dict[str, Any]:
        """Latency on every matching request; the next `throttle` answer 429 (Retry-After), the next
        `server_error` answer 500, the next `fail_provisioning` operations end Failed."""
        body: dict[str, Any] = {"operation": operation, "clear": clear}
        for name, value in (("latency", latency), ("throttle", throttle), ("retry_after", retry_after),
                            ("server_error", server_error), ("fail_provisioning", fail_provisioning)):
            if value is not None:
                body[name] = value
        if error_code or error_message:
            body["error"] = {"code": error_code, "message": error_message}
        return self._call("POST", "faults", body)

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "faults")["faults"]

    def set_snapshot_limits(self, *, max_per_disk: int | None = None, max_per_window: int | None = None,
                            window_seconds: float | None = None, clear: bool = False) -> dict[str, Any]:
        """Lower (or restore) Azure's incremental-snapshot limits per disk: at most `max_per_disk`
        at any time (500), at most `max_per_window` created within `window_seconds` (7 in 300 s).
        `clear` goes back to Azure's values first. Answers the limits now in force."""
        return self._call("POST", "snapshot-limits", {"max_per_disk": max_per_disk, "max_per_window": max_per_window,
                                                      "window_seconds": window_seconds, "clear": clear})

    def snapshot_limits(self) -> dict[str, Any]:
        return self._call("GET", "snapshot-limits")

    def snapshot_families(self) -> dict[str, Any]:
        """Incremental-snapshot families by source disk uniqueId: `familyId`, `next` (the next
        sequence number), `created` (recent creation times) and `snapshots` ({id, sequence,
        provisioningState}, in sequence order)."""
        return self._call("GET", "snapshot-families")["families"]

    def set_run_command_output(self, output: str, *, vm: str | None = None,
                               code: str = "ProvisioningState/succeeded") -> None:
        """What run command answers, for one VM (name or id) or, without `vm`, for all."""
        self._call("POST", "run-command-output", {"output": output, "vm": vm, "code": code})

    def clear_run_command_output(self, vm: str | None = None) -> None:
        """Back to the default answer for one VM (name or id) or, without `vm`, the all-VMs answer."""
        self._call("POST", "run-command-output", {"vm": vm, "clear": True})

    def guest_disks(self, vm_id: str) -> list[dict[str, Any]]:
        """The VM's disks as its guest sees them, OS disk first, then data disks by LUN: `lun` (None for
        the OS disk), `name`, `id`, `url` (a SAS-style URL: reads, and Put Page while the VM runs; a
        secret, never print it) and `size` (bytes, without the VHD footer)."""
        return self._call("POST", "guest-disks", {"vm": vm_id})["disks"]

    def run_commands(self) -> list[dict[str, Any]]:
        """Every run command asked for: vmId, vmName, commandId, script, parameters, time."""
        return self._call("GET", "run-commands")["value"]
