"""Discovery against a real govmomi simulator populated with the lab's VMs: what it finds,
that it is one PropertyCollector retrieval, the diff, the vault round trip, the renderers."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

from pyVmomi import vim
from rich.console import Console
from tests.blob_fixtures import azurite, azurite_blob  # noqa: F401  (fixtures)

from drbook.adapters.vsphere import MoRecord, VSphereConnection
from drbook.config import SiteConfig
from drbook.discovery import (
    LATEST_KEY,
    PREVIOUS_KEY,
    Inventory,
    PhysicalInfo,
    build_inventory,
    diff,
    discover,
    inventory_json,
    render_inventory,
    save_inventory,
    with_site,
)
from drbook.vault import Vault
from lab.spec import MachineSpec, load_spec
from lab.vcenter import Placement, SimulatorInfo, create_vm

SPEC = load_spec()
VMS = [m for m in SPEC.machines if m.vmware]  # the lab's VMs (its physical server has none)
MiB = 1024 * 1024


def _site(**machines_extra) -> SiteConfig:
    machines = [
        {"name": m.name, "vm_name": m.name, "address": m.address, "network": m.network, "ip": m.ip}
        for m in VMS
    ]
    machines += [
        {"name": "phys01", "address": "127.0.1.50", "ip": "10.10.2.50", "network": "db-net", "cpus": 8,
         "memory_mb": 16384, "disks": [{"name": "sda", "path": "/dev/sda", "size_bytes": 10 * 2**30}]},
        {"name": "gone01", "vm_name": "gone01", "address": "127.0.1.51"},
    ]
    return SiteConfig.model_validate({
        "site": "t",
        "azure": {"subscription_id": "s", "resource_group": "rg", "location": "westeurope", "storage_account": "a",
                  "blob_endpoint": "https://127.0.0.1:1/a", "encryption_key": "env:NOPE"},
        "machines": machines,
    })


# --- what discovery finds ------------------------------------------------------------------------

def test_discovers_the_lab_vms_with_their_hardware_and_guest(conn):
    inv = discover(conn, _site())
    assert inv.vcenter_url == conn.url
    assert inv.datacenters == ["DC0"]
    assert [c.name for c in inv.clusters] == ["DC0_C0"] and inv.clusters[0].hosts == ["DC0_C0_H0", "DC0_C0_H1"]
    assert {h.name for h in inv.hosts} == {"DC0_H0", "DC0_C0_H0", "DC0_C0_H1"}
    for m in VMS:
        vm = inv.vm(m.name)
        assert vm is not None, m.name
        assert vm.machine == m.name
        assert (vm.datacenter, vm.cluster) == ("DC0", "DC0_C0") and vm.host in inv.clusters[0].hosts
        assert vm.moid.startswith("vm-") and len(vm.uuid or "") == 36 and vm.instance_uuid
        assert (vm.num_cpu, vm.memory_mb) == (m.cpus, m.memory_mb)
        assert [(d.key, d.capacity_bytes, d.file, d.thin) for d in vm.disks] == [
            (2000 + i, d.size_mib * MiB, f"[LocalDS_0] {m.name}/{d.name}.vmdk", True) for i, d in enumerate(m.disks)
        ]
        assert all(d.label and d.controller_key == 1000 for d in vm.disks)
        assert len(vm.nics) == 1
        if not m.powered_on:  # a spare the lab leaves off: no guest to report
            assert vm.power_state == "poweredOff"
            continue
        assert vm.power_state == "poweredOn"
        assert vm.guest_id == "otherLinux64Guest" and vm.guest_full_name
        assert (vm.tools_status, vm.tools_running_status) == ("toolsOk", "guestToolsRunning")
        nic = vm.nics[0]
        assert (nic.key, nic.adapter, nic.network, nic.connected) == (4000, "VirtualVmxnet3", m.network, True)
        assert nic.mac and len(nic.mac.split(":")) == 6 and nic.ips == [m.ip]
        assert vm.ip_addresses == [m.ip]
    assert [p.name for p in inv.physical] == ["phys01"]
    assert inv.physical[0].disks[0]["size_bytes"] == 10 * 2**30
    assert inv.missing_vms == ["gone01"]


def test_discovery_is_one_property_collector_retrieval(vc: SimulatorInfo, conn: VSphereConnection):
    """Count every SOAP call of the session: a constant handful, whatever the VM count."""
    stub = conn.service_instance._stub
    calls: list[str] = []
    invoke, access = stub.InvokeMethod, stub.InvokeAccessor

    def counting_invoke(mo, info, args, *rest):
        calls.append(info.wsdlName)
        return invoke(mo, info, args, *rest)

    def counting_access(mo, info):
        calls.append(f"get:{info.name}")
        return access(mo, info)

    stub.InvokeMethod, stub.InvokeAccessor = counting_invoke, counting_access
    try:
        content = conn.content  # read before counting: the service content is cached
        assert content is not None
        calls.clear()
        small = discover(conn)
        first = list(calls)
        placement = Placement(conn)  # setup calls are cleared before the second count
        for i in range(5):
            create_vm(conn, placement, MachineSpec(name=f"extra{i}", address="127.0.1.90", ip=f"10.10.1.{90 + i}",
                                                   network="app-net", disks=[{"name": "d", "size_mib": 1}]))
        calls.clear()
        bigger = discover(conn)
        second = list(calls)
    finally:
        stub.InvokeMethod, stub.InvokeAccessor = invoke, access
        for i in range(5):
            vm = conn.find_vm(f"extra{i}")
            conn.power_off(f"extra{i}")
            conn.wait_for_task(vm.Destroy_Task(), "destroy")
    assert len(bigger.vms) == len(small.vms) + 5
    assert first == ["CreateContainerView", "RetrievePropertiesEx", "DestroyView"]
    assert second == first  # no call per VM or per property


def test_paging_follows_continue_tokens():
    """vcsim ignores maxObjects, so paging is checked with a stand-in property collector."""
    pages = {None: ("t1", ["a", "b"]), "t1": ("t2", ["c"]), "t2": (None, ["d"])}
    seen: list = []

    class PC:
        def RetrievePropertiesEx(self, specs, options):
            seen.append(("first", options.maxObjects))
            token, objs = pages[None]
            return SimpleNamespace(token=token, objects=objs)

        def ContinueRetrievePropertiesEx(self, token):
            seen.append(("continue", token))
            nxt, objs = pages[token]
            return SimpleNamespace(token=nxt, objects=objs)

    conn = VSphereConnection.__new__(VSphereConnection)
    conn.content = SimpleNamespace(propertyCollector=PC())
    assert conn._retrieve(vim.view.ContainerView("view-1"), {vim.VirtualMachine: ["name"]}, page_size=2) == ["a", "b", "c", "d"]
    assert seen == [("first", 2), ("continue", "t1"), ("continue", "t2")]


# --- what changed ------------------------------------------------------------------------------

def test_diff_sees_new_removed_and_changed_vms(conn: VSphereConnection):
    before = discover(conn)
    placement = Placement(conn)
    web = MachineSpec(name="web01", address="127.0.1.60", ip="10.10.1.60", network="app-net",
                      disks=[{"name": "disk0", "size_mib": 16}])
    create_vm(conn, placement, web)
    conn.power_off("app02")
    db = conn.find_vm("db01")
    conn.wait_for_task(db.ReconfigVM_Task(spec=vim.vm.ConfigSpec(numCPUs=8)), "reconfig")
    try:
        middle = discover(conn)
        d = diff(before, middle)
        assert d.new == ["vm:DC0/web01"] and d.removed == []
        changed = {c.name: {f.field: (f.old, f.new) for f in c.fields} for c in d.changed}
        assert set(changed) == {"app02", "db01"}
        assert changed["app02"]["power_state"] == ("poweredOn", "poweredOff")
        assert changed["app02"]["tools_running_status"] == ("guestToolsRunning", "guestToolsNotRunning")
        assert changed["db01"] == {"num_cpu": (4, 8)}

        conn.power_off("web01")
        conn.wait_for_task(conn.find_vm("web01").Destroy_Task(), "destroy web01")
        after = discover(conn)
        d2 = diff(middle, after)
        assert d2.removed == ["vm:DC0/web01"] and d2.new == [] and d2.changed == []
    finally:
        conn.power_on("app02")
        conn.wait_for_task(db.ReconfigVM_Task(spec=vim.vm.ConfigSpec(numCPUs=4)), "reconfig")
    assert diff(before, discover(conn)).empty


def test_diff_from_nothing_and_of_physical_machines():
    site = _site()
    inv = with_site(Inventory(), site)
    d = diff(None, inv)
    assert d.new == ["physical:phys01"] and not d.removed and not d.changed
    changed = inv.model_copy(update={"physical": [inv.physical[0].model_copy(update={"cpus": 16})]})
    d2 = diff(inv, changed)
    assert [(c.key, c.kind, [f.field for f in c.fields]) for c in d2.changed] == [("physical:phys01", "physical", ["cpus"])]
    assert diff(inv, inv).empty and diff(inv, inv).summary() == "no changes"


def test_build_inventory_resolves_dvs_port_groups_and_standalone_hosts():
    records = [
        MoRecord("Datacenter", "dc-1", {"name": "DC1", "parent": "group-d1"}),
        MoRecord("Folder", "f-host", {"name": "host", "parent": "dc-1"}),
        MoRecord("Folder", "f-vm", {"name": "vm", "parent": "dc-1"}),
        MoRecord("ComputeResource", "cr-1", {"name": "esx1", "parent": "f-host"}),
        MoRecord("HostSystem", "host-1", {"name": "esx1", "parent": "cr-1"}),
        MoRecord("DistributedVirtualPortgroup", "dvpg-7", {"name": "prod-pg", "key": "dvportgroup-7"}),
        MoRecord("VirtualMachine", "vm-1", {
            "name": "a", "parent": "f-vm", "runtime.host": "host-1", "runtime.powerState": "poweredOff",
            "config.hardware.device": [{"kind": "nic", "key": 4000, "label": "nic", "adapter": "VirtualE1000",
                                        "mac": "00:50:56:00:00:01", "connected": False, "network_name": None,
                                        "network_moid": None, "portgroup_key": "dvportgroup-7",
                                        "opaque_network_id": None}],
        }),
        MoRecord("VirtualMachine", "vm-2", {"name": "orphan", "parent": "f-vm"}),
    ]
    inv = build_inventory(records)
    a, orphan = inv.vm("a"), inv.vm("orphan")
    assert (a.datacenter, a.cluster, a.host, a.nics[0].network, a.ip_addresses) == ("DC1", None, "esx1", "prod-pg", [])
    assert (orphan.datacenter, orphan.host, orphan.disks, orphan.power_state) == ("DC1", None, [], None)
    assert inv.clusters == [] and inv.hosts[0].cluster is None


# --- storing and showing --------------------------------------------------------------------------

def test_save_inventory_keeps_latest_and_previous_in_the_vault(azurite_blob, conn):
    vault = Vault(azurite_blob.get_container_client(f"vault-{uuid.uuid4().hex[:12]}"), actor="tester")
    vault.ensure()
    first = discover(conn, _site())
    d1 = save_inventory(vault, first)
    assert sorted(d1.new) == sorted([f"vm:DC0/{m.name}" for m in VMS] + ["physical:phys01"])
    assert vault.find(PREVIOUS_KEY, Inventory) is None
    second = first.model_copy(update={"physical": []})
    d2 = save_inventory(vault, second)
    assert d2.removed == ["physical:phys01"] and d2.new == [] and d2.changed == []
    assert vault.get(PREVIOUS_KEY, Inventory) == first
    assert vault.get(LATEST_KEY, Inventory) == second


def test_render_and_json(conn):
    inv = discover(conn, _site())
    console = Console(record=True, width=220)
    console.print(render_inventory(inv))
    text = console.export_text()
    for m in VMS:
        assert m.name in text and (m.ip in text or not m.powered_on)
    assert "phys01" in text and "physical" in text and "gone01" in text
    doc = inventory_json(inv)
    assert doc["counts"] == {"datacenters": 1, "clusters": 1, "hosts": 3, "vms": len(VMS), "physical": 1}
    again = Inventory.model_validate(json.loads(json.dumps(doc)))
    assert again == inv
    assert isinstance(again.physical[0], PhysicalInfo)
