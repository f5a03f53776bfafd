"""ARM resource ids: parse them case-insensitively, build them in ARM's canonical casing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .exceptions import InvalidParameter

# Canonical spellings, so an id built here matches what Azure returns.
NAMESPACES = {n.lower(): n for n in (
    "Microsoft.Compute", "Microsoft.Network", "Microsoft.Storage", "Microsoft.Resources")}
TYPES = {t.lower(): t for t in (
    "virtualMachines", "disks", "snapshots", "virtualNetworks", "subnets", "networkSecurityGroups",
    "securityRules", "networkInterfaces", "ipConfigurations", "virtualNetworkPeerings",
    "publicIPAddresses", "storageAccounts")}


@dataclass(frozen=True)
class ResourceId:
    subscription: str
    resource_group: str
    namespace: str
    type: str
    name: str
    children: tuple[tuple[str, str], ...] = field(default=())

    @property
    def full_type(self) -> str:
        return "/".join([self.namespace, self.type, *(c[0] for c in self.children)])

    @property
    def parent(self) -> "ResourceId":
        return ResourceId(self.subscription, self.resource_group, self.namespace, self.type, self.name)

    def __str__(self) -> str:
        s = (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
             f"/providers/{self.namespace}/{self.type}/{self.name}")
        for t, n in self.children:
            s += f"/{t}/{n}"
        return s

    @property
    def key(self) -> str:
        return str(self).lower()

    def child(self, type_: str, name: str) -> "ResourceId":
        return ResourceId(self.subscription, self.resource_group, self.namespace, self.type, self.name,
                          self.children + ((canon_type(type_), name),))


def canon_namespace(ns: str) -> str:
    return NAMESPACES.get(ns.lower(), ns)


def canon_type(t: str) -> str:
    return TYPES.get(t.lower(), t)


_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/(?P<ns>[^/]+)"
    r"/(?P<type>[^/]+)/(?P<name>[^/]+)(?P<rest>(?:/[^/]+/[^/]+)*)/?$",
    re.IGNORECASE,
)


def parse_id(value: str, *, what: str = "id") -> ResourceId:
    m = _ID.match(value or "")
    if not m:
        raise InvalidParameter(f"The {what} '{value}' is not a valid Azure resource id.",
                               code="LinkedInvalidPropertyId", target=what)
    parts = [p for p in m.group("rest").split("/") if p]
    children = tuple((canon_type(parts[i]), parts[i + 1]) for i in range(0, len(parts), 2))
    return ResourceId(m.group("sub"), m.group("rg"), canon_namespace(m.group("ns")),
                      canon_type(m.group("type")), m.group("name"), children)


def rg_id(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def same_id(a: str | None, b: str | None) -> bool:
    return (a or "").rstrip("/").lower() == (b or "").rstrip("/").lower()
