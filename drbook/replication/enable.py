"""Enabling replication of a machine: the group check (before anything is touched), the
protected item's registration, and the replication group's membership.

The engine is the one writer of group membership: the item's `group` (what cycles are
chosen by) and the vault document groups/<name>.json (the members of a group cycle).
"""

from __future__ import annotations

from drbook.config import MachineConfig
from drbook.errors import ConflictError, NotFoundError, PreflightError
from drbook.models import ItemState, Policy, ProtectedDisk, ProtectedItem, ReplicationGroup
from drbook.replication.blobs import replica_blob_name
from drbook.vault import GROUPS_PREFIX, Vault, group_key


def current_group(vault: Vault, machine: str) -> str | None:
    """The group the machine's item is in: its own `group`, else a group document listing it."""
    item = vault.find_item(machine)
    if item is not None and item.group:
        return item.group
    return next((g.name for g in vault.list(GROUPS_PREFIX, ReplicationGroup) if machine in g.members), None)


def refuse_other_group(vault: Vault, machine: str, group: str | None) -> None:
    """PreflightError when the machine is already in a replication group other than `group`
    (a machine is in at most one group: the members of a group share recovery points)."""
    if group is None:
        return
    current = current_group(vault, machine)
    if current is not None and current != group:
        raise PreflightError(f"{machine} is already in replication group {current!r}, so it cannot join {group!r}; "
                             f"remove it from {current!r} first")


def protected_disks(machine: MachineConfig, block_size: int, replicas_container: str) -> list[ProtectedDisk]:
    """The machine's disks as the site config names them, each waiting for its initial copy."""
    disks = [ProtectedDisk(name=d.name, path=d.path, size_bytes=d.size_bytes or 0, block_size=block_size,
                           replica_container=replicas_container, replica_blob=replica_blob_name(machine.name, d.name),
                           resync_required=True, resync_reason="initial copy")
             for d in machine.disks]
    if not disks:
        raise PreflightError(f"machine {machine.name!r} has no disks in the site config")
    return disks


def register(vault: Vault, machine: MachineConfig, policy: Policy, group: str | None,
             disks: list[ProtectedDisk]) -> ProtectedItem:
    """The machine's protected item: created if new; if unprotected, what the site config says
    now; else (replicating already) as it is, only given `group` if it had none."""
    def change(item: ProtectedItem) -> ProtectedItem:
        if item.state == ItemState.UNPROTECTED:
            # Registered by the agent push (which knows no disks), or disabled before: what
            # is protected now is what the site config says.
            return item.model_copy(update={"disks": disks, "policy": policy, "group": group, "vm_name": machine.vm_name})
        if group is not None and item.group is None:
            return item.model_copy(update={"group": group})
        return item

    return vault.upsert_item(machine.name, lambda: ProtectedItem(
        name=machine.name, machine=machine.name, vm_name=machine.vm_name, os=machine.os, policy=policy, group=group,
        disks=disks), change)


def join_group(vault: Vault, group: str, item: str) -> None:
    """Add the item to groups/<group>.json, creating the document if it is the first member."""
    key = group_key(group)

    def add(doc: ReplicationGroup) -> None:
        if item not in doc.members:
            doc.members.append(item)

    for _ in range(3):
        try:
            vault.update(key, ReplicationGroup, add)
            return
        except NotFoundError:
            try:
                vault.put(key, ReplicationGroup(name=group, members=[item]), create_only=True)
                return
            except ConflictError:
                continue  # created meanwhile: update it
