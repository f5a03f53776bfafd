"""Microsoft.Resources: resource groups, the generic resource list (with $filter) and tags."""

from __future__ import annotations

import re
import time
from typing import Any

from ..exceptions import ArmError, BadRequest
from ..ids import parse_id, rg_id
from . import regions
from .base import Base, now_iso, tags_of
from .outcomes import Deletion, Written

_RG_NAME = re.compile(r"^[-\w._()]{1,90}$")


class ResourcesBackend(Base):
    # -- resource groups ---------------------------------------------------------------------
    def rg_body(self, group: dict[str, Any]) -> dict[str, Any]:
        return group["body"]

    def put_rg(self, sub: str, rg: str, body: dict[str, Any]) -> Written:
        self.check_sub(sub)
        if not _RG_NAME.match(rg) or rg.endswith("."):
            raise ArmError(f"Resource group name '{rg}' is invalid: up to 90 letters, digits, '_', '-', '.', "
                           "'(' or ')', not ending in '.'.", code="InvalidResourceGroupName", status=400)
        location = regions.check(body.get("location"), "resourceGroups")
        tags = tags_of(body)
        group = self.store.resource_group(sub, rg)
        if group:
            current = group["body"]
            if current["properties"]["provisioningState"] == "Deleting":
                raise ArmError(f"The resource group '{current['name']}' is in deprovisioning state and "
                               "cannot perform this operation.", code="ResourceGroupBeingDeleted", status=409)
            if current["location"] != location:
                raise ArmError(f"Invalid resource group location '{location}'. The Resource group already "
                               f"exists in location '{current['location']}'.",
                               code="InvalidResourceGroupLocation", status=409)
            current["tags"] = tags
            if "managedBy" in body:
                current["managedBy"] = body["managedBy"]
            self.store.touch()
            return Written(current, created=False)
        entry = self.store.subscription(sub, create=True)
        rgbody = {"id": rg_id(self.config.subscription_id, rg), "name": rg,
                  "type": "Microsoft.Resources/resourceGroups", "location": location, "tags": tags,
                  "properties": {"provisioningState": "Succeeded"}}
        if body.get("managedBy"):
            rgbody["managedBy"] = body["managedBy"]
        entry["resourceGroups"][rg.lower()] = {"body": rgbody, "resources": {}, "lab": {"created": time.time()}}
        self.store.touch()
        return Written(rgbody, created=True)

    def get_rg(self, sub: str, rg: str) -> dict[str, Any]:
        return self.require_rg(sub, rg)["body"]

    def rg_exists(self, sub: str, rg: str) -> bool:
        self.check_sub(sub)
        return self.store.resource_group(sub, rg) is not None

    def patch_rg(self, sub: str, rg: str, body: dict[str, Any]) -> dict[str, Any]:
        group = self.writable_rg(sub, rg)
        if "tags" in body:
            group["body"]["tags"] = tags_of(body)
        self.store.touch()
        return group["body"]

    def list_rgs(self, sub: str, filter_: str | None, top: str | None) -> list[dict[str, Any]]:
        self.check_sub(sub)
        match = parse_filter(filter_)
        items = [g["body"] for g in self.store.resource_groups(sub).values()
                 if match(g["body"], g["body"]["name"])]
        return _top(items, top)

    def delete_rg(self, sub: str, rg: str) -> Deletion:
        group = self.require_rg(sub, rg)
        body = group["body"]
        if body["properties"]["provisioningState"] == "Deleting":
            op = self.store.operations.get(group["lab"].get("op", ""))
            if op and op["status"] == "InProgress":
                return Deletion(existed=True, operation=op)
        body["properties"]["provisioningState"] = "Deleting"
        op = self.start_op("Microsoft.Resources/subscriptions/resourceGroups/delete", body["id"], "rg_delete",
                           namespace="Microsoft.Resources", location=body["location"])
        group["lab"]["op"] = op["id"]
        self.store.touch()
        return Deletion(existed=True, operation=op)

    def _complete_rg_delete(self, op: dict[str, Any]) -> None:
        sub, rg = _sub_rg(op["resourceId"])
        group = self.store.resource_group(sub, rg)
        if group is None:
            return None
        inside = {key for key in group["resources"]}
        blockers = []
        for record in self.store.records(sub):
            if record["body"]["id"].lower() in inside:
                continue
            for ref in self.references(record):
                if parse_id(ref).parent.key in inside:
                    blockers.append((record["body"]["id"], ref))
        if blockers:
            src, ref = blockers[0]
            raise ArmError(f"Deletion of resource group '{group['body']['name']}' failed: resource '{ref}' is "
                           f"still used by '{src}' outside the group.", code="ResourceGroupDeletionBlocked",
                           status=409)
        for record in sorted(group["resources"].values(), key=lambda r: DELETE_ORDER.get(r["body"]["type"], 50)):
            self.release(record, deleting_group=True)
        del self.store.resource_groups(sub)[rg.lower()]
        self.store.touch()
        return None

    def _failed_rg_delete(self, op: dict[str, Any]) -> None:
        sub, rg = _sub_rg(op["resourceId"])
        group = self.store.resource_group(sub, rg)
        if group:
            group["body"]["properties"]["provisioningState"] = "Succeeded"

    # overridden by ArmBackend, which knows every type
    def references(self, record: dict[str, Any]) -> list[str]:
        return []

    def release(self, record: dict[str, Any], deleting_group: bool = False) -> None:
        return None

    # -- generic resources -------------------------------------------------------------------
    def list_resources(self, sub: str, rg: str | None, filter_: str | None, expand: str | None,
                       top: str | None) -> list[dict[str, Any]]:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        match = parse_filter(filter_)
        expands = {e.strip().lower() for e in (expand or "").split(",") if e.strip()}
        items = []
        for record in self.store.records(sub, rg):
            body = record["body"]
            rgname = parse_id(body["id"]).resource_group
            if not match(body, rgname):
                continue
            item = {k: body[k] for k in ("id", "name", "type", "sku", "kind", "location", "managedBy", "tags")
                    if body.get(k) is not None}
            if "createdtime" in expands:
                item["createdTime"] = now_iso(record["lab"].get("created"))
            if "changedtime" in expands:
                item["changedTime"] = now_iso(record["lab"].get("changed", record["lab"].get("created")))
            if "provisioningstate" in expands:
                item["provisioningState"] = body.get("properties", {}).get("provisioningState", "Succeeded")
            items.append(item)
        return _top(items, top)

    # -- tags at a scope ---------------------------------------------------------------------
    def _scope_body(self, scope: str) -> dict[str, Any]:
        parts = scope.strip("/").split("/")
        if len(parts) == 4 and parts[0].lower() == "subscriptions" and parts[2].lower() == "resourcegroups":
            return self.require_rg(parts[1], parts[3])["body"]
        if len(parts) >= 8:
            rid = parse_id(scope)
            if not rid.children:
                return self.require(rid)["body"]
        raise BadRequest(f"Tags at scope '{scope}' are not supported by the lab (resource groups and "
                         "top-level resources are).", code="InvalidScope")

    @staticmethod
    def _tags_resource(scope: str, tags: dict[str, str]) -> dict[str, Any]:
        return {"id": f"{scope.rstrip('/')}/providers/Microsoft.Resources/tags/default",
                "name": "default", "type": "Microsoft.Resources/tags", "properties": {"tags": tags}}

    def get_tags(self, scope: str) -> dict[str, Any]:
        return self._tags_resource(scope, self._scope_body(scope).get("tags") or {})

    def put_tags(self, scope: str, body: dict[str, Any]) -> dict[str, Any]:
        target = self._scope_body(scope)
        target["tags"] = tags_of(body.get("properties") or {})
        self.store.touch()
        return self._tags_resource(scope, target["tags"])

    def patch_tags(self, scope: str, body: dict[str, Any]) -> dict[str, Any]:
        target = self._scope_body(scope)
        new = tags_of(body.get("properties") or {})
        operation = str(body.get("operation", "Merge")).lower()
        tags = dict(target.get("tags") or {})
        if operation == "merge":
            tags.update(new)
        elif operation == "replace":
            tags = new
        elif operation == "delete":
            for k, v in new.items():
                if tags.get(k) == v or v == "":
                    tags.pop(k, None)
        else:
            raise BadRequest(f"Unknown tag patch operation '{body.get('operation')}'.", code="InvalidRequestContent")
        target["tags"] = tags
        self.store.touch()
        return self._tags_resource(scope, tags)

    def delete_tags(self, scope: str) -> None:
        target = self._scope_body(scope)
        target["tags"] = {}
        self.store.touch()


DELETE_ORDER = {
    "Microsoft.Compute/virtualMachines": 0,
    "Microsoft.Network/networkInterfaces": 10,
    "Microsoft.Network/publicIPAddresses": 20,
    "Microsoft.Compute/disks": 20,
    "Microsoft.Compute/snapshots": 20,
    "Microsoft.Network/virtualNetworks": 30,
    "Microsoft.Network/networkSecurityGroups": 40,
    "Microsoft.Storage/storageAccounts": 40,
}


def _sub_rg(resource_group_id: str) -> tuple[str, str]:
    parts = resource_group_id.strip("/").split("/")
    return parts[1], parts[3]


def _top(items: list[Any], top: str | None) -> list[Any]:
    if top:
        try:
            return items[: int(top)]
        except ValueError:
            raise BadRequest(f"The $top value '{top}' is not an integer.", code="InvalidQueryParameterValue") from None
    return items


_CLAUSE = re.compile(
    r"^\s*(?:(?P<field>\w+)\s+eq\s+'(?P<value>(?:[^']|'')*)'"
    r"|substringof\(\s*'(?P<sub>(?:[^']|'')*)'\s*,\s*(?P<sfield>\w+)\s*\)"
    r"|startswith\(\s*(?P<pfield>\w+)\s*,\s*'(?P<prefix>(?:[^']|'')*)'\s*\))\s*$",
    re.IGNORECASE,
)
_FIELDS = {"tagname", "tagvalue", "resourcetype", "name", "location", "resourcegroup"}


def parse_filter(text: str | None):
    """ARM's $filter for resource lists: `eq` clauses joined by `and`, substringof(), startswith()."""
    if not text or not text.strip():
        return lambda body, rg: True
    clauses = []
    for raw in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        m = _CLAUSE.match(raw)
        field = (m and (m.group("field") or m.group("sfield") or m.group("pfield")) or "").lower()
        if not m or field not in _FIELDS:
            raise BadRequest(f"The $filter '{text}' is not supported: use eq clauses on tagName, tagValue, "
                             "resourceType, name, location or resourceGroup, joined by 'and'.",
                             code="InvalidFilterInQueryString")
        if m.group("field"):
            clauses.append((field, "eq", m.group("value").replace("''", "'")))
        elif m.group("sfield"):
            clauses.append((field, "sub", m.group("sub").replace("''", "'")))
        else:
            clauses.append((field, "prefix", m.group("prefix").replace("''", "'")))
    tag_name = next((v for f, o, v in clauses if f == "tagname" and o == "eq"), None)
    tag_value = next((v for f, o, v in clauses if f == "tagvalue" and o == "eq"), None)
    if tag_value is not None and tag_name is None:
        raise BadRequest("A tagValue filter needs a tagName filter.", code="InvalidFilterInQueryString")

    def match(body: dict[str, Any], rg: str) -> bool:
        tags = {k.lower(): v for k, v in (body.get("tags") or {}).items()}
        values = {"name": body.get("name", ""), "resourcetype": body.get("type", ""),
                  "location": body.get("location", ""), "resourcegroup": rg}
        for field, op, value in clauses:
            if field == "tagname":
                if value.lower() not in tags:
                    return False
                if tag_value is not None and tags[value.lower()] != tag_value:
                    return False
                continue
            if field == "tagvalue":
                continue
            have = values[field].lower()
            want = value.lower()
            if op == "eq" and have != want or op == "sub" and want not in have \
                    or op == "prefix" and not have.startswith(want):
                return False
        return True

    return match
