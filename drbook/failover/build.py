"""Building one recovered machine in Azure, step by step. Every step is idempotent
(create_or_update, delete of what exists) and tags what it makes with the run, so a
rollback or a later `reconcile` can find and remove all of it."""

from __future__ import annotations

import datetime as dt
import time
from urllib.parse import quote
from typing import Callable, Literal

from azure.storage.blob import BlobClient
from pydantic import BaseModel

from drbook.adapters import recovery_site as rs
from drbook.adapters.blobstore import map_blob_errors
from drbook.adapters.recovery_site import RecoverySite, TaggedResource
from drbook.config import SiteConfig
from drbook.errors import AzureError, VerificationError
from drbook.failover.network import NicPlan
from drbook.failover.prepare import imports_container
from drbook.models import PointDisk, RecoveryPoint
from drbook.replication.manifest import Manifest
from drbook.replication.verify import ManifestCheck, check_against_manifest

TAG_ITEM = "drbook-item"
TAG_RUN = "drbook-run"
TAG_PURPOSE = "drbook-purpose"
TAG_SITE = "drbook-site"


class DiskPlan(BaseModel):
    disk: str
    name: str
    point_disk: PointDisk


class MachinePlan(BaseModel):
    site: str
    item: str
    machine: str
    run_id: str
    purpose: Literal["drill", "failover"]
    resource_group: str
    location: str
    vm_name: str
    size: str
    disks: list[DiskPlan]
    nic_name: str
    nic: NicPlan
    network_resource_group: str
    point_id: str
    point_time: dt.datetime

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_SITE: self.site, TAG_ITEM: self.item, TAG_RUN: self.run_id, TAG_PURPOSE: self.purpose}


def plan_machine(*, site: str, item: str, machine: str, point: RecoveryPoint, run_id: str, purpose: Literal["drill", "failover"],
                 resource_group: str, location: str, size: str, nic: NicPlan, network_resource_group: str,
                 name_suffix: str = "") -> MachinePlan:
    """Names are derived from the machine (and, for drills, the drill id) so a retry finds its own resources."""
    base = f"{machine}{name_suffix}"
    return MachinePlan(
        site=site, item=item, machine=machine, run_id=run_id, purpose=purpose, resource_group=resource_group, location=location,
        vm_name=f"{base}-vm", size=size, nic_name=f"{base}-nic0", nic=nic, network_resource_group=network_resource_group,
        disks=[DiskPlan(disk=d.disk, name=f"{base}-{d.disk}", point_disk=d) for d in point.disks],
        point_id=point.id, point_time=point.time,
    )


def _sub_id(site: SiteConfig) -> str:
    return site.azure.subscription_id


def _id(site: SiteConfig, rg: str, provider: str, name: str) -> str:
    return f"/subscriptions/{_sub_id(site)}/resourceGroups/{rg}/providers/{provider}/{name}"


# -- resource group --------------------------------------------------------------------------
def ensure_resource_group(azure: RecoverySite, name: str, location: str, tags: dict[str, str]) -> None:
    azure.ensure_resource_group(name, location, tags)


def delete_resource_group(azure: RecoverySite, name: str) -> bool:
    """With everything in it; False when it was not there."""
    return azure.delete_resource_group(name)


# -- disks -----------------------------------------------------------------------------------
def _blob_url(site: SiteConfig, container: str, blob: str, snapshot: str | None) -> str:
    url = f"{site.azure.blob_endpoint.rstrip('/')}/{quote(container)}/{quote(blob)}"
    return url + (f"?snapshot={quote(snapshot)}" if snapshot else "")


def staging_blob_name(plan: MachinePlan, disk: DiskPlan) -> str:
    return f"{plan.run_id}/{disk.name}.vhd"


def stage_snapshot(site: SiteConfig, blob_service, plan: MachinePlan, disk: DiskPlan, timeout: float = 600) -> str:
    """Copy the point's blob snapshot to a page blob of its own (server-side) for the import.
    The source is in the same account, so the destination's Shared Key authorizes it (no SAS)."""
    pd = disk.point_disk
    dest = blob_service.get_blob_client(imports_container(site), staging_blob_name(plan, disk))
    with map_blob_errors():
        dest.start_copy_from_url(_blob_url(site, pd.container, pd.blob, pd.snapshot))
        deadline = time.monotonic() + timeout
        while True:
            props = dest.get_blob_properties()
            status = props.copy.status
            if status == "success":
                break
            if status in ("failed", "aborted") or time.monotonic() > deadline:
                raise AzureError(f"staging {disk.name} for import: copy {status or 'timed out'}")
            time.sleep(0.1)
    return dest.url


def import_disk(site: SiteConfig, azure: RecoverySite, blob_service, plan: MachinePlan, disk: DiskPlan) -> str:
    """A managed disk with the point's bytes (Import of a fixed VHD); returns its id."""
    existing = azure.get_disk(plan.resource_group, disk.name)
    if existing is not None and existing.provisioning_state == "Succeeded":
        return existing.id
    source = stage_snapshot(site, blob_service, plan, disk)
    account_id = _id(site, site.azure.storage_resource_group or site.azure.resource_group,
                     "Microsoft.Storage/storageAccounts", site.azure.storage_account)
    spec = rs.DiskImport(
        resource_group=plan.resource_group, name=disk.name, location=plan.location, tags=plan.tags,
        source_uri=source, storage_account_id=account_id, os_type="Linux" if disk is plan.disks[0] else None,
    )
    try:
        return azure.import_disk(spec)
    finally:
        staged = blob_service.get_blob_client(imports_container(site), staging_blob_name(plan, disk))
        with map_blob_errors():
            if staged.exists():
                staged.delete_blob()


# -- verification ----------------------------------------------------------------------------
class DiskVerification(ManifestCheck):
    """A managed disk read back through a SAS, checked against its point's manifest."""

    disk: str
    managed_disk: str


def verify_disk(site: SiteConfig, azure: RecoverySite, plan: MachinePlan, disk: DiskPlan, manifest: Manifest,
                progress: Callable[[int], None] | None = None) -> DiskVerification:
    """Read the managed disk back through a grant-access SAS and compare every block's SHA-256
    with the recovery point's manifest. Access is revoked afterwards, also on failure."""
    sas_url = azure.grant_disk_access(plan.resource_group, disk.name, duration_s=3600)
    try:
        reader = BlobClient.from_blob_url(sas_url, connection_verify=str(site.azure.ca_bundle) if site.azure.ca_bundle else True)
        with map_blob_errors():
            # exact_size=False: the managed disk may have been grown since its import.
            check = check_against_manifest(lambda offset, length: reader.download_blob(offset=offset, length=length).readall(),
                                           reader.get_blob_properties().size, manifest, progress=progress, exact_size=False)
    finally:
        azure.revoke_disk_access(plan.resource_group, disk.name)
    return DiskVerification(disk=disk.disk, managed_disk=disk.name, **check.model_dump())


def require_verified(results: list[DiskVerification], machine: str) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        detail = "; ".join(
            f"{r.disk}: {len(r.bad_blocks)} blocks differ (first {r.bad_blocks[:5]})"
            + ("" if r.footer_ok else f", VHD footer invalid ({r.footer_error or 'no footer'})")
            + ("" if r.tail_ok else ", the padding to 1 MiB is not zero")
            for r in bad
        )
        raise VerificationError(f"{machine}: the disks in Azure do not match the recovery point: {detail}")


def baseline_name(disk: DiskPlan) -> str:
    return f"{disk.name}-s0"[:80]


def take_baseline(azure: RecoverySite, plan: MachinePlan, disk: DiskPlan, disk_id: str) -> str:
    """S0: an incremental snapshot of a verified disk before its VM boots, so a later
    reprotect reads only what changed in Azure since the failover point (its name)."""
    from drbook.reprotect.model import BASELINE_PURPOSE, ITEM_TAG, PURPOSE_TAG

    name = baseline_name(disk)
    tags = {**plan.tags, PURPOSE_TAG: BASELINE_PURPOSE, ITEM_TAG: plan.item}
    azure.create_incremental_snapshot(plan.resource_group, name, disk_id, plan.location, tags)
    return name


# -- network and VM --------------------------------------------------------------------------
def create_nic(site: SiteConfig, azure: RecoverySite, plan: MachinePlan) -> tuple[str, str]:
    subnet_id = _id(site, plan.network_resource_group, "Microsoft.Network/virtualNetworks",
                    f"{plan.nic.vnet}/subnets/{plan.nic.subnet}")
    nic = azure.create_nic(rs.NicSpec(resource_group=plan.resource_group, name=plan.nic_name, location=plan.location,
                                      tags=plan.tags, subnet_id=subnet_id, static_ip=plan.nic.static_ip))
    return nic.id, nic.private_ip


def create_vm(site: SiteConfig, azure: RecoverySite, plan: MachinePlan, disk_ids: list[str], nic_id: str) -> str:
    disks = [rs.AttachedDisk(name=d.name, id=disk_id) for d, disk_id in zip(plan.disks, disk_ids)]
    return azure.create_vm(rs.VmSpec(
        resource_group=plan.resource_group, name=plan.vm_name, location=plan.location, tags=plan.tags, size=plan.size,
        os_type="Linux", os_disk=disks[0], data_disks=disks[1:], nic_id=nic_id, boot_diagnostics=True,
    ))


def power_state(azure: RecoverySite, rg: str, vm_name: str) -> str:
    return azure.power_state(rg, vm_name)


def start_vm(azure: RecoverySite, plan: MachinePlan) -> str:
    if azure.power_state(plan.resource_group, plan.vm_name) != "running":
        azure.start_vm(plan.resource_group, plan.vm_name)
    state = azure.power_state(plan.resource_group, plan.vm_name)
    if state != "running":
        raise AzureError(f"{plan.vm_name} is {state} after start")
    return state


def run_script(azure: RecoverySite, plan: MachinePlan, script: str) -> str:
    return azure.run_shell_script(plan.resource_group, plan.vm_name, script)


# -- removal ---------------------------------------------------------------------------------
_KINDS = {"VM": rs.VIRTUAL_MACHINE, "NIC": rs.NETWORK_INTERFACE, "disk": rs.MANAGED_DISK, "snapshot": rs.SNAPSHOT}
SWEEP_WORKERS = 16  # deletions at once (a 100-machine drill leaves some 300 resources)
# Dependents before what they depend on: a VM holds its NIC and disks, Azure refuses to delete those first.
_DELETE_ORDER = (rs.VIRTUAL_MACHINE, rs.NETWORK_INTERFACE, rs.PUBLIC_IP_ADDRESS, rs.SNAPSHOT, rs.MANAGED_DISK)


def delete_resource(azure: RecoverySite, kind: Literal["VM", "NIC", "disk", "snapshot"], rg: str, name: str) -> bool:
    """Delete one resource this module makes; False when it was not there."""
    return azure.delete_resource(_KINDS[kind], rg, name)


def resources_of_run(azure: RecoverySite, run_id: str) -> list[TaggedResource]:
    return azure.list_tagged(TAG_RUN, run_id)


def resources_of_site(azure: RecoverySite, site: str) -> list[TaggedResource]:
    """What any run of this site made (and has not removed)."""
    return azure.list_tagged(TAG_SITE, site)


def _deletion_rank(r: TaggedResource) -> int:
    kinds = [t.lower() for t in _DELETE_ORDER]
    return kinds.index(r.type.lower()) if r.type.lower() in kinds else len(kinds)


def deletion_order(found: list[TaggedResource]) -> list[TaggedResource]:
    """VMs first, then NICs, public IPs, snapshots and disks; types drbook does not make last."""
    return sorted(found, key=_deletion_rank)


def sweep_run(azure: RecoverySite, run_id: str) -> list[str]:
    """Delete every resource tagged with the run, VMs first (a kind only once the kinds before
    it are gone; the resources of one kind in parallel). Returns what was deleted."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import groupby

    deleted = []
    tiers = groupby(deletion_order(resources_of_run(azure, run_id)), key=_deletion_rank)
    with ThreadPoolExecutor(max_workers=SWEEP_WORKERS) as pool:
        for _, tier in tiers:
            tier = list(tier)
            gone = pool.map(lambda r: azure.delete_resource(r.type, r.resource_group, r.name), tier)
            deleted += [r.id for r, ok in zip(tier, gone) if ok]
    return deleted
