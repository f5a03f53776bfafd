"""The pure decisions of a failover: which point, which size, which IP, what prepare-azure wants."""

from __future__ import annotations

import datetime as dt

import pytest

from drbook.config import NetworkMapping, SiteConfig
from drbook.errors import PreflightError
from drbook.failover.network import plan_nic
from drbook.failover.points import choose_group_point, choose_point
from drbook.failover.prepare import desired_state, isolation_rules
from drbook.failover.sizing import VmSize, choose_size
from drbook.models import RecoveryPoint

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
