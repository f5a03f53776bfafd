"""The documents drbook keeps in its vault (pydantic models; JSON in a blob container).

Vault keys (drbook.vault): one document a key.
    items/<item>.json                       ProtectedItem
    points/<item>/<point_id>.json           RecoveryPoint
    manifests/<item>/<point_id>/<disk>.bin  block manifest (drbook.replication.manifest)
    policies/<name>.json                    Policy
    groups/<name>.json                      ReplicationGroup
    inventory/latest.json                   Inventory (drbook.discovery)
    drills/<drill_id>.json                  DrillRecord
    failovers/<run_id>.json                 FailoverRecord
    audit/<yyyy-mm-dd>/<time>-<uuid>.json   AuditEntry (append-only: create-only blobs)
    locks/<name>                            lease blobs for exclusive operations
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}-{utcnow():%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"


class Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=False)


class ItemState(str, enum.Enum):
    """DESIGN.md §3. The legal moves live in drbook.state."""

    UNPROTECTED = "unprotected"
    INITIAL_REPLICATION = "initial-replication"
    PROTECTED = "protected"
    FAILED_OVER = "failed-over"
    COMMITTED = "committed"
    REPROTECTING = "reprotecting"
    REPROTECTED = "reprotected"
    FAILED_BACK = "failed-back"


# Upper bounds of a policy's numbers: beyond them the setting is a typo (and timedelta
# overflows long before infinity). A retention of 0 or less would purge all but the newest point.
POLICY_LIMITS = {"rpo_threshold_minutes": 7 * 24 * 60, "crash_frequency_minutes": 7 * 24 * 60,
                 "app_frequency_minutes": 7 * 24 * 60, "retention_hours": 10 * 365 * 24}


class Policy(Doc):
    # Finite and in range wherever a Policy comes from (the site config, the vault, code):
    # retention must never purge everything, nor crash on NaN.
    model_config = ConfigDict(allow_inf_nan=False)

    name: str = "default"
    # Minutes; fractions are allowed (tests and the lab use seconds-level policies).
    rpo_threshold_minutes: float = 15
    crash_frequency_minutes: float = 5
    app_frequency_minutes: float = 60
    retention_hours: float = 24
    # Where a cycle's segments wait between the agent and the page writes. "cache" (DESIGN
    # §2): in the cache container, so a process server lost after the commit marker is
    # replayed and no point is lost. "local": only in the process server's local spool,
    # which halves Azure Storage traffic for disks that change fast; a process server lost
    # between the commit marker and the point costs that point (the next cycle puts the
    # blocks it may have written back from the last point's snapshot).
    staging: Literal["cache", "local"] = "cache"

    @field_validator(*POLICY_LIMITS)
    @classmethod
    def _in_range(cls, v: float, info: ValidationInfo) -> float:
        limit = POLICY_LIMITS[info.field_name]  # type: ignore[index]
        if not 0 < v <= limit:
            raise ValueError(f"must be greater than 0 and at most {limit:g}")
        return v


class ProtectedDisk(Doc):
    name: str
    path: str
    size_bytes: int
    block_size: int = 64 * 1024
    replica_container: str = ""
    replica_blob: str = ""
    resync_required: bool = False
    resync_reason: str | None = None


class AzureVmRef(Doc):
    machine: str
    resource_group: str
    vm_name: str
    disks: list[dict] = []
    nics: list[str] = []
    ip: str | None = None


class ProtectedItem(Doc):
    name: str
    machine: str
    vm_name: str | None = None
    os: Literal["linux", "windows"] = "linux"
    state: ItemState = ItemState.UNPROTECTED
    policy: Policy = Policy()
    group: str | None = None
    disks: list[ProtectedDisk] = []
    agent_version: str | None = None
    agent_sha256: str | None = None
    last_point_id: str | None = None
    last_point_time: dt.datetime | None = None
    last_app_point_time: dt.datetime | None = None
    rpo_breached: bool = False
    failover_run_id: str | None = None
    failover_point_id: str | None = None
    azure_vms: list[AzureVmRef] = []
    created: dt.datetime = Field(default_factory=utcnow)
    updated: dt.datetime = Field(default_factory=utcnow)


class ReplicationGroup(Doc):
    name: str
    members: list[str] = []


Consistency = Literal["crash", "app", "inconsistent"]


class PointDisk(Doc):
    """Locates one disk of a recovery point: a blob snapshot holding the disk's bytes
    followed by the 512-byte fixed-VHD footer."""

    disk: str
    container: str
    blob: str
    snapshot: str
    size_bytes: int
    block_size: int = 64 * 1024
    manifest_key: str = ""
    blocks_changed: int = 0
    bytes_sent: int = 0


class RecoveryPoint(Doc):
    id: str
    item: str
    time: dt.datetime
    consistency: Consistency
    group: str | None = None
    disks: list[PointDisk] = []
    cycle_id: str = ""
    resync: bool = False
    freeze_evidence: list[str] = Field([], description="what the quiesce hooks printed, e.g. the lab's pause mark")
    process_server: str | None = Field(None, description="the process server whose cycle made it")

    def public(self) -> dict:
        """The shape `drbook points --json` prints."""
        return {
            "id": self.id,
            "time": self.time.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
            "consistency": self.consistency,
            "group": self.group,
            "process_server": self.process_server,
            "disks": [
                {"disk": d.disk, "container": d.container, "blob": d.blob, "snapshot": d.snapshot, "size_bytes": d.size_bytes}
                for d in self.disks
            ],
        }


class AuditEntry(Doc):
    time: dt.datetime = Field(default_factory=utcnow)
    actor: str
    item: str | None = None
    action: str
    from_state: ItemState | None = None
    to_state: ItemState | None = None
    flow_run_id: str | None = None
    detail: dict = {}


class DrillRecord(Doc):
    drill_id: str
    items: list[str]
    point_ids: dict[str, str] = {}
    resource_group: str = ""
    started: dt.datetime = Field(default_factory=utcnow)
    finished: dt.datetime | None = None
    status: Literal["running", "succeeded", "failed", "cleaned-up"] = "running"
    vms: list[AzureVmRef] = []
    report: dict = {}


class FailoverRecord(Doc):
    run_id: str
    items: list[str]
    planned: bool = False
    point_ids: dict[str, str] = {}
    approver: str | None = None
    comment: str | None = None
    started: dt.datetime = Field(default_factory=utcnow)
    finished: dt.datetime | None = None
    # failed: stopped after the approval and before anything was built in Azure (report.error says why)
    status: Literal["awaiting-approval", "rejected", "running", "failed", "succeeded", "rolled-back",
                    "committed"] = "awaiting-approval"
    vms: list[AzureVmRef] = []
    report: dict = {}
