"""The seam between drbook and the cloud it recovers into (Azure).

Code that builds, checks or removes recovered machines depends on `RecoverySite` only;
drbook.adapters.azure implements it over the azure-mgmt SDKs, and tests use an in-memory
double (tests/fake_azure.py). What crosses the seam is drbook's own types: the models below
and plain values, never SDK model objects.

Conventions, the same for every method:
- Long-running operations wait for their end (the SDK's `begin_*` + `.result()`): when a
  method returns, Azure is done.
- A read of something that does not exist returns None (or False); a delete of something
  that does not exist returns False. Every other call on a missing resource raises
  `ResourceNotFound`.
- Errors are drbook's (`AzureError`; `AzureTransientError` when a retry may help).
"""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel

# ARM resource types drbook makes and therefore knows how to delete.
VIRTUAL_MACHINE = "Microsoft.Compute/virtualMachines"
NETWORK_INTERFACE = "Microsoft.Network/networkInterfaces"
PUBLIC_IP_ADDRESS = "Microsoft.Network/publicIPAddresses"
SNAPSHOT = "Microsoft.Compute/snapshots"
MANAGED_DISK = "Microsoft.Compute/disks"
DELETABLE_TYPES = (VIRTUAL_MACHINE, NETWORK_INTERFACE, PUBLIC_IP_ADDRESS, SNAPSHOT, MANAGED_DISK)


class TaggedResource(BaseModel):
    id: str
    type: str  # ARM type as Azure spells it, e.g. Microsoft.Compute/virtualMachines
    name: str
    resource_group: str
    tags: dict[str, str] = {}


class ManagedDisk(BaseModel):
    id: str
    provisioning_state: str | None = None


class DiskImport(BaseModel):
    """A managed disk made from a VHD page blob (create option Import)."""

    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    source_uri: str
    storage_account_id: str
    os_type: Literal["Linux", "Windows"] | None = None
    sku: str = "Premium_LRS"


class PageRange(BaseModel):
    """Bytes [start, end] (end inclusive, 512-aligned as Azure reports) that differ between two
    snapshots of one disk; `cleared`: they now read as zeros (Azure's ClearRange)."""

    start: int
    end: int
    cleared: bool = False


class NicSpec(BaseModel):
    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    subnet_id: str
    static_ip: str | None = None  # None: Azure allocates one (Dynamic)


class CreatedNic(BaseModel):
    id: str
    private_ip: str


class AttachedDisk(BaseModel):
    name: str
    id: str


class VmSpec(BaseModel):
    """A VM booting from existing managed disks; data disks get LUNs 0, 1, ... in order."""

    resource_group: str
    name: str
    location: str
    tags: dict[str, str]
    size: str
    os_type: Literal["Linux", "Windows"] = "Linux"
    os_disk: AttachedDisk
    data_disks: list[AttachedDisk] = []
    nic_id: str
    boot_diagnostics: bool = True


class VmSize(BaseModel):
    name: str
    cores: int
    memory_mb: int


class StorageAccount(BaseModel):
    name: str
    resource_group: str


class NsgRule(BaseModel):
    name: str
    priority: int
    direction: Literal["Inbound", "Outbound"]
    access: Literal["Allow", "Deny"]
    source: str
    destination: str


class NsgSpec(BaseModel):
    """A network security group; rules apply to any protocol and port."""

    name: str
    rules: list[NsgRule]


class SubnetState(BaseModel):
    name: str
    address_prefix: str | None = None  # None when Azure holds a list of prefixes instead
    nsg: str | None = None  # the name of its network security group, in the VNet's resource group


class VirtualNetworkState(BaseModel):
    name: str
    address_space: list[str]
    subnets: list[SubnetState]


class RecoverySite(Protocol):
    # -- resource groups
    def resource_group_exists(self, name: str) -> bool: ...

    def ensure_resource_group(self, name: str, location: str, tags: dict[str, str]) -> None:
        """Create or update (tags replaced)."""

    def delete_resource_group(self, name: str) -> bool:
        """With everything in it; False when there was no such group."""

    # -- what a run made
    def list_tagged(self, tag: str, value: str) -> list[TaggedResource]:
        """Every resource of the subscription with tag == value."""

    def delete_resource(self, resource_type: str, resource_group: str, name: str) -> bool:
        """One resource of a DELETABLE_TYPES type (AzureError for others); False when not there."""

    # -- disks
    def get_disk(self, resource_group: str, name: str) -> ManagedDisk | None: ...

    def import_disk(self, spec: DiskImport) -> str:
        """The new managed disk's id."""

    def grant_disk_access(self, resource_group: str, name: str, duration_s: int) -> str:
        """A read-only SAS URL to the disk's bytes."""

    def revoke_disk_access(self, resource_group: str, name: str) -> None: ...

    # -- snapshots (reprotect reads a running VM's disks through them)
    def create_incremental_snapshot(self, resource_group: str, name: str, disk_id: str, location: str,
                                    tags: dict[str, str]) -> str:
        """An incremental snapshot of the managed disk `disk_id` (allowed while its VM runs); its id."""

    def grant_snapshot_access(self, resource_group: str, name: str, duration_s: int) -> str:
        """A read-only SAS URL to the snapshot's bytes."""

    def revoke_snapshot_access(self, resource_group: str, name: str) -> None: ...

    def page_diff(self, sas_url: str, previous_sas_url: str) -> list[PageRange]:
        """What changed from the previous snapshot to this one (two granted incremental
        snapshots of the same disk), in order: Get Page Ranges with x-ms-previous-snapshot-url."""

    def read_range(self, sas_url: str, offset: int, length: int) -> bytes:
        """Bytes of a granted disk or snapshot."""

    # -- NICs and VMs
    def create_nic(self, spec: NicSpec) -> CreatedNic: ...

    def private_ips(self, resource_group: str) -> set[str]:
        """The private IPs of every NIC in the group."""

    def create_vm(self, spec: VmSpec) -> str:
        """The VM's id."""

    def power_state(self, resource_group: str, vm_name: str) -> str:
        """running, stopped, deallocated, ... or unknown."""

    def start_vm(self, resource_group: str, vm_name: str) -> None: ...

    def deallocate_vm(self, resource_group: str, vm_name: str) -> None:
        """Power off and release the VM's compute (its disks become readable through grant access)."""

    def run_shell_script(self, resource_group: str, vm_name: str, script: str) -> str:
        """Run a shell script in the guest (Run Command); its output."""

    def vm_sizes(self, location: str) -> list[VmSize]: ...

    # -- what prepare-azure reads and writes
    def get_storage_account(self, resource_group: str, name: str) -> StorageAccount | None: ...

    def list_storage_accounts(self) -> list[StorageAccount]:
        """Every storage account of the subscription (their names are global)."""

    def create_storage_account(self, resource_group: str, name: str, location: str, tags: dict[str, str]) -> None: ...

    def get_network_security_group(self, resource_group: str, name: str) -> NsgSpec | None: ...

    def create_or_update_network_security_group(self, resource_group: str, nsg: NsgSpec, location: str,
                                                tags: dict[str, str]) -> None: ...

    def get_virtual_network(self, resource_group: str, name: str) -> VirtualNetworkState | None: ...

    def create_or_update_virtual_network(self, resource_group: str, vnet: VirtualNetworkState, location: str,
                                         tags: dict[str, str]) -> None:
        """Subnet NSGs are looked up by name in the same resource group."""
