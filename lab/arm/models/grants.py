"""The blob front's grants: URLs the emulator signs itself and serves (front.py).

Two kinds, kept in ``store.grants`` (so they survive a restart) under a random grant id:

* ``read``: a Read grant on a snapshot. Its URL is what grant access answers; the front reads
  through the Azurite SAS URL of the blob snapshot the grant took. It dies at revoke and when
  its duration ends.
* ``guest``: a VM's disk as its guest OS sees it (``POST /_lab/guest-disks``): reads, and Put
  Page while the VM runs. It dies when the VM or the disk is deleted, or the disk detached.

Only a hash of each URL's signature is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..exceptions import ArmError, NotFound
from ..ids import parse_id, same_id
from .base import Base, now_iso

PREFIX = "/mdlab/"
BLOB = "abcd"  # Azure's managed-disk SAS URLs end in /abcd too
SAS_VERSION = "2018-03-28"
GUEST_SAS_SECONDS = 3600  # the Azurite SAS a guest write goes through; signed afresh per request


@dataclass(frozen=True)
class FrontGrant:
    gid: str
    kind: str  # "read" | "guest"
    name: str  # the snapshot's or disk's name, for messages
    blob: str  # its blob in the arm-disks container
    url: str  # Azurite SAS URL of the bytes: the grant's blob snapshot (read), the disk's blob (guest)
    size: int  # the disk's bytes, without the VHD footer
    family: str | None = None
    sequence: int | None = None
    vm: str | None = None  # guest: the VM's id
    refusal: str | None = None  # guest: why a write is refused now; None while the VM runs


def denied(message: str) -> ArmError:
    return ArmError(message, code="AuthenticationFailed", status=403)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def front_url(base_url: str, gid: str, token: str) -> str:
    return f"{base_url}{PREFIX}{gid}/{BLOB}?sv={SAS_VERSION}&sr=b&sig={token}"


class GrantsBackend(Base):
    def _mint(self, base_url: str, entry: dict[str, Any]) -> tuple[str, str]:
        """A new grant: its id and its URL."""
        gid, token = uuid.uuid4().hex, secrets.token_urlsafe(32)
        self.store.grants[gid] = {**entry, "sigHash": _digest(token), "created": time.time()}
        self.store.touch()
        return gid, front_url(base_url, gid, token)

    def mint_read_grant(self, record: dict[str, Any], azurite_url: str, seconds: int,
                        base_url: str) -> tuple[str, str]:
        """A snapshot's Read grant: its id and its front URL."""
        return self._mint(base_url, {"kind": "read", "resourceId": record["body"]["id"],
                                     "uniqueId": record["body"]["properties"]["uniqueId"], "azurite": azurite_url,
                                     "expires": time.time() + seconds})

    def drop_grants(self, resource_id: str, kind: str | None = None) -> None:
        """Forget the grants on a resource (a disk or snapshot, or a VM's guest disks)."""
        grants = self.store.grants
        for gid in [g for g, e in grants.items() if (kind is None or e["kind"] == kind)
                    and (same_id(e["resourceId"], resource_id) or same_id(e.get("vm"), resource_id))]:
            del grants[gid]
            self.store.touch()

    def guest_disks(self, vm_id: str, base_url: str) -> list[dict[str, Any]]:
        """A guest URL for each disk of the VM: the OS disk, then the data disks by LUN."""
        vm = self.get(vm_id or "")
        if vm is None or vm["body"]["type"] != "Microsoft.Compute/virtualMachines":
            raise NotFound(f"Virtual machine '{vm_id}' was not found.", code="NotFound")
        storage = vm["body"]["properties"]["storageProfile"]
        refs = [(None, storage["osDisk"])] + sorted(((d["lun"], d) for d in storage.get("dataDisks") or []),
                                                    key=lambda x: x[0])
        out = []
        for lun, ref in refs:
            disk = self.get(ref["managedDisk"]["id"])
            if disk is None:
                raise NotFound(f"Disk '{ref['managedDisk']['id']}' of VM '{vm['body']['name']}' was not found.",
                               code="NotFound")
            props = disk["body"]["properties"]
            if not disk["lab"].get("materialized"):  # an Empty disk gets its bytes now (two small calls)
                self.blobs.create_empty(disk["lab"]["blob"], props["diskSizeBytes"])
                disk["lab"]["materialized"] = True
                self.store.touch()
            _, url = self._mint(base_url, {"kind": "guest", "resourceId": disk["body"]["id"],
                                           "uniqueId": props["uniqueId"], "vm": vm["body"]["id"],
                                           "vmId": vm["body"]["properties"]["vmId"]})
            out.append({"lun": lun, "name": disk["body"]["name"], "id": disk["body"]["id"], "url": url,
                        "size": props["diskSizeBytes"]})
        return out

    def front_grant(self, gid: str, token: str) -> FrontGrant:
        """What a front URL reaches, checked now; AuthenticationFailed (403) when it is not valid."""
        grant = self.store.grants.get(gid)
        if grant is None or not token or not hmac.compare_digest(grant["sigHash"], _digest(token)):
            raise denied("Server failed to authenticate the request. Make sure the value of Authorization header "
                         "is formed correctly including the signature.")
        record = self.get(grant["resourceId"])
        if record is None or record["body"]["properties"].get("uniqueId") != grant["uniqueId"]:
            raise denied(f"The resource '{grant['resourceId']}' this URL was signed for no longer exists.")
        props, lab = record["body"]["properties"], record["lab"]
        if grant["kind"] == "read":
            if time.time() >= grant["expires"]:
                raise denied(f"Signature not valid in the specified time frame: Expiry "
                             f"[{now_iso(grant['expires'])}] - Current [{now_iso()}].")
            if (lab.get("sas") or {}).get("grant") != gid:
                raise denied("Access to this snapshot was revoked.")
            return FrontGrant(gid, "read", record["body"]["name"], lab["blob"], grant["azurite"],
                              props["diskSizeBytes"], lab.get("family"), lab.get("sequence"))
        vm = self.get(grant["vm"])
        if vm is None or vm["body"]["properties"].get("vmId") != grant["vmId"]:
            raise denied(f"The virtual machine '{grant['vm']}' this URL was signed for no longer exists.")
        if not same_id(record["body"].get("managedBy"), vm["body"]["id"]):
            raise denied(f"Disk '{record['body']['name']}' is no longer attached to VM '{vm['body']['name']}'.")
        power = vm["lab"].get("power", "stopped")
        refusal = None
        rid = parse_id(vm["body"]["id"])
        group = self.store.resource_group(rid.subscription, rid.resource_group)
        if "Deleting" in (vm["body"]["properties"].get("provisioningState"),
                          group and group["body"]["properties"].get("provisioningState")):
            refusal = f"VM '{vm['body']['name']}' is being deleted"
        elif power != "running":
            refusal = f"VM '{vm['body']['name']}' is {power}, not running"
        return FrontGrant(gid, "guest", record["body"]["name"], lab["blob"], self.blobs.sas_url(lab["blob"],
                          GUEST_SAS_SECONDS), props["diskSizeBytes"], vm=vm["body"]["id"], refusal=refusal)
