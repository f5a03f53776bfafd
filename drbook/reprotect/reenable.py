"""Protection again after a failback: the replica in Azure still holds the failover point,
so the first forward cycle sends only the blocks that differ from it (a delta, not a copy).
After a failback to another VM or a physical server the item follows its data: its machine
becomes that target, whose disks the next cycles read."""

from __future__ import annotations

from urllib.parse import quote

from drbook.adapters.blobstore import map_blob_errors
from drbook.errors import PreflightError
from drbook.models import ItemState, ProtectedItem
from drbook.reprotect.failback import require_record
from drbook.reprotect.model import ReprotectRecord


def require_reenable(site, item: ProtectedItem) -> ReprotectRecord:  # noqa: ANN001 - Site
    record = require_record(site, item.name)
    if record.status != "committed":
        raise PreflightError(f"cannot protect {item.name} again yet: its failback is not committed "
                             f"(`drbook commit {item.name}` deletes the failover's Azure VMs first)")
    return record


def follow_data(item: ProtectedItem, record: ReprotectRecord) -> None:
    """The item's machine and disk paths become the failback target's (in the order reprotect
    wrote them): the replica in Azure mirrors what is there now, not the old machine."""
    if record.target == item.machine:
        return
    paths = {d.disk: d.target_path for d in record.disks}
    item.machine, item.vm_name = record.target, record.target_vm
    item.disks = [d.model_copy(update={"path": paths.get(d.name, d.path)}) for d in item.disks]


def restore_replica_to_point(site, item: ProtectedItem) -> list[str]:  # noqa: ANN001 - Site
    """When the newest replicated state is not the failover point (an older point was chosen),
    copy the point's snapshots back over the replica blobs (server-side), so the replica and the
    map of its last point agree. The disks restored."""
    point_id = item.failover_point_id
    if not point_id or point_id == item.last_point_id:
        return []
    point = site.engine.points.get(item.name, point_id)
    restored = []
    for d in point.disks:
        blob = site.blob_service.get_blob_client(d.container, d.blob)
        with map_blob_errors(f"restore replica {d.blob} to point {point_id}"):
            blob.start_copy_from_url(f"{blob.url}?snapshot={quote(d.snapshot)}", requires_sync=True)
        restored.append(d.disk)
    return restored


def reenable(site, name: str, *, run_id: str | None = None) -> ProtectedItem:  # noqa: ANN001 - Site
    """failed-back -> protected, with the replica at the failover point and that point's
    manifest as the map of the next cycle."""
    item = site.vault.item(name)
    record = require_reenable(site, item)
    restore_replica_to_point(site, item)

    def mutate(i: ProtectedItem) -> None:
        follow_data(i, record)
        i.last_point_id = i.failover_point_id or i.last_point_id
        i.failover_run_id = None
        i.failover_point_id = None
        i.azure_vms = []

    return site.vault.transition(name, ItemState.PROTECTED, flow_run_id=run_id, mutate=mutate,
                                 reason=f"re-enable replication after failback to {record.target}: the replica at the "
                                        "failover point is the baseline (changed blocks only)")


def returns_from_failback(site, name: str) -> bool:  # noqa: ANN001 - Site
    item = site.vault.find_item(name)
    return item is not None and item.state == ItemState.FAILED_BACK


def protect_again(site, name: str, *, progress=None, run_id: str | None = None):  # noqa: ANN001, ANN201
    """Re-enable, then the first forward cycle (a delta against the replica). (item, point)."""
    reenable(site, name, run_id=run_id)
    point = site.engine.run_cycle(name, "crash", progress)
    return site.vault.item(name), point
