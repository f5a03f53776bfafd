"""prepare-azure: the recovery site's desired state, what would change, and applying it.

`desired_state(site)` is pure; `plan()` reads Azure and says, per resource, create /
update / unchanged; `apply()` makes the changes (every call idempotent: create_or_update).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from drbook.adapters.blobstore import map_blob_errors
from drbook.adapters.recovery_site import NsgRule, NsgSpec, RecoverySite, SubnetState, VirtualNetworkState
from drbook.config import SiteConfig
from drbook.errors import PreflightError

TAGS = {"drbook": "recovery-site"}


class VnetSpec(BaseModel):
    name: str
    address_space: list[str]
    subnets: dict[str, str]
    nsg: str | None = None
    isolated: bool = False


class DesiredState(BaseModel):
    resource_group: str
    location: str
    storage_account: str
    storage_resource_group: str
    containers: list[str]
    nsgs: list[NsgSpec]
    vnets: list[VnetSpec]


class Step(BaseModel):
    kind: str
    name: str
    action: Literal["create", "update", "unchanged"]
    detail: str = ""


def isolated_vnet_name(prod_vnet: str) -> str:
    return f"{prod_vnet}-test"


def isolation_nsg_name(prod_vnet: str) -> str:
    return f"{prod_vnet}-test-isolation"


def isolation_rules(address_space: list[str]) -> list[NsgRule]:
    """No way in from outside the test network, no way out to the Internet."""
    rules = []
    for i, prefix in enumerate(address_space):
        rules.append(NsgRule(name=f"allow-test-net-in-{i}", priority=100 + i, direction="Inbound", access="Allow", source=prefix, destination="*"))
        rules.append(NsgRule(name=f"allow-test-net-out-{i}", priority=100 + i, direction="Outbound", access="Allow", source="*", destination=prefix))
    rules.append(NsgRule(name="deny-internet-out", priority=200, direction="Outbound", access="Deny", source="*", destination="Internet"))
    rules.append(NsgRule(name="deny-all-in", priority=4000, direction="Inbound", access="Deny", source="*", destination="*"))
    rules.append(NsgRule(name="deny-all-out", priority=4000, direction="Outbound", access="Deny", source="*", destination="*"))
    return rules


def desired_state(site: SiteConfig) -> DesiredState:
    vnets: dict[str, VnetSpec] = {}
    for m in site.network_mapping:
        v = vnets.setdefault(m.target_vnet, VnetSpec(name=m.target_vnet, address_space=[m.vnet_address_space], subnets={}))
        if m.vnet_address_space not in v.address_space:
            v.address_space.append(m.vnet_address_space)
        v.subnets[m.target_subnet] = m.address_prefix
    nsgs = []
    all_vnets = list(vnets.values())
    for v in list(vnets.values()):
        # Same address space, so machines keep their IPs in a drill; no peering, ever.
        nsg = isolation_nsg_name(v.name)
        nsgs.append(NsgSpec(name=nsg, rules=isolation_rules(v.address_space)))
        all_vnets.append(VnetSpec(name=isolated_vnet_name(v.name), address_space=v.address_space, subnets=dict(v.subnets), nsg=nsg, isolated=True))
    c = site.azure.containers
    return DesiredState(
        resource_group=site.azure.resource_group,
        location=site.azure.location,
        storage_account=site.azure.storage_account,
        storage_resource_group=site.azure.storage_resource_group or site.azure.resource_group,
        containers=[c.cache, c.replicas, c.vault, imports_container(site)],
        nsgs=nsgs,
        vnets=all_vnets,
    )


def imports_container(site: SiteConfig) -> str:
    return f"{site.azure.containers.replicas}-imports"


# -- reading what exists -------------------------------------------------------------------
def _rules_of(nsg: NsgSpec) -> set[tuple]:
    return {(r.name, r.priority, r.direction, r.access, r.source, r.destination) for r in nsg.rules}


def plan(site: SiteConfig, azure: RecoverySite, blob_service) -> list[Step]:
    want = desired_state(site)
    rg = want.resource_group
    steps: list[Step] = []
    srg = want.storage_resource_group
    exists = azure.resource_group_exists(rg)
    steps.append(Step(kind="resource group", name=rg, action="unchanged" if exists else "create", detail=want.location))
    if srg != rg:
        srg_exists = azure.resource_group_exists(srg)
        steps.append(Step(kind="resource group", name=srg, action="unchanged" if srg_exists else "create",
                          detail=f"{want.location} (storage)"))
    else:
        srg_exists = exists
    account = azure.get_storage_account(srg, want.storage_account) if srg_exists else None
    if account is None:
        _refuse_account_elsewhere(azure, want.storage_account)
    steps.append(Step(kind="storage account", name=want.storage_account, action="unchanged" if account else "create",
                      detail=f"in {srg}"))
    existing_containers = {c.name for c in blob_service.list_containers()}
    for name in want.containers:
        steps.append(Step(kind="blob container", name=name, action="unchanged" if name in existing_containers else "create"))
    for nsg in want.nsgs:
        current = azure.get_network_security_group(rg, nsg.name) if exists else None
        action = "create" if current is None else ("unchanged" if _rules_of(current) == _rules_of(nsg) else "update")
        steps.append(Step(kind="network security group", name=nsg.name, action=action, detail=f"{len(nsg.rules)} rules"))
    for v in want.vnets:
        current = azure.get_virtual_network(rg, v.name) if exists else None
        detail = ", ".join(f"{k}={p}" for k, p in v.subnets.items()) + (" (isolated test network)" if v.isolated else "")
        if current is None:
            action = "create"
        else:
            subnets = {s.name: s.address_prefix for s in current.subnets}
            same_nsg = all(s.nsg == v.nsg for s in current.subnets)
            same = current.address_space == v.address_space and subnets == v.subnets and same_nsg
            action = "unchanged" if same else "update"
        steps.append(Step(kind="virtual network", name=v.name, action=action, detail=detail))
    return steps


def _refuse_account_elsewhere(azure: RecoverySite, name: str) -> None:
    """Storage account names are global: one that lives in another group cannot be made here."""
    for acct in azure.list_storage_accounts():
        if acct.name == name:
            raise PreflightError(f"storage account {name} already exists in resource group {acct.resource_group}; "
                                 f"set azure.storage_resource_group: {acct.resource_group} in the site config")


# -- applying --------------------------------------------------------------------------------
def apply(site: SiteConfig, azure: RecoverySite, blob_service, steps: list[Step]) -> list[Step]:
    want = desired_state(site)
    rg, loc = want.resource_group, want.location
    todo = {(s.kind, s.name) for s in steps if s.action != "unchanged"}
    for group in dict.fromkeys([rg, want.storage_resource_group]):
        if ("resource group", group) in todo:
            azure.ensure_resource_group(group, loc, TAGS)
    if ("storage account", want.storage_account) in todo:
        azure.create_storage_account(want.storage_resource_group, want.storage_account, loc, TAGS)
    for name in want.containers:
        if ("blob container", name) in todo:
            with map_blob_errors():
                blob_service.create_container(name)
    for nsg in want.nsgs:
        if ("network security group", nsg.name) in todo:
            azure.create_or_update_network_security_group(rg, nsg, loc, TAGS)
    for v in want.vnets:
        if ("virtual network", v.name) not in todo:
            continue
        vnet = VirtualNetworkState(name=v.name, address_space=v.address_space, subnets=[
            SubnetState(name=name, address_prefix=prefix, nsg=v.nsg) for name, prefix in v.subnets.items()])
        tags = {**TAGS, "drbook-network": "test" if v.isolated else "production"}
        azure.create_or_update_virtual_network(rg, vnet, loc, tags)
    return steps
