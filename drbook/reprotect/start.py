"""Deciding a reprotect before anything moves: the master target (the original machine,
another VM, or a physical server), and a check that it can take the Azure VM's disks."""

from __future__ import annotations

from drbook import state as statelib
from drbook.config import MachineConfig, SiteConfig
from drbook.errors import PreflightError
from drbook.models import ItemState, ProtectedItem
from drbook.reprotect.model import ReprotectRecord, ReverseDisk, TargetKind


def target_kind(item: ProtectedItem, target: MachineConfig) -> TargetKind:
    if target.name == item.machine:
        return "original"
    return "alternate" if target.vm_name else "physical"


def choose_target(cfg: SiteConfig, item: ProtectedItem, target: str | None,
                  items: dict[str, ProtectedItem], taken: dict[str, str] | None = None) -> MachineConfig:
    """The site config machine whose disks reprotect writes: `target`, or the item's own
    machine. Another machine that drbook protects, or one that another item's reprotect wrote
    (`taken`: target -> item; it may hold that item's data now), is refused: its disks are
    somebody's production."""
    name = target or item.machine
    found = next((m for m in cfg.machines if m.name == name), None)
    if found is None:
        raise PreflightError(f"reprotect of {item.name}: no machine {name!r} in the site config "
                             f"(known: {', '.join(m.name for m in cfg.machines) or 'none'})")
    other = items.get(found.name)
    if found.name != item.machine and other is not None and other.state not in (ItemState.UNPROTECTED,):
        raise PreflightError(f"reprotect of {item.name}: {found.name} is a protected machine ({other.state.value}); "
                             "writing its disks would destroy it. Choose a machine drbook does not protect")
    owner = (taken or {}).get(found.name)
    if owner and owner != item.name:
        raise PreflightError(f"reprotect of {item.name}: {found.name} is the target of {owner}'s reprotect (its disks "
                             f"hold {owner}'s data); choose another machine")
    return found


def check_sizes(item: ProtectedItem, target: MachineConfig) -> None:
    """Every disk of the item needs a target disk, in order, at least as large."""
    if len(target.disks) < len(item.disks):
        raise PreflightError(f"reprotect of {item.name}: {target.name} has {len(target.disks)} disks in the site "
                             f"config, the machine needs {len(item.disks)} ({', '.join(d.name for d in item.disks)})")
    for src, dst in zip(item.disks, target.disks):
        if dst.size_bytes is not None and dst.size_bytes < src.size_bytes:
            raise PreflightError(f"reprotect of {item.name}: target disk {target.name}/{dst.name} has "
                                 f"{dst.size_bytes} bytes, smaller than {src.name}'s {src.size_bytes}; nothing was moved")


def new_record(item: ProtectedItem, target: MachineConfig, *, disk_ids: dict[str, str], location: str,
               run_id: str) -> ReprotectRecord:
    """The record of a reprotect about to start: the failover's VM and disks, the target's
    disks in order, and each disk's baseline (S0, the failover point, when failover took it)."""
    statelib.require(item, "reprotect")
    if not item.azure_vms or not item.failover_run_id or not item.failover_point_id:
        raise PreflightError(f"reprotect of {item.name}: the vault holds no failed-over VM for it "
                             "(it was never failed over)")
    vm = item.azure_vms[0]
    by_name = {d["disk"]: d for d in vm.disks}
    disks = []
    for src, dst in zip(item.disks, target.disks):
        ref = by_name.get(src.name)
        if ref is None:
            raise PreflightError(f"reprotect of {item.name}: the failed-over VM {vm.vm_name} has no disk for {src.name}")
        baseline = ref.get("baseline_snapshot")
        disks.append(ReverseDisk(disk=src.name, managed_disk=ref["name"], resource_group=ref["resource_group"],
                                 disk_id=disk_ids[src.name], target_path=dst.path, size=src.size_bytes,
                                 block_size=src.block_size, baseline=baseline, baseline_is_point=baseline is not None))
    return ReprotectRecord(item=item.name, machine=item.machine, target=target.name, target_kind=target_kind(item, target),
                           target_vm=target.vm_name, failover_run_id=item.failover_run_id,
                           point_id=item.failover_point_id, resource_group=vm.resource_group, vm_name=vm.vm_name,
                           location=location, disks=disks, run_id=run_id)


def require_target_off(cfg: SiteConfig, target: MachineConfig, item_name: str) -> None:
    """A VMware target stays powered off while it is written (never boot a half-written disk)."""
    if not target.vm_name:
        return
    from drbook.adapters.vsphere import from_site

    with from_site(cfg) as vc:
        power = vc.power_state(target.vm_name)
    if power != "poweredOff":
        raise PreflightError(f"reprotect of {item_name}: the target VM {target.vm_name} is {power}; it must be powered "
                             "off while its disks are written (power it off in vCenter, then run reprotect again)")


def begin(site, name: str, target: str | None, run_id: str):  # noqa: ANN001, ANN201 - Site -> ReprotectRecord
    """The record a reprotect run works on. A machine already reprotecting (a run that did not
    finish) or reprotected resumes its record; a committed one gets a new record once its
    target passes preflight, and moves to reprotecting. Anything else is refused, unchanged."""
    from drbook.mobility import push_agent
    from drbook.reprotect.model import reprotect_key

    vault = site.vault
    item = vault.item(name)
    if item.state in (ItemState.REPROTECTING, ItemState.REPROTECTED):
        record = vault.find(reprotect_key(name), ReprotectRecord)
        if record is not None:
            if target and target != record.target:
                raise PreflightError(f"{name} is already {item.state.value} to {record.target}; a reprotect to "
                                     f"{target} needs the reverse replication stopped first")
            return record
    statelib.require(item, "reprotect")
    target_cfg = choose_target(site.cfg, item, target, {i.name: i for i in vault.items()}, targets_taken(vault))
    check_sizes(item, target_cfg)
    require_target_off(site.cfg, target_cfg, name)
    shell = site.shell_for(target_cfg)
    try:
        push_agent(shell, target_cfg)  # unchanged when the same agent is there; verified either way
    finally:
        shell.close()
    vm = item.azure_vms[0] if item.azure_vms else None
    disk_ids = {}
    for ref in (vm.disks if vm else []):
        found = site.azure.get_disk(ref["resource_group"], ref["name"])
        if found is None:
            raise PreflightError(f"reprotect of {name}: the failed-over VM's disk {ref['name']} is gone from Azure")
        disk_ids[ref["disk"]] = found.id
    record = new_record(item, target_cfg, disk_ids=disk_ids, location=site.cfg.azure.location, run_id=run_id)
    vault.put(reprotect_key(name), record)
    vault.transition(name, ItemState.REPROTECTING, flow_run_id=run_id,
                     reason=f"reprotect to {target_cfg.name} ({record.target_kind})")
    return record


def targets_taken(vault) -> dict[str, str]:  # noqa: ANN001 - Vault
    """target machine -> the item whose reprotect writes (or wrote) it."""
    from drbook.reprotect.model import ReprotectRecord

    keys = [k for k in vault.keys("reprotect/") if k.count("/") == 1 and k.endswith(".json")]
    records = [vault.find(k, ReprotectRecord) for k in keys]
    return {r.target: r.item for r in records if r is not None and r.target != r.machine}


def finish_first_cycle(site, name: str, run_id: str):  # noqa: ANN001, ANN201
    """After a whole cycle the target tracks the Azure VM: reprotecting -> reprotected."""
    from drbook.reprotect.model import reprotect_key

    item = site.vault.item(name)
    if item.state == ItemState.REPROTECTING:
        site.vault.transition(name, ItemState.REPROTECTED, flow_run_id=run_id,
                              reason="the first reverse cycle completed: the on-premises disks track the Azure VM")
    return site.vault.update(reprotect_key(name), ReprotectRecord,
                             lambda r: r.model_copy(update={"status": "reprotected"}) if r.status == "reprotecting" else r)
