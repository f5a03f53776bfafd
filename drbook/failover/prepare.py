"""prepare-azure: the recovery site's desired state, what would change, and applying it.

`desired_state(site)` is pure; `plan()` reads Azure and says, per resource, create /
update / unchanged; `apply()` makes the changes (every call idempotent: create_or_update).
"""

from __future__ import annotations

from typing import Literal

from azure.mgmt.network.models import AddressSpace, NetworkSecurityGroup, SecurityRule, Subnet, VirtualNetwork
from azure.mgmt.resource.resources.models import ResourceGroup
from azure.mgmt.storage.models import Sku as StorageSku
from azure.mgmt.storage.models import StorageAccountCreateParameters
from pydantic import BaseModel

from drbook.adapters.azure import AzureClients, map_azure_errors
from drbook.config import SiteConfig
from drbook.errors import NotFoundError, PreflightError

TAGS = {"drbook": "recovery-site"}


class NsgRule(BaseModel):
    name: str
    priority: int
    direction: Literal["Inbound", "Outbound"]
    access: Literal["Allow", "Deny"]
    source: str
    destination: str


class NsgSpec(BaseModel):
    name: str
    rules: list[NsgRule]


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
def _get(what: str, fn):
    try:
        with map_azure_errors(what):
            return fn()
    except NotFoundError:
        return None


def _rules_of(nsg) -> set[tuple]:
    return {
        (r.name, r.priority, r.direction, r.access, r.source_address_prefix, r.destination_address_prefix)
        for r in (nsg.security_rules or [])
    }


def plan(site: SiteConfig, clients: AzureClients, blob_service) -> list[Step]:
    want = desired_state(site)
    rg = want.resource_group
    steps: list[Step] = []
    srg = want.storage_resource_group
    exists = _get(f"resource group {rg}", lambda: clients.resource.resource_groups.get(rg))
    steps.append(Step(kind="resource group", name=rg, action="unchanged" if exists else "create", detail=want.location))
    if srg != rg:
        srg_exists = _get(f"resource group {srg}", lambda: clients.resource.resource_groups.get(srg))
        steps.append(Step(kind="resource group", name=srg, action="unchanged" if srg_exists else "create",
                          detail=f"{want.location} (storage)"))
    else:
        srg_exists = exists
    account = _get(f"storage account {want.storage_account}",
                   lambda: clients.storage.storage_accounts.get_properties(srg, want.storage_account)) if srg_exists else None
    if account is None:
        _refuse_account_elsewhere(clients, want.storage_account, srg)
    steps.append(Step(kind="storage account", name=want.storage_account, action="unchanged" if account else "create",
                      detail=f"in {srg}"))
    existing_containers = {c.name for c in blob_service.list_containers()}
    for name in want.containers:
        steps.append(Step(kind="blob container", name=name, action="unchanged" if name in existing_containers else "create"))
    for nsg in want.nsgs:
        current = _get(f"NSG {nsg.name}", lambda: clients.network.network_security_groups.get(rg, nsg.name)) if exists else None
        wanted = {(r.name, r.priority, r.direction, r.access, r.source, r.destination) for r in nsg.rules}
        action = "create" if current is None else ("unchanged" if _rules_of(current) == wanted else "update")
        steps.append(Step(kind="network security group", name=nsg.name, action=action, detail=f"{len(nsg.rules)} rules"))
    for v in want.vnets:
        current = _get(f"virtual network {v.name}", lambda: clients.network.virtual_networks.get(rg, v.name)) if exists else None
        detail = ", ".join(f"{k}={p}" for k, p in v.subnets.items()) + (" (isolated test network)" if v.isolated else "")
        if current is None:
            action = "create"
        else:
            subnets = {s.name: s.address_prefix for s in (current.subnets or [])}
            same_nsg = all(
                ((s.network_security_group.id.rsplit("/", 1)[-1] if s.network_security_group else None) == v.nsg)
                for s in (current.subnets or [])
            )
            same = list(current.address_space.address_prefixes) == v.address_space and subnets == v.subnets and same_nsg
            action = "unchanged" if same else "update"
        steps.append(Step(kind="virtual network", name=v.name, action=action, detail=detail))
    return steps


def _refuse_account_elsewhere(clients: AzureClients, name: str, wanted_group: str) -> None:
    """Storage account names are global: one that lives in another group cannot be made here."""
    with map_azure_errors("list storage accounts"):
        for acct in clients.storage.storage_accounts.list():
            if acct.name == name:
                group = acct.id.split("/")[4]
                raise PreflightError(f"storage account {name} already exists in resource group {group}; "
                                     f"set azure.storage_resource_group: {group} in the site config")


# -- applying --------------------------------------------------------------------------------
def apply(site: SiteConfig, clients: AzureClients, blob_service, steps: list[Step]) -> list[Step]:
    want = desired_state(site)
    rg, loc = want.resource_group, want.location
    todo = {(s.kind, s.name) for s in steps if s.action != "unchanged"}
    sub = site.azure.subscription_id
    for group in dict.fromkeys([rg, want.storage_resource_group]):
        if ("resource group", group) in todo:
            with map_azure_errors(f"create resource group {group}"):
                clients.resource.resource_groups.create_or_update(group, ResourceGroup(location=loc, tags=TAGS))
    if ("storage account", want.storage_account) in todo:
        with map_azure_errors(f"create storage account {want.storage_account} in {want.storage_resource_group}"):
            clients.storage.storage_accounts.begin_create(
                want.storage_resource_group, want.storage_account,
                StorageAccountCreateParameters(location=loc, kind="StorageV2", sku=StorageSku(name="Standard_LRS"), tags=TAGS),
            ).result()
    for name in want.containers:
        if ("blob container", name) in todo:
            from drbook.adapters.blobstore import map_blob_errors

            with map_blob_errors():
                blob_service.create_container(name)
    for nsg in want.nsgs:
        if ("network security group", nsg.name) in todo:
            body = NetworkSecurityGroup(location=loc, tags=TAGS, security_rules=[
                SecurityRule(name=r.name, priority=r.priority, direction=r.direction, access=r.access, protocol="*",
                             source_address_prefix=r.source, destination_address_prefix=r.destination,
                             source_port_range="*", destination_port_range="*")
                for r in nsg.rules
            ])
            with map_azure_errors(f"create NSG {nsg.name}"):
                clients.network.network_security_groups.begin_create_or_update(rg, nsg.name, body).result()
    for v in want.vnets:
        if ("virtual network", v.name) not in todo:
            continue
        nsg_ref = (
            NetworkSecurityGroup(id=f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/networkSecurityGroups/{v.nsg}")
            if v.nsg else None
        )
        body = VirtualNetwork(
            location=loc,
            tags={**TAGS, "drbook-network": "test" if v.isolated else "production"},
            address_space=AddressSpace(address_prefixes=v.address_space),
            subnets=[Subnet(name=name, address_prefix=prefix, network_security_group=nsg_ref)
                     for name, prefix in v.subnets.items()],
        )
        with map_azure_errors(f"create virtual network {v.name}"):
            clients.network.virtual_networks.begin_create_or_update(rg, v.name, body).result()
    return steps
