"""An in-memory RecoverySite for fast unit tests of build / recovery / prepare decisions.

It keeps what was made in dicts, answers the way drbook.adapters.recovery_site says (None /
False for what is not there, ResourceNotFound for calls on it), and records every write in
`calls`, so a test can assert on order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from drbook.adapters import recovery_site as rs
from drbook.errors import AzureError, ResourceNotFound

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


@dataclass
class _Resource:
    type: str
    resource_group: str
    name: str
    tags: dict[str, str]
    state: dict = field(default_factory=dict)  # per type: disk provisioning / access, NIC IP, VM power

    @property
    def id(self) -> str:
        return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{self.resource_group}/providers/{self.type}/{self.name}"


class FakeRecoverySite:
    def __init__(self, sizes: list[rs.VmSize] | None = None) -> None:
        self.groups: dict[str, dict[str, str]] = {}  # name -> tags
        self.resources: dict[tuple[str, str, str], _Resource] = {}
        self.storage_accounts: dict[str, str] = {}  # name -> resource group
        self.nsgs: dict[tuple[str, str], rs.NsgSpec] = {}
        self.vnets: dict[tuple[str, str], rs.VirtualNetworkState] = {}
        self.sizes = sizes or []
        self.calls: list[str] = []
        self.scripts: list[str] = []
        self.power_after_start = "running"
        self.disk_bytes: dict[str, bytearray] = {}  # managed disk or snapshot name -> its bytes (VHD data only)
        self._next_ip = 4

    # -- helpers for tests
    def add(self, resource_type: str, resource_group: str, name: str, tags: dict[str, str] | None = None,
            **state) -> str:
        """Put a resource in place as if something had made it; its id."""
        self.groups.setdefault(resource_group, {})
        r = _Resource(resource_type, resource_group, name, dict(tags or {}), dict(state))
        self.resources[(resource_type.lower(), resource_group.lower(), name.lower())] = r
        return r.id

    def names(self, resource_type: str) -> list[str]:
        return sorted(r.name for r in self.resources.values() if r.type == resource_type)

    def _call(self, what: str) -> None:
        self.calls.append(what)

    def _get(self, resource_type: str, resource_group: str, name: str) -> _Resource | None:
        return self.resources.get((resource_type.lower(), resource_group.lower(), name.lower()))

    def _require(self, resource_type: str, resource_group: str, name: str) -> _Resource:
        r = self._get(resource_type, resource_group, name)
        if r is None:
            raise ResourceNotFound(f"{resource_type} {name}: not found (ResourceNotFound)")
        return r

    def _require_group(self, name: str) -> None:
        if name not in self.groups:
            raise ResourceNotFound(f"resource group {name}: not found (ResourceGroupNotFound)")

    # -- resource groups
    def resource_group_exists(self, name: str) -> bool:
        return name in self.groups

    def ensure_resource_group(self, name: str, location: str, tags: dict[str, str]) -> None:
        self._call(f"ensure_resource_group {name}")
        self.groups[name] = dict(tags)

    def delete_resource_group(self, name: str) -> bool:
        self._call(f"delete_resource_group {name}")
        if name not in self.groups:
            return False
        del self.groups[name]
        self.resources = {k: r for k, r in self.resources.items() if r.resource_group != name}
        return True

    # -- what a run made
    def list_tagged(self, tag: str, value: str) -> list[rs.TaggedResource]:
        return [rs.TaggedResource(id=r.id, type=r.type, name=r.name, resource_group=r.resource_group, tags=r.tags)
                for r in self.resources.values() if r.tags.get(tag) == value]

    def delete_resource(self, resource_type: str, resource_group: str, name: str) -> bool:
        if resource_type.lower() not in {t.lower() for t in rs.DELETABLE_TYPES}:
            raise AzureError(f"do not know how to delete a {resource_type} ({name}); remove it by hand")
        self._call(f"delete_resource {resource_type} {name}")
        return self.resources.pop((resource_type.lower(), resource_group.lower(), name.lower()), None) is not None

    # -- disks
    def get_disk(self, resource_group: str, name: str) -> rs.ManagedDisk | None:
        r = self._get(rs.MANAGED_DISK, resource_group, name)
        return rs.ManagedDisk(id=r.id, provisioning_state=r.state.get("provisioning_state", "Succeeded")) if r else None

    def import_disk(self, spec: rs.DiskImport) -> str:
        self._call(f"import_disk {spec.name}")
        self._require_group(spec.resource_group)
        return self.add(rs.MANAGED_DISK, spec.resource_group, spec.name, spec.tags, source_uri=spec.source_uri,
                        os_type=spec.os_type, provisioning_state="Succeeded")

    def grant_disk_access(self, resource_group: str, name: str, duration_s: int) -> str:
        self._call(f"grant_disk_access {name}")
        r = self._require(rs.MANAGED_DISK, resource_group, name)
        r.state["access"] = "Read"
        return f"https://fake.blob/{name}?sas"

    def revoke_disk_access(self, resource_group: str, name: str) -> None:
        self._call(f"revoke_disk_access {name}")
        self._require(rs.MANAGED_DISK, resource_group, name).state.pop("access", None)

    # -- snapshots: bytes kept in disk_bytes; a grant URL is fake://<name>
    def create_incremental_snapshot(self, resource_group: str, name: str, disk_id: str, location: str,
                                    tags: dict[str, str]) -> str:
        self._call(f"create_incremental_snapshot {name}")
        disk = next((r for r in self.resources.values() if r.id.lower() == disk_id.lower()), None)
        if disk is None:
            raise ResourceNotFound(f"disk {disk_id}: not found (ResourceNotFound)")
        self.disk_bytes[name] = bytearray(self.disk_bytes.get(disk.name, b""))
        return self.add(rs.SNAPSHOT, resource_group, name, tags, family=disk.id)

    def grant_snapshot_access(self, resource_group: str, name: str, duration_s: int) -> str:
        self._call(f"grant_snapshot_access {name}")
        self._require(rs.SNAPSHOT, resource_group, name).state["access"] = "Read"
        return f"fake://{name}"

    def revoke_snapshot_access(self, resource_group: str, name: str) -> None:
        self._call(f"revoke_snapshot_access {name}")
        self._require(rs.SNAPSHOT, resource_group, name).state.pop("access", None)

    def _granted(self, url: str) -> bytearray:
        name = url.removeprefix("fake://")
        r = next((r for r in self.resources.values() if r.name == name and r.state.get("access")), None)
        if r is None:
            raise AzureError(f"{url}: no active grant (AuthenticationFailed)")
        return self.disk_bytes[name]

    def page_diff(self, sas_url: str, previous_sas_url: str) -> list[rs.PageRange]:
        cur, prev = self._granted(sas_url), self._granted(previous_sas_url)
        ranges: list[rs.PageRange] = []
        for start in range(0, len(cur), 512):
            page = bytes(cur[start:start + 512])
            if page != bytes(prev[start:start + 512]):
                cleared = not any(page)
                if ranges and ranges[-1].end + 1 == start and ranges[-1].cleared == cleared:
                    ranges[-1].end = start + 511
                else:
                    ranges.append(rs.PageRange(start=start, end=start + 511, cleared=cleared))
        return ranges

    def read_range(self, sas_url: str, offset: int, length: int) -> bytes:
        return bytes(self._granted(sas_url)[offset:offset + length])

    # -- NICs and VMs
    def create_nic(self, spec: rs.NicSpec) -> rs.CreatedNic:
        self._call(f"create_nic {spec.name}")
        self._require_group(spec.resource_group)
        ip = spec.static_ip
        if ip is None:
            ip, self._next_ip = f"10.255.0.{self._next_ip}", self._next_ip + 1
        nic_id = self.add(rs.NETWORK_INTERFACE, spec.resource_group, spec.name, spec.tags, subnet_id=spec.subnet_id, ip=ip)
        return rs.CreatedNic(id=nic_id, private_ip=ip)

    def private_ips(self, resource_group: str) -> set[str]:
        return {r.state["ip"] for r in self.resources.values()
                if r.type == rs.NETWORK_INTERFACE and r.resource_group == resource_group}

    def create_vm(self, spec: rs.VmSpec) -> str:
        self._call(f"create_vm {spec.name}")
        self._require_group(spec.resource_group)
        return self.add(rs.VIRTUAL_MACHINE, spec.resource_group, spec.name, spec.tags, power="running", size=spec.size,
                        disks=[spec.os_disk.id] + [d.id for d in spec.data_disks], nic=spec.nic_id)

    def power_state(self, resource_group: str, vm_name: str) -> str:
        return self._require(rs.VIRTUAL_MACHINE, resource_group, vm_name).state["power"]

    def start_vm(self, resource_group: str, vm_name: str) -> None:
        self._call(f"start_vm {vm_name}")
        self._require(rs.VIRTUAL_MACHINE, resource_group, vm_name).state["power"] = self.power_after_start

    def deallocate_vm(self, resource_group: str, vm_name: str) -> None:
        self._call(f"deallocate_vm {vm_name}")
        self._require(rs.VIRTUAL_MACHINE, resource_group, vm_name).state["power"] = "deallocated"

    def run_shell_script(self, resource_group: str, vm_name: str, script: str) -> str:
        self._call(f"run_shell_script {vm_name}")
        self._require(rs.VIRTUAL_MACHINE, resource_group, vm_name)
        self.scripts.append(script)
        return "Enable succeeded"

    def vm_sizes(self, location: str) -> list[rs.VmSize]:
        return list(self.sizes)

    # -- what prepare-azure reads and writes
    def get_storage_account(self, resource_group: str, name: str) -> rs.StorageAccount | None:
        found = self.storage_accounts.get(name) == resource_group
        return rs.StorageAccount(name=name, resource_group=resource_group) if found else None

    def list_storage_accounts(self) -> list[rs.StorageAccount]:
        return [rs.StorageAccount(name=n, resource_group=g) for n, g in self.storage_accounts.items()]

    def create_storage_account(self, resource_group: str, name: str, location: str, tags: dict[str, str]) -> None:
        self._call(f"create_storage_account {name}")
        self._require_group(resource_group)
        self.storage_accounts[name] = resource_group

    def get_network_security_group(self, resource_group: str, name: str) -> rs.NsgSpec | None:
        return self.nsgs.get((resource_group, name))

    def create_or_update_network_security_group(self, resource_group: str, nsg: rs.NsgSpec, location: str,
                                                tags: dict[str, str]) -> None:
        self._call(f"create_or_update_network_security_group {nsg.name}")
        self._require_group(resource_group)
        self.nsgs[(resource_group, nsg.name)] = nsg.model_copy(deep=True)

    def get_virtual_network(self, resource_group: str, name: str) -> rs.VirtualNetworkState | None:
        return self.vnets.get((resource_group, name))

    def create_or_update_virtual_network(self, resource_group: str, vnet: rs.VirtualNetworkState, location: str,
                                         tags: dict[str, str]) -> None:
        self._call(f"create_or_update_virtual_network {vnet.name}")
        self._require_group(resource_group)
        missing = [s.nsg for s in vnet.subnets if s.nsg and (resource_group, s.nsg) not in self.nsgs]
        if missing:
            raise ResourceNotFound(f"create virtual network {vnet.name}: NSG {missing[0]} not found")
        self.vnets[(resource_group, vnet.name)] = vnet.model_copy(deep=True)


class FakeBlobService:
    """The two calls prepare-azure makes on a BlobServiceClient."""

    def __init__(self, containers: list[str] | None = None) -> None:
        self.containers = set(containers or [])

    def list_containers(self):
        return [type("Container", (), {"name": n})() for n in sorted(self.containers)]

    def create_container(self, name: str) -> None:
        self.containers.add(name)
