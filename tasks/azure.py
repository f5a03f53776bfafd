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


@task(name="import-disk", **AZURE)
def import_disk(site_path: str, plan: MachinePlan, disk: str) -> str:
    site = open_site(site_path)
    d = next(x for x in plan.disks if x.disk == disk)
    _remember(site_path=site_path, plan=plan, disk=disk)
    return build.import_disk(site.cfg, site.azure, site.blob_service, plan, d)


@import_disk.on_rollback
def _remove_disk(txn) -> None:
    site, plan, disk = open_site(txn.get("site_path")), txn.get("plan"), txn.get("disk")
    name = next(x.name for x in plan.disks if x.disk == disk)
    build.delete_resource(site.azure, "disk", plan.resource_group, name)


@task(name="verify-disk", **AZURE)
def verify_disk(site_path: str, plan: MachinePlan, disk: str) -> DiskVerification:
    site = open_site(site_path)
    d = next(x for x in plan.disks if x.disk == disk)
    manifest = site.engine.points.manifest(plan.item, plan.point_id, disk)
    if manifest is None:
        raise VerificationError(f"{plan.machine}: the manifest of point {plan.point_id} disk {disk} is missing")
    return build.verify_disk(site.cfg, site.azure, plan, d, manifest)


@task(name="snapshot-baseline", **AZURE)
def snapshot_baseline(site_path: str, plan: MachinePlan, disk: str, disk_id: str) -> str:
    d = next(x for x in plan.disks if x.disk == disk)
    return build.take_baseline(open_site(site_path).azure, plan, d, disk_id)


@task(name="create-nic", **AZURE)
def create_nic(site_path: str, plan: MachinePlan) -> tuple[str, str]:
    site = open_site(site_path)
    _remember(site_path=site_path, plan=plan)
    return build.create_nic(site.cfg, site.azure, plan)


@create_nic.on_rollback
def _remove_nic(txn) -> None:
    site, plan = open_site(txn.get("site_path")), txn.get("plan")
    build.delete_resource(site.azure, "NIC", plan.resource_group, plan.nic_name)


@task(name="create-vm", **AZURE)
def create_vm(site_path: str, plan: MachinePlan, disk_ids: list[str], nic_id: str) -> str:
    site = open_site(site_path)
    _remember(site_path=site_path, plan=plan)
    return build.create_vm(site.cfg, site.azure, plan, disk_ids, nic_id)


@create_vm.on_rollback
def _remove_vm(txn) -> None:
    site, plan = open_site(txn.get("site_path")), txn.get("plan")
    build.delete_resource(site.azure, "VM", plan.resource_group, plan.vm_name)


@task(name="start-vm", **AZURE)
def start_vm(site_path: str, plan: MachinePlan) -> str:
    return build.start_vm(open_site(site_path).azure, plan)


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
