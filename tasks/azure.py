"""Prefect tasks that build recovered machines in Azure. Each records what it made in its
transaction, and its rollback hook removes exactly that when the run fails later."""

from __future__ import annotations

from prefect import task
from prefect.transactions import get_transaction

from drbook.errors import VerificationError
from drbook.failover import build
from drbook.failover.build import DiskVerification, MachinePlan
from drbook.site import open_site
from drbook.tasks.policy import AZURE


def _remember(**values) -> None:
    txn = get_transaction()
    if txn is not None:
        for k, v in values.items():
            txn.set(k, v)


@task(name="prepare-disk", **AZURE)
def prepare_disk(site_path: str, plan: MachinePlan, disk: str) -> tuple[str, DiskVerification, str | None]:
    """Import one disk of the point, verify every block against its manifest, and for a
    failover take S0 (the baseline a later reprotect diffs from): (disk id, check, S0 name).
    One task run for the three (a plan of 100 machines runs hundreds of them)."""
    site = open_site(site_path)
    d = next(x for x in plan.disks if x.disk == disk)
    _remember(site_path=site_path, plan=plan, disk=disk)
    disk_id = build.import_disk(site.cfg, site.azure, site.blob_service, plan, d)
    manifest = site.engine.points.manifest(plan.item, plan.point_id, disk)
    if manifest is None:
        raise VerificationError(f"{plan.machine}: the manifest of point {plan.point_id} disk {disk} is missing")
    check = build.verify_disk(site.cfg, site.azure, plan, d, manifest)
    baseline = build.take_baseline(site.azure, plan, d, disk_id) if plan.purpose == "failover" and check.ok else None
    return disk_id, check, baseline


@prepare_disk.on_rollback
def _remove_disk(txn) -> None:
    site, plan, disk = open_site(txn.get("site_path")), txn.get("plan"), txn.get("disk")
    d = next(x for x in plan.disks if x.disk == disk)
    build.delete_resource(site.azure, "snapshot", plan.resource_group, build.baseline_name(d))
    build.delete_resource(site.azure, "disk", plan.resource_group, d.name)


@task(name="create-and-start-vm", **AZURE)
def boot_vm(site_path: str, plan: MachinePlan, disk_ids: list[str]) -> tuple[str, str]:
    """The NIC, the VM on the verified disks, started: (its IP, its power state)."""
    site = open_site(site_path)
    _remember(site_path=site_path, plan=plan)
    nic_id, ip = build.create_nic(site.cfg, site.azure, plan)
    build.create_vm(site.cfg, site.azure, plan, disk_ids, nic_id)
    return ip, build.start_vm(site.azure, plan)


@boot_vm.on_rollback
def _remove_vm(txn) -> None:
    site, plan = open_site(txn.get("site_path")), txn.get("plan")
    build.delete_resource(site.azure, "VM", plan.resource_group, plan.vm_name)
    build.delete_resource(site.azure, "NIC", plan.resource_group, plan.nic_name)


@task(name="run-post-failover-script", **AZURE)
def run_script(site_path: str, plan: MachinePlan, script: str) -> str:
    return build.run_script(open_site(site_path).azure, plan, script)


@task(name="sweep-run", **AZURE)
def sweep_run(site_path: str, run_id: str) -> list[str]:
    return build.sweep_run(open_site(site_path).azure, run_id)


@task(name="ensure-resource-group", **AZURE)
def ensure_resource_group(site_path: str, name: str, tags: dict[str, str]) -> None:
    site = open_site(site_path)
    build.ensure_resource_group(site.azure, name, site.cfg.azure.location, tags)
