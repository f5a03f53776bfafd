"""Failback's decisions and checks: the proof that every on-premises disk equals the Azure
disk at shutdown, and the commit that removes the failover's Azure resources."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from drbook.errors import PreflightError, StateTransitionError
from drbook.failover.build import resources_of_run, sweep_run
from drbook.models import AuditEntry, ItemState, ProtectedItem, utcnow
from drbook.replication.manifest import Manifest
from drbook.reprotect.cycle import SAS_SECONDS, release_snapshot, target_disks
from drbook.reprotect.master import drift
from drbook.reprotect.model import ITEM_TAG, ReprotectRecord, Verification, reprotect_key
from drbook.vault import item_key

VERIFY_CHUNK = 4 * 1024 * 1024
VERIFY_WORKERS = 4


def require_record(site, item_name: str) -> ReprotectRecord:  # noqa: ANN001 - Site
    record = site.vault.find(reprotect_key(item_name), ReprotectRecord)
    if record is None:
        raise StateTransitionError(f"{item_name}: no reprotect on record; run `drbook reprotect {item_name}` first")
    return record


def snapshot_manifest(site, disk) -> Manifest:  # noqa: ANN001 - Site, ReverseDisk
    """The block hashes of the disk's baseline snapshot (after failback: the Azure disk at
    shutdown), read back through a SAS, at the forward replication's block size."""
    azure = site.azure
    azure.revoke_snapshot_access(disk.resource_group, disk.baseline)
    sas = azure.grant_snapshot_access(disk.resource_group, disk.baseline, SAS_SECONDS)
    bs = disk.block_size
    chunk = VERIFY_CHUNK - VERIFY_CHUNK % bs

    def hashes_of(start: int) -> bytes:
        data = memoryview(azure.read_range(sas, start, min(chunk, disk.size - start)))
        return b"".join(hashlib.sha256(data[i:i + bs]).digest() for i in range(0, len(data), bs))

    try:
        with ThreadPoolExecutor(VERIFY_WORKERS) as pool:
            hashes = b"".join(pool.map(hashes_of, range(0, disk.size, chunk)))
    finally:
        azure.revoke_snapshot_access(disk.resource_group, disk.baseline)
    return Manifest(disk.size, bs, hashes)


def verify(site, record: ReprotectRecord) -> Verification:  # noqa: ANN001 - Site
    """Every block of every target disk against the final snapshot: its hashes as Azure serves
    its bytes, the target's as the master target's agent reads its disks."""
    manifests = {d.disk: snapshot_manifest(site, d) for d in record.disks}
    target = site.machine(record.target)
    shell = site.shell_for(target)
    try:
        bad = drift(shell, target, target_disks(record), [manifests[d.disk] for d in record.disks])
    finally:
        shell.close()
    result = Verification(ok=True)
    for d in record.disks:
        differing = sorted(bad.get(d.disk, set()))
        result.disks[d.disk] = {"bytes_verified": d.size, "blocks": manifests[d.disk].blocks,
                                "bad_blocks": differing[:20], "snapshot": d.baseline, "target": d.target_path}
        result.ok = result.ok and not differing
    return result


def require_verified(machine: str, check: Verification) -> None:
    """A failback goes on only when every block of every target disk equals the final snapshot."""
    from drbook.errors import VerificationError

    if not check.ok:
        bad = {d: v["bad_blocks"] for d, v in check.disks.items() if v["bad_blocks"]}
        raise VerificationError(f"{machine}: the on-premises disks do not equal the Azure disks at shutdown "
                                f"(first differing blocks: {bad})")


def failed_back(site, machines: list[str]) -> list[str]:  # noqa: ANN001 - Site
    """The machines whose commit is a failback's (the others' is a failover's)."""
    return [m for m in machines if (i := site.vault.find_item(m)) is not None and i.state == ItemState.FAILED_BACK]


def commit_failback(site, item_name: str, *, run_id: str, force_reason: str | None = None,  # noqa: ANN001
                    dry_run: bool = False) -> dict:
    """Delete the failover's Azure VMs, NICs, disks and snapshots (by the run's tag), after a
    verified failback; `force_reason` commits an unverified one and goes into the audit log.
    The shape of a failover commit's result (`actions`, `kept_point`), with `failback: True`."""
    vault = site.vault
    with vault.lease(f"failover-{item_name}", holder=f"commit-failback {run_id}", duration_s=30):
        item = vault.item(item_name)
        if item.state != ItemState.FAILED_BACK:
            raise StateTransitionError(f"cannot commit the failback of {item_name}: it is {item.state.value}; "
                                       "that needs failed-back")
        record = require_record(site, item_name)
        verified = record.verification is not None and record.verification.ok
        if not verified and not force_reason:
            raise PreflightError(f"cannot commit the failback of {item_name}: its verification "
                                 f"{'failed' if record.verification else 'did not run'}; nothing was deleted "
                                 "(force it with --force --reason TEXT)")
        doomed = resources_of_run(site.azure, record.failover_run_id)
        if dry_run:
            return {"item": item_name, "failback": True, "dry_run": True, "kept_point": None, "deleted_points": [],
                    "actions": [f"Would delete {r.type} {r.name}" for r in doomed], "verified": verified}
        for r in site.azure.list_tagged(ITEM_TAG, item_name):
            if r.type.lower() == "microsoft.compute/snapshots":
                release_snapshot(site.azure, r.resource_group, r.name)
        deleted = sweep_run(site.azure, record.failover_run_id)
        vault.update(reprotect_key(item_name), ReprotectRecord,
                     lambda r: r.model_copy(update={"status": "committed", "updated": utcnow()}))

        def forget_vms(i):  # noqa: ANN001, ANN202
            i.azure_vms = []
            return i
        vault.update(item_key(item_name), ProtectedItem, forget_vms)
        vault.audit(AuditEntry(actor=vault.actor, item=item_name, action="commit-failback", flow_run_id=run_id,
                               detail={"deleted": len(deleted), "verified": verified,
                                       **({"forced": force_reason} if not verified else {})}))
        return {"item": item_name, "failback": True, "dry_run": False, "kept_point": None, "deleted_points": [],
                "actions": [f"Deleted {x}" for x in deleted], "verified": verified,
                "forced": None if verified else force_reason}


def stop_azure_vm(site, record: ReprotectRecord) -> list[str]:  # noqa: ANN001 - Site
    """The guest's stop hooks (Run Command), then power off and deallocate: after this nothing
    writes the Azure disks, and the final snapshot holds every acknowledged write."""
    cfg = site.machine(record.machine)
    outputs = [site.azure.run_shell_script(record.resource_group, record.vm_name, hook) for hook in cfg.stop_hooks]
    site.azure.deallocate_vm(record.resource_group, record.vm_name)
    return outputs


def restart_azure_vm(site, record: ReprotectRecord) -> str:  # noqa: ANN001 - Site
    """Undo stop_azure_vm: the business goes on in Azure (a failback that did not complete)."""
    site.azure.start_vm(record.resource_group, record.vm_name)
    return site.azure.power_state(record.resource_group, record.vm_name)


def bring_up_target(site, record: ReprotectRecord) -> str:  # noqa: ANN001 - Site
    if record.target_vm:
        from drbook.adapters.vsphere import from_site

        with from_site(site.cfg) as vc:
            vc.power_on(record.target_vm)
            return f"{record.target_vm} powered on in vCenter ({vc.power_state(record.target_vm)})"
    return f"{record.target}: physical server ready (its disks hold the Azure VM's final state)"


HEALTH_COMMAND = "echo drbook-health-ok"


def health_check(site, record: ReprotectRecord) -> str:  # noqa: ANN001 - Site
    """The machine answers over SSH (its host key checked against known_hosts)."""
    from drbook.errors import VerificationError

    target = site.machine(record.target)
    shell = site.shell_for(target)
    try:
        result = shell.run(HEALTH_COMMAND, timeout=60)
    finally:
        shell.close()
    if result.exit_status != 0 or "drbook-health-ok" not in result.stdout:
        raise VerificationError(f"{record.target}: the health check over SSH failed (exit {result.exit_status})")
    return f"{record.target} answers over SSH"


def mark_failed_back(site, record: ReprotectRecord, run_id: str) -> ReprotectRecord:  # noqa: ANN001 - Site
    site.vault.transition(record.item, ItemState.FAILED_BACK, flow_run_id=run_id,
                          reason=f"failback to {record.target} verified; the Azure VM {record.vm_name} is deallocated")
    return site.vault.update(reprotect_key(record.item), ReprotectRecord,
                             lambda r: r.model_copy(update={"status": "failed-back", "updated": utcnow()}))
