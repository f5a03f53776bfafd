"""The process server's replication cycle (DESIGN.md section 2): `ReplicationEngine`, the
one object flows and tasks call. It holds the site's handles and says the order of the
steps; each step lives in a module of its own.

A cycle, for one item or a group of items:
  a. recover: a crashed earlier cycle of the item is replayed when it has a commit
     marker, else discarded (its segments deleted)                        -> recovery
  b. send the agent the block map of the last applied state (the newest point's
     manifest; none means a resync) and run it over the machine's RemoteShell;
     a group's members are frozen at one barrier                          -> staging, agents
  c. receive the stream into segments (zstd + AES-256-GCM) uploaded to the cache
     container while it flows; once the trailer says all is well, write the commit marker
                                                                          -> staging
  d. apply the segments to the replica page blobs (fixed VHDs);
  e. snapshot every disk's blob, record the recovery point and its manifests in the
     vault, update the item, and only then delete the cache               -> apply

Nothing touches a replica before the cycle's commit marker exists, and nothing snapshots a
replica before a whole cycle is applied, so a crash anywhere loses nothing and exposes no
torn point. `fault(phase)` is called at each phase boundary so tests can crash it there.
Enabling replication (registration, group membership) is in `enable`, checking a point's
snapshots against its manifests in `verify`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Callable

from drbook.adapters.shell import RemoteShell
from drbook.config import MachineConfig, PolicyConfig, SiteConfig
from drbook.errors import PreflightError
from drbook.models import ItemState, Policy, ProtectedItem, RecoveryPoint, ReplicationGroup, new_id
from drbook.replication import cycle as cy
from drbook.replication import enable
from drbook.replication.agents import barrier_verdict, cycle_stats, run_agents
from drbook.replication.apply import Fault, finish_cycle
from drbook.replication.blobs import Cache, Replicas, ensure_container
from drbook.replication.consistency import Want
from drbook.replication.cycle import CycleSettings
from drbook.replication.recovery import recover_item
from drbook.replication.retention import RetentionResult, apply_retention
from drbook.replication.staging import REPLICATING, ItemRun, abandon_run, prepare_run, stage_run, write_marker
from drbook.replication.storage import CycleStorage
from drbook.replication.store import PointStore
from drbook.replication.verify import DiskVerify, VerifyReport, verify_point
from drbook.vault import Vault, group_key

# Imported from here by tests, benchmarks and flows.
__all__ = ["PHASES", "REPLICATING", "CycleSettings", "DiskVerify", "ReplicationEngine", "VerifyReport"]

PHASES = (
    "after-segment-upload",
    "after-commit-marker",
    "mid-apply",
    "after-apply",
    "after-snapshot",
    "after-point-recorded",
)


class ReplicationEngine:
    def __init__(
        self,
        site: SiteConfig,
        vault: Vault,
        blob_service,  # noqa: ANN001 - azure.storage.blob.BlobServiceClient
        shell_for: Callable[[MachineConfig], RemoteShell],
        key: bytes,
        *,
        settings: CycleSettings | None = None,
        fault: Callable[[str], None] | None = None,
        holder: str = "replication-engine",
        process_server: str | None = None,
    ) -> None:
        if len(key) != 32:
            raise ValueError("the segment key must be 32 bytes (AES-256)")
        self.site = site
        self.vault = vault
        self.blob_service = blob_service
        self.shell_for = shell_for
        self.key = key
        # Without `settings`: the site config's, i.e. its first process server's `cycle`.
        self.settings = settings or CycleSettings.from_site(site)
        self.fault = fault
        self.holder = holder
        self.process_server = process_server  # recorded in each cycle's marker and point
        # A large disk's block maps live in files beside the spool (drbook.replication.mapfile).
        self.points = PointStore(vault, map_dir=self.settings.spool_dir)
        c = site.azure.containers
        self.cache = Cache(blob_service, c.cache)
        self.replicas = Replicas(blob_service, c.replicas, workers=self.settings.page_workers)
        self.storage = CycleStorage(vault, self.points, self.cache, self.replicas, key, map_dir=self.settings.spool_dir)
        self.last_stats: dict = {}
        self._local = threading.local()

    # -- public API --------------------------------------------------------------------------

    def ensure_containers(self) -> None:
        c = self.site.azure.containers
        for name in (c.cache, c.replicas):
            ensure_container(self.blob_service, name)

    def run_cycle(self, item: str, want: Want = "crash", progress: cy.Progress | None = None) -> RecoveryPoint:
        """One cycle of one item; returns its new recovery point."""
        return self._cycles([item], want, group=None, progress=progress)[0]

    def run_group_cycle(self, group: str, items: list[str] | None = None, want: Want = "crash",
                        progress: cy.Progress | None = None) -> list[RecoveryPoint]:
        """One cycle of every member (default: the members in groups/<group>.json), frozen
        at one barrier; the points share one id."""
        if items is None:
            doc = self.vault.find(group_key(group), ReplicationGroup)
            items = doc.members if doc else []
        if not items:
            raise PreflightError(f"group {group!r} has no members")
        return self._cycles(list(items), want, group=group, progress=progress)

    def recover(self, item: str) -> list[str]:
        """Replay or discard the leftovers of crashed cycles of an item (takes its lease)."""
        with self.vault.lease(f"item-{item}", holder=self.holder):
            return self._recover(item)

    def enable_replication(self, machine: MachineConfig, policy: Policy | PolicyConfig | None = None,
                           group: str | None = None, progress: cy.Progress | None = None) -> ProtectedItem:
        """Register the machine as a protected item (if new), join its group, run the initial
        full copy and move it to protected. Idempotent: an item already protected is returned
        as is. A machine already in another group is refused before anything is touched."""
        pol = Policy(**policy.model_dump()) if isinstance(policy, PolicyConfig) else (policy or Policy())
        enable.refuse_other_group(self.vault, machine.name, group)
        disks = enable.protected_disks(machine, self.settings.block_size, self.site.azure.containers.replicas)
        item = enable.register(self.vault, machine, pol, group, disks)
        if group is not None:
            enable.join_group(self.vault, group, machine.name)
        if item.state == ItemState.UNPROTECTED:
            item = self.vault.transition(machine.name, ItemState.INITIAL_REPLICATION, reason="enable replication")
        if item.state == ItemState.INITIAL_REPLICATION:
            point = self.run_cycle(machine.name, "crash", progress)
            item = self.vault.transition(machine.name, ItemState.PROTECTED,
                                         reason=f"initial copy complete: recovery point {point.id}")
        return item

    def verify_point(self, item: str, point_id: str, progress: cy.Progress | None = None) -> VerifyReport:
        """Re-read every disk of a point's snapshots and check each block's SHA-256 against
        the manifest, the VHD footer and the zero padding (like `borg check`)."""
        return verify_point(self.points, self.blob_service, item, point_id, page_workers=self.settings.page_workers,
                            progress=progress)

    def apply_retention(self, item: str, now: dt.datetime | None = None, *, dry_run: bool = False,
                        pinned: tuple[str, ...] = ()) -> RetentionResult:
        """drbook.replication.retention.apply_retention for this engine's site."""
        return apply_retention(self.vault, self.blob_service, self.site.azure.containers, item, now,
                               dry_run=dry_run, pinned=pinned, holder=f"{self.holder}:retention")

    # -- the cycle ---------------------------------------------------------------------------

    def _fault(self, phase: str) -> None:
        """A fault hook that raises stands for the process dying at `phase`: the exception
        propagates and no cleanup runs (the next cycle must recover from what is left)."""
        if self.fault is not None:
            try:
                self.fault(phase)
            except BaseException:
                self._local.crashed = True
                raise

    def _fault_hook(self) -> Fault | None:
        return self._fault if self.fault is not None else None

    def _recover(self, item: str) -> list[str]:
        return recover_item(self.storage, item, page_workers=self.settings.page_workers, fault=self._fault_hook())

    def _cycles(self, names: list[str], want: Want, group: str | None, progress: cy.Progress | None) -> list[RecoveryPoint]:
        if want not in ("crash", "app"):
            raise ValueError(f"want must be 'crash' or 'app', got {want!r}")
        self._local.crashed = False
        with contextlib.ExitStack() as stack:
            leases = [stack.enter_context(self.vault.lease(f"item-{n}", holder=self.holder)) for n in sorted(set(names))]
            for n in names:
                self._recover(n)
            runs: list[ItemRun] = []
            point_id = new_id("pt")
            try:
                for n in names:
                    runs.append(prepare_run(self.storage, self.site, self.settings, n, progress))
                go_time = run_agents(runs, want, group is not None, self.settings, self.shell_for)
                self.last_stats = cycle_stats(runs)
                barrier = barrier_verdict(runs) if group is not None else None
                markers = [stage_run(self.storage, run, point_id, group, want, barrier, go_time).model_copy(
                    update={"process_server": self.process_server}) for run in runs]
                self._fault("after-segment-upload")
                # The members' markers go together, after every member's data is in the cache.
                for run, marker in zip(runs, markers):
                    write_marker(self.storage, run, marker)
                self._fault("after-commit-marker")
            except BaseException:
                if not self._local.crashed:
                    for run in runs:
                        abandon_run(self.storage, run)
                raise
            finally:
                for run in runs:
                    if run.shell is not None:
                        with contextlib.suppress(Exception):
                            run.shell.close()
            points = []
            try:
                for run, marker in zip(runs, markers):
                    for lease in leases:
                        lease.check()
                    points.append(finish_cycle(self.storage, marker, spool=run.spool, fault=self._fault_hook()))
            finally:
                for run in runs:
                    run.spool.close()
            return points
