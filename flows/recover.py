"""The part test failover and failover share: build, verify, start and check machines.

Runs inside the caller's `transaction()`: when any step fails, the tasks that completed
roll back (their hooks delete what they made) and the caller sweeps the run's tag.
"""

from __future__ import annotations

import datetime as dt
import time

from prefect import get_run_logger

from drbook.failover.build import DiskVerification, MachinePlan, power_state, require_verified
from drbook.failover.points import rpo_seconds
from drbook.failover.recovery import MachineResult
from drbook.report import render_post_failover_script
from drbook.site import open_site
from drbook.tasks import azure as azure_tasks


def build_machine(site_path: str, plan: MachinePlan, consistency: str, started: float,
                  disaster_time: dt.datetime) -> MachineResult:
    """`started` (monotonic) is when the run began, for the RTO; `disaster_time` is the instant
    the run acts for (a drill's start, a failover's approval), for the RPO: what would be lost
    had the site died then. A planned failover's point comes after it: RPO 0."""
    log = get_run_logger()
    site = open_site(site_path)
    prepared = [f.result() for f in [azure_tasks.prepare_disk.submit(site_path, plan, d.disk) for d in plan.disks]]
    disk_ids = [disk_id for disk_id, _, _ in prepared]
    checks: list[DiskVerification] = [check for _, check, _ in prepared]
    # Verified before anything boots from these disks: a VM never runs on bytes we did not check.
    require_verified(checks, plan.machine)
    log.info("%s: %d disks verified against point %s", plan.machine, len(checks), plan.point_id)
    # S0 of each disk (failover): the verified point, before anything boots; reprotect diffs from it.
    baselines = {d.disk: s0 for d, (_, _, s0) in zip(plan.disks, prepared) if s0}
    ip, state = azure_tasks.boot_vm(site_path, plan, disk_ids)
    rto = time.monotonic() - started
    script = render_post_failover_script(
        machine=plan.machine, purpose=plan.purpose, run_id=plan.run_id, point_id=plan.point_id,
        consistency=consistency, point_time=plan.point_time.isoformat(), vnet=plan.nic.vnet, subnet=plan.nic.subnet, ip=ip,
    )
    output = azure_tasks.run_script(site_path, plan, script)
    return MachineResult(
        item=plan.item, machine=plan.machine, resource_group=plan.resource_group, vm_name=plan.vm_name, size=plan.size,
        disks=[{"disk": d.disk, "resource_group": plan.resource_group, "name": d.name,
                **({"baseline_snapshot": baselines[d.disk]} if d.disk in baselines else {})} for d in plan.disks],
        nic=plan.nic_name, ip=ip, ip_note=plan.nic.note, point_id=plan.point_id, point_time=plan.point_time,
        consistency=consistency, rpo_seconds=rpo_seconds(plan.point_time, disaster_time),
        rto_seconds=rto,
        bytes_verified=sum(c.bytes_verified for c in checks), blocks_verified=sum(c.blocks for c in checks),
        verified=all(c.ok for c in checks), power_state=power_state(site.azure, plan.resource_group, plan.vm_name) or state,
        script_output=output,
    )
