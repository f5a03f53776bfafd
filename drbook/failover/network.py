"""Where a recovered machine's NIC goes and which IP it keeps (pure)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel

from drbook.config import NetworkMapping
from drbook.errors import PreflightError


class NicPlan(BaseModel):
    vnet: str
    subnet: str
    static_ip: str | None
    note: str


def plan_nic(machine: str, source_ip: str | None, mapping: NetworkMapping | None, vnet: str, taken: set[str]) -> NicPlan:
    """Keep the source IP when it lies in the target subnet and is free; else take a dynamic one."""
    if mapping is None:
        raise PreflightError(f"{machine}: its source network has no network mapping in the site config")
    subnet = ipaddress.ip_network(mapping.address_prefix)
    if source_ip is None:
        return NicPlan(vnet=vnet, subnet=mapping.target_subnet, static_ip=None, note="no source IP known: dynamic")
    ip = ipaddress.ip_address(source_ip)
    if ip not in subnet:
        return NicPlan(vnet=vnet, subnet=mapping.target_subnet, static_ip=None,
                       note=f"{source_ip} is outside {subnet}: dynamic IP allocated")
    reserved = {subnet.network_address + i for i in range(4)} | {subnet.broadcast_address}
    if ip in reserved:
        return NicPlan(vnet=vnet, subnet=mapping.target_subnet, static_ip=None,
                       note=f"{source_ip} is reserved by Azure in {subnet}: dynamic IP allocated")
    if source_ip in taken:
        return NicPlan(vnet=vnet, subnet=mapping.target_subnet, static_ip=None,
                       note=f"{source_ip} is already taken in {mapping.target_subnet}: dynamic IP allocated")
    return NicPlan(vnet=vnet, subnet=mapping.target_subnet, static_ip=source_ip, note="source IP kept")
