"""Discovery: what vCenter and the site config say exists, as typed models, and what changed.

`discover()` turns the adapter's one-shot property retrieval into an `Inventory`;
`diff()` compares two inventories (pure); `save_inventory()` keeps the latest and the
previous inventory in the vault and returns what changed between them.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, Field

from drbook.models import Doc, utcnow
from drbook.vault import inventory_key

if TYPE_CHECKING:
    from rich.table import Table

    from drbook.adapters.vsphere import MoRecord
    from drbook.config import SiteConfig

LATEST_KEY = inventory_key("latest")
PREVIOUS_KEY = inventory_key("previous")


class DiskInfo(BaseModel):
    key: int
    label: str = ""
    capacity_bytes: int
    file: str | None = Field(None, description="backing file, e.g. '[datastore1] app01/disk0.vmdk'")
    thin: bool | None = None
    controller_key: int | None = None
    unit_number: int | None = None


class NicInfo(BaseModel):
    key: int
    label: str = ""
    adapter: str = Field("", description="e.g. VirtualVmxnet3")
    network: str | None = Field(None, description="port group / network name")
    mac: str | None = None
    connected: bool | None = None
    ips: list[str] = []


class VmInfo(BaseModel):
    name: str
    moid: str
    uuid: str | None = Field(None, description="config.uuid (BIOS UUID)")
    instance_uuid: str | None = None
    template: bool = False
    datacenter: str | None = None
    cluster: str | None = Field(None, description="None when the host stands alone")
    host: str | None = None
    power_state: str | None = None
    guest_id: str | None = None
    guest_full_name: str | None = None
    tools_status: str | None = None
    tools_running_status: str | None = None
    num_cpu: int | None = None
    memory_mb: int | None = None
    disks: list[DiskInfo] = []
    nics: list[NicInfo] = []
    ip_addresses: list[str] = Field([], description="guest.ipAddress first, then every guest NIC address")
    machine: str | None = Field(None, description="the site config machine whose vm_name this is")

    @property
    def key(self) -> str:
        return f"vm:{self.datacenter or '-'}/{self.name}"


class PhysicalInfo(BaseModel):
    name: str
    os: str
    address: str
    ip: str | None = None
    network: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    disks: list[dict[str, Any]] = []

    @property
    def key(self) -> str:
        return f"physical:{self.name}"


class HostInfo(BaseModel):
    name: str
    moid: str
    datacenter: str | None = None
    cluster: str | None = None


class ClusterInfo(BaseModel):
    name: str
    moid: str
    datacenter: str | None = None
    hosts: list[str] = []


class Inventory(Doc):
    time: dt.datetime = Field(default_factory=utcnow)
    vcenter_url: str | None = None
    datacenters: list[str] = []
    clusters: list[ClusterInfo] = []
    hosts: list[HostInfo] = []
    vms: list[VmInfo] = []
    physical: list[PhysicalInfo] = []
    missing_vms: list[str] = Field([], description="vm_name of site machines that vCenter does not have")

    def machines(self) -> dict[str, VmInfo | PhysicalInfo]:
        return {m.key: m for m in [*self.vms, *self.physical]}

    def vm(self, name: str) -> VmInfo | None:
        return next((v for v in self.vms if v.name == name), None)


class FieldChange(BaseModel):
    field: str
    old: Any = None
    new: Any = None


class MachineChange(BaseModel):
    key: str
    name: str
    kind: Literal["vm", "physical"]
    fields: list[FieldChange]


class InventoryDiff(BaseModel):
    new: list[str] = []
    removed: list[str] = []
    changed: list[MachineChange] = []

    @property
    def empty(self) -> bool:
        return not (self.new or self.removed or self.changed)

    def summary(self) -> str:
        if self.empty:
            return "no changes"
        parts = [f"{len(self.new)} new", f"{len(self.removed)} removed", f"{len(self.changed)} changed"]
        return ", ".join(parts)


# --- building the inventory ------------------------------------------------------------------

class InventorySource(Protocol):
    url: str

    def inventory(self) -> list["MoRecord"]: ...


def discover(conn: InventorySource, site: "SiteConfig | None" = None) -> Inventory:
    """vCenter's VMs (one property retrieval) plus the site's physical servers."""
    inv = build_inventory(conn.inventory(), vcenter_url=conn.url)
    return with_site(inv, site) if site is not None else inv


def build_inventory(records: list["MoRecord"], *, vcenter_url: str | None = None,
                    time: dt.datetime | None = None) -> Inventory:
    by_moid = {r.moid: r for r in records}

    def up_to(moid: str | None, kinds: tuple[str, ...]) -> Any:
        seen = 0
        while moid and moid in by_moid and seen < 64:
            rec = by_moid[moid]
            if rec.type in kinds:
                return rec
            moid = rec.props.get("parent")
            seen += 1
        return None

    def datacenter_of(moid: str | None) -> str | None:
        rec = up_to(moid, ("Datacenter",))
        return rec.props.get("name") if rec else None

    def cluster_of(host_moid: str | None) -> Any:
        return up_to(host_moid, ("ClusterComputeResource",))

    networks: dict[str, str] = {}  # moid / portgroup key / opaque id -> name
    for r in records:
        if r.type in ("Network", "DistributedVirtualPortgroup", "OpaqueNetwork"):
            name = r.props.get("name") or (r.props.get("summary") or {}).get("name")
            networks[r.moid] = name
            if key := r.props.get("key"):
                networks[key] = name
            if oid := (r.props.get("summary") or {}).get("opaque_network_id"):
                networks[oid] = name

    hosts: list[HostInfo] = []
    clusters: dict[str, ClusterInfo] = {}
    for r in records:
        if r.type == "ClusterComputeResource":
            clusters[r.moid] = ClusterInfo(name=r.props.get("name", r.moid), moid=r.moid, datacenter=datacenter_of(r.moid))
    for r in records:
        if r.type == "HostSystem":
            cl = cluster_of(r.moid)
            host = HostInfo(name=r.props.get("name", r.moid), moid=r.moid, datacenter=datacenter_of(r.moid),
                            cluster=cl.props.get("name") if cl else None)
            hosts.append(host)
            if cl is not None and cl.moid in clusters:
                clusters[cl.moid].hosts.append(host.name)

    vms = [
        _vm(r, by_moid, networks, datacenter_of, cluster_of)
        for r in records
        if r.type == "VirtualMachine"
    ]
    return Inventory(
        time=time or utcnow(),
        vcenter_url=vcenter_url,
        datacenters=sorted(r.props.get("name", r.moid) for r in records if r.type == "Datacenter"),
        clusters=sorted(clusters.values(), key=lambda c: (c.datacenter or "", c.name)),
        hosts=sorted(hosts, key=lambda h: (h.datacenter or "", h.name)),
        vms=sorted(vms, key=lambda v: (v.datacenter or "", v.name)),
    )


def _vm(r: "MoRecord", by_moid: dict, networks: dict[str, str], datacenter_of: Any, cluster_of: Any) -> VmInfo:
    p = r.props
    host_moid = p.get("runtime.host")
    host = by_moid.get(host_moid)
    cluster = cluster_of(host_moid) if host_moid else None
    guest_net = p.get("guest.net") or []
    devices = p.get("config.hardware.device") or []

    disks = [
        DiskInfo(key=d["key"], label=d["label"], capacity_bytes=d["capacity_bytes"], file=d["file"], thin=d["thin"],
                 controller_key=d["controller_key"], unit_number=d["unit_number"])
        for d in devices
        if d["kind"] == "disk"
    ]
    nics = []
    for d in devices:
        if d["kind"] != "nic":
            continue
        # A guest NIC names its device by key; older tools only by MAC.
        guest = next((g for g in guest_net if g["device_key"] == d["key"]), None) or next(
            (g for g in guest_net if d["mac"] and g["mac"] == d["mac"]), None
        )
        network = (
            networks.get(d["network_moid"] or "")
            or d["network_name"]
            or networks.get(d["portgroup_key"] or "")
            or networks.get(d["opaque_network_id"] or "")
            or (guest or {}).get("network")
        )
        nics.append(NicInfo(key=d["key"], label=d["label"], adapter=d["adapter"], network=network, mac=d["mac"],
                            connected=d["connected"], ips=list((guest or {}).get("ips") or [])))

    ips: list[str] = []
    for ip in [p.get("guest.ipAddress"), *(ip for g in guest_net for ip in g["ips"])]:
        if ip and ip not in ips:
            ips.append(ip)

    return VmInfo(
        name=p.get("name", r.moid),
        moid=r.moid,
        uuid=p.get("config.uuid"),
        instance_uuid=p.get("config.instanceUuid"),
        template=bool(p.get("config.template")),
        datacenter=datacenter_of(host_moid) or datacenter_of(p.get("parent")),
        cluster=cluster.props.get("name") if cluster else None,
        host=host.props.get("name") if host else None,
        power_state=p.get("runtime.powerState"),
        guest_id=p.get("config.guestId"),
        guest_full_name=p.get("guest.guestFullName") or p.get("config.guestFullName"),
        tools_status=p.get("guest.toolsStatus"),
        tools_running_status=p.get("guest.toolsRunningStatus"),
        num_cpu=p.get("config.hardware.numCPU"),
        memory_mb=p.get("config.hardware.memoryMB"),
        disks=sorted(disks, key=lambda d: d.key),
        nics=sorted(nics, key=lambda n: n.key),
        ip_addresses=ips,
    )


def with_site(inv: Inventory, site: "SiteConfig") -> Inventory:
    """Tie VMs to the site's machines and add the physical servers (machines without vm_name)."""
    by_vm = {m.vm_name: m.name for m in site.machines if m.vm_name}
    vms = [v.model_copy(update={"machine": by_vm.get(v.name)}) for v in inv.vms]
    names = {v.name for v in inv.vms}
    physical = [
        PhysicalInfo(
            name=m.name, os=m.os, address=m.address, ip=m.ip, network=m.network, cpus=m.cpus, memory_mb=m.memory_mb,
            disks=[d.model_dump(mode="json") for d in m.disks],
        )
        for m in site.machines
        if not m.vm_name
    ]
    missing = sorted(vm for vm in by_vm if vm not in names)
    return inv.model_copy(update={"vms": vms, "physical": physical, "missing_vms": missing})


# --- what changed ----------------------------------------------------------------------------

# Fields that say nothing about the machine itself (the site link is compared, not the time).
_IGNORED = {"moid"}


def diff(old: Inventory | None, new: Inventory) -> InventoryDiff:
    """Machines that appeared, disappeared or changed (and which fields) between two inventories."""
    before = old.machines() if old else {}
    after = new.machines()
    changed: list[MachineChange] = []
    for key in sorted(before.keys() & after.keys()):
        a = before[key].model_dump(mode="json")
        b = after[key].model_dump(mode="json")
        fields = [FieldChange(field=f, old=a.get(f), new=b.get(f)) for f in sorted(a.keys() | b.keys())
                  if f not in _IGNORED and a.get(f) != b.get(f)]
        if fields:
            kind = "vm" if key.startswith("vm:") else "physical"
            changed.append(MachineChange(key=key, name=after[key].name, kind=kind, fields=fields))
    return InventoryDiff(
        new=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=changed,
    )


# --- storing ---------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


class InventoryStore(Protocol):
    """The part of drbook.vault.Vault that discovery uses."""

    def find(self, key: str, model: type[M]) -> M | None: ...

    def put(self, key: str, doc: BaseModel) -> Any: ...


def save_inventory(vault: InventoryStore, inventory: Inventory) -> InventoryDiff:
    """Store `inventory` as the latest, keep the one it replaces as the previous; return the diff."""
    old = vault.find(LATEST_KEY, Inventory)
    if old is not None:
        vault.put(PREVIOUS_KEY, old)
    vault.put(LATEST_KEY, inventory)
    return diff(old, inventory)


# --- presenting ------------------------------------------------------------------------------

def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def render_inventory(inv: Inventory) -> "Table":
    from rich.table import Table

    when = inv.time.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    table = Table(title=f"Inventory of {inv.vcenter_url or 'site config'} at {when}",
                  caption=f"{len(inv.vms)} VMs, {len(inv.physical)} physical, {len(inv.hosts)} hosts, "
                          f"{len(inv.clusters)} clusters, {len(inv.datacenters)} datacenters"
                          + (f"; not in vCenter: {', '.join(inv.missing_vms)}" if inv.missing_vms else ""))
    for col in ("Machine", "Kind", "Power", "Guest OS", "CPU", "Memory", "Disks", "Networks", "IPs", "Tools", "Placement"):
        table.add_column(col, justify="right" if col in ("CPU", "Memory") else "left", overflow="fold")
    power_style = {"poweredOn": "green", "poweredOff": "red", "suspended": "yellow"}
    for v in inv.vms:
        name = v.name if not v.machine or v.machine == v.name else f"{v.name} ({v.machine})"
        power = v.power_state or "?"
        table.add_row(
            name,
            "template" if v.template else "VM",
            f"[{power_style.get(power, 'white')}]{power}[/]",
            v.guest_full_name or v.guest_id or "",
            str(v.num_cpu or ""),
            f"{v.memory_mb} MiB" if v.memory_mb else "",
            f"{len(v.disks)} / {_gib(sum(d.capacity_bytes for d in v.disks))}" if v.disks else "0",
            ", ".join(sorted({n.network or "?" for n in v.nics})),
            ", ".join(v.ip_addresses),
            v.tools_status or "",
            "/".join(x for x in (v.datacenter, v.cluster, v.host) if x),
        )
    for p in inv.physical:
        size = sum(d.get("size_bytes") or 0 for d in p.disks)
        table.add_row(
            p.name, "physical", "", p.os, str(p.cpus or ""), f"{p.memory_mb} MiB" if p.memory_mb else "",
            f"{len(p.disks)}" + (f" / {_gib(size)}" if size else ""), p.network or "", p.ip or p.address, "", p.address,
        )
    return table


def inventory_json(inv: Inventory) -> dict:
    """The shape `drbook discover --json` prints."""
    doc = inv.model_dump(mode="json")
    doc["counts"] = {
        "datacenters": len(inv.datacenters),
        "clusters": len(inv.clusters),
        "hosts": len(inv.hosts),
        "vms": len(inv.vms),
        "physical": len(inv.physical),
    }
    return doc
