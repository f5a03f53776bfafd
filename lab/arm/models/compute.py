"""Microsoft.Compute: managed disks and snapshots (bytes in Azurite), VMs, sizes, run command.

Disk creation and grant access touch Azurite, which is slow next to everything else, so they
run in three steps: check under the lock (``*_plan``), do the blob work without it, then commit
under the lock (``*_commit``), re-checking what may have changed meanwhile.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..blobs import Source
from ..exceptions import ArmError, BadRequest, InvalidParameter, NotFound, OperationNotAllowed
from ..ids import ResourceId, parse_id, same_id
from . import regions, sizes
from .base import Base, Reply, now_iso, tags_of

NS = "Microsoft.Compute"
GIB = 1 << 30
DISK_SKUS = {"standard_lrs": ("Standard_LRS", "Standard"), "premium_lrs": ("Premium_LRS", "Premium"),
             "standardssd_lrs": ("StandardSSD_LRS", "Standard"), "ultrassd_lrs": ("UltraSSD_LRS", "Ultra"),
             "premium_zrs": ("Premium_ZRS", "Premium"), "standardssd_zrs": ("StandardSSD_ZRS", "Standard"),
             "premiumv2_lrs": ("PremiumV2_LRS", "Premium")}
POWER_TEXT = {"running": "VM running", "stopped": "VM stopped", "deallocated": "VM deallocated",
              "starting": "VM starting", "stopping": "VM stopping", "deallocating": "VM deallocating"}
ACTIONS = {  # action: (transitional power state, final power state)
    "start": ("starting", "running"),
    "powerOff": ("stopping", "stopped"),
    "deallocate": ("deallocating", "deallocated"),
    "restart": ("starting", "running"),
}


@dataclass
class DiskPlan:
    """A disk or snapshot PUT that needs blob work before it can be committed."""

    kind: str  # "disks" | "snapshots"
    rid: ResourceId
    body: dict[str, Any]
    location: str
    tags: dict[str, str]
    unique_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    import_uri: str | None = None
    copy_blob: str | None = None  # blob of the source disk/snapshot
    source: dict[str, Any] | None = None  # body of the Copy source
    size: int = 0
    materialized: bool = False
    source_info: Source | None = None

    @property
    def blob(self) -> str:
        return f"{self.kind}/{self.unique_id}.vhd"


@dataclass
class GrantPlan:
    rid: ResourceId
    blob: str
    size: int
    materialized: bool
    access: str
    seconds: int
    url: str | None = None
    snapshot: str | None = None


def _sku(body: dict[str, Any], default: str = "Standard_LRS") -> dict[str, str]:
    name = (body.get("sku") or {}).get("name") or default
    found = DISK_SKUS.get(name.lower())
    if not found:
        raise BadRequest(f"The value '{name}' is not a valid disk SKU; use one of "
                         f"{', '.join(v[0] for v in DISK_SKUS.values())}.", code="InvalidParameter")
    return {"name": found[0], "tier": found[1]}


def _mac() -> str:
    return "00-0D-3A-" + "-".join(f"{random.randrange(256):02X}" for _ in range(3))


def _status(code: str, display: str, when: float | None = None) -> dict[str, Any]:
    s = {"code": code, "level": "Info", "displayStatus": display}
    if when:
        s["time"] = now_iso(when)
    return s


class ComputeBackend(Base):
    # == disks and snapshots ===================================================================
    def render_disk(self, record: dict[str, Any]) -> dict[str, Any]:
        body = record["body"]
        if body["type"] == f"{NS}/snapshots":
            state = "ActiveSAS" if record["lab"].get("sas") else "Unattached"
            return {**body, "properties": {**body["properties"], "diskState": state}}
        owner = body.get("managedBy")
        if record["lab"].get("sas"):
            state = "ActiveSAS"
        elif owner:
            vm = self.get(owner)
            state = "Reserved" if vm and vm["lab"].get("power") == "deallocated" else "Attached"
        else:
            state = "Unattached"
        return {**body, "properties": {**body["properties"], "diskState": state}}

    def disk_put_plan(self, kind: str, sub: str, rg: str, name: str, body: dict[str, Any]) -> Reply | DiskPlan:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, kind, name, body)
        props = body.get("properties") or {}
        data = props.get("creationData") or {}
        option = str(data.get("createOption") or "")
        if existing:
            return self._disk_update(existing, body, tags)
        if kind == "snapshots" and option.lower() == "empty":
            raise InvalidParameter("A snapshot cannot be created Empty; use Copy or Import.", target="createOption")
        plan = DiskPlan(kind, rid, body, location, tags)
        if option.lower() == "empty":
            size_gb = props.get("diskSizeGB")
            if not isinstance(size_gb, int) or not 1 <= size_gb <= 32767:
                raise InvalidParameter("Required parameter 'diskSizeGB' is missing (null) or not between 1 and "
                                       "32767.", target="diskSizeGB")
            plan.size = size_gb * GIB
        elif option.lower() == "import":
            if not data.get("sourceUri"):
                raise InvalidParameter("Required parameter 'sourceUri' is missing (null).", target="sourceUri")
            account_id = data.get("storageAccountId")
            if not account_id:
                raise InvalidParameter("Required parameter 'storageAccountId' is missing (null).",
                                       target="storageAccountId")
            account = self.get(account_id)
            if not account or account["body"]["type"] != "Microsoft.Storage/storageAccounts":
                raise InvalidParameter(f"The storage account '{account_id}' was not found.",
                                       target="storageAccountId")
            plan.import_uri = data["sourceUri"]
        elif option.lower() == "copy":
            source_id = data.get("sourceResourceId")
            if not source_id:
                raise InvalidParameter("Required parameter 'sourceResourceId' is missing (null).",
                                       target="sourceResourceId")
            source = self.get(source_id)
            if not source or source["body"]["type"] not in (f"{NS}/snapshots", f"{NS}/disks"):
                raise NotFound(f"The source resource '{source_id}' was not found.", code="NotFound")
            if source["body"]["location"] != location:
                raise InvalidParameter(f"The source '{source['body']['id']}' is in location "
                                       f"'{source['body']['location']}', not '{location}'.", target="sourceResourceId")
            if source["body"]["properties"].get("provisioningState") != "Succeeded":
                raise ArmError(f"The source '{source['body']['id']}' is not ready (provisioningState "
                               f"{source['body']['properties'].get('provisioningState')}).",
                               code="OperationNotAllowed", status=409)
            plan.source = source["body"]
            plan.size = source["body"]["properties"]["diskSizeBytes"]
            if source["lab"].get("materialized"):
                plan.copy_blob = source["lab"]["blob"]
        else:
            raise InvalidParameter(f"createOption '{option}' is not supported by the lab; use Empty, Import or "
                                   "Copy.", target="createOption")
        _sku(body, "Standard_LRS")
        return plan

    def disk_blob_work(self, plan: DiskPlan) -> None:
        """Blob I/O for a new disk/snapshot; runs without the lock."""
        if plan.import_uri:
            plan.source_info = self.blobs.inspect_source(plan.import_uri)
            self.blobs.copy_in(plan.blob, plan.source_info)
            plan.size = plan.source_info.disk_size
            plan.materialized = True
            requested = (plan.body.get("properties") or {}).get("diskSizeGB")
            if isinstance(requested, int) and requested * GIB > plan.size:
                self.blobs.resize(plan.blob, plan.size, requested * GIB)
                plan.size = requested * GIB
        elif plan.copy_blob:
            self.blobs.copy_blob(plan.blob, plan.copy_blob)
            plan.materialized = True

    def disk_put_commit(self, plan: DiskPlan) -> Reply:
        existing = self.get(plan.rid)
        if existing:  # someone created it while we copied: keep theirs, drop our bytes
            if plan.materialized:
                self.store.defer(lambda: self.blobs.delete(plan.blob))
            return self._disk_update(existing, plan.body, plan.tags)
        self.writable_rg(plan.rid.subscription, plan.rid.resource_group)
        props = dict(plan.body.get("properties") or {})
        requested = props.get("diskSizeGB")
        if plan.import_uri and isinstance(requested, int) and requested * GIB < plan.size:
            self.store.defer(lambda: self.blobs.delete(plan.blob))
            raise InvalidParameter(f"diskSizeGB {requested} is smaller than the imported VHD "
                                   f"({plan.size} bytes).", target="diskSizeGB")
        data = dict(props.get("creationData") or {})
        if plan.source:
            data["sourceUniqueId"] = plan.source["properties"].get("uniqueId")
            props.setdefault("osType", plan.source["properties"].get("osType"))
            props.setdefault("hyperVGeneration", plan.source["properties"].get("hyperVGeneration"))
        for computed in ("provisioningState", "diskState", "uniqueId", "timeCreated", "diskSizeBytes"):
            props.pop(computed, None)
        props = {k: v for k, v in props.items() if v is not None}
        props.update({"creationData": data, "diskSizeGB": math.ceil(plan.size / GIB), "diskSizeBytes": plan.size,
                      "uniqueId": plan.unique_id, "provisioningState": "Creating", "timeCreated": now_iso(),
                      "networkAccessPolicy": props.get("networkAccessPolicy", "AllowAll"),
                      "publicNetworkAccess": props.get("publicNetworkAccess", "Enabled"),
                      "encryption": {"type": "EncryptionAtRestWithPlatformKey"}})
        if plan.kind == "disks":
            props.setdefault("diskIOPSReadWrite", 500)
            props.setdefault("diskMBpsReadWrite", 60)
        else:
            props.setdefault("incremental", False)
        record = self.new_record(plan.rid, plan.location, plan.tags, props, sku=_sku(plan.body))
        record["lab"].update({"blob": plan.blob, "materialized": plan.materialized})
        op = self.start_op(f"{NS}/{plan.kind}/write", str(plan.rid), "disk_create", namespace=NS,
                           location=plan.location, record=record)
        self.save(record)
        return Reply(202, self.render_disk(record), op=op)

    def _disk_update(self, record: dict[str, Any], body: dict[str, Any], tags: dict[str, str] | None) -> Reply:
        current = record["body"]
        props = body.get("properties") or {}
        data = props.get("creationData") or {}
        old = current["properties"]["creationData"]
        for key in ("createOption", "sourceUri", "sourceResourceId"):
            if key in data and str(data[key] or "").lower() != str(old.get(key) or "").lower():
                raise BadRequest(f"Changing property 'creationData.{key}' is not allowed.",
                                 code="PropertyChangeNotAllowed", target=f"creationData.{key}")
        size_gb = props.get("diskSizeGB")
        if size_gb is not None and (not isinstance(size_gb, int)
                                    or size_gb * GIB != current["properties"]["diskSizeBytes"]):
            self._resize_disk(record, size_gb)
        if tags is not None:
            current["tags"] = tags
        if body.get("sku"):
            current["sku"] = _sku(body)
        for key in ("osType", "hyperVGeneration", "networkAccessPolicy", "publicNetworkAccess", "burstingEnabled"):
            if key in props:
                current["properties"][key] = props[key]
        op = self.start_op(f"{NS}/{current['type'].split('/')[-1]}/write", current["id"], "disk_create",
                           namespace=NS, location=current["location"], record=record)
        current["properties"]["provisioningState"] = "Updating"
        self.save(record)
        return Reply(200, self.render_disk(record), op=op)

    def _resize_disk(self, record: dict[str, Any], size_gb: Any) -> None:
        props = record["body"]["properties"]
        if not isinstance(size_gb, int) or size_gb * GIB < props["diskSizeBytes"]:
            raise BadRequest(f"Disk size can only grow: {size_gb} GB is not more than the current "
                             f"{props['diskSizeBytes']} bytes.", code="BadRequest", target="diskSizeGB")
        if record["body"]["type"] != f"{NS}/disks":
            raise BadRequest("A snapshot cannot be resized.", code="PropertyChangeNotAllowed")
        owner = record["body"].get("managedBy")
        vm = self.get(owner) if owner else None
        if vm and vm["lab"].get("power") != "deallocated":
            raise OperationNotAllowed(f"Disk '{record['body']['name']}' is attached to running VM '{owner}'; "
                                      "deallocate the VM to resize the disk.")
        if record["lab"].get("sas"):
            raise OperationNotAllowed(f"Disk '{record['body']['name']}' has an active SAS; revoke it first.")
        new = size_gb * GIB
        if record["lab"].get("materialized"):
            # Under the lock, but a resize is three small metadata calls.
            self.blobs.resize(record["lab"]["blob"], props["diskSizeBytes"], new)
        props.update({"diskSizeGB": size_gb, "diskSizeBytes": new})

    def _complete_disk_create(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Succeeded"
            self.store.touch()

    def _failed_disk_create(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Failed"

    def get_disk(self, kind: str, sub: str, rg: str, name: str) -> Reply:
        return Reply(200, self.render_disk(self.require(self.rid(sub, rg, NS, kind, name))))

    def list_disks(self, kind: str, sub: str, rg: str | None) -> Reply:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        return Reply(200, {"value": [self.render_disk(r) for r in self.store.records(sub, rg)
                                     if r["body"]["type"] == f"{NS}/{kind}"]})

    def patch_disk(self, kind: str, sub: str, rg: str, name: str, body: dict[str, Any]) -> Reply:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, kind, name))
        self.busy(record)
        return self._disk_update(record, body, tags_of(body) if "tags" in body else None)

    def delete_disk(self, kind: str, sub: str, rg: str, name: str) -> Reply:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, kind, name))
        if record is None:
            return Reply(204)
        body = record["body"]
        if body.get("managedBy"):
            raise OperationNotAllowed(f"Disk {body['name']} is attached to VM {body['managedBy']}.")
        if record["lab"].get("sas"):
            raise OperationNotAllowed(f"{'Disk' if kind == 'disks' else 'Snapshot'} {body['name']} has an active "
                                      "SAS (diskState ActiveSAS); revoke access before deleting it.")
        self.busy(record)
        body["properties"]["provisioningState"] = "Deleting"
        op = self.start_op(f"{NS}/{kind}/delete", body["id"], "disk_delete", namespace=NS,
                           location=body["location"], record=record)
        self.save(record)
        return Reply(202, op=op)

    def _complete_disk_delete(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            self.release(record)
            self.remove(op["resourceId"])

    def _failed_disk_delete(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Succeeded"

    def disk_release(self, record: dict[str, Any]) -> None:
        if record["lab"].get("materialized"):
            blob = record["lab"]["blob"]
            self.store.defer(lambda: self.blobs.delete(blob))

    # -- grant / revoke access ------------------------------------------------------------------
    def grant_plan(self, kind: str, sub: str, rg: str, name: str, body: dict[str, Any]) -> GrantPlan:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, kind, name))
        self.busy(record)
        access = str(body.get("access") or "")
        if access.lower() not in ("read", "write"):
            raise InvalidParameter(f"The value '{access}' of 'access' is invalid; use Read or Write.", target="access")
        try:
            seconds = int(body.get("durationInSeconds"))
        except (TypeError, ValueError):
            raise InvalidParameter("Required parameter 'durationInSeconds' is missing (null).",
                                   target="durationInSeconds") from None
        owner = record["body"].get("managedBy")
        vm = self.get(owner) if owner else None
        if vm and vm["lab"].get("power") != "deallocated":
            raise OperationNotAllowed(f"Disk '{name}' is attached to VM '{owner}', which is not deallocated; "
                                      "deallocate the VM or detach the disk before granting access.")
        if record["lab"].get("sas") or record["lab"].get("granting"):
            raise OperationNotAllowed(f"'{name}' already has an active SAS; revoke access first.")
        props = record["body"]["properties"]
        if props.get("provisioningState") not in ("Succeeded",):
            raise OperationNotAllowed(f"'{name}' is not ready (provisioningState {props.get('provisioningState')}).")
        record["lab"]["granting"] = True
        self.store.touch()
        return GrantPlan(parse_id(record["body"]["id"]), record["lab"]["blob"], props["diskSizeBytes"],
                         bool(record["lab"].get("materialized")), access.capitalize(), seconds)

    def grant_blob_work(self, plan: GrantPlan) -> None:
        if not plan.materialized:
            self.blobs.create_empty(plan.blob, plan.size)
        plan.url, plan.snapshot = self.blobs.grant(plan.blob, plan.access, plan.seconds)

    def grant_abort(self, plan: GrantPlan) -> None:
        record = self.get(plan.rid)
        if record:
            record["lab"].pop("granting", None)
            self.store.touch()

    def grant_commit(self, kind: str, plan: GrantPlan) -> Reply:
        record = self.get(plan.rid)
        if record is None:
            self.store.defer(lambda: self.blobs.revoke(plan.blob, plan.snapshot))
            raise NotFound(f"'{plan.rid.name}' was deleted while access was being granted.", code="NotFound")
        record["lab"].pop("granting", None)
        record["lab"].update({"materialized": True, "sas": {"snapshot": plan.snapshot, "access": plan.access}})
        op = self.start_op(f"{NS}/{kind}/beginGetAccess/action", record["body"]["id"], "disk_grant", namespace=NS,
                           location=record["body"]["location"], args={"url": plan.url}, record=record)
        self.save(record)
        return Reply(202, op=op)

    def _complete_disk_grant(self, op: dict[str, Any]) -> dict[str, Any]:
        return {"accessSAS": op["args"]["url"]}

    def _failed_disk_grant(self, op: dict[str, Any]) -> None:
        self._drop_sas(op["resourceId"])

    def _drop_sas(self, resource_id: str) -> None:
        record = self.get(resource_id)
        if record and record["lab"].get("sas"):
            sas = record["lab"].pop("sas")
            blob = record["lab"]["blob"]
            self.store.defer(lambda: self.blobs.revoke(blob, sas.get("snapshot")))
            self.store.touch()

    def revoke(self, kind: str, sub: str, rg: str, name: str) -> Reply:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, kind, name))
        self.busy(record)
        op = self.start_op(f"{NS}/{kind}/endGetAccess/action", record["body"]["id"], "disk_revoke", namespace=NS,
                           location=record["body"]["location"], record=record)
        self.store.touch()
        return Reply(202, op=op)

    def _complete_disk_revoke(self, op: dict[str, Any]) -> None:
        self._drop_sas(op["resourceId"])
        # the op's own args are no secret store: forget the URL of every grant on this disk
        for other in self.store.operations.values():
            if other["action"] == "disk_grant" and same_id(other["resourceId"], op["resourceId"]):
                other["args"].pop("url", None)
                other.pop("result", None)

    # == sizes ================================================================================
    def vm_sizes(self, sub: str, location: str) -> Reply:
        self.check_sub(sub)
        regions.check(location, "locations/vmSizes")
        return Reply(200, {"value": sizes.listing()})

    # == virtual machines =====================================================================
    def render_vm(self, record: dict[str, Any], expand: str | None = None) -> dict[str, Any]:
        body = record["body"]
        if expand and "instanceview" in expand.lower():
            return {**body, "properties": {**body["properties"], "instanceView": self.instance_view_body(record)}}
        return body

    def instance_view_body(self, record: dict[str, Any]) -> dict[str, Any]:
        body = record["body"]
        state = body["properties"]["provisioningState"]
        when = record["lab"].get("changed", record["lab"].get("created"))
        if state == "Failed":
            err = record["lab"].get("error") or {}
            prov = _status(f"ProvisioningState/failed/{err.get('code', 'InternalOperationError')}",
                           "Provisioning failed", when)
            prov.update({"level": "Error", "message": err.get("message", "")})
        else:
            prov = _status(f"ProvisioningState/{state.lower()}", f"Provisioning {state.lower()}", when)
        power = record["lab"].get("power", "stopped")
        statuses = [prov, _status(f"PowerState/{power}", POWER_TEXT[power])]
        storage = body["properties"]["storageProfile"]
        disks = [storage["osDisk"], *storage.get("dataDisks", [])]
        view: dict[str, Any] = {
            "computerName": body["name"], "hyperVGeneration": record["lab"].get("hyperVGeneration", "V1"),
            "disks": [{"name": d["name"], "statuses": [_status("ProvisioningState/succeeded",
                                                               "Provisioning succeeded", when)]} for d in disks],
            "statuses": statuses,
        }
        boot = (body["properties"].get("diagnosticsProfile") or {}).get("bootDiagnostics") or {}
        if boot.get("enabled"):
            view["bootDiagnostics"] = {}
        return view

    def _vm_record(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        return self.require(self.rid(sub, rg, NS, "virtualMachines", name))

    def get_vm(self, sub: str, rg: str, name: str, expand: str | None) -> Reply:
        return Reply(200, self.render_vm(self._vm_record(sub, rg, name), expand))

    def instance_view(self, sub: str, rg: str, name: str) -> Reply:
        return Reply(200, self.instance_view_body(self._vm_record(sub, rg, name)))

    def list_vms(self, sub: str, rg: str | None, location: str | None = None) -> Reply:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        loc = regions.normalize(location) if location else None
        return Reply(200, {"value": [self.render_vm(r) for r in self.store.records(sub, rg)
                                     if r["body"]["type"] == f"{NS}/virtualMachines"
                                     and (loc is None or r["body"]["location"] == loc)]})

    def vm_available_sizes(self, sub: str, rg: str, name: str) -> Reply:
        self._vm_record(sub, rg, name)
        return Reply(200, {"value": sizes.listing()})

    # -- create / update ------------------------------------------------------------------------
    def _check_disk(self, vm_id: str, ref: dict[str, Any], where: str, location: str) -> dict[str, Any]:
        disk_id = ((ref.get("managedDisk") or {}).get("id"))
        if str(ref.get("createOption") or "").lower() != "attach":
            raise InvalidParameter(f"{where}: createOption '{ref.get('createOption')}' is not supported by the lab; "
                                   "create the disk first and Attach it.", target=f"{where}.createOption")
        if not disk_id:
            raise InvalidParameter(f"Required parameter '{where}.managedDisk.id' is missing (null).",
                                   target=f"{where}.managedDisk.id")
        disk = self.get(disk_id)
        if disk is None or disk["body"]["type"] != f"{NS}/disks":
            raise NotFound(f"Disk '{disk_id}' referenced by {where} was not found.", code="NotFound")
        body = disk["body"]
        if body["location"] != location:
            raise InvalidParameter(f"Disk '{body['id']}' is in location '{body['location']}', which differs from "
                                   f"the VM's location '{location}'.", target=f"{where}.managedDisk.id")
        if body.get("managedBy") and not same_id(body["managedBy"], vm_id):
            raise ArmError(f"Disk '{body['name']}' cannot be attached as the disk is already owned by VM "
                           f"'{body['managedBy']}'.", code="ConflictingUserInput", status=409)
        if disk["lab"].get("sas") or disk["lab"].get("granting"):
            raise OperationNotAllowed(f"Disk '{body['name']}' cannot be attached while it has an active SAS "
                                      "(diskState ActiveSAS).")
        if body["properties"].get("provisioningState") in ("Failed", "Deleting"):
            raise InvalidParameter(f"Disk '{body['name']}' is in provisioning state "
                                   f"{body['properties']['provisioningState']} and cannot be attached.",
                                   target=f"{where}.managedDisk.id")
        return disk

    def _check_nic(self, vm_id: str, ref: dict[str, Any], location: str) -> dict[str, Any]:
        nic_id = ref.get("id")
        nic = self.get(nic_id or "")
        if nic is None or nic["body"]["type"] != "Microsoft.Network/networkInterfaces":
            raise NotFound(f"Network interface '{nic_id}' was not found.", code="NotFound")
        body = nic["body"]
        if body["location"] != location:
            raise InvalidParameter(f"Network interface '{body['id']}' is in location '{body['location']}', which "
                                   f"differs from the VM's location '{location}'.",
                                   target="networkProfile.networkInterfaces")
        owner = (body["properties"].get("virtualMachine") or {}).get("id")
        if owner and not same_id(owner, vm_id):
            raise BadRequest(f"Network Interface {body['id']} is used by existing resource {owner}.",
                             code="NicInUse")
        if body["properties"].get("provisioningState") in ("Failed", "Deleting"):
            raise InvalidParameter(f"Network interface '{body['id']}' is in provisioning state "
                                   f"{body['properties']['provisioningState']}.",
                                   target="networkProfile.networkInterfaces")
        return nic

    def _validate_vm(self, rid: ResourceId, location: str, props: dict[str, Any]) -> dict[str, Any]:
        vm_id = str(rid)
        size_name = (props.get("hardwareProfile") or {}).get("vmSize")
        size = sizes.find(size_name)
        if size is None:
            raise InvalidParameter(f"The value {size_name} provided for the VM size is not valid. The valid sizes in "
                                   f"the current region are: {', '.join(s[0] for s in sizes.SIZES)}.",
                                   target="vmSize")
        if props.get("osProfile"):
            raise InvalidParameter("Parameter 'osProfile' is not allowed when the OS disk is attached.",
                                   target="osProfile")
        storage = props.get("storageProfile") or {}
        if storage.get("imageReference"):
            raise InvalidParameter("Cannot attach an existing OS disk if the VM is created from a platform, user or "
                                   "a shared gallery image.", target="osDisk")
        os_ref = storage.get("osDisk") or {}
        os_disk = self._check_disk(vm_id, os_ref, "osDisk", location)
        os_type = os_ref.get("osType") or os_disk["body"]["properties"].get("osType")
        if os_type not in ("Linux", "Windows"):
            raise InvalidParameter("Required parameter 'osDisk.osType' is missing (null); the disk has no osType "
                                   "either.", target="osDisk.osType")
        data_refs = storage.get("dataDisks") or []
        if len(data_refs) > size[3]:
            raise OperationNotAllowed(f"The maximum number of data disks allowed to be attached to a VM of this size "
                                      f"is {size[3]}.", target="dataDisks")
        luns: set[int] = set()
        data = []
        seen = {os_disk["body"]["id"].lower()}
        for i, ref in enumerate(data_refs):
            lun = ref.get("lun")
            if not isinstance(lun, int) or not 0 <= lun <= 63:
                raise InvalidParameter(f"dataDisks[{i}].lun must be an integer between 0 and 63.",
                                       target=f"dataDisks[{i}].lun")
            if lun in luns:
                raise InvalidParameter(f"A disk at LUN {lun} already exists.", target=f"dataDisks[{i}].lun")
            luns.add(lun)
            disk = self._check_disk(vm_id, ref, f"dataDisks[{i}]", location)
            if disk["body"]["id"].lower() in seen:
                raise InvalidParameter(f"Disk '{disk['body']['name']}' is referenced twice.",
                                       target=f"dataDisks[{i}].managedDisk.id")
            seen.add(disk["body"]["id"].lower())
            data.append((ref, disk))
        nic_refs = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nic_refs:
            raise InvalidParameter("The VM must have at least one network interface.",
                                   target="networkProfile.networkInterfaces")
        if len(nic_refs) > size[5]:
            raise BadRequest(f"The number of network interfaces ({len(nic_refs)}) exceeds the maximum "
                             f"({size[5]}) for VM size {size[0]}.", code="NetworkInterfaceCountExceeded")
        nics = []
        primaries = 0
        for ref in nic_refs:
            nic = self._check_nic(vm_id, ref, location)
            if any(same_id(n["body"]["id"], nic["body"]["id"]) for _, n in nics):
                raise InvalidParameter(f"Network interface '{nic['body']['id']}' is referenced twice.",
                                       target="networkProfile.networkInterfaces")
            primary = bool((ref.get("properties") or {}).get("primary", ref.get("primary", len(nic_refs) == 1)))
            primaries += primary
            nics.append((ref, nic))
        if primaries != 1:
            raise InvalidParameter(f"Virtual machine {rid.name} must have one network interface set as Primary.",
                                   target="networkProfile.networkInterfaces")
        boot = (props.get("diagnosticsProfile") or {}).get("bootDiagnostics") or {}
        uri = boot.get("storageUri")
        if uri and not str(uri).lower().startswith("https://"):
            raise InvalidParameter(f"bootDiagnostics.storageUri '{uri}' must be an https URL.",
                                   target="bootDiagnostics.storageUri")
        return {"size": size, "os_ref": os_ref, "os_disk": os_disk, "os_type": os_type, "data": data, "nics": nics}

    @staticmethod
    def _disk_entry(ref: dict[str, Any], disk: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = disk["body"]
        return {**extra, "name": body["name"], "createOption": "Attach", "caching": ref.get("caching", "None"),
                "managedDisk": {"id": body["id"], "storageAccountType": body["sku"]["name"]},
                "diskSizeGB": body["properties"]["diskSizeGB"], "deleteOption": ref.get("deleteOption", "Detach")}

    def put_vm(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Reply:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, "virtualMachines", name, body, max_name=64)
        props = dict(body.get("properties") or {})
        checked = self._validate_vm(rid, location, props)
        vm_id = str(rid)
        if existing:
            self._check_update(existing, checked)
        storage = {"osDisk": {**self._disk_entry(checked["os_ref"], checked["os_disk"], osType=checked["os_type"]),
                              "caching": checked["os_ref"].get("caching", "ReadWrite")},
                   "dataDisks": [self._disk_entry(ref, disk, lun=ref["lun"], toBeDetached=False)
                                 for ref, disk in checked["data"]]}
        network = {"networkInterfaces": [
            {"id": nic["body"]["id"],
             "properties": {"primary": bool((ref.get("properties") or {}).get("primary", len(checked["nics"]) == 1)),
                            "deleteOption": (ref.get("properties") or {}).get("deleteOption", "Detach")}}
            for ref, nic in checked["nics"]]}
        # release what an update dropped, then attach everything named now
        if existing:
            self._detach_all(existing, keep={d["body"]["id"].lower() for d in
                                             [checked["os_disk"], *(d for _, d in checked["data"])]}
                             | {n["body"]["id"].lower() for _, n in checked["nics"]})
        for disk in [checked["os_disk"], *(d for _, d in checked["data"])]:
            disk["body"]["managedBy"] = vm_id
            self.save(disk)
        for entry, (_, nic) in zip(network["networkInterfaces"], checked["nics"], strict=True):
            nprops = nic["body"]["properties"]
            nprops["virtualMachine"] = {"id": vm_id}
            nprops["primary"] = entry["properties"]["primary"]
            nprops.setdefault("macAddress", _mac())
            self.save(nic)
        for computed in ("provisioningState", "instanceView", "vmId", "timeCreated"):
            props.pop(computed, None)
        props.update({"hardwareProfile": {"vmSize": checked["size"][0]}, "storageProfile": storage,
                      "networkProfile": network, "provisioningState": "Creating" if not existing else "Updating",
                      "vmId": existing["body"]["properties"]["vmId"] if existing else str(uuid.uuid4()),
                      "timeCreated": existing["body"]["properties"]["timeCreated"] if existing else now_iso()})
        if existing:
            record = existing
            record["body"].update({"tags": tags, "properties": props})
            action = "vm_update"
        else:
            record = self.new_record(rid, location, tags, props)
            record["lab"].update({"power": "starting",
                                  "hyperVGeneration": checked["os_disk"]["body"]["properties"].get("hyperVGeneration")
                                  or "V1"})
            action = "vm_create"
        if body.get("zones"):
            record["body"]["zones"] = body["zones"]
        record["lab"]["changed"] = time.time()
        op = self.start_op(f"{NS}/virtualMachines/write", vm_id, action, namespace=NS, location=location,
                           record=record)
        self.save(record)
        return Reply(200 if existing else 201, record["body"], op=op)

    def _check_update(self, record: dict[str, Any], checked: dict[str, Any]) -> None:
        props = record["body"]["properties"]
        power = record["lab"].get("power")
        old_os = props["storageProfile"]["osDisk"]["managedDisk"]["id"]
        if not same_id(old_os, checked["os_disk"]["body"]["id"]) and power not in ("deallocated", "stopped"):
            raise OperationNotAllowed("The OS disk of a VM can only be swapped while the VM is stopped or "
                                      "deallocated.", target="osDisk")
        old_nics = {n["id"].lower() for n in props["networkProfile"]["networkInterfaces"]}
        new_nics = {n["body"]["id"].lower() for _, n in checked["nics"]}
        if old_nics != new_nics and power != "deallocated":
            raise OperationNotAllowed("Network interfaces of a VM can only be changed while it is deallocated.",
                                      target="networkProfile")

    def _detach_all(self, record: dict[str, Any], keep: set[str] = frozenset(), deleting: bool = False) -> None:
        vm_id = record["body"]["id"]
        props = record["body"]["properties"]
        storage = props.get("storageProfile") or {}
        for entry in [storage.get("osDisk") or {}, *(storage.get("dataDisks") or [])]:
            disk_id = (entry.get("managedDisk") or {}).get("id")
            if not disk_id or disk_id.lower() in keep:
                continue
            disk = self.get(disk_id)
            if disk and same_id(disk["body"].get("managedBy"), vm_id):
                disk["body"].pop("managedBy", None)
                if deleting and entry.get("deleteOption") == "Delete":
                    self.release(disk)
                    self.remove(disk["body"]["id"])
                self.store.touch()
        nic_ids = []
        for entry in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
            if entry["id"].lower() in keep:
                continue
            nic = self.get(entry["id"])
            if nic and same_id((nic["body"]["properties"].get("virtualMachine") or {}).get("id"), vm_id):
                nic_ids.append(entry["id"])
                nic["body"]["properties"].pop("virtualMachine", None)
                self.store.touch()
        self.set_dynamic_pips(nic_ids, False)
        if deleting:
            for entry in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
                if (entry.get("properties") or {}).get("deleteOption") == "Delete" and self.get(entry["id"]):
                    self.release(self.get(entry["id"]))
                    self.remove(entry["id"])

    def _nic_ids(self, record: dict[str, Any]) -> list[str]:
        return [n["id"] for n in record["body"]["properties"]["networkProfile"]["networkInterfaces"]]

    def _complete_vm_create(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Succeeded"
            record["lab"].update({"power": "running", "changed": time.time()})
            self.set_dynamic_pips(self._nic_ids(record), True)
            self.store.touch()

    def _failed_vm_create(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Failed"
            record["lab"].update({"power": "stopped", "error": op["error"], "changed": time.time()})

    def _complete_vm_update(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Succeeded"
            record["lab"]["changed"] = time.time()
            self.store.touch()

    def _failed_vm_update(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Failed"
            record["lab"].update({"error": op["error"], "changed": time.time()})

    def patch_vm(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Reply:
        self.writable_rg(sub, rg)
        record = self._vm_record(sub, rg, name)
        self.busy(record)
        current = record["body"]
        merged = {"location": current["location"], "tags": current.get("tags") or {},
                  "properties": {k: v for k, v in current["properties"].items()
                                 if k not in ("provisioningState", "vmId", "timeCreated")}}
        if "tags" in body:
            merged["tags"] = body.get("tags") or {}
        for key, value in (body.get("properties") or {}).items():
            merged["properties"][key] = value
        reply = self.put_vm(sub, rg, name, merged)
        reply.status = 200
        return reply

    # -- actions -----------------------------------------------------------------------------------
    def vm_action(self, action: str, sub: str, rg: str, name: str) -> Reply:
        self.writable_rg(sub, rg)
        record = self._vm_record(sub, rg, name)
        self.busy(record)
        power = record["lab"].get("power", "stopped")
        if action == "restart" and power != "running":
            raise OperationNotAllowed(f"Operation 'restart' is not allowed on VM '{name}' since the VM is {power}.")
        if action == "powerOff" and power == "deallocated":
            final = "deallocated"
        else:
            final = ACTIONS[action][1]
        record["lab"].update({"power": ACTIONS[action][0], "before": power, "changed": time.time()})
        record["body"]["properties"]["provisioningState"] = "Updating"
        op = self.start_op(f"{NS}/virtualMachines/{action}/action", record["body"]["id"], "vm_power", namespace=NS,
                           location=record["body"]["location"], args={"power": final}, record=record)
        self.save(record)
        return Reply(202, op=op)

    def _complete_vm_power(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if not record:
            return
        power = op["args"]["power"]
        record["lab"].update({"power": power, "changed": time.time()})
        record["body"]["properties"]["provisioningState"] = "Succeeded"
        self.set_dynamic_pips(self._nic_ids(record), power != "deallocated")
        self.store.touch()

    def _failed_vm_power(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["lab"].update({"power": record["lab"].get("before", "stopped"), "error": op["error"],
                                  "changed": time.time()})
            record["body"]["properties"]["provisioningState"] = "Failed"

    def delete_vm(self, sub: str, rg: str, name: str) -> Reply:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, "virtualMachines", name))
        if record is None:
            return Reply(204)
        self.busy(record)
        record["body"]["properties"]["provisioningState"] = "Deleting"
        op = self.start_op(f"{NS}/virtualMachines/delete", record["body"]["id"], "vm_delete", namespace=NS,
                           location=record["body"]["location"], record=record)
        self.save(record)
        return Reply(202, op=op)

    def _complete_vm_delete(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            self.release(record)
            self.remove(op["resourceId"])

    def _failed_vm_delete(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if record:
            record["body"]["properties"]["provisioningState"] = "Failed"
            record["lab"]["error"] = op["error"]

    def vm_release(self, record: dict[str, Any]) -> None:
        self._detach_all(record, deleting=True)

    # -- run command --------------------------------------------------------------------------------
    def run_command(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Reply:
        self.writable_rg(sub, rg)
        record = self._vm_record(sub, rg, name)
        self.busy(record)
        power = record["lab"].get("power")
        if power != "running":
            raise OperationNotAllowed(f"The operation requires the VM to be running (or set to run); VM '{name}' "
                                      f"is {power}.")
        command = str(body.get("commandId") or "")
        os_type = record["body"]["properties"]["storageProfile"]["osDisk"].get("osType")
        wanted = {"runshellscript": "Linux", "runpowershellscript": "Windows"}.get(command.lower())
        if not command:
            raise InvalidParameter("Required parameter 'commandId' is missing (null).", target="commandId")
        if wanted and wanted != os_type:
            raise InvalidParameter(f"The command id '{command}' is not valid for a {os_type} VM.", target="commandId")
        script = body.get("script") or []
        if not isinstance(script, list):
            raise InvalidParameter("'script' must be a list of lines.", target="script")
        params = [{"name": p.get("name"), "value": p.get("value")} for p in body.get("parameters") or []]
        protected = [p.get("name") for p in body.get("protectedParameters") or []]
        entry = {"time": now_iso(), "vmId": record["body"]["id"], "vmName": record["body"]["name"],
                 "commandId": command, "script": [str(s) for s in script], "parameters": params,
                 "protectedParameterNames": protected}
        self.store.data.setdefault("runCommands", []).append(entry)
        output = self.settings.run_command_output(record["body"]["id"], record["body"]["name"])
        op = self.start_op(f"{NS}/virtualMachines/runCommand/action", record["body"]["id"], "vm_run", namespace=NS,
                           location=record["body"]["location"], args=output, record=record)
        self.store.touch()
        return Reply(202, op=op)

    def _complete_vm_run(self, op: dict[str, Any]) -> dict[str, Any]:
        code = op["args"].get("code", "ProvisioningState/succeeded")
        level = "Error" if "failed" in code.lower() else "Info"
        display = "Provisioning failed" if level == "Error" else "Provisioning succeeded"
        return {"value": [{"code": code, "level": level, "displayStatus": display, "message": op["args"]["output"]}]}

    # -- references, for resource-group deletion -------------------------------------------------
    def compute_references(self, record: dict[str, Any]) -> list[str]:
        body = record["body"]
        if body["type"] != f"{NS}/virtualMachines":
            return []
        storage = body["properties"]["storageProfile"]
        refs = [d["managedDisk"]["id"] for d in [storage["osDisk"], *storage.get("dataDisks", [])]]
        return refs + self._nic_ids(record)
