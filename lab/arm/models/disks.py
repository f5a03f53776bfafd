"""Microsoft.Compute managed disks and snapshots: create (Empty, Import from a VHD blob, Copy),
update, delete, and grant/revoke access. Their bytes are page blobs in Azurite.

Disk creation and grant access touch Azurite, which is slow next to everything else, so they
run in three steps: check under the lock (``*_plan``), do the blob work without it, then commit
under the lock (``*_commit``), re-checking what may have changed meanwhile.

Incremental snapshots (``incremental: true``, only a Copy of a disk) are, in the lab, full copies
of the disk's page blob like any snapshot; what makes them incremental is their *family*: the
source disk's uniqueId, recorded with a sequence number that orders the family's snapshots as
their bytes were copied (one copy at a time per family), and Azure's per-disk limits (at most
``maxPerDisk`` at any time, at most ``maxPerWindow`` created within ``windowSeconds``; see
settings.py). Families live in ``store.snapshot_families``, so they survive a restart. A
snapshot's Read grant is a URL of the blob front (grants.py, front.py), which answers the
page-range diff between two snapshots of a family.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..blobs import Source
from ..exceptions import ArmError, BadRequest, InvalidParameter, NotFound, OperationNotAllowed
from ..ids import ResourceId, parse_id, same_id
from .base import Base, now_iso, tags_of
from .outcomes import Deletion, Operation, Written

NS = "Microsoft.Compute"
GIB = 1 << 30
DISK_SKUS = {"standard_lrs": ("Standard_LRS", "Standard"), "premium_lrs": ("Premium_LRS", "Premium"),
             "standardssd_lrs": ("StandardSSD_LRS", "Standard"), "ultrassd_lrs": ("UltraSSD_LRS", "Ultra"),
             "premium_zrs": ("Premium_ZRS", "Premium"), "standardssd_zrs": ("StandardSSD_ZRS", "Standard"),
             "premiumv2_lrs": ("PremiumV2_LRS", "Premium")}


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
    family: str | None = None  # incremental snapshot: the source disk's uniqueId

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


def _incremental(props: dict[str, Any]) -> bool:
    value = props.get("incremental")
    return value is True or str(value).lower() == "true"


# One snapshot copy at a time per family, so sequence numbers follow the order the bytes were
# copied in. In memory only: a copy in flight does not survive a restart anyway.
_family_locks: dict[str, threading.Lock] = {}
_family_locks_guard = threading.Lock()


class DisksBackend(Base):
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

    def disk_put_plan(self, kind: str, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written | DiskPlan:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, kind, name, body)
        props = body.get("properties") or {}
        data = props.get("creationData") or {}
        option = str(data.get("createOption") or "")
        if existing:
            return self._disk_update(existing, body, tags)
        if kind == "snapshots" and option.lower() == "empty":
            raise InvalidParameter("A snapshot cannot be created Empty; use Copy or Import.", target="createOption")
        incremental = kind == "snapshots" and _incremental(props)
        if incremental and option.lower() != "copy":
            raise InvalidParameter(f"An incremental snapshot can only be created with createOption Copy of a "
                                   f"managed disk, not '{option}'.", target="incremental")
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
            if incremental:
                if source["body"]["type"] != f"{NS}/disks":
                    raise InvalidParameter(f"An incremental snapshot can only be created from a managed disk; "
                                           f"'{source['body']['id']}' is a snapshot.", target="sourceResourceId")
                if parse_id(source["body"]["id"]).subscription.lower() != rid.subscription.lower():
                    raise InvalidParameter("An incremental snapshot must be in the subscription of its disk.",
                                           target="sourceResourceId")
                plan.family = source["body"]["properties"]["uniqueId"]
                self._check_snapshot_limits(plan.family, rid.subscription, source["body"]["name"])
            plan.source = source["body"]
            plan.size = source["body"]["properties"]["diskSizeBytes"]
            if source["lab"].get("materialized"):
                plan.copy_blob = source["lab"]["blob"]
        else:
            raise InvalidParameter(f"createOption '{option}' is not supported by the lab; use Empty, Import or "
                                   "Copy.", target="createOption")
        _sku(body, "Standard_LRS")
        return plan

    # -- incremental snapshots ------------------------------------------------------------------
    def _check_snapshot_limits(self, family: str, sub: str, disk_name: str) -> list[float]:
        """Refuse a new incremental snapshot of the disk over Azure's limits; the family's creation
        times still inside the window."""
        limits = self.settings.snapshot_limits()
        live = sum(1 for r in self.store.records(sub) if r["lab"].get("family") == family)
        if live >= limits["maxPerDisk"]:
            raise OperationNotAllowed(f"Disk '{disk_name}' already has {live} incremental snapshots, the most "
                                      f"allowed ({limits['maxPerDisk']}); delete older ones first.")
        window = float(limits["windowSeconds"])
        now = time.time()
        recent = [t for t in self.store.snapshot_families.get(family, {}).get("created", []) if t > now - window]
        if len(recent) >= limits["maxPerWindow"]:
            wait = math.ceil(min(recent) + window - now)
            raise OperationNotAllowed(f"At most {limits['maxPerWindow']} incremental snapshots of disk "
                                      f"'{disk_name}' can be created within {window:g} seconds; retry in "
                                      f"{wait} seconds.")
        return recent

    def snapshot_family_lock(self, plan: DiskPlan) -> threading.Lock | None:
        """Held around the copy and commit of an incremental snapshot (None for anything else)."""
        if not plan.family:
            return None
        with _family_locks_guard:
            return _family_locks.setdefault(plan.family, threading.Lock())

    def snapshot_families(self) -> dict[str, Any]:
        """Every family with its snapshots in sequence order (for /_lab/snapshot-families)."""
        members: dict[str, list[dict[str, Any]]] = {}
        for sub in list(self.store.subscriptions.values()):
            for record in self.store.records(sub["id"]):
                family = record["lab"].get("family")
                if family:
                    members.setdefault(family, []).append({
                        "id": record["body"]["id"], "sequence": record["lab"]["sequence"],
                        "provisioningState": record["body"]["properties"].get("provisioningState")})
        return {uid: {**entry, "snapshots": sorted(members.get(uid, []), key=lambda m: m["sequence"])}
                for uid, entry in self.store.snapshot_families.items()}

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

    def disk_put_commit(self, plan: DiskPlan) -> Written:
        existing = self.get(plan.rid)
        if existing:  # someone created it while we copied: keep theirs, drop our bytes
            if plan.materialized:
                self.store.defer(lambda: self.blobs.delete(plan.blob))
            return self._disk_update(existing, plan.body, plan.tags)
        self.writable_rg(plan.rid.subscription, plan.rid.resource_group)
        recent: list[float] = []
        if plan.family:  # again: others may have taken snapshots of the disk while we copied
            try:
                recent = self._check_snapshot_limits(plan.family, plan.rid.subscription,
                                                     (plan.source or {}).get("name", ""))
            except ArmError:
                if plan.materialized:
                    self.store.defer(lambda: self.blobs.delete(plan.blob))
                raise
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
        for computed in ("provisioningState", "diskState", "uniqueId", "timeCreated", "diskSizeBytes",
                         "incrementalSnapshotFamilyId"):
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
        if plan.family:
            family = self.store.snapshot_families.setdefault(
                plan.family, {"familyId": str(uuid.uuid4()), "next": 1, "created": []})
            family["created"] = recent + [time.time()]
            props.update({"incremental": True, "incrementalSnapshotFamilyId": family["familyId"]})
        record = self.new_record(plan.rid, plan.location, plan.tags, props, sku=_sku(plan.body))
        record["lab"].update({"blob": plan.blob, "materialized": plan.materialized})
        if plan.family:
            record["lab"].update({"family": plan.family, "sequence": family["next"]})
            family["next"] += 1
        op = self.start_op(f"{NS}/{plan.kind}/write", str(plan.rid), "disk_create", namespace=NS,
                           location=plan.location, record=record)
        self.save(record)
        return Written(self.render_disk(record), created=True, operation=op)

    def _disk_update(self, record: dict[str, Any], body: dict[str, Any], tags: dict[str, str] | None) -> Written:
        current = record["body"]
        props = body.get("properties") or {}
        data = props.get("creationData") or {}
        old = current["properties"]["creationData"]
        for key in ("createOption", "sourceUri", "sourceResourceId"):
            if key in data and str(data[key] or "").lower() != str(old.get(key) or "").lower():
                raise BadRequest(f"Changing property 'creationData.{key}' is not allowed.",
                                 code="PropertyChangeNotAllowed", target=f"creationData.{key}")
        if current["type"] == f"{NS}/snapshots" and props.get("incremental") is not None \
                and _incremental(props) != bool(current["properties"].get("incremental")):
            raise BadRequest("Changing property 'incremental' is not allowed.", code="PropertyChangeNotAllowed",
                             target="incremental")
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
        return Written(self.render_disk(record), created=False, operation=op)

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

    def get_disk(self, kind: str, sub: str, rg: str, name: str) -> dict[str, Any]:
        return self.render_disk(self.require(self.rid(sub, rg, NS, kind, name)))

    def list_disks(self, kind: str, sub: str, rg: str | None) -> list[dict[str, Any]]:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        return [self.render_disk(r) for r in self.store.records(sub, rg) if r["body"]["type"] == f"{NS}/{kind}"]

    def patch_disk(self, kind: str, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, kind, name))
        self.busy(record)
        return self._disk_update(record, body, tags_of(body) if "tags" in body else None)

    def delete_disk(self, kind: str, sub: str, rg: str, name: str) -> Deletion:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, kind, name))
        if record is None:
            return Deletion(existed=False)
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
        return Deletion(existed=True, operation=op)

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

    def grant_commit(self, kind: str, plan: GrantPlan, base_url: str) -> Operation:
        record = self.get(plan.rid)
        if record is None:
            self.store.defer(lambda: self.blobs.revoke(plan.blob, plan.snapshot))
            raise NotFound(f"'{plan.rid.name}' was deleted while access was being granted.", code="NotFound")
        record["lab"].pop("granting", None)
        sas, url = {"snapshot": plan.snapshot, "access": plan.access}, plan.url
        if kind == "snapshots" and plan.access == "Read":  # served by the blob front (front.py), which diffs
            sas["grant"], url = self.mint_read_grant(record, plan.url, plan.seconds, base_url)
        record["lab"].update({"materialized": True, "sas": sas})
        op = self.start_op(f"{NS}/{kind}/beginGetAccess/action", record["body"]["id"], "disk_grant", namespace=NS,
                           location=record["body"]["location"], args={"url": url}, record=record)
        self.save(record)
        return op

    def _complete_disk_grant(self, op: dict[str, Any]) -> dict[str, Any]:
        return {"accessSAS": op["args"]["url"]}

    def _failed_disk_grant(self, op: dict[str, Any]) -> None:
        self._drop_sas(op["resourceId"])

    def _drop_sas(self, resource_id: str) -> None:
        record = self.get(resource_id)
        if record and record["lab"].get("sas"):
            sas = record["lab"].pop("sas")
            self.drop_grants(resource_id, kind="read")
            blob = record["lab"]["blob"]
            self.store.defer(lambda: self.blobs.revoke(blob, sas.get("snapshot")))
            self.store.touch()

    def revoke(self, kind: str, sub: str, rg: str, name: str) -> Operation:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, kind, name))
        self.busy(record)
        op = self.start_op(f"{NS}/{kind}/endGetAccess/action", record["body"]["id"], "disk_revoke", namespace=NS,
                           location=record["body"]["location"], record=record)
        self.store.touch()
        return op

    def _complete_disk_revoke(self, op: dict[str, Any]) -> None:
        self._drop_sas(op["resourceId"])
        # the op's own args are no secret store: forget the URL of every grant on this disk
        for other in self.store.operations.values():
            if other["action"] == "disk_grant" and same_id(other["resourceId"], op["resourceId"]):
                other["args"].pop("url", None)
                other.pop("result", None)

