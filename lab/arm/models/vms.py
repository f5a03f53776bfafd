"""Microsoft.Compute virtual machines: create/update from attached managed disks and NICs,
instance view, power operations (start, powerOff, deallocate, restart), delete, run command.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

from ..exceptions import ArmError, BadRequest, InvalidParameter, NotFound, OperationNotAllowed
from ..ids import ResourceId, same_id
from . import regions, sizes
from .base import Base, now_iso
from .outcomes import Deletion, Operation, Written

NS = "Microsoft.Compute"
RUN_COMMANDS_KEPT = 500  # the record of what run command was asked (GET /_lab/run-commands): the newest
POWER_TEXT = {"running": "VM running", "stopped": "VM stopped", "deallocated": "VM deallocated",
              "starting": "VM starting", "stopping": "VM stopping", "deallocating": "VM deallocating"}
ACTIONS = {  # action: (transitional power state, final power state)
    "start": ("starting", "running"),
    "powerOff": ("stopping", "stopped"),
    "deallocate": ("deallocating", "deallocated"),
    "restart": ("starting", "running"),
}

# A guest write through the blob front (front.py) holds its VM's lock from its power check to the
# end of the write, and every change to the VM (power actions, which take it out of "running";
# update; delete) holds it too, so no write lands after the VM left "running". Always taken
# before the store's lock, never while holding it (responses.py), so the two cannot deadlock.
_power_locks: dict[str, threading.Lock] = {}
_power_locks_guard = threading.Lock()


def power_lock(vm_id: str) -> threading.Lock:
    with _power_locks_guard:
        return _power_locks.setdefault(vm_id.rstrip("/").lower(), threading.Lock())


def _mac() -> str:
    return "00-0D-3A-" + "-".join(f"{random.randrange(256):02X}" for _ in range(3))


def _status(code: str, display: str, when: float | None = None) -> dict[str, Any]:
    s = {"code": code, "level": "Info", "displayStatus": display}
    if when:
        s["time"] = now_iso(when)
    return s


class VirtualMachinesBackend(Base):
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

    def get_vm(self, sub: str, rg: str, name: str, expand: str | None) -> dict[str, Any]:
        return self.render_vm(self._vm_record(sub, rg, name), expand)

    def instance_view(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        return self.instance_view_body(self._vm_record(sub, rg, name))

    def list_vms(self, sub: str, rg: str | None, location: str | None = None) -> list[dict[str, Any]]:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        loc = regions.normalize(location) if location else None
        return [self.render_vm(r) for r in self.store.records(sub, rg)
                if r["body"]["type"] == f"{NS}/virtualMachines" and (loc is None or r["body"]["location"] == loc)]

    def vm_available_sizes(self, sub: str, rg: str, name: str) -> list[dict[str, Any]]:
        self._vm_record(sub, rg, name)
        return sizes.listing()

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

    def put_vm(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
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
        return Written(record["body"], created=existing is None, operation=op)

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

    def patch_vm(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
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
        return self.put_vm(sub, rg, name, merged)

    # -- actions -----------------------------------------------------------------------------------
    def vm_action(self, action: str, sub: str, rg: str, name: str) -> Operation:
        """Callers hold power_lock() of the VM: this is where its power leaves "running"."""
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
        return op

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

    def delete_vm(self, sub: str, rg: str, name: str) -> Deletion:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, "virtualMachines", name))
        if record is None:
            return Deletion(existed=False)
        self.busy(record)
        record["body"]["properties"]["provisioningState"] = "Deleting"
        op = self.start_op(f"{NS}/virtualMachines/delete", record["body"]["id"], "vm_delete", namespace=NS,
                           location=record["body"]["location"], record=record)
        self.save(record)
        return Deletion(existed=True, operation=op)

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
    def run_command(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Operation:
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
        recorded = self.store.data.setdefault("runCommands", [])
        recorded.append(entry)
        del recorded[:-RUN_COMMANDS_KEPT]
        output = self.settings.run_command_output(record["body"]["id"], record["body"]["name"])
        op = self.start_op(f"{NS}/virtualMachines/runCommand/action", record["body"]["id"], "vm_run", namespace=NS,
                           location=record["body"]["location"], args=output, record=record)
        self.store.touch()
        return op

    def _complete_vm_run(self, op: dict[str, Any]) -> dict[str, Any]:
        code = op["args"].get("code", "ProvisioningState/succeeded")
        level = "Error" if "failed" in code.lower() else "Info"
        display = "Provisioning failed" if level == "Error" else "Provisioning succeeded"
        return {"value": [{"code": code, "level": level, "displayStatus": display, "message": op["args"]["output"]}]}

    # -- references, for resource-group deletion -------------------------------------------------
    def vm_references(self, record: dict[str, Any]) -> list[str]:
        body = record["body"]
        if body["type"] != f"{NS}/virtualMachines":
            return []
        storage = body["properties"]["storageProfile"]
        refs = [d["managedDisk"]["id"] for d in [storage["osDisk"], *storage.get("dataDisks", [])]]
        return refs + self._nic_ids(record)
