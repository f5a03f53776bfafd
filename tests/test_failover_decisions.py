"""The pure decisions of a failover: which point, which size, which IP, what prepare-azure wants."""

from __future__ import annotations

import datetime as dt

import pytest

from drbook.adapters import recovery_site as rs
from drbook.adapters.recovery_site import TaggedResource
from drbook.config import NetworkMapping, SiteConfig
from drbook.errors import AzureError, PreflightError, ResourceNotFound
from drbook.failover import build, prepare
from drbook.failover.build import TAG_RUN, TAG_SITE, MachinePlan, plan_machine
from drbook.failover.network import plan_nic
from drbook.failover.points import choose_group_point, choose_point
from drbook.failover.prepare import desired_state, isolation_rules
from drbook.failover.reconcile import decide_orphans, resources_by_run
from drbook.failover.recovery import offered_sizes, plan_recovery, taken_ips
from drbook.failover.sizing import VmSize, choose_size
from drbook.models import PointDisk, ProtectedItem, RecoveryPoint
from tests.fake_azure import FakeBlobService, FakeRecoverySite

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)


def _p(pid: str, minutes: int, consistency: str = "crash", group: str | None = None, item: str = "app01") -> RecoveryPoint:
    return RecoveryPoint(id=pid, item=item, time=T0 + dt.timedelta(minutes=minutes), consistency=consistency, group=group)


def test_point_choice():
    pts = [_p("a", 0, "app"), _p("b", 5), _p("c", 10, "inconsistent")]
    assert choose_point("app01", pts, "latest").id == "c"
    assert choose_point("app01", pts, "latest-processed").id == "c"
    assert choose_point("app01", pts, "latest-app-consistent").id == "a"
    assert choose_point("app01", pts, "b").id == "b"
    with pytest.raises(PreflightError, match="no recovery point 'zz'"):
        choose_point("app01", pts, "zz")
    with pytest.raises(PreflightError, match="no app-consistent"):
        choose_point("app01", [_p("b", 5)], "latest-app-consistent")
    with pytest.raises(PreflightError, match="no recovery point yet"):
        choose_point("app01", [], "latest")


def test_group_point_is_shared_by_all_members():
    a = [_p("g1", 0, group="app"), _p("g2", 5, group="app"), _p("solo", 9, item="app01")]
    b = [_p("g1", 0, group="app", item="app02"), _p("g2", 5, group="app", item="app02")]
    chosen = choose_group_point({"app01": a, "app02": b}, "latest")
    assert {p.id for p in chosen.values()} == {"g2"}
    assert choose_group_point({"app01": a, "app02": b}, "g1")["app02"].id == "g1"
    with pytest.raises(PreflightError):
        choose_group_point({"app01": a, "app02": b}, "solo")
    with pytest.raises(PreflightError, match="no shared"):
        choose_group_point({"app01": [_p("x", 0, group="app")], "app02": [_p("y", 0, group="app")]}, "latest")


SIZES = [VmSize(name="Standard_B2s", cores=2, memory_mb=4096), VmSize(name="Standard_D2s_v3", cores=2, memory_mb=8192),
         VmSize(name="Standard_D4s_v3", cores=4, memory_mb=16384), VmSize(name="Standard_E4s_v3", cores=4, memory_mb=32768)]


def test_size_rule_takes_the_smallest_that_fits():
    assert choose_size("m", 2, 4096, SIZES) == "Standard_B2s"
    assert choose_size("m", 2, 6000, SIZES) == "Standard_D2s_v3"
    assert choose_size("m", 3, 1024, SIZES) == "Standard_D4s_v3"
    assert choose_size("m", 1, 1, SIZES, override="Standard_E4s_v3") == "Standard_E4s_v3"
    with pytest.raises(PreflightError, match="not offered"):
        choose_size("m", 1, 1, SIZES, override="Standard_X")
    with pytest.raises(PreflightError, match="no offered VM size has 64 vCPUs"):
        choose_size("m", 64, 1, SIZES)


MAP = NetworkMapping(source_network="app-net", target_vnet="prod", target_subnet="app", address_prefix="10.10.1.0/24",
                     vnet_address_space="10.10.0.0/16")


def test_nic_keeps_the_ip_when_it_fits_and_is_free():
    assert plan_nic("m", "10.10.1.11", MAP, "prod", set()).static_ip == "10.10.1.11"
    taken = plan_nic("m", "10.10.1.11", MAP, "prod", {"10.10.1.11"})
    assert taken.static_ip is None and "already taken" in taken.note
    outside = plan_nic("m", "192.168.1.5", MAP, "prod", set())
    assert outside.static_ip is None and "outside" in outside.note
    assert plan_nic("m", "10.10.1.1", MAP, "prod", set()).static_ip is None  # Azure reserves .1-.3
    with pytest.raises(PreflightError, match="no network mapping"):
        plan_nic("m", "10.10.1.11", None, "prod", set())


def test_prepare_wants_an_isolated_twin_of_every_production_network():
    site = SiteConfig.model_validate({
        "site": "t",
        "azure": {"subscription_id": "s", "resource_group": "rg", "location": "westeurope", "storage_account": "acct",
                  "blob_endpoint": "https://x", "encryption_key": "env:K"},
        "network_mapping": [MAP.model_dump(), {**MAP.model_dump(), "source_network": "db-net", "target_subnet": "db",
                                                "address_prefix": "10.10.2.0/24"}],
    })
    want = desired_state(site)
    names = {v.name: v for v in want.vnets}
    assert set(names) == {"prod", "prod-test"}
    assert names["prod-test"].address_space == names["prod"].address_space
    assert names["prod-test"].subnets == {"app": "10.10.1.0/24", "db": "10.10.2.0/24"}
    assert names["prod-test"].nsg and names["prod"].nsg is None
    rules = {r.name: r for r in isolation_rules(["10.10.0.0/16"])}
    assert rules["deny-internet-out"].access == "Deny" and rules["deny-internet-out"].destination == "Internet"
    assert rules["deny-all-in"].priority > rules["allow-test-net-in-0"].priority


# -- reconcile: whose resources are orphans (plain data) ---------------------------------------
def _tagged(run: str | None, name: str) -> TaggedResource:
    tags = {TAG_SITE: "t"} | ({TAG_RUN: run} if run else {})
    return TaggedResource(id=f"/subscriptions/s/resourceGroups/rg/providers/{rs.MANAGED_DISK}/{name}", type=rs.MANAGED_DISK,
                          name=name, resource_group="rg", tags=tags)


def test_orphans_are_runs_neither_live_nor_completed():
    runs = resources_by_run([_tagged("failed", "a"), _tagged("failed", "b"), _tagged("unknown", "c"), _tagged("running", "d"),
                             _tagged("done", "e"), _tagged("paused", "f"), _tagged("pending", "g"), _tagged("crashed", "h"),
                             _tagged("cancelled", "i"), _tagged(None, "made-by-hand")])
    assert "made-by-hand" not in {r.name for members in runs.values() for r in members}, "no run tag: nobody's run, left alone"
    states = {"failed": "FAILED", "running": "RUNNING", "done": "COMPLETED", "paused": "PAUSED", "pending": "PENDING",
              "crashed": "CRASHED", "cancelled": "CANCELLED", "unknown": None}
    orphans = decide_orphans(runs, states)
    assert [o.run_id for o in orphans] == ["cancelled", "crashed", "failed", "unknown"]
    failed = next(o for o in orphans if o.run_id == "failed")
    assert [r.rsplit("/", 1)[-1] for r in failed.resources] == ["a", "b"] and failed.reason == "its flow run is failed"
    assert next(o for o in orphans if o.run_id == "unknown").reason == "Prefect knows no state for this run"
    assert decide_orphans(runs, {}) and decide_orphans({}, states) == []


# -- build, recovery and prepare against the in-memory RecoverySite ----------------------------
def _site() -> SiteConfig:
    return SiteConfig.model_validate({
        "site": "t",
        "azure": {"subscription_id": "s", "resource_group": "rg", "location": "westeurope", "storage_account": "acct",
                  "blob_endpoint": "https://x", "encryption_key": "env:K"},
        "network_mapping": [MAP.model_dump()],
        "machines": [{"name": "app01", "address": "a", "network": "app-net", "ip": "10.10.1.11", "cpus": 2, "memory_mb": 4096},
                     {"name": "app02", "address": "b", "network": "app-net", "ip": "10.10.1.12", "cpus": 2, "memory_mb": 6000}],
    })


def _point(item: str, disks: tuple[str, ...] = ("sda",)) -> RecoveryPoint:
    return RecoveryPoint(id=f"{item}-p1", item=item, time=T0, consistency="crash", disks=[
        PointDisk(disk=d, container="replicas", blob=f"{item}/{d}.vhd", snapshot="snap", size_bytes=1 << 20) for d in disks])


def test_a_failover_gives_up_an_ip_that_a_nic_in_azure_already_holds():
    azure = FakeRecoverySite(sizes=SIZES)
    azure.add(rs.NETWORK_INTERFACE, "rg", "someone-else-nic", ip="10.10.1.11")
    site = _site()
    items = [ProtectedItem(name=m, machine=m) for m in ("app01", "app02")]
    plans = plan_recovery(site, items, {i.name: _point(i.name) for i in items}, run_id="r1", purpose="failover",
                          resource_group="rg", sizes=offered_sizes(azure, "westeurope"), taken=taken_ips(azure, "rg"))
    by = {p.machine: p for p in plans}
    assert by["app01"].nic.static_ip is None and "already taken" in by["app01"].nic.note
    assert by["app02"].nic.static_ip == "10.10.1.12"
    assert (by["app01"].size, by["app02"].size) == ("Standard_B2s", "Standard_D2s_v3")
    drill = plan_recovery(site, items[:1], {"app01": _point("app01")}, run_id="r2", purpose="drill", resource_group="drill-rg",
                          sizes=SIZES, taken=set())
    assert drill[0].nic.static_ip == "10.10.1.11" and drill[0].nic.vnet == "prod-test", "a drill keeps the IP, isolated"


def _machine_plan(disks: tuple[str, ...] = ("sda", "sdb")) -> MachinePlan:
    return plan_machine(site="t", item="app01", machine="app01", point=_point("app01", disks), run_id="r1", purpose="failover",
                        resource_group="rg", location="westeurope", size="Standard_B2s", network_resource_group="rg",
                        nic=plan_nic("app01", "10.10.1.11", MAP, "prod", set()))


def test_a_machine_is_built_on_its_disks_and_a_sweep_removes_the_vm_before_what_it_holds():
    azure = FakeRecoverySite()
    site, plan = _site(), _machine_plan()
    build.ensure_resource_group(azure, "rg", "westeurope", {})
    # Disks a retried run already imported are reused; nothing is staged again (no blob service needed).
    disk_ids = [azure.add(rs.MANAGED_DISK, "rg", d.name, plan.tags, provisioning_state="Succeeded") for d in plan.disks]
    assert [build.import_disk(site, azure, None, plan, d) for d in plan.disks] == disk_ids
    nic_id, ip = build.create_nic(site, azure, plan)
    assert ip == "10.10.1.11"
    vm_id = build.create_vm(site, azure, plan, disk_ids, nic_id)
    assert azure.resources[(rs.VIRTUAL_MACHINE.lower(), "rg", "app01-vm")].state["disks"] == disk_ids, "OS disk first"
    assert build.start_vm(azure, plan) == "running" and "start_vm app01-vm" not in azure.calls, "already running"
    assert build.run_script(azure, plan, "echo hi") == "Enable succeeded"

    azure.add(rs.MANAGED_DISK, "rg", "another-runs-disk", {**plan.tags, "drbook-run": "r2"})
    swept = build.sweep_run(azure, "r1")
    assert swept[0] == vm_id and swept[1] == nic_id and set(swept[2:]) == set(disk_ids)
    assert [c.split()[-1] for c in azure.calls if c.startswith("delete_resource")][:2] == ["app01-vm", "app01-nic0"]
    assert azure.names(rs.MANAGED_DISK) == ["another-runs-disk"]
    assert build.sweep_run(azure, "r1") == []
    assert build.delete_resource(azure, "VM", "rg", "app01-vm") is False


def test_a_vm_that_does_not_come_up_fails_the_build():
    azure = FakeRecoverySite()
    plan = _machine_plan(("sda",))
    azure.add(rs.VIRTUAL_MACHINE, "rg", plan.vm_name, plan.tags, power="deallocated")
    azure.power_after_start = "stopped"
    with pytest.raises(AzureError, match="app01-vm is stopped after start"):
        build.start_vm(azure, plan)
    assert "start_vm app01-vm" in azure.calls
    with pytest.raises(ResourceNotFound):
        build.power_state(azure, "rg", "no-such-vm")


def test_prepare_applies_what_it_planned_then_finds_nothing_to_do():
    site, azure, blobs = _site(), FakeRecoverySite(), FakeBlobService()
    first = prepare.plan(site, azure, blobs)
    assert {s.action for s in first} == {"create"}
    prepare.apply(site, azure, blobs, first)
    assert {s.action for s in prepare.plan(site, azure, blobs)} == {"unchanged"}
    assert azure.get_virtual_network("rg", "prod-test").subnets[0].nsg == "prod-test-isolation"
    assert azure.get_virtual_network("rg", "prod").subnets[0].nsg is None

    # Someone opened the test network by hand: prepare wants its rules back.
    nsg = azure.nsgs[("rg", "prod-test-isolation")]
    nsg.rules = [r for r in nsg.rules if r.name != "deny-internet-out"]
    changed = [s for s in prepare.plan(site, azure, blobs) if s.action != "unchanged"]
    assert [(s.kind, s.name, s.action) for s in changed] == [("network security group", "prod-test-isolation", "update")]


def test_prepare_refuses_a_storage_account_name_taken_in_another_group():
    azure = FakeRecoverySite()
    azure.storage_accounts["acct"] = "elsewhere"
    with pytest.raises(PreflightError, match="storage account acct already exists in resource group elsewhere"):
        prepare.plan(_site(), azure, FakeBlobService())
