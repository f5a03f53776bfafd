"""What the vault keeps of a reprotect: one ReprotectRecord per item (vault key
reprotect/<item>.json) and, per disk, the block manifest of what its target holds."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from drbook.models import Doc, utcnow

TargetKind = Literal["original", "alternate", "physical"]
Status = Literal["reprotecting", "reprotected", "failing-back", "failed-back", "committed"]

# Tags on every snapshot a reprotect makes (besides the failover run's tag, so that the
# failback's commit sweeps them with the VMs, NICs and disks).
PURPOSE_TAG = "drbook-snapshot"  # what a reprotect snapshot is for (drbook-purpose stays the run's)
BASELINE_PURPOSE = "reprotect-baseline"
CYCLE_PURPOSE = "reprotect-cycle"
ITEM_TAG = "drbook-reprotect-item"


class Extent(BaseModel):
    """Bytes [start, start + length) of a disk."""

    start: int
    length: int


class ReverseDisk(BaseModel):
    disk: str                    # the protected disk's name (e.g. disk0)
    managed_disk: str            # the failed-over VM's managed disk
    resource_group: str
    disk_id: str
    target_path: str             # the disk (file or block device) on the master target
    size: int                    # bytes carried back: the protected disk's size
    block_size: int              # the forward replication's: the failover point's manifest (drift, verification)
    baseline: str | None = None  # the snapshot the target equals (after a whole cycle), or S0
    baseline_is_point: bool = False  # the baseline is S0 = the failover point: the target's own drift counts too
    # Bytes a cycle started writing and did not finish: the next cycle writes them again
    # whatever the diff says (a content diff can miss a range changed and changed back).
    in_flight: list[Extent] = []


class ReverseCycle(BaseModel):
    number: int
    started: dt.datetime
    finished: dt.datetime
    snapshot_time: dt.datetime
    final: bool = False
    first: bool = False
    ranges: int = 0              # extents read and written (the diff's, the target's drift, a torn cycle's)
    bytes_changed: int = 0       # bytes in the diff's ranges
    bytes_moved: int = 0         # bytes read from Azure and sent to the master target as data
    zero_bytes: int = 0          # bytes sent as zero ranges (nothing read: Azure says they are clear)
    seconds: float = 0.0


class Verification(BaseModel):
    ok: bool
    time: dt.datetime = Field(default_factory=utcnow)
    disks: dict[str, dict] = {}  # disk -> {bytes_verified, blocks, bad_blocks, snapshot, target}
    forced_reason: str | None = None


class ReprotectRecord(Doc):
    item: str
    machine: str                 # the protected machine
    target: str                  # the site config machine whose disks are written (the master target)
    target_kind: TargetKind
    target_vm: str | None = None  # its vCenter VM (None: a physical server)
    failover_run_id: str
    point_id: str
    resource_group: str
    vm_name: str                 # the failed-over Azure VM
    location: str
    disks: list[ReverseDisk]
    status: Status = "reprotecting"
    run_id: str | None = None    # the reprotect's flow run
    failback_run_id: str | None = None
    cycles: list[ReverseCycle] = []  # the newest last; only the last few are kept
    cycle_count: int = 0
    verification: Verification | None = None
    health: str | None = None
    started: dt.datetime = Field(default_factory=utcnow)
    updated: dt.datetime = Field(default_factory=utcnow)

    def last_cycle(self) -> ReverseCycle | None:
        return self.cycles[-1] if self.cycles else None


KEPT_CYCLES = 50


def reprotect_key(item: str) -> str:
    return f"reprotect/{item}.json"

