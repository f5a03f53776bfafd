"""Microsoft.Network in the ARM emulator, through azure-mgmt-network."""

from __future__ import annotations

import azure.mgmt.network.models as nm
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from tests.arm_fixtures import LOCATION, arm, arm_azurite, arm_certs, arm_server  # noqa: F401


def _code(exc_info) -> str:
    return exc_info.value.error.code


def test_virtual_network_with_subnets(arm):
    arm.rg("rg")
    vnet = arm.vnet("rg", "prod", "10.1.0.0/16", {"app": "10.1.1.0/24", "db": "10.1.2.0/24"})
    assert vnet.provisioning_state == "Succeeded"
    assert [(s.name, s.address_prefix) for s in vnet.subnets] == [("app", "10.1.1.0/24"), ("db", "10.1.2.0/24")]
    assert vnet.subnets[0].id == f"{vnet.id}/subnets/app"
    got = arm.network.virtual_networks.get("rg", "PROD")
    assert got.address_space.address_prefixes == ["10.1.0.0/16"]
    assert [v.name for v in arm.network.virtual_networks.list("rg")] == ["prod"]
    assert [v.name for v in arm.network.virtual_networks.list_all()] == ["prod"]
    with pytest.raises(HttpResponseError) as exc:
        arm.vnet("rg", "bad", "10.2.0.0/16", {"a": "10.3.0.0/24"})
    assert _code(exc) == "NetcfgSubnetRangeOutsideVnet"
    with pytest.raises(HttpResponseError) as exc:
        arm.vnet("rg", "bad", "10.2.0.0/16", {"a": "10.2.0.0/23", "b": "10.2.1.0/24"})
    assert _code(exc) == "NetcfgSubnetRangesOverlap"
    with pytest.raises(HttpResponseError) as exc:
        arm.vnet("rg", "bad", "10.2.0.1/16", {})
    assert _code(exc) == "InvalidCIDRNotation"


def test_subnets_on_their_own(arm):
    arm.rg("rg")
    vnet = arm.vnet("rg", "v", "10.0.0.0/16", {})
    subnets = arm.network.subnets
    assert list(subnets.list("rg", "v")) == []
    made = subnets.begin_create_or_update("rg", "v", "test", nm.Subnet(address_prefix="10.0.9.0/24")) \
        .result(timeout=20)
    assert made.id == f"{vnet.id}/subnets/test" and made.provisioning_state == "Succeeded"
    assert subnets.get("rg", "v", "test").address_prefix == "10.0.9.0/24"
    assert [s.name for s in arm.network.virtual_networks.get("rg", "v").subnets] == ["test"]
    with pytest.raises(HttpResponseError) as exc:
        subnets.begin_create_or_update("rg", "v", "clash", nm.Subnet(address_prefix="10.0.9.128/25")).result(20)
    assert _code(exc) == "NetcfgSubnetRangesOverlap"
    with pytest.raises(ResourceNotFoundError):
        subnets.get("rg", "v", "nope")
    subnets.begin_delete("rg", "v", "test").result(timeout=20)
    assert list(subnets.list("rg", "v")) == []


def test_subnet_in_use_cannot_be_deleted(arm):
    arm.rg("rg")
    vnet = arm.vnet("rg")
    arm.nic(vnet.subnets[0].id, "rg", "nic")
    with pytest.raises(HttpResponseError) as exc:
        arm.network.subnets.begin_delete("rg", "vnet", "default").result(timeout=20)
    assert _code(exc) == "InUseSubnetCannotBeDeleted"
    assert [c.id for c in arm.network.subnets.get("rg", "vnet", "default").ip_configurations] == [
        f"/subscriptions/{arm.sub}/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/nic/"
        "ipConfigurations/ipconfig1"]
    with pytest.raises(HttpResponseError) as exc:
        arm.vnet("rg", "vnet", subnets={})  # a PUT that drops the subnet
    assert _code(exc) == "InUseSubnetCannotBeDeleted"


def test_network_security_group_with_rules(arm):
    arm.rg("rg")
    nsgs, rules = arm.network.network_security_groups, arm.network.security_rules
    deny = nm.SecurityRule(name="deny-internet", protocol="*", source_address_prefix="*",
                           destination_address_prefix="Internet", source_port_range="*",
                           destination_port_range="*", access="Deny", priority=100, direction="Outbound")
    nsg = nsgs.begin_create_or_update("rg", "isolated", nm.NetworkSecurityGroup(
        location=LOCATION, security_rules=[deny])).result(timeout=20)
    assert [r.name for r in nsg.security_rules] == ["deny-internet"]
    assert {r.name for r in nsg.default_security_rules} >= {"AllowVnetInBound", "DenyAllOutBound"}
    ssh = nm.SecurityRule(protocol="Tcp", source_address_prefix="10.0.0.0/8", destination_address_prefix="*",
                          source_port_range="*", destination_port_range="22", access="Allow", priority=200,
                          direction="Inbound")
    made = rules.begin_create_or_update("rg", "isolated", "ssh", ssh).result(timeout=20)
    assert made.id == f"{nsg.id}/securityRules/ssh" and made.provisioning_state == "Succeeded"
    assert sorted(r.name for r in rules.list("rg", "isolated")) == ["deny-internet", "ssh"]
    assert rules.get("rg", "isolated", "ssh").destination_port_range == "22"
    clash = nm.SecurityRule(**{**ssh.as_dict(), "priority": 100, "direction": "Outbound"})
    with pytest.raises(HttpResponseError) as exc:
        rules.begin_create_or_update("rg", "isolated", "clash", clash).result(timeout=20)
    assert _code(exc) == "SecurityRuleConflict"
    with pytest.raises(HttpResponseError) as exc:
        rules.begin_create_or_update("rg", "isolated", "low", nm.SecurityRule(
            **{**ssh.as_dict(), "priority": 5000})).result(timeout=20)
    assert _code(exc) == "SecurityRuleInvalidPriority"
    rules.begin_delete("rg", "isolated", "ssh").result(timeout=20)
    assert [r.name for r in rules.list("rg", "isolated")] == ["deny-internet"]
    # an NSG used by a subnet cannot be deleted
    arm.network.virtual_networks.begin_create_or_update("rg", "v", nm.VirtualNetwork(
        location=LOCATION, address_space=nm.AddressSpace(address_prefixes=["10.5.0.0/16"]),
        subnets=[nm.Subnet(name="s", address_prefix="10.5.0.0/24",
                           network_security_group=nm.NetworkSecurityGroup(id=nsg.id))])).result(timeout=20)
    assert [s.id for s in nsgs.get("rg", "isolated").subnets] == [
        f"/subscriptions/{arm.sub}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s"]
    with pytest.raises(HttpResponseError) as exc:
        nsgs.begin_delete("rg", "isolated").result(timeout=20)
    assert _code(exc) == "InUseNetworkSecurityGroupCannotBeDeleted"


def test_dynamic_addresses_skip_azure_reserved_ones(arm):
    arm.rg("rg")
    subnet = arm.vnet("rg", subnets={"s": "10.0.1.0/29"}).subnets[0]  # .0-.3 and .7 are reserved
    first = arm.nic(subnet.id, "rg", "n1")
    second = arm.nic(subnet.id, "rg", "n2")
    assert first.ip_configurations[0].private_ip_address == "10.0.1.4"
    assert second.ip_configurations[0].private_ip_address == "10.0.1.5"
    assert first.ip_configurations[0].private_ip_allocation_method == "Dynamic"
    again = arm.nic(subnet.id, "rg", "n1")  # an update keeps the address
    assert again.ip_configurations[0].private_ip_address == "10.0.1.4"
    arm.nic(subnet.id, "rg", "n3")
    with pytest.raises(HttpResponseError) as exc:
        arm.nic(subnet.id, "rg", "n4")
    assert _code(exc) == "SubnetIsFull"


def test_static_addresses_are_validated(arm):
    arm.rg("rg")
    subnet = arm.vnet("rg").subnets[0]  # 10.0.1.0/24
    nic = arm.nic(subnet.id, "rg", "db", ip="10.0.1.10")
    assert nic.ip_configurations[0].private_ip_address == "10.0.1.10"
    assert nic.ip_configurations[0].private_ip_allocation_method == "Static"
    assert arm.network.network_interfaces.get("rg", "db").ip_configurations[0].subnet.id == subnet.id
    with pytest.raises(HttpResponseError) as exc:
        arm.nic(subnet.id, "rg", "outside", ip="10.0.2.10")
    assert _code(exc) == "PrivateIPAddressNotInSubnet"
    with pytest.raises(HttpResponseError) as exc:
        arm.nic(subnet.id, "rg", "taken", ip="10.0.1.10")
    assert _code(exc) == "PrivateIPAddressIsAllocated"
    assert "networkInterfaces/db" in exc.value.error.message
    for reserved in ("10.0.1.0", "10.0.1.3", "10.0.1.255"):
        with pytest.raises(HttpResponseError) as exc:
            arm.nic(subnet.id, "rg", "reserved", ip=reserved)
        assert _code(exc) == "PrivateIPAddressInReservedRange"
    dynamic = arm.nic(subnet.id, "rg", "dyn")
    assert dynamic.ip_configurations[0].private_ip_address == "10.0.1.4"


def test_nic_refusals(arm):
    arm.rg("rg")
    subnet = arm.vnet("rg").subnets[0]
    missing = subnet.id.replace("/subnets/default", "/subnets/ghost")
    with pytest.raises(HttpResponseError) as exc:
        arm.nic(missing, "rg", "n")
    assert _code(exc) == "InvalidResourceReference"
    with pytest.raises(HttpResponseError) as exc:
        arm.nic(subnet.id, "rg", "far", location="northeurope")
    assert _code(exc) == "InvalidResourceReference"
    assert "same region" in exc.value.error.message


def test_peerings(arm):
    arm.rg("rg")
    prod = arm.vnet("rg", "prod", "10.1.0.0/16", {"s": "10.1.0.0/24"})
    test = arm.vnet("rg", "test", "10.2.0.0/16", {"s": "10.2.0.0/24"})
    clash = arm.vnet("rg", "clash", "10.1.0.0/20", {})
    peerings = arm.network.virtual_network_peerings
    assert list(peerings.list("rg", "test")) == []  # an isolated test network has none
    p1 = peerings.begin_create_or_update("rg", "prod", "to-test", nm.VirtualNetworkPeering(
        remote_virtual_network=nm.SubResource(id=test.id), allow_virtual_network_access=True)).result(timeout=20)
    assert p1.peering_state == "Initiated" and p1.provisioning_state == "Succeeded"
    peerings.begin_create_or_update("rg", "test", "to-prod", nm.VirtualNetworkPeering(
        remote_virtual_network=nm.SubResource(id=prod.id))).result(timeout=20)
    assert peerings.get("rg", "prod", "to-test").peering_state == "Connected"
    assert [p.name for p in peerings.list("rg", "test")] == ["to-prod"]
    assert [p.name for p in arm.network.virtual_networks.get("rg", "prod").virtual_network_peerings] == ["to-test"]
    with pytest.raises(HttpResponseError) as exc:
        peerings.begin_create_or_update("rg", "prod", "overlap", nm.VirtualNetworkPeering(
            remote_virtual_network=nm.SubResource(id=clash.id))).result(timeout=20)
    assert _code(exc) == "VnetAddressSpacesOverlap"
    peerings.begin_delete("rg", "test", "to-prod").result(timeout=20)
    assert list(peerings.list("rg", "test")) == []
    assert peerings.get("rg", "prod", "to-test").peering_state == "Disconnected"
    with pytest.raises(ResourceNotFoundError):
        peerings.get("rg", "test", "to-prod")


def test_public_ips(arm):
    arm.rg("rg")
    pips = arm.network.public_ip_addresses
    pip = pips.begin_create_or_update("rg", "pip", nm.PublicIPAddress(
        location=LOCATION, sku=nm.PublicIPAddressSku(name="Standard"),
        public_ip_allocation_method="Static")).result(timeout=20)
    assert pip.ip_address and pip.provisioning_state == "Succeeded"
    subnet = arm.vnet("rg").subnets[0]
    nic = arm.network.network_interfaces.begin_create_or_update("rg", "nic", nm.NetworkInterface(
        location=LOCATION, ip_configurations=[nm.NetworkInterfaceIPConfiguration(
            name="ipconfig1", subnet=nm.Subnet(id=subnet.id),
            public_ip_address=nm.PublicIPAddress(id=pip.id))])).result(timeout=20)
    assert pips.get("rg", "pip").ip_configuration.id == nic.ip_configurations[0].id
    with pytest.raises(HttpResponseError) as exc:
        pips.begin_delete("rg", "pip").result(timeout=20)
    assert _code(exc) == "PublicIPAddressCannotBeDeleted"
    tagged = pips.update_tags("rg", "pip", nm.TagsObject(tags={"drill": "d1"}))
    assert tagged.tags == {"drill": "d1"}
    assert [p.name for p in pips.list_all()] == ["pip"]
    arm.network.network_interfaces.begin_delete("rg", "nic").result(timeout=20)
    pips.begin_delete("rg", "pip").result(timeout=20)
    assert list(pips.list("rg")) == []
