"""A failover's outcome in the vault: the items it moved to failed-over, the moves undone when
it does not complete (rollback-failover), and its record's status."""

from __future__ import annotations

from drbook.models import AzureVmRef, FailoverRecord, ItemState, ProtectedItem
from drbook.vault import Vault, failover_key


def mark_failed_over(vault: Vault, row, run_id: str) -> ProtectedItem:  # noqa: ANN001 - drbook.failover.build row
    """The item runs in Azure on `row`'s VM, from `row.point_id`; not yet committed."""
    ref = AzureVmRef(machine=row.machine, resource_group=row.resource_group, vm_name=row.vm_name,
                     disks=row.disks, nics=[row.nic], ip=row.ip)

    def mutate(item: ProtectedItem) -> None:
        item.failover_run_id = run_id
        item.failover_point_id = row.point_id
        item.azure_vms = [ref]

    return vault.transition(row.item, ItemState.FAILED_OVER, flow_run_id=run_id,
                            reason=f"failover to point {row.point_id}", mutate=mutate)


def roll_back(vault: Vault, name: str, run_id: str) -> str:
    """Undo mark_failed_over for a failover that did not complete (its VMs are swept)."""

    def mutate(item: ProtectedItem) -> None:
        item.failover_run_id = None
        item.failover_point_id = None
        item.azure_vms = []

    vault.transition(name, ItemState.PROTECTED, flow_run_id=run_id,
                     reason="rollback-failover: the failover did not complete; its Azure VMs are deleted", mutate=mutate)
    return name


def update_record(vault: Vault, run_id: str, **update) -> FailoverRecord:
    return vault.update(failover_key(run_id), FailoverRecord, lambda r: r.model_copy(update=update))
