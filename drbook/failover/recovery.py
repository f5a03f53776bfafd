"""What a drill or a failover decides before it builds anything (pure given its inputs),
and the result rows it reports."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel

from drbook.adapters.recovery_site import RecoverySite
from drbook.config import SiteConfig
from drbook.errors import PreflightError
from drbook.failover import points as pointlib
from drbook.failover.build import MachinePlan, plan_machine
from drbook.failover.network import plan_nic
from drbook.failover.prepare import isolated_vnet_name
from drbook.failover.sizing import VmSize, choose_size
from drbook.models import ProtectedItem, RecoveryPoint


class MachineResult(BaseModel):
    item: str
    machine: str
    resource_group: str
    vm_name: str
    size: str
    disks: list[dict]
    nic: str
    ip: str
    ip_note: str
    point_id: str
    point_time: dt.datetime
    consistency: str
    rpo_seconds: float
    rto_seconds: float
    bytes_verified: int
    blocks_verified: int
    verified: bool
    power_state: str
    script_output: str = ""


def offered_sizes(azure: RecoverySite, location: str) -> list[VmSize]:
    return azure.vm_sizes(location)


def taken_ips(azure: RecoverySite, rg: str) -> set[str]:
    """IPs a failover's NIC cannot keep: NICs in the production resource group hold them."""
    return azure.private_ips(rg)


def choose_points(site: SiteConfig, items: list[ProtectedItem], points_by_item: dict[str, list[RecoveryPoint]],
                  choice: str) -> dict[str, RecoveryPoint]:
    """A replication group failing over together shares one point; a single member may go alone."""
    names = {i.name for i in items}
    groups = {i.group for i in items if i.group}
    chosen: dict[str, RecoveryPoint] = {}
    for group in groups:
        members = [i.name for i in items if i.group == group]
        if len(members) > 1:
            chosen.update(pointlib.choose_group_point({m: points_by_item[m] for m in members}, choice))
    for item in names - set(chosen):
        chosen[item] = pointlib.choose_point(item, points_by_item[item], choice)
    return chosen


def plan_recovery(site: SiteConfig, items: list[ProtectedItem], chosen: dict[str, RecoveryPoint], *, run_id: str,
                  purpose: Literal["drill", "failover"], resource_group: str, sizes: list[VmSize], taken: set[str],
                  name_suffix: str = "") -> list[MachinePlan]:
    plans = []
    taken = set(taken)
    for item in items:
        machine = site.machine(item.machine)
        mapping = site.mapping_for(machine.network)
        if mapping is None:
            raise PreflightError(f"{machine.name}: no network mapping for its source network {machine.network!r}")
        vnet = isolated_vnet_name(mapping.target_vnet) if purpose == "drill" else mapping.target_vnet
        nic = plan_nic(machine.name, machine.ip, mapping, vnet, taken)
        if nic.static_ip:
            taken.add(nic.static_ip)
        size = choose_size(machine.name, machine.cpus or 1, machine.memory_mb or 1024, sizes, machine.vm_size)
        plans.append(plan_machine(
            site=site.site, item=item.name, machine=machine.name, point=chosen[item.name], run_id=run_id, purpose=purpose,
            resource_group=resource_group, location=site.azure.location, size=size, nic=nic,
            network_resource_group=site.azure.resource_group, name_suffix=name_suffix,
        ))
    return plans
