"""Microsoft.Storage: storage accounts, all of them backed by the lab's one Azurite account.

Whatever the account is called, ``primaryEndpoints.blob`` is Azurite's blob endpoint and the keys
are Azurite's key: a program that reads both from ARM, as it would in Azure, reaches real blobs.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from ..exceptions import ArmError, BadRequest
from ..ids import parse_id
from .base import Base, now_iso
from .outcomes import Deletion, Written

NS = "Microsoft.Storage"
SKUS = ("Standard_LRS", "Standard_GRS", "Standard_RAGRS", "Standard_ZRS", "Premium_LRS", "Premium_ZRS",
        "Standard_GZRS", "Standard_RAGZRS")
KINDS = ("StorageV2", "Storage", "BlobStorage", "BlockBlobStorage", "FileStorage")
_NAME = re.compile(r"^[a-z0-9]{3,24}$")


class StorageBackend(Base):
    def _accounts(self, sub: str):
        for record in self.store.records(sub):
            if record["body"]["type"] == f"{NS}/storageAccounts":
                yield record

    def _taken_elsewhere(self, sub: str, name: str, rg: str) -> dict[str, Any] | None:
        for record in self._accounts(sub):
            rid = parse_id(record["body"]["id"])
            if rid.name.lower() == name.lower() and rid.resource_group.lower() != rg.lower():
                return record
        return None

    def endpoints(self) -> dict[str, str]:
        blob = (self.config.blob_endpoint or "").rstrip("/") + "/"
        return {"blob": blob}

    def check_name_availability(self, sub: str, body: dict[str, Any]) -> dict[str, Any]:
        self.check_sub(sub)
        name = str(body.get("name", ""))
        if not _NAME.match(name):
            return {"nameAvailable": False, "reason": "AccountNameInvalid",
                    "message": f"{name} is not a valid storage account name. Storage account name must be between 3 "
                               "and 24 characters in length and use numbers and lower-case letters only."}
        if any(parse_id(r["body"]["id"]).name.lower() == name for r in self._accounts(sub)):
            return {"nameAvailable": False, "reason": "AlreadyExists",
                    "message": f"The storage account named {name} is already taken."}
        return {"nameAvailable": True}

    def put_account(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
        if not _NAME.match(name):
            raise BadRequest(f"{name} is not a valid storage account name. Storage account name must be between 3 "
                             "and 24 characters in length and use numbers and lower-case letters only.",
                             code="AccountNameInvalid")
        self.writable_rg(sub, rg)
        if self._taken_elsewhere(sub, name, rg):
            raise ArmError(f"The storage account named {name} is already taken.", code="StorageAccountAlreadyTaken",
                           status=409)
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, "storageAccounts", name, body)
        sku = (body.get("sku") or {}).get("name")
        if sku not in SKUS:
            raise BadRequest(f"The value '{sku}' is not allowed for sku.name; use one of {', '.join(SKUS)}.",
                             code="InvalidRequestPropertyValue")
        kind = body.get("kind") or "StorageV2"
        if kind not in KINDS:
            raise BadRequest(f"The value '{kind}' is not allowed for kind; use one of {', '.join(KINDS)}.",
                             code="InvalidRequestPropertyValue")
        props = dict(body.get("properties") or {})
        if existing:
            existing["body"].update({"tags": tags, "sku": {"name": sku, "tier": sku.split("_")[0]}})
            existing["body"]["properties"].update({k: v for k, v in props.items() if k not in _COMPUTED})
            self.save(existing)
            return Written(existing["body"], created=False)
        for key in _COMPUTED:
            props.pop(key, None)
        props.setdefault("supportsHttpsTrafficOnly", True)
        props.setdefault("minimumTlsVersion", "TLS1_2")
        props.setdefault("allowBlobPublicAccess", False)
        props.setdefault("accessTier", "Hot")
        props.update({"provisioningState": "Creating", "primaryEndpoints": self.endpoints(),
                      "primaryLocation": location, "statusOfPrimary": "available", "creationTime": now_iso(),
                      "encryption": {"keySource": "Microsoft.Storage",
                                     "services": {"blob": {"enabled": True, "keyType": "Account"}}},
                      "isHnsEnabled": bool(props.get("isHnsEnabled", False))})
        record = self.new_record(rid, location, tags, props, sku={"name": sku, "tier": sku.split("_")[0]},
                                 kind=kind)
        record["lab"]["guid"] = str(uuid.uuid4())
        op = self.start_op(f"{NS}/storageAccounts/write", str(rid), "storage_create", namespace=NS,
                           location=location, record=record)
        self.save(record)
        return Written(record["body"], created=True, operation=op)

    def _complete_storage_create(self, op: dict[str, Any]) -> dict[str, Any] | None:
        record = self.get(op["resourceId"])
        if not record:
            return None
        record["body"]["properties"]["provisioningState"] = "Succeeded"
        self.store.touch()
        return record["body"]

    def _failed_storage_create(self, op: dict[str, Any]) -> None:
        # Azure leaves no account behind when creation fails.
        if self.get(op["resourceId"]):
            self.remove(op["resourceId"])

    def get_account(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        return self.require(self.rid(sub, rg, NS, "storageAccounts", name))["body"]

    def list_accounts(self, sub: str, rg: str | None) -> list[dict[str, Any]]:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        return [r["body"] for r in self._accounts(sub)
                if not rg or parse_id(r["body"]["id"]).resource_group.lower() == rg.lower()]

    def patch_account(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, "storageAccounts", name))
        if "tags" in body:
            record["body"]["tags"] = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        props = body.get("properties") or {}
        record["body"]["properties"].update({k: v for k, v in props.items() if k not in _COMPUTED})
        self.save(record)
        return record["body"]

    def delete_account(self, sub: str, rg: str, name: str) -> Deletion:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, "storageAccounts", name))
        if record is None:
            return Deletion(existed=False)
        self.busy(record)
        self.remove(record["body"]["id"])
        return Deletion(existed=True)

    def list_keys(self, sub: str, rg: str, name: str) -> list[dict[str, Any]]:
        record = self.require(self.rid(sub, rg, NS, "storageAccounts", name))
        if record["body"]["properties"]["provisioningState"] != "Succeeded":
            raise ArmError(f"The storage account {name} is not ready yet.", code="StorageAccountIsNotProvisioned",
                           status=409)
        created = record["body"]["properties"]["creationTime"]
        # Azurite knows one key per account; both ARM keys are that key.
        keys = [{"keyName": k, "value": self.config.blob_key or "", "permissions": "FULL", "creationTime": created}
                for k in ("key1", "key2")]
        return keys


_COMPUTED = ("provisioningState", "primaryEndpoints", "primaryLocation", "statusOfPrimary", "creationTime",
             "secondaryEndpoints", "secondaryLocation", "statusOfSecondary")
