"""Building one recovered machine in Azure, step by step. Every step is idempotent
(create_or_update, delete of what exists) and tags what it makes with the run, so a
rollback or a later `reconcile` can find and remove all of it."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from urllib.parse import quote
from typing import Callable, Literal

from azure.mgmt.compute import models as cm
from azure.mgmt.network import models as nm
from azure.mgmt.resource.resources.models import ResourceGroup
from azure.storage.blob import BlobClient
from pydantic import BaseModel

from drbook.adapters.azure import AzureClients, map_azure_errors
from drbook.adapters.blobstore import map_blob_errors
from drbook.config import SiteConfig
from drbook.errors import AzureError, NotFoundError, VerificationError
from drbook.failover.network import NicPlan
from drbook.failover.prepare import imports_container
from drbook.models import PointDisk, RecoveryPoint
from drbook.replication.manifest import Manifest

TAG_ITEM = "drbook-item"
TAG_RUN = "drbook-run"
TAG_PURPOSE = "drbook-purpose"
TAG_SITE = "drbook-site"
VHD_FOOTER = 512
READ_CHUNK = 4 * 1024 * 1024


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
def ensure_resource_group(clients: AzureClients, name: str, location: str, tags: dict[str, str]) -> None:
    with map_azure_errors(f"create resource group {name}"):
        clients.resource.resource_groups.create_or_update(name, ResourceGroup(location=location, tags=tags))


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


def import_disk(site: SiteConfig, clients: AzureClients, blob_service, plan: MachinePlan, disk: DiskPlan) -> str:
    """A managed disk with the point's bytes (Import of a fixed VHD); returns its id."""
    existing = _find(lambda: clients.compute.disks.get(plan.resource_group, disk.name))
    if existing is not None and existing.provisioning_state == "Succeeded":
        return existing.id
    source = stage_snapshot(site, blob_service, plan, disk)
    account_id = _id(site, site.azure.storage_resource_group or site.azure.resource_group,
                     "Microsoft.Storage/storageAccounts", site.azure.storage_account)
    body = cm.Disk(
        location=plan.location, tags=plan.tags, sku=cm.DiskSku(name="Premium_LRS"),
        os_type="Linux" if disk is plan.disks[0] else None,
        creation_data=cm.CreationData(create_option="Import", source_uri=source, storage_account_id=account_id),
    )
    try:
        with map_azure_errors(f"import disk {disk.name}"):
            result = clients.compute.disks.begin_create_or_update(plan.resource_group, disk.name, body).result()
    finally:
        staged = blob_service.get_blob_client(imports_container(site), staging_blob_name(plan, disk))
        with map_blob_errors():
            if staged.exists():
                staged.delete_blob()
    return result.id


def _find(get: Callable):
    try:
        with map_azure_errors("get"):
            return get()
    except NotFoundError:
        return None


# -- verification ----------------------------------------------------------------------------
class DiskVerification(BaseModel):
    disk: str
    managed_disk: str
    blocks: int
    bytes_verified: int
    mismatched_blocks: list[int] = []
    footer_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.mismatched_blocks and self.footer_ok


def verify_disk(site: SiteConfig, clients: AzureClients, plan: MachinePlan, disk: DiskPlan, manifest: Manifest,
                progress: Callable[[int], None] | None = None) -> DiskVerification:
    """Read the managed disk back through a grant-access SAS and compare every block's SHA-256
    with the recovery point's manifest. Access is revoked afterwards, also on failure."""
    pd = disk.point_disk
    with map_azure_errors(f"grant access to {disk.name}"):
        access = clients.compute.disks.begin_grant_access(
            plan.resource_group, disk.name, cm.GrantAccessData(access="Read", duration_in_seconds=3600)
        ).result()
    try:
        reader = BlobClient.from_blob_url(access.access_sas, connection_verify=str(site.azure.ca_bundle) if site.azure.ca_bundle else True)
        bs = pd.block_size
        mismatched: list[int] = []
        offset = 0
        with map_blob_errors():
            while offset < pd.size_bytes:
                length = min(READ_CHUNK, pd.size_bytes - offset)
                data = reader.download_blob(offset=offset, length=length).readall()
                for i in range(0, len(data), bs):
                    index = (offset + i) // bs
                    digest = hashlib.sha256(data[i:i + bs]).digest()
                    if index >= manifest.blocks or digest != manifest[index]:
                        mismatched.append(index)
                offset += length
                if progress:
                    progress(length)
            total = reader.get_blob_properties().size
            footer = reader.download_blob(offset=total - VHD_FOOTER, length=VHD_FOOTER).readall()
        footer_ok = footer[:8] == b"conectix" and total - VHD_FOOTER >= pd.size_bytes
    finally:
        with map_azure_errors(f"revoke access to {disk.name}"):
            clients.compute.disks.begin_revoke_access(plan.resource_group, disk.name).result()
    return DiskVerification(disk=disk.disk, managed_disk=disk.name, blocks=manifest.blocks, bytes_verified=pd.size_bytes,
                            mismatched_blocks=mismatched, footer_ok=footer_ok)


def require_verified(results: list[DiskVerification], machine: str) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        detail = "; ".join(
            f"{r.disk}: {len(r.mismatched_blocks)} blocks differ (first {r.mismatched_blocks[:5]})"
            + ("" if r.footer_ok else ", VHD footer invalid")
            for r in bad
        )
        raise VerificationError(f"{machine}: the disks in Azure do not match the recovery point: {detail}")


# -- network and VM --------------------------------------------------------------------------
def create_nic(site: SiteConfig, clients: AzureClients, plan: MachinePlan) -> tuple[str, str]:
    subnet_id = _id(site, plan.network_resource_group, "Microsoft.Network/virtualNetworks",
                    f"{plan.nic.vnet}/subnets/{plan.nic.subnet}")
    ipcfg = nm.NetworkInterfaceIPConfiguration(
        name="ipconfig1", subnet=nm.Subnet(id=subnet_id), primary=True,
        private_ip_allocation_method="Static" if plan.nic.static_ip else "Dynamic",
        private_ip_address=plan.nic.static_ip,
    )
    body = nm.NetworkInterface(location=plan.location, tags=plan.tags, ip_configurations=[ipcfg])
    with map_azure_errors(f"create NIC {plan.nic_name}"):
        nic = clients.network.network_interfaces.begin_create_or_update(plan.resource_group, plan.nic_name, body).result()
    return nic.id, nic.ip_configurations[0].private_ip_address


def create_vm(site: SiteConfig, clients: AzureClients, plan: MachinePlan, disk_ids: list[str], nic_id: str) -> str:
    os_disk, data_disks = disk_ids[0], disk_ids[1:]
    body = cm.VirtualMachine(
        location=plan.location,
        tags=plan.tags,
        hardware_profile=cm.HardwareProfile(vm_size=plan.size),
        storage_profile=cm.StorageProfile(
            os_disk=cm.OSDisk(os_type="Linux", create_option="Attach", name=plan.disks[0].name,
                              managed_disk=cm.ManagedDiskParameters(id=os_disk)),
            data_disks=[cm.DataDisk(lun=lun, create_option="Attach", name=plan.disks[lun + 1].name,
                                    managed_disk=cm.ManagedDiskParameters(id=did))
                        for lun, did in enumerate(data_disks)],
        ),
        network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(id=nic_id, primary=True)]),
        diagnostics_profile=cm.DiagnosticsProfile(boot_diagnostics=cm.BootDiagnostics(enabled=True)),
    )
    with map_azure_errors(f"create VM {plan.vm_name}"):
        vm = clients.compute.virtual_machines.begin_create_or_update(plan.resource_group, plan.vm_name, body).result()
    return vm.id


def power_state(clients: AzureClients, rg: str, vm_name: str) -> str:
    with map_azure_errors(f"instance view of {vm_name}"):
        view = clients.compute.virtual_machines.instance_view(rg, vm_name)
    codes = [s.code for s in (view.statuses or []) if s.code and s.code.startswith("PowerState/")]
    return codes[0].split("/", 1)[1] if codes else "unknown"


def start_vm(clients: AzureClients, plan: MachinePlan) -> str:
    if power_state(clients, plan.resource_group, plan.vm_name) != "running":
        with map_azure_errors(f"start VM {plan.vm_name}"):
            clients.compute.virtual_machines.begin_start(plan.resource_group, plan.vm_name).result()
    state = power_state(clients, plan.resource_group, plan.vm_name)
    if state != "running":
        raise AzureError(f"{plan.vm_name} is {state} after start")
    return state


def run_script(clients: AzureClients, plan: MachinePlan, script: str) -> str:
    with map_azure_errors(f"run command on {plan.vm_name}"):
        result = clients.compute.virtual_machines.begin_run_command(
            plan.resource_group, plan.vm_name, cm.RunCommandInput(command_id="RunShellScript", script=script.splitlines())
        ).result()
    return "\n".join((v.message or "") for v in (result.value or []))


# -- removal ---------------------------------------------------------------------------------
def delete_resource(clients: AzureClients, kind: Literal["VM", "NIC", "disk"], rg: str, name: str) -> bool:
    """Delete one resource this module makes; False when it was not there."""
    begin_delete = {
        "VM": clients.compute.virtual_machines.begin_delete,
        "NIC": clients.network.network_interfaces.begin_delete,
        "disk": clients.compute.disks.begin_delete,
    }[kind]
    try:
        with map_azure_errors(f"delete {kind} {name}"):
            begin_delete(rg, name).result()
        return True
    except NotFoundError:
        return False


_DELETE_ORDER = ("Microsoft.Compute/virtualMachines", "Microsoft.Network/networkInterfaces",
                 "Microsoft.Network/publicIPAddresses", "Microsoft.Compute/snapshots", "Microsoft.Compute/disks")


def resources_of_run(clients: AzureClients, run_id: str) -> list:
    with map_azure_errors(f"list resources of run {run_id}"):
        return list(clients.resource.resources.list(filter=f"tagName eq '{TAG_RUN}' and tagValue eq '{run_id}'"))


def sweep_run(clients: AzureClients, run_id: str) -> list[str]:
    """Delete every resource tagged with the run, VMs first. Returns what was deleted."""
    found = resources_of_run(clients, run_id)
    rank = {t.lower(): i for i, t in enumerate(_DELETE_ORDER)}
    found.sort(key=lambda r: rank.get(r.type.lower(), len(rank)))
    deleted = []
    for r in found:
        rg = r.id.split("/")[4]
        try:
            with map_azure_errors(f"delete {r.type} {r.name}"):
                _delete_generic(clients, r.type, rg, r.name)
            deleted.append(r.id)
        except NotFoundError:
            pass
    return deleted


def _delete_generic(clients: AzureClients, rtype: str, rg: str, name: str) -> None:
    kind = rtype.lower()
    if kind == "microsoft.compute/virtualmachines":
        clients.compute.virtual_machines.begin_delete(rg, name).result()
    elif kind == "microsoft.network/networkinterfaces":
        clients.network.network_interfaces.begin_delete(rg, name).result()
    elif kind == "microsoft.network/publicipaddresses":
        clients.network.public_ip_addresses.begin_delete(rg, name).result()
    elif kind == "microsoft.compute/snapshots":
        clients.compute.snapshots.begin_delete(rg, name).result()
    elif kind == "microsoft.compute/disks":
        clients.compute.disks.begin_delete(rg, name).result()
    else:
        raise AzureError(f"do not know how to delete a {rtype} ({name}); remove it by hand")
