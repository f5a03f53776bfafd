"""RecoverySite over the azure-mgmt SDKs; azure-core's errors translated here, once.

Only this module sees azure.mgmt and azure.core.exceptions. Every library exception is
mapped by `_error_table` at the boundary into drbook's tree, so callers decide on
`ResourceNotFound` (the thing is not there), `AzureTransientError` (throttling, 5xx, no
answer: retried) or `AzureError` (anything else: not retried).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.mgmt.compute import models as cm
from azure.mgmt.network import models as nm
from azure.mgmt.resource.resources.models import ResourceGroup
from azure.mgmt.storage import models as sm

from azure.storage.blob import BlobClient

from drbook.adapters.blobstore import azure_credential, map_blob_errors
from drbook.adapters.recovery_site import (
    MANAGED_DISK,
    NETWORK_INTERFACE,
    PUBLIC_IP_ADDRESS,
    SNAPSHOT,
    VIRTUAL_MACHINE,
    CreatedNic,
    DiskImport,
    ManagedDisk,
    NicSpec,
    NsgRule,
    NsgSpec,
    PageRange,
    StorageAccount,
    SubnetState,
    TaggedResource,
    VirtualNetworkState,
    VmSize,
    VmSpec,
)
from drbook.config import AzureConfig
from drbook.errors import AzureError, AzureTransientError, DRError, ResourceNotFound

# Retries are ours (Prefect task policies, on AzureTransientError), so the SDK tries a
# failed call only twice more and one failure is seen once by the task.
SDK_RETRY_TOTAL = 2
# The SDK's default (30 s, or the server's Retry-After) is for real Azure; the lab's ARM
# emulator finishes an operation in well under a second.
POLLING_INTERVAL_S = 0.2
# ARM error codes that mean "try again" although the status says otherwise.
TRANSIENT_CODES = frozenset({"OperationPreempted", "RetryableError", "InternalServerError"})
STORAGE_KIND = "StorageV2"
STORAGE_SKU = "Standard_LRS"

T = TypeVar("T")


STORAGE_API_VERSION = "2021-08-06"  # for the ranged reads of granted disks (x-ms-range)
HTTP_POOL = 32  # connections to ARM kept open (flows/common.parallel runs up to 16 machines at once)


@dataclass
class AzureClients:
    """The four management clients, built lazily, all pointed at one ARM endpoint."""

    cfg: AzureConfig

    def _kwargs(self) -> dict:
        kw: dict = {"base_url": self.cfg.arm_base_url, "credential_scopes": [self.cfg.arm_base_url.rstrip("/") + "/.default"]}
        if self.cfg.ca_bundle:
            kw["connection_verify"] = str(self.cfg.ca_bundle)
        kw["retry_total"] = SDK_RETRY_TOTAL
        kw["polling_interval"] = POLLING_INTERVAL_S
        # The transport is given the same TLS settings: it, not the client, verifies the server.
        kw["transport"] = RequestsTransport(session=self._session, session_owner=False,
                                            **({"connection_verify": kw["connection_verify"]} if self.cfg.ca_bundle else {}))
        return kw

    @cached_property
    def _session(self):
        """One HTTPS connection pool for the four clients, wide enough for a plan group's machines
        at once (requests keeps 10 connections per host; the 11th thread's would be thrown away
        after each call, a TLS handshake each time)."""
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        session.mount("https://", HTTPAdapter(pool_connections=2, pool_maxsize=HTTP_POOL))
        return session

    @cached_property
    def credential(self) -> TokenCredential:
        return azure_credential(self.cfg)

    @cached_property
    def resource(self):
        from azure.mgmt.resource.resources import ResourceManagementClient

        return ResourceManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())

    @cached_property
    def network(self):
        from azure.mgmt.network import NetworkManagementClient

        return NetworkManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())

    @cached_property
    def compute(self):
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())

    @cached_property
    def storage(self):
        from azure.mgmt.storage import StorageManagementClient

        return StorageManagementClient(self.credential, self.cfg.subscription_id, **self._kwargs())


# -- errors ------------------------------------------------------------------------------------
def _code(exc: HttpResponseError) -> str:
    err = getattr(exc, "error", None)
    return (getattr(err, "code", None) or "") if err else ""


def _http_error(what: str, exc: HttpResponseError) -> DRError:
    status = exc.status_code or 0
    code = _code(exc)
    message = getattr(getattr(exc, "error", None), "message", None) or exc.reason or ""
    text = f"{what}: {code or status} {message}".strip()
    if status == 429 or status >= 500 or code in TRANSIENT_CODES:
        return AzureTransientError(text)
    return AzureError(text)


def _error_table(what: str) -> list[tuple[type[BaseException], Callable[[BaseException], DRError]]]:
    """Library exception -> drbook error, most specific first (the first three are HttpResponseErrors).
    A 409 (the SDK's ResourceExistsError) is not always "exists": deleting an attached disk is
    one too (OperationNotAllowed), so it says ARM's code and message like any other error."""
    return [
        (ResourceNotFoundError, lambda e: ResourceNotFound(f"{what}: not found ({_code(e) or 'ResourceNotFound'})")),
        (ClientAuthenticationError, lambda e: AzureError(f"{what}: authentication to Azure failed")),
        (HttpResponseError, lambda e: _http_error(what, e)),
        (ServiceRequestError, lambda e: AzureTransientError(f"{what}: Azure did not answer ({type(e).__name__})")),
        (ServiceResponseError, lambda e: AzureTransientError(f"{what}: Azure did not answer ({type(e).__name__})")),
    ]


@contextlib.contextmanager
def map_azure_errors(what: str) -> Iterator[None]:
    """Translate azure-core exceptions at the boundary; `what` says what we were doing."""
    try:
        yield
    except DRError:
        raise
    except Exception as exc:
        for exc_type, make in _error_table(what):
            if isinstance(exc, exc_type):
                # Not chained: the SDK's exception would drag its HTTP response into Prefect's stored traceback.
                raise make(exc) from None
        raise


def _resource_group_of(resource_id: str) -> str:
    return resource_id.split("/")[4]


def _last_segment(resource_id: str | None) -> str | None:
    return resource_id.rsplit("/", 1)[-1] if resource_id else None


# -- the recovery site -------------------------------------------------------------------------
class AzureRecoverySite:
    """RecoverySite for one subscription, through the management clients of `AzureClients`."""

    def __init__(self, cfg: AzureConfig) -> None:
        self.cfg = cfg
        self.clients = AzureClients(cfg)

    def _get_or_none(self, what: str, get: Callable[[], T]) -> T | None:
        try:
            with map_azure_errors(what):
                return get()
        except ResourceNotFound:
            return None

    def _delete(self, what: str, begin_delete: Callable[[], object]) -> bool:
        try:
            with map_azure_errors(what):
                begin_delete().result()  # type: ignore[attr-defined]
            return True
        except ResourceNotFound:
            return False

    # -- resource groups
    def resource_group_exists(self, name: str) -> bool:
        groups = self.clients.resource.resource_groups
        return self._get_or_none(f"resource group {name}", lambda: groups.get(name)) is not None

    def ensure_resource_group(self, name: str, location: str, tags: dict[str, str]) -> None:
        with map_azure_errors(f"create resource group {name}"):
            self.clients.resource.resource_groups.create_or_update(name, ResourceGroup(location=location, tags=tags))

    def delete_resource_group(self, name: str) -> bool:
        groups = self.clients.resource.resource_groups
        return self._delete(f"delete resource group {name}", lambda: groups.begin_delete(name))

    # -- what a run made
    def list_tagged(self, tag: str, value: str) -> list[TaggedResource]:
        with map_azure_errors(f"list resources tagged {tag}={value}"):
            found = list(self.clients.resource.resources.list(filter=f"tagName eq '{tag}' and tagValue eq '{value}'"))
        return [TaggedResource(id=r.id, type=r.type, name=r.name, resource_group=_resource_group_of(r.id), tags=r.tags or {})
                for r in found]

    def delete_resource(self, resource_type: str, resource_group: str, name: str) -> bool:
        compute, network = self.clients.compute, self.clients.network
        operations = {
            VIRTUAL_MACHINE: compute.virtual_machines,
            NETWORK_INTERFACE: network.network_interfaces,
            PUBLIC_IP_ADDRESS: network.public_ip_addresses,
            SNAPSHOT: compute.snapshots,
            MANAGED_DISK: compute.disks,
        }
        ops = next((o for t, o in operations.items() if t.lower() == resource_type.lower()), None)
        if ops is None:
            raise AzureError(f"do not know how to delete a {resource_type} ({name}); remove it by hand")
        return self._delete(f"delete {resource_type} {name}", lambda: ops.begin_delete(resource_group, name))

    # -- disks
    def get_disk(self, resource_group: str, name: str) -> ManagedDisk | None:
        disk = self._get_or_none(f"disk {name}", lambda: self.clients.compute.disks.get(resource_group, name))
        return ManagedDisk(id=disk.id, provisioning_state=disk.provisioning_state) if disk is not None else None

    def import_disk(self, spec: DiskImport) -> str:
        body = cm.Disk(
            location=spec.location, tags=spec.tags, sku=cm.DiskSku(name=spec.sku), os_type=spec.os_type,
            creation_data=cm.CreationData(create_option="Import", source_uri=spec.source_uri,
                                          storage_account_id=spec.storage_account_id),
        )
        with map_azure_errors(f"import disk {spec.name}"):
            return self.clients.compute.disks.begin_create_or_update(spec.resource_group, spec.name, body).result().id

    def grant_disk_access(self, resource_group: str, name: str, duration_s: int) -> str:
        with map_azure_errors(f"grant access to {name}"):
            access = self.clients.compute.disks.begin_grant_access(
                resource_group, name, cm.GrantAccessData(access="Read", duration_in_seconds=duration_s)
            ).result()
        return access.access_sas

    def revoke_disk_access(self, resource_group: str, name: str) -> None:
        with map_azure_errors(f"revoke access to {name}"):
            self.clients.compute.disks.begin_revoke_access(resource_group, name).result()

    # -- snapshots
    def create_incremental_snapshot(self, resource_group: str, name: str, disk_id: str, location: str,
                                    tags: dict[str, str]) -> str:
        body = cm.Snapshot(location=location, tags=tags, incremental=True,
                           creation_data=cm.CreationData(create_option="Copy", source_resource_id=disk_id))
        with map_azure_errors(f"snapshot {name}"):
            return self.clients.compute.snapshots.begin_create_or_update(resource_group, name, body).result().id

    def grant_snapshot_access(self, resource_group: str, name: str, duration_s: int) -> str:
        with map_azure_errors(f"grant access to snapshot {name}"):
            access = self.clients.compute.snapshots.begin_grant_access(
                resource_group, name, cm.GrantAccessData(access="Read", duration_in_seconds=duration_s)
            ).result()
        return access.access_sas

    def revoke_snapshot_access(self, resource_group: str, name: str) -> None:
        with map_azure_errors(f"revoke access to snapshot {name}"):
            self.clients.compute.snapshots.begin_revoke_access(resource_group, name).result()

    def _sas_blob(self, sas_url: str) -> BlobClient:
        verify = str(self.cfg.ca_bundle) if self.cfg.ca_bundle else True
        return BlobClient.from_blob_url(sas_url, connection_verify=verify)

    def page_diff(self, sas_url: str, previous_sas_url: str) -> list[PageRange]:
        with map_blob_errors("page ranges of a snapshot"), self._sas_blob(sas_url) as blob:
            pages, cleared = blob.get_page_range_diff_for_managed_disk(previous_sas_url)
        ranges = [PageRange(start=r["start"], end=r["end"]) for r in pages]
        ranges += [PageRange(start=r["start"], end=r["end"], cleared=True) for r in cleared]
        return sorted(ranges, key=lambda r: r.start)

    def read_range(self, sas_url: str, offset: int, length: int) -> bytes:
        """One ranged GET on the SAS URL, on the shared connection pool. (download_blob builds a
        client and, for a page blob, first lists the blob's page ranges on every call: after
        thousands of small guest writes that list made each 64 KiB read cost 190 ms, not 8.)"""
        import requests

        if length <= 0:
            return b""
        headers = {"x-ms-range": f"bytes={offset}-{offset + length - 1}", "x-ms-version": STORAGE_API_VERSION}
        verify = str(self.cfg.ca_bundle) if self.cfg.ca_bundle else True
        try:
            response = self.clients._session.get(sas_url, headers=headers, verify=verify, timeout=(10, 120))
        except requests.RequestException as exc:
            raise AzureTransientError(f"read {length} bytes at {offset} of a granted disk: {type(exc).__name__}") from None
        if response.status_code not in (200, 206):
            code = response.headers.get("x-ms-error-code", "")
            what = f"read {length} bytes at {offset} of a granted disk: HTTP {response.status_code} {code}".strip()
            if response.status_code in (408, 429, 500, 502, 503, 504):
                raise AzureTransientError(what)
            raise AzureError(what)
        return response.content

    # -- NICs and VMs
    def create_nic(self, spec: NicSpec) -> CreatedNic:
        ipcfg = nm.NetworkInterfaceIPConfiguration(
            name="ipconfig1", subnet=nm.Subnet(id=spec.subnet_id), primary=True,
            private_ip_allocation_method="Static" if spec.static_ip else "Dynamic",
            private_ip_address=spec.static_ip,
        )
        body = nm.NetworkInterface(location=spec.location, tags=spec.tags, ip_configurations=[ipcfg])
        with map_azure_errors(f"create NIC {spec.name}"):
            nic = self.clients.network.network_interfaces.begin_create_or_update(spec.resource_group, spec.name, body).result()
        return CreatedNic(id=nic.id, private_ip=nic.ip_configurations[0].private_ip_address)

    def private_ips(self, resource_group: str) -> set[str]:
        with map_azure_errors(f"list NICs in {resource_group}"):
            nics = list(self.clients.network.network_interfaces.list(resource_group))
        return {c.private_ip_address for n in nics for c in (n.ip_configurations or []) if c.private_ip_address}

    def create_vm(self, spec: VmSpec) -> str:
        body = cm.VirtualMachine(
            location=spec.location,
            tags=spec.tags,
            hardware_profile=cm.HardwareProfile(vm_size=spec.size),
            storage_profile=cm.StorageProfile(
                os_disk=cm.OSDisk(os_type=spec.os_type, create_option="Attach", name=spec.os_disk.name,
                                  managed_disk=cm.ManagedDiskParameters(id=spec.os_disk.id)),
                data_disks=[cm.DataDisk(lun=lun, create_option="Attach", name=d.name, managed_disk=cm.ManagedDiskParameters(id=d.id))
                            for lun, d in enumerate(spec.data_disks)],
            ),
            network_profile=cm.NetworkProfile(network_interfaces=[cm.NetworkInterfaceReference(id=spec.nic_id, primary=True)]),
            diagnostics_profile=cm.DiagnosticsProfile(boot_diagnostics=cm.BootDiagnostics(enabled=spec.boot_diagnostics)),
        )
        with map_azure_errors(f"create VM {spec.name}"):
            return self.clients.compute.virtual_machines.begin_create_or_update(spec.resource_group, spec.name, body).result().id

    def power_state(self, resource_group: str, vm_name: str) -> str:
        with map_azure_errors(f"instance view of {vm_name}"):
            view = self.clients.compute.virtual_machines.instance_view(resource_group, vm_name)
        codes = [s.code for s in (view.statuses or []) if s.code and s.code.startswith("PowerState/")]
        return codes[0].split("/", 1)[1] if codes else "unknown"

    def start_vm(self, resource_group: str, vm_name: str) -> None:
        with map_azure_errors(f"start VM {vm_name}"):
            self.clients.compute.virtual_machines.begin_start(resource_group, vm_name).result()

    def deallocate_vm(self, resource_group: str, vm_name: str) -> None:
        with map_azure_errors(f"deallocate VM {vm_name}"):
            self.clients.compute.virtual_machines.begin_deallocate(resource_group, vm_name).result()

    def run_shell_script(self, resource_group: str, vm_name: str, script: str) -> str:
        with map_azure_errors(f"run command on {vm_name}"):
            result = self.clients.compute.virtual_machines.begin_run_command(
                resource_group, vm_name, cm.RunCommandInput(command_id="RunShellScript", script=script.splitlines())
            ).result()
        return "\n".join((v.message or "") for v in (result.value or []))

    def vm_sizes(self, location: str) -> list[VmSize]:
        with map_azure_errors(f"list VM sizes in {location}"):
            return [VmSize(name=s.name, cores=s.number_of_cores, memory_mb=s.memory_in_mb)
                    for s in self.clients.compute.virtual_machine_sizes.list(location)]

    # -- what prepare-azure reads and writes
    def get_storage_account(self, resource_group: str, name: str) -> StorageAccount | None:
        accounts = self.clients.storage.storage_accounts
        found = self._get_or_none(f"storage account {name}", lambda: accounts.get_properties(resource_group, name))
        return StorageAccount(name=found.name, resource_group=resource_group) if found is not None else None

    def list_storage_accounts(self) -> list[StorageAccount]:
        with map_azure_errors("list storage accounts"):
            return [StorageAccount(name=a.name, resource_group=_resource_group_of(a.id))
                    for a in self.clients.storage.storage_accounts.list()]

    def create_storage_account(self, resource_group: str, name: str, location: str, tags: dict[str, str]) -> None:
        body = sm.StorageAccountCreateParameters(location=location, kind=STORAGE_KIND, sku=sm.Sku(name=STORAGE_SKU), tags=tags)
        with map_azure_errors(f"create storage account {name} in {resource_group}"):
            self.clients.storage.storage_accounts.begin_create(resource_group, name, body).result()

    def get_network_security_group(self, resource_group: str, name: str) -> NsgSpec | None:
        groups = self.clients.network.network_security_groups
        nsg = self._get_or_none(f"NSG {name}", lambda: groups.get(resource_group, name))
        if nsg is None:
            return None
        # A rule made by hand with prefix lists has no single prefix: "" never equals a wanted one.
        return NsgSpec(name=nsg.name, rules=[
            NsgRule(name=r.name, priority=r.priority, direction=r.direction, access=r.access,
                    source=r.source_address_prefix or "", destination=r.destination_address_prefix or "")
            for r in (nsg.security_rules or [])
        ])

    def create_or_update_network_security_group(self, resource_group: str, nsg: NsgSpec, location: str,
                                                tags: dict[str, str]) -> None:
        body = nm.NetworkSecurityGroup(location=location, tags=tags, security_rules=[
            nm.SecurityRule(name=r.name, priority=r.priority, direction=r.direction, access=r.access, protocol="*",
                            source_address_prefix=r.source, destination_address_prefix=r.destination,
                            source_port_range="*", destination_port_range="*")
            for r in nsg.rules
        ])
        with map_azure_errors(f"create NSG {nsg.name}"):
            self.clients.network.network_security_groups.begin_create_or_update(resource_group, nsg.name, body).result()

    def get_virtual_network(self, resource_group: str, name: str) -> VirtualNetworkState | None:
        vnets = self.clients.network.virtual_networks
        vnet = self._get_or_none(f"virtual network {name}", lambda: vnets.get(resource_group, name))
        if vnet is None:
            return None
        return VirtualNetworkState(
            name=vnet.name,
            address_space=list(vnet.address_space.address_prefixes or []) if vnet.address_space else [],
            subnets=[SubnetState(name=s.name, address_prefix=s.address_prefix,
                                 nsg=_last_segment(s.network_security_group.id if s.network_security_group else None))
                     for s in (vnet.subnets or [])],
        )

    def create_or_update_virtual_network(self, resource_group: str, vnet: VirtualNetworkState, location: str,
                                         tags: dict[str, str]) -> None:
        def nsg_ref(name: str | None) -> nm.NetworkSecurityGroup | None:
            if name is None:
                return None
            return nm.NetworkSecurityGroup(id=f"/subscriptions/{self.cfg.subscription_id}/resourceGroups/{resource_group}"
                                              f"/providers/Microsoft.Network/networkSecurityGroups/{name}")

        body = nm.VirtualNetwork(
            location=location,
            tags=tags,
            address_space=nm.AddressSpace(address_prefixes=vnet.address_space),
            subnets=[nm.Subnet(name=s.name, address_prefix=s.address_prefix, network_security_group=nsg_ref(s.nsg))
                     for s in vnet.subnets],
        )
        with map_azure_errors(f"create virtual network {vnet.name}"):
            self.clients.network.virtual_networks.begin_create_or_update(resource_group, vnet.name, body).result()
