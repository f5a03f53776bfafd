"""The process server's replication cycle (DESIGN.md section 2).

A cycle, for one item or a group of items:
  a. recover: a crashed earlier cycle of the item is replayed when it has a commit
     marker, else discarded (its segments deleted);
  b. send the agent the block map of the last applied state (the newest point's
     manifest; none means a resync) and run it over the machine's RemoteShell;
  c. receive the stream into segments (zstd + AES-256-GCM) uploaded to the cache
     container while it flows; once the trailer says all is well, write the commit marker;
  d. apply the segments to the replica page blobs (fixed VHDs);
  e. snapshot every disk's blob, record the recovery point and its manifests in the
     vault, update the item, and only then delete the cache.

Nothing touches a replica before the cycle's commit marker exists, and nothing snapshots a
replica before a whole cycle is applied, so a crash anywhere loses nothing and exposes no
torn point. `fault(phase)` is called at each phase boundary so tests can crash it there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydantic import BaseModel

from drbook.adapters.shell import RemoteProcess, RemoteShell
from drbook.config import MachineConfig, PolicyConfig, SiteConfig
from drbook.errors import ConflictError, DRError, NotFoundError, PreflightError, ProtocolError, ReplicationError
from drbook.models import (
    ItemState,
    Policy,
    PointDisk,
    ProtectedDisk,
    ProtectedItem,
    RecoveryPoint,
    ReplicationGroup,
    new_id,
    utcnow,
)
from drbook.replication import cycle as cy
from drbook.replication import protocol as p
from drbook.replication import segments, vhd
from drbook.replication.blobs import Cache, Replicas, ensure_container, replica_blob_name
from drbook.replication.consistency import Want, hooks_for, judge
from drbook.replication.manifest import Manifest, SubMap
from drbook.replication.retention import RetentionResult, apply_retention
from drbook.replication.store import PointStore, manifest_key
from drbook.vault import Vault, item_key

log = logging.getLogger("drbook.replication")

PHASES = (
    "after-segment-upload",
    "after-commit-marker",
    "mid-apply",
    "after-apply",
    "after-snapshot",
    "after-point-recorded",
)
REPLICATING = frozenset({ItemState.INITIAL_REPLICATION, ItemState.PROTECTED})
VERIFY_CHUNK = 4 * 1024 * 1024


class DiskVerify(BaseModel):
    disk: str
    blocks: int = 0
    bad_blocks: list[int] = []
    footer_ok: bool = False
    footer_error: str | None = None
    tail_ok: bool = True
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.bad_blocks and self.footer_ok and self.tail_ok and self.error is None


class VerifyReport(BaseModel):
    item: str
    point_id: str
    ok: bool
    disks: list[DiskVerify]
    bytes_read: int
    seconds: float

    def summary(self) -> str:
        if self.ok:
            return f"{self.item} {self.point_id}: every block of {len(self.disks)} disk(s) matches its manifest; VHD footers valid"
        bad = [f"{d.disk}: {len(d.bad_blocks)} bad block(s) {d.bad_blocks[:8]}" if d.bad_blocks else
               f"{d.disk}: {d.error or d.footer_error or 'tail not zero'}" for d in self.disks if not d.ok]
        return f"{self.item} {self.point_id}: MISMATCH: " + "; ".join(bad)


@dataclass
class _Run:
    """One item's part of a running cycle."""

    item: ProtectedItem
    machine: MachineConfig
    cycle_id: str
    disks: list[cy.DiskCycle]
    receiver: cy.Receiver
    writer: cy.SegmentWriter
    uploader: cy.Uploader
    spool: cy.Spool
    direct_writer: cy.SegmentWriter
    direct: cy.DirectApplier
    shell: RemoteShell | None = None
    proc: RemoteProcess | None = None
    error: BaseException | None = None
    committed: bool = False
    last_activity: float = 0.0
    stream_bytes: int = 0


class ReplicationEngine:
    def __init__(
        self,
        site: SiteConfig,
        vault: Vault,
        blob_service,  # noqa: ANN001 - azure.storage.blob.BlobServiceClient
        shell_for: Callable[[MachineConfig], RemoteShell],
        key: bytes,
        *,
        settings: cy.CycleSettings | None = None,
        fault: Callable[[str], None] | None = None,
        holder: str = "replication-engine",
    ) -> None:
        if len(key) != 32:
            raise ValueError("the segment key must be 32 bytes (AES-256)")
        self.site = site
        self.vault = vault
        self.blob_service = blob_service
        self.shell_for = shell_for
        self.key = key
        self.settings = settings or cy.CycleSettings()
        self.fault = fault
        self.holder = holder
        self.points = PointStore(vault)
        c = site.azure.containers
        self.cache = Cache(blob_service, c.cache)
        self.replicas = Replicas(blob_service, c.replicas, workers=self.settings.page_workers)
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
            doc = self.vault.find(f"groups/{group}.json", ReplicationGroup)
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
        """Register the machine as a protected item (if new), run the initial full copy and
        move it to protected. Idempotent: an item already protected is returned as is."""
        pol = Policy(**policy.model_dump()) if isinstance(policy, PolicyConfig) else (policy or Policy())
        disks = [ProtectedDisk(name=d.name, path=d.path, size_bytes=d.size_bytes or 0,
                               block_size=self.settings.block_size,
                               replica_container=self.site.azure.containers.replicas,
                               replica_blob=replica_blob_name(machine.name, d.name),
                               resync_required=True, resync_reason="initial copy")
                 for d in machine.disks]
        if not disks:
            raise PreflightError(f"machine {machine.name!r} has no disks in the site config")
        item = self.vault.find_item(machine.name)
        if item is None:
            item = ProtectedItem(name=machine.name, machine=machine.name, vm_name=machine.vm_name, os=machine.os,
                                 policy=pol, group=group, disks=disks)
            self.vault.save_item(item)
        elif item.state == ItemState.UNPROTECTED:
            # Registered by the agent push (which knows no disks), or disabled before: what
            # is protected now is what the site config says.
            item = self.vault.update(f"items/{machine.name}.json", ProtectedItem, lambda i: i.model_copy(
                update={"disks": disks, "policy": pol, "group": group, "vm_name": machine.vm_name}))
        if group is not None:
            self._join_group(group, machine.name)
        if item.state == ItemState.UNPROTECTED:
            item = self.vault.transition(machine.name, ItemState.INITIAL_REPLICATION, reason="enable replication")
        if item.state == ItemState.INITIAL_REPLICATION:
            point = self.run_cycle(machine.name, "crash", progress)
            item = self.vault.transition(machine.name, ItemState.PROTECTED,
                                         reason=f"initial copy complete: recovery point {point.id}")
        return item

    def _join_group(self, group: str, item: str) -> None:
        key = f"groups/{group}.json"

        def add(doc: ReplicationGroup) -> None:
            if item not in doc.members:
                doc.members.append(item)

        for _ in range(3):
            try:
                self.vault.update(key, ReplicationGroup, add)
                return
            except NotFoundError:
                try:
                    self.vault.put(key, ReplicationGroup(name=group, members=[item]), create_only=True)
                    return
                except ConflictError:
                    continue  # created meanwhile: update it

    def verify_point(self, item: str, point_id: str, progress: cy.Progress | None = None) -> VerifyReport:
        """Re-read every disk of a point's snapshots and check each block's SHA-256 against
        the manifest, the VHD footer and the zero padding (like `borg check`)."""
        started = time.monotonic()
        point = self.points.get(item, point_id)
        total = sum(d.size_bytes for d in point.disks)
        done = [0]
        lock = threading.Lock()
        reports = []
        for d in point.disks:
            rep = DiskVerify(disk=d.disk)
            reports.append(rep)
            manifest = self.points.manifest(item, point_id, d.disk)
            if manifest is None:
                rep.error = f"manifest {d.manifest_key or manifest_key(item, point_id, d.disk)} is missing"
                continue
            rep.blocks = manifest.blocks
            replicas = Replicas(self.blob_service, d.container, workers=self.settings.page_workers)
            try:
                size = replicas.size(d.blob, d.snapshot)
                data_size = size - vhd.FOOTER_SIZE
                try:
                    vhd.parse_footer(replicas.read(d.blob, d.snapshot, data_size, vhd.FOOTER_SIZE), blob_size=size)
                    rep.footer_ok = data_size == vhd.replica_size(manifest.disk_size)
                    if not rep.footer_ok:
                        rep.footer_error = f"VHD data size {data_size} is not the disk's {manifest.disk_size} rounded to 1 MiB"
                except vhd.VhdFormatError as exc:
                    rep.footer_error = str(exc)
                bs = manifest.block_size
                chunk = max(bs, VERIFY_CHUNK - VERIFY_CHUNK % bs)

                def check(start: int, d=d, manifest=manifest, replicas=replicas, bs=bs) -> list[int]:
                    n = min(chunk, manifest.disk_size - start)
                    data = memoryview(replicas.read(d.blob, d.snapshot, start, n))
                    bad = [start // bs + i // bs for i in range(0, n, bs)
                           if hashlib.sha256(data[i:i + bs]).digest() != manifest[start // bs + i // bs]]
                    with lock:
                        done[0] += n
                        if progress:
                            progress(done[0], total)
                    return bad

                with ThreadPoolExecutor(4) as pool:
                    for bad in pool.map(check, range(0, manifest.disk_size, chunk)):
                        rep.bad_blocks.extend(bad)
                pad = vhd.replica_size(manifest.disk_size) - manifest.disk_size
                if pad:
                    rep.tail_ok = replicas.read(d.blob, d.snapshot, manifest.disk_size, pad).count(0) == pad
            except DRError as exc:
                rep.error = str(exc)
        return VerifyReport(item=item, point_id=point_id, ok=bool(reports) and all(r.ok for r in reports), disks=reports,
                            bytes_read=done[0], seconds=round(time.monotonic() - started, 3))

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

    def _cycles(self, names: list[str], want: Want, group: str | None, progress: cy.Progress | None) -> list[RecoveryPoint]:
        if want not in ("crash", "app"):
            raise ValueError(f"want must be 'crash' or 'app', got {want!r}")
        self._local.crashed = False
        with contextlib.ExitStack() as stack:
            leases = [stack.enter_context(self.vault.lease(f"item-{n}", holder=self.holder)) for n in sorted(set(names))]
            for n in names:
                self._recover(n)
            runs: list[_Run] = []
            point_id = new_id("pt")
            try:
                for n in names:
                    runs.append(self._prepare(n, progress))
                go_time = self._run_agents(runs, want, barrier=group is not None)
                barrier = self._barrier_verdict(runs) if group is not None else None
                markers = [self._stage(run, point_id, group, want, barrier, go_time) for run in runs]
                self._fault("after-segment-upload")
                # The members' markers go together, after every member's data is in the cache.
                for run, marker in zip(runs, markers):
                    self._write_marker(run, marker)
                self._fault("after-commit-marker")
            except BaseException:
                if not self._local.crashed:
                    for run in runs:
                        self._abandon(run)
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
                    points.append(self._finish(marker, spool=run.spool))
            finally:
                for run in runs:
                    run.spool.close()
            return points

    def _prepare(self, name: str, progress: cy.Progress | None) -> _Run:
        item = self.vault.item(name)
        if item.state not in REPLICATING:
            raise PreflightError(f"item {name!r} is {item.state.value}; cycles run only while initial-replication or protected")
        if not item.disks:
            raise PreflightError(f"item {name!r} has no disks to replicate")
        machine = self.site.machine(item.machine)
        layout = self.settings.layout
        disks = []
        for disk in item.disks:
            old = old_subs = None
            if item.last_point_id and not disk.resync_required:
                old = self.points.manifest(name, item.last_point_id, disk.name)
                if old is not None and old.block_size != layout.block_size:
                    old = None  # another block size: resync rather than guess
                if old is not None and layout.sub_on:
                    old_subs = self.points.submap(name, item.last_point_id, disk.name)
                    if old_subs is not None and (old_subs.layout != layout or old_subs.disk_size != old.disk_size):
                        old_subs = None
            disks.append(cy.DiskCycle(disk=disk, layout=layout, old=old, old_subs=old_subs,
                                      force_resync=disk.resync_required))
        for d in disks:
            d.direct = d.request_maps() == (b"", b"")
        unflagged = {d.disk.name: "no block map of the last point (lost manifest)"
                     for d in disks if d.direct and not d.disk.resync_required}
        if unflagged:
            # Written straight to the replica below: flag first, so a crash cannot leave a
            # half-written replica that a later delta cycle would trust.
            self._flag_resync(name, unflagged)
        cycle_id = new_id("cy")
        spool = cy.Spool(self.settings.spool_dir)

        def upload(seq: int, raw: bytes) -> int:
            sealed = segments.seal(raw, self.key, name, cycle_id, seq)
            self.cache.put(cy.segment_name(name, cycle_id, seq), sealed)
            return len(sealed)

        uploader = cy.Uploader(None if item.policy.staging == "local" else upload, self.settings.upload_workers, spool)
        writer = cy.SegmentWriter(self.settings.segment_bytes, uploader.submit)
        direct = cy.DirectApplier(
            lambda disk, plan: self.replicas.write(replica_blob_name(name, disk), plan.writes, plan.clears),
            self.settings.upload_workers)
        direct_writer = cy.SegmentWriter(self.settings.segment_bytes, direct.submit)
        def report(done: int) -> None:
            total = sum(d.size if d.size else d.disk.size_bytes for d in disks)
            progress(done, max(total, done))  # type: ignore[misc]

        receiver = cy.Receiver(name, disks, layout, writer, report if progress else None, direct=direct_writer,
                               on_direct_disk=lambda d: self.replicas.ensure(replica_blob_name(name, d.disk.name), d.size))
        return _Run(item=item, machine=machine, cycle_id=cycle_id, disks=disks, receiver=receiver,
                    writer=writer, uploader=uploader, spool=spool, direct_writer=direct_writer, direct=direct)

    def _request(self, run: _Run, want: Want, barrier: bool) -> bytes:
        s = self.settings
        header = {
            "disks": [d.request_disk() for d in run.disks],
            "block_size": s.block_size,
            "sub_block_size": s.sub_block_size if s.layout.sub_on else 0,
            "sub_hash_len": s.sub_hash_len,
            "sub_rebuild": any(d.sub_rebuild for d in run.disks),
            "hooks": hooks_for(run.machine, want),
            "hook_timeout": s.hook_timeout,
            "max_freeze": s.max_freeze,
            "barrier": barrier,
            # The agent gives up on the barrier later than we do, so our GO or ABORT always reaches it.
            "barrier_timeout": s.barrier_timeout * 2 + 30,
            "read_buffer": s.read_buffer,
            "threads": s.agent_threads,
            "bridge_gap": s.bridge_gap,
        }
        return p.encode_request(header, [d.request_maps() for d in run.disks])

    def _start_agent(self, run: _Run, want: Want, barrier: bool) -> None:
        m = run.machine
        run.shell = self.shell_for(m)
        command = f"{m.python} {shlex.quote(m.agent_dir.rstrip('/') + '/agent.py')} scan"
        run.proc = run.shell.open_process(command)
        request = self._request(run, want, barrier)
        try:
            run.proc.stdin.write(request)
            run.proc.stdin.flush()
            if not barrier:
                run.proc.stdin.close()
        except Exception as exc:  # a pipe or channel that closed: the agent did not start
            raise ProtocolError(f"{m.name}: could not send the scan request ({type(exc).__name__}); "
                                f"agent stderr: {self._stderr(run)}") from None

    def _stderr(self, run: _Run) -> str:
        with contextlib.suppress(Exception):
            if run.proc is not None:
                run.proc.kill()
                return run.proc.stderr_text().strip()[-2000:] or "(empty)"
        return "(unavailable)"

    def _receive(self, run: _Run) -> None:
        """Read frames until the trailer; record (not raise) the error for the caller."""
        try:
            reader = p.FrameReader(run.proc.stdout)
            done = False
            for kind, payload in reader:
                run.last_activity = time.monotonic()
                if run.receiver.handle(kind, payload):
                    done = True
                    break
            run.stream_bytes = reader.bytes
            run.writer.flush()
            run.direct_writer.flush()
            if not done:
                raise ProtocolError(f"{run.machine.name}: the agent's stream ended without a trailer; "
                                    f"agent stderr: {self._stderr(run)}")
            run.receiver.check_complete()
            try:
                run.proc.wait(timeout=30)
            except DRError:
                pass
        except BaseException as exc:  # noqa: BLE001 - handed to the coordinating thread
            run.error = exc
        finally:
            run.receiver.frozen_event.set()

    def _run_agents(self, runs: list[_Run], want: Want, barrier: bool) -> dt.datetime | None:
        """Run every run's agent to its trailer; with `barrier`, release them together and
        return the instant of the release (the group point's time)."""
        go_time = None
        for run in runs:
            self._start_agent(run, want, barrier)
            run.last_activity = time.monotonic()
        threads = [threading.Thread(target=self._receive, args=(run,), name=f"receive-{run.item.name}", daemon=True)
                   for run in runs]
        for t in threads:
            t.start()
        stop_watch = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(runs, stop_watch), daemon=True, name="agent-watchdog")
        watchdog.start()
        abort = None
        try:
            if barrier:
                go_time, abort = self._barrier(runs)
            for t in threads:
                t.join()
        finally:
            stop_watch.set()
        if abort is not None:
            raise ReplicationError(abort, retryable=True)
        for run in runs:
            if run.error is not None:
                raise run.error
        self.last_stats = {
            run.item.name: {
                "stream_bytes": run.stream_bytes,
                "disks": {d.disk.name: {"changed": d.changed, "zero": d.zero_blocks, "bytes_sent": d.bytes_sent,
                                        "resync": d.resync, "direct": d.direct} for d in run.disks},
            }
            for run in runs
        }
        return go_time

    def _watch(self, runs: list[_Run], stop: threading.Event) -> None:
        """Kill an agent that sends nothing for idle_timeout (a hung hook or source), so a
        cycle fails instead of hanging; the agent's own watchdog thaws its machine."""
        while not stop.wait(1.0):
            for run in runs:
                if run.error is None and run.receiver.trailer is None and \
                        time.monotonic() - run.last_activity > self.settings.idle_timeout and run.proc is not None:
                    log.error("%s: no data from the agent for %ss; killing it", run.machine.name, self.settings.idle_timeout)
                    with contextlib.suppress(Exception):
                        run.proc.kill()

    def _barrier(self, runs: list[_Run]) -> tuple[dt.datetime, str | None]:
        """Freeze every member, then let all read at once: the group's one instant."""
        deadline = time.monotonic() + self.settings.barrier_timeout
        for run in runs:
            run.receiver.frozen_event.wait(max(0.0, deadline - time.monotonic()))
        frozen = all(r.receiver.frozen is not None and r.error is None for r in runs)
        signal = p.GO if frozen else p.ABORT
        go_time = utcnow()
        for run in runs:
            with contextlib.suppress(Exception):
                run.proc.stdin.write(signal)
                run.proc.stdin.flush()
                run.proc.stdin.close()
        if frozen:
            return go_time, None
        why = [f"{r.machine.name}: {r.error}" if r.error is not None else f"{r.machine.name}: not frozen within "
               f"{self.settings.barrier_timeout:g}s" for r in runs if r.receiver.frozen is None or r.error is not None]
        return go_time, "group barrier aborted, every member thawed: " + "; ".join(why)

    def _barrier_verdict(self, runs: list[_Run]) -> str:
        failed = [r.machine.name for r in runs if not (r.receiver.frozen or {}).get("ok")]
        return "ok" if not failed else f"the freeze hooks of {', '.join(failed)} failed"

    def _abandon(self, run: _Run) -> None:
        """A cycle that did not commit: stop its agent, drop its segments."""
        with contextlib.suppress(Exception):
            if run.proc is not None:
                run.proc.kill()
        run.uploader.abandon()
        run.direct.abandon()
        run.spool.close()
        if run.committed:
            return  # committed cycles are replayed by the next cycle, never discarded
        with contextlib.suppress(DRError):
            self.cache.delete(self.cache.names(cy.cycle_prefix(run.item.name, run.cycle_id)))
        resync = [d for d in run.disks if d.resync and not d.disk.resync_required]
        if resync:
            with contextlib.suppress(DRError):
                self._flag_resync(run.item.name, {d.disk.name: d.reason for d in resync})

    def _flag_resync(self, item: str, reasons: dict[str, str | None]) -> None:
        def mutate(doc: ProtectedItem) -> None:
            for disk in doc.disks:
                if disk.name in reasons:
                    disk.resync_required = True
                    disk.resync_reason = reasons[disk.name] or "resynchronization required"
            doc.updated = utcnow()

        self.vault.update(item_key(item), ProtectedItem, mutate)

    def _stage(self, run: _Run, point_id: str, group: str | None, want: Want, barrier: str | None,
               go_time: dt.datetime | None) -> cy.CommitMarker:
        """Wait for the segment uploads, put the new manifests in the cache, build the marker."""
        name, cycle_id = run.item.name, run.cycle_id
        uploaded = run.uploader.finish()
        run.direct.finish()
        consistency, evidence = judge(run.receiver.trailer or {}, want, barrier=barrier)
        disks = []
        for d in run.disks:
            mkey = f"{cy.cycle_prefix(name, cycle_id)}{d.disk.name}.manifest"
            self.cache.put(mkey, d.manifest.to_bytes())
            skey = None
            if d.subs is not None:
                skey = f"{cy.cycle_prefix(name, cycle_id)}{d.disk.name}.sub"
                self.cache.put(skey, d.subs.to_bytes())
            disks.append(cy.MarkerDisk(name=d.disk.name, size=d.size, resync=d.resync, reason=d.reason, direct=d.direct,
                                       blocks_changed=d.changed, zero_blocks=d.zero_blocks, bytes_sent=d.bytes_sent,
                                       manifest=mkey, submap=skey))
        when = go_time or run.receiver.frozen_at_server or utcnow()
        marker = cy.CommitMarker(
            item=name, cycle_id=cycle_id, point_id=point_id, group=group, time=when, want=want,
            consistency=consistency, freeze_evidence=evidence, block_size=run.receiver.layout.block_size,
            sub_block_size=run.receiver.layout.sub_block_size, sub_hash_len=run.receiver.layout.sub_hash_len,
            disks=disks, agent_version=(run.receiver.hello or {}).get("version"), staging=run.item.policy.staging,
            segments=[cy.MarkerSegment(seq=seq, name=cy.segment_name(name, cycle_id, seq), raw_bytes=raw, sealed_bytes=sealed)
                      for seq, raw, sealed in uploaded],
        )
        return marker

    def _write_marker(self, run: _Run, marker: cy.CommitMarker) -> None:
        prefix = cy.cycle_prefix(marker.item, marker.cycle_id)
        self.cache.put(prefix + cy.MARKER, marker.model_dump_json().encode(), create_only=True)
        run.committed = True

    def _finish(self, marker: cy.CommitMarker, spool: cy.Spool | None) -> RecoveryPoint:
        """Apply, snapshot, record, clean up: everything after the commit marker. Runs for a
        fresh cycle (segments from the local spool) and for a replay (from the cache)."""
        name, prefix = marker.item, cy.cycle_prefix(marker.item, marker.cycle_id)
        existing = self.points.find(name, marker.point_id)
        if existing is not None:
            self._update_item(existing, marker)
            self._cleanup(marker)
            return existing
        snapshots = self._snapshots_taken(marker)
        if snapshots is None:
            self._apply(marker, spool)
            self._fault("after-apply")
            snapshots = {}
            for d in marker.disks:
                snapshots[d.name] = self.replicas.snapshot(replica_blob_name(name, d.name),
                                                           metadata={"point": marker.point_id, "cycle": marker.cycle_id})
            self.cache.put(prefix + cy.SNAPSHOTS, _json(snapshots))
            self._fault("after-snapshot")
        point = self._record(marker, snapshots)
        self._fault("after-point-recorded")
        self._cleanup(marker)
        return point

    def _snapshots_taken(self, marker: cy.CommitMarker) -> dict[str, str] | None:
        """Snapshots a crashed run took after a whole apply (reused rather than taken again)."""
        taken = self.cache.get_json(cy.cycle_prefix(marker.item, marker.cycle_id) + cy.SNAPSHOTS)
        if not taken or set(taken) != {d.name for d in marker.disks}:
            return None
        if all(self.replicas.snapshot_exists(replica_blob_name(marker.item, d), s) for d, s in taken.items()):
            return taken
        return None

    def _apply(self, marker: cy.CommitMarker, spool: cy.Spool | None) -> None:
        name = marker.item
        for d in marker.disks:
            self.replicas.ensure(replica_blob_name(name, d.name), d.size)
        for i, seg in enumerate(marker.segments):
            if spool is not None:
                raw = spool.get(seg.seq)
            else:
                raw = segments.open_segment(self.cache.get(seg.name), self.key, name, marker.cycle_id, seg.seq)
            plans = cy.plan_segment(raw)
            for disk, plan in plans.items():
                blob = replica_blob_name(name, disk)
                if i == 0 and self.fault is not None:
                    half_w, half_c = len(plan.writes) // 2, len(plan.clears) // 2
                    self.replicas.write(blob, plan.writes[:half_w], plan.clears[:half_c])
                    self._fault("mid-apply")
                    self.replicas.write(blob, plan.writes[half_w:], plan.clears[half_c:])
                else:
                    self.replicas.write(blob, plan.writes, plan.clears)
        if not marker.segments:
            self._fault("mid-apply")

    def _record(self, marker: cy.CommitMarker, snapshots: dict[str, str]) -> RecoveryPoint:
        name = marker.item
        prefix = cy.cycle_prefix(name, marker.cycle_id)
        disks = []
        for d in marker.disks:
            manifest = Manifest.from_bytes(self.cache.get(d.manifest), what=d.manifest)
            key = self.points.put_manifest(name, marker.point_id, d.name, manifest)
            if d.submap:
                with contextlib.suppress(NotFoundError):
                    self.points.put_submap(name, marker.point_id, d.name, SubMap.from_bytes(self.cache.get(d.submap)))
            disks.append(PointDisk(disk=d.name, container=self.replicas.container_name,
                                   blob=replica_blob_name(name, d.name), snapshot=snapshots[d.name], size_bytes=d.size,
                                   block_size=marker.block_size, manifest_key=key, blocks_changed=d.blocks_changed,
                                   bytes_sent=d.bytes_sent))
        point = RecoveryPoint(id=marker.point_id, item=name, time=marker.time, consistency=marker.consistency,
                              group=marker.group, disks=disks, cycle_id=marker.cycle_id, resync=marker.resync,
                              freeze_evidence=marker.freeze_evidence)
        if not self.points.record(point):
            point = self.points.get(name, marker.point_id)
        log.info("%s: recovery point %s (%s) recorded from %s", name, point.id, point.consistency, prefix)
        self._update_item(point, marker)
        return point

    def _update_item(self, point: RecoveryPoint, marker: cy.CommitMarker) -> None:
        previous: list[str] = []

        def mutate(doc: ProtectedItem) -> None:
            previous.clear()
            if doc.last_point_time is None or point.time >= doc.last_point_time:
                if doc.last_point_id and doc.last_point_id != point.id:
                    previous.append(doc.last_point_id)
                doc.last_point_id = point.id
                doc.last_point_time = point.time
                by_name = {d.name: d for d in marker.disks}
                for disk in doc.disks:
                    if disk.name in by_name:
                        disk.size_bytes = by_name[disk.name].size
                        disk.block_size = marker.block_size
                        disk.resync_required = False
                        disk.resync_reason = None
                        disk.replica_container = self.replicas.container_name
                        disk.replica_blob = replica_blob_name(doc.name, disk.name)
            if point.consistency == "app" and (doc.last_app_point_time is None or point.time > doc.last_app_point_time):
                doc.last_app_point_time = point.time
            doc.updated = utcnow()

        self.vault.update(item_key(point.item), ProtectedItem, mutate)
        for old in previous:
            with contextlib.suppress(DRError):
                self.points.drop_submaps(point.item, old)

    def _cleanup(self, marker: cy.CommitMarker) -> None:
        prefix = cy.cycle_prefix(marker.item, marker.cycle_id)
        names = self.cache.names(prefix)
        # The marker goes last: until it is gone, a crash here replays (finding the point).
        self.cache.delete([n for n in names if not n.endswith("/" + cy.MARKER)])
        self.cache.delete([n for n in names if n.endswith("/" + cy.MARKER)])

    def _recover(self, item: str) -> list[str]:
        done = []
        for cycle_id, names in sorted(self.cache.cycles(item).items()):
            prefix = cy.cycle_prefix(item, cycle_id)
            raw = self.cache.get_json(prefix + cy.MARKER)
            if raw is None:
                self.cache.delete(names)
                done.append(f"discarded uncommitted cycle {cycle_id} ({len(names)} blob(s))")
                continue
            marker = cy.CommitMarker.model_validate(raw)
            if marker.staging == "local" and self.points.find(item, marker.point_id) is None:
                # Its segments died with the spool of the process server that wrote it.
                done.append(self._roll_back_local(item, marker, names))
                continue
            try:
                point = self._finish(marker, spool=None)
            except (segments.SegmentError, ProtocolError, NotFoundError) as exc:
                # The replica may be half-applied and the cycle cannot be replayed: rewrite it whole.
                self._flag_resync(item, {d.name: f"replay of cycle {cycle_id} failed: {exc}" for d in marker.disks})
                self.cache.delete(names)
                done.append(f"could not replay cycle {cycle_id} ({exc}); disks flagged for resync")
                continue
            done.append(f"replayed committed cycle {cycle_id} as point {point.id}")
        for line in done:
            log.warning("%s: %s", item, line)
        return done

    def _roll_back_local(self, item: str, marker: cy.CommitMarker, names: list[str]) -> str:
        """A locally staged cycle that cannot be replayed: put every block it may have
        written back from the last point's snapshot (the blocks whose hash differs between
        the two manifests), so the replica is that point again and the next cycle is an
        ordinary delta. Where that is impossible (no earlier point, another geometry, a
        lost manifest), the disk is flagged for resync instead."""
        prefix = cy.cycle_prefix(item, marker.cycle_id)
        for disk, snapshot in (self.cache.get_json(prefix + cy.SNAPSHOTS) or {}).items():
            self.replicas.delete_snapshot(replica_blob_name(item, disk), snapshot)
        doc = self.vault.item(item)
        last = self.points.find(item, doc.last_point_id) if doc.last_point_id else None
        restored, flagged = 0, {}
        for d in marker.disks:
            blob = replica_blob_name(item, d.name)
            try:
                old = self.points.manifest(item, last.id, d.name) if last is not None else None
                new = Manifest.from_bytes(self.cache.get(d.manifest), what=d.manifest)
                source = next((x for x in last.disks if x.disk == d.name), None) if last is not None else None
            except NotFoundError:
                old = new = source = None
            if old is None or source is None or old.disk_size != new.disk_size or old.block_size != new.block_size:
                flagged[d.name] = (f"cycle {marker.cycle_id} was staged locally and its process server stopped before "
                                   "the point was recorded")
                continue
            bs, size = old.block_size, old.disk_size
            changed = [i for i in range(old.blocks) if old[i] != new[i]]
            ranges: list[list[int]] = []
            for i in changed:
                if ranges and ranges[-1][1] == i and (ranges[-1][1] - ranges[-1][0]) * bs < cy.MAX_PAGE_WRITE:
                    ranges[-1][1] = i + 1
                else:
                    ranges.append([i, i + 1])

            def put_back(r: list[int], blob: str = blob, snapshot: str = source.snapshot) -> int:
                start, end = r[0] * bs, min(size, r[1] * bs)
                data = self.replicas.read(blob, snapshot, start, end - start)
                plan = cy.plan_segment_of_bytes(start, data)
                return self.replicas.write(blob, plan.writes, plan.clears)

            try:
                with ThreadPoolExecutor(max(1, self.settings.page_workers // 2)) as pool:
                    restored += sum(pool.map(put_back, ranges))
            except NotFoundError as exc:  # the last point's snapshot is gone
                flagged[d.name] = f"cycle {marker.cycle_id} could not be rolled back: {exc}"
        if flagged:
            self._flag_resync(item, flagged)
        self.cache.delete(names)
        what = f"put {restored} bytes back from point {last.id}" if last is not None and restored else "nothing to put back"
        return (f"rolled back locally staged cycle {marker.cycle_id} ({what})"
                + (f"; flagged for resync: {', '.join(flagged)}" if flagged else ""))


def _json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()
