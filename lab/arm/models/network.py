"""Microsoft.Network: virtual networks and subnets, NSGs and rules, NICs, peerings, public IPs.

What links resources (which NICs sit in a subnet, which subnets use an NSG, which NIC holds a
public IP) is computed from the NICs and subnets when a body is rendered, never stored twice.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, Iterator

from ..exceptions import ArmError, BadRequest, NotFound
from ..ids import ResourceId, parse_id, same_id
from .base import Base
from .outcomes import Deletion, Written

NS = "Microsoft.Network"
PROTOCOLS = {"tcp": "Tcp", "udp": "Udp", "icmp": "Icmp", "esp": "Esp", "ah": "Ah", "*": "*"}
DEFAULT_RULES = (
    ("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET", "VirtualNetwork", "VirtualNetwork",
     "Allow", 65000, "Inbound"),
    ("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer", "AzureLoadBalancer", "*",
     "Allow", 65001, "Inbound"),
    ("DenyAllInBound", "Deny all inbound traffic", "*", "*", "Deny", 65500, "Inbound"),
    ("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET", "VirtualNetwork",
     "VirtualNetwork", "Allow", 65000, "Outbound"),
    ("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet", "*", "Internet", "Allow", 65001,
     "Outbound"),
    ("DenyAllOutBound", "Deny all outbound traffic", "*", "*", "Deny", 65500, "Outbound"),
)


def etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _props(body: dict[str, Any]) -> dict[str, Any]:
    props = body.get("properties") or {}
    if not isinstance(props, dict):
        raise BadRequest("'properties' must be an object.", code="InvalidRequestFormat")
    return props


def _ref(value: Any) -> str | None:
    return value.get("id") if isinstance(value, dict) and value.get("id") else None


def _network(prefix: str, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(prefix, strict=True)
    except ValueError:
        try:
            ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise BadRequest(f"The address prefix '{prefix}' of {where} is not a valid CIDR.",
                             code="InvalidAddressPrefixFormat") from None
        raise BadRequest(f"The address prefix {prefix} of {where} has an invalid CIDR notation: host bits are "
                         "set.", code="InvalidCIDRNotation") from None


def subnet_prefixes(subnet: dict[str, Any]) -> list[str]:
    p = subnet["properties"]
    return list(p.get("addressPrefixes") or ([p["addressPrefix"]] if p.get("addressPrefix") else []))


class NetworkBackend(Base):
    # -- rendering (computed links) ------------------------------------------------------------
    def nics(self, sub: str) -> Iterator[dict[str, Any]]:
        for record in self.store.records(sub):
            if record["body"]["type"] == f"{NS}/networkInterfaces":
                yield record

    def ip_configs_in(self, subnet_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        sub = parse_id(subnet_id).subscription
        return [(nic, ipc) for nic in self.nics(sub) for ipc in nic["body"]["properties"]["ipConfigurations"]
                if same_id(_ref(ipc["properties"].get("subnet")), subnet_id)]

    def render_subnet(self, subnet: dict[str, Any]) -> dict[str, Any]:
        out = {**subnet, "properties": dict(subnet["properties"])}
        users = self.ip_configs_in(subnet["id"])
        if users:
            out["properties"]["ipConfigurations"] = [{"id": ipc["id"]} for _, ipc in users]
        return out

    def render_network(self, record: dict[str, Any]) -> dict[str, Any]:
        body = record["body"]
        t = body["type"]
        if t == f"{NS}/virtualNetworks":
            props = dict(body["properties"])
            props["subnets"] = [self.render_subnet(s) for s in props["subnets"]]
            return {**body, "properties": props}
        if t == f"{NS}/networkSecurityGroups":
            props = dict(body["properties"])
            sub = parse_id(body["id"]).subscription
            subnets, nics = [], []
            for other in self.store.records(sub):
                ob = other["body"]
                if ob["type"] == f"{NS}/virtualNetworks":
                    subnets += [{"id": s["id"]} for s in ob["properties"]["subnets"]
                                if same_id(_ref(s["properties"].get("networkSecurityGroup")), body["id"])]
                elif ob["type"] == f"{NS}/networkInterfaces" and \
                        same_id(_ref(ob["properties"].get("networkSecurityGroup")), body["id"]):
                    nics.append({"id": ob["id"]})
            if subnets:
                props["subnets"] = subnets
            if nics:
                props["networkInterfaces"] = nics
            return {**body, "properties": props}
        if t == f"{NS}/publicIPAddresses":
            user = self.pip_user(body["id"])
            if user:
                return {**body, "properties": {**body["properties"], "ipConfiguration": {"id": user}}}
        return body

    def pip_user(self, pip_id: str) -> str | None:
        for nic in self.nics(parse_id(pip_id).subscription):
            for ipc in nic["body"]["properties"]["ipConfigurations"]:
                if same_id(_ref(ipc["properties"].get("publicIPAddress")), pip_id):
                    return ipc["id"]
        return None

    # -- the LRO shared by every network write -----------------------------------------------
    def _net_accept(self, record: dict[str, Any], target_id: str, created: bool, op_type: str,
                    body: dict[str, Any]) -> Written:
        op = self.start_op(op_type, target_id, "net_put", namespace=NS, location=record["body"]["location"],
                           record=record)
        self.save(record)
        return Written(body, created=created, operation=op)

    def _complete_net_put(self, op: dict[str, Any]) -> None:
        self._set_state(op["resourceId"], "Succeeded")

    def _failed_net_put(self, op: dict[str, Any]) -> None:
        self._set_state(op["resourceId"], "Failed")

    def _set_state(self, target_id: str, state: str) -> None:
        record = self.get(target_id)
        if not record:
            return
        rid = parse_id(target_id)
        props = record["body"]["properties"]
        if rid.children:
            child = self._find_child(record, rid)
            if child:
                child["properties"]["provisioningState"] = state
            return
        props["provisioningState"] = state
        for key in ("subnets", "securityRules", "virtualNetworkPeerings", "ipConfigurations"):
            for child in props.get(key) or []:
                child["properties"]["provisioningState"] = state
        self.store.touch()

    @staticmethod
    def _child_list(record: dict[str, Any], child_type: str) -> list[dict[str, Any]]:
        key = {"subnets": "subnets", "securityRules": "securityRules",
               "virtualNetworkPeerings": "virtualNetworkPeerings"}[child_type]
        return record["body"]["properties"].setdefault(key, [])

    def _find_child(self, record: dict[str, Any], rid: ResourceId) -> dict[str, Any] | None:
        ctype, cname = rid.children[-1]
        for child in self._child_list(record, ctype):
            if child["name"].lower() == cname.lower():
                return child
        return None

    def _net_delete(self, record: dict[str, Any], target_id: str) -> Deletion:
        op = self.start_op(_op_type(target_id, "delete"), target_id, "net_delete", namespace=NS,
                           location=record["body"]["location"], record=record)
        self.store.touch()
        return Deletion(existed=True, operation=op)

    def _complete_net_delete(self, op: dict[str, Any]) -> None:
        record = self.get(op["resourceId"])
        if not record:
            return
        rid = parse_id(op["resourceId"])
        if rid.children:
            ctype, cname = rid.children[-1]
            items = self._child_list(record, ctype)
            gone = [c for c in items if c["name"].lower() == cname.lower()]
            items[:] = [c for c in items if c["name"].lower() != cname.lower()]
            if ctype == "virtualNetworkPeerings":
                for peering in gone:
                    self._peering_lost(record, peering)
            self.store.touch()
            return
        self.release(record)
        self.remove(record["body"]["id"])

    def _failed_net_delete(self, op: dict[str, Any]) -> None:
        self._set_state(op["resourceId"], "Succeeded")

    def net_get_top(self, sub: str, rg: str, type_: str, name: str) -> dict[str, Any]:
        record = self.require(self.rid(sub, rg, NS, type_, name))
        return self.render_network(record)

    def net_list(self, sub: str, rg: str | None, type_: str) -> list[dict[str, Any]]:
        if rg:
            self.require_rg(sub, rg)
        else:
            self.check_sub(sub)
        return [self.render_network(r) for r in self.store.records(sub, rg) if r["body"]["type"] == f"{NS}/{type_}"]

    def net_delete_top(self, sub: str, rg: str, type_: str, name: str) -> Deletion:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, type_, name))
        if record is None:
            return Deletion(existed=False)
        self.busy(record)
        body = record["body"]
        if type_ == "networkInterfaces" and body["properties"].get("virtualMachine"):
            raise ArmError(f"Network Interface {body['id']} is used by existing resource "
                           f"{body['properties']['virtualMachine']['id']}. In order to delete the network "
                           "interface, it must be dissociated from the resource.", code="NicInUse", status=400)
        if type_ == "virtualNetworks":
            for subnet in body["properties"]["subnets"]:
                self._subnet_unused(subnet, "deleted")
        if type_ == "networkSecurityGroups":
            rendered = self.render_network(record)["properties"]
            users = rendered.get("subnets", []) + rendered.get("networkInterfaces", [])
            if users:
                raise ArmError(f"Network security group {body['id']} cannot be deleted because it is in use by "
                               f"the following resources: {', '.join(u['id'] for u in users)}.",
                               code="InUseNetworkSecurityGroupCannotBeDeleted", status=400)
        if type_ == "publicIPAddresses":
            user = self.pip_user(body["id"])
            if user:
                raise ArmError(f"Public IP address {body['id']} can not be deleted since it is still allocated "
                               f"to resource {user}.", code="PublicIPAddressCannotBeDeleted", status=400)
        body["properties"]["provisioningState"] = "Deleting"
        return self._net_delete(record, body["id"])

    def net_patch_tags(self, sub: str, rg: str, type_: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, type_, name))
        if "tags" in body:
            record["body"]["tags"] = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        self.save(record)
        return self.render_network(record)

    # -- virtual networks and subnets --------------------------------------------------------
    def _subnet_unused(self, subnet: dict[str, Any], verb: str) -> None:
        users = self.ip_configs_in(subnet["id"])
        if users:
            raise ArmError(f"Subnet {subnet['name']} is in use by {users[0][1]['id']} and cannot be {verb}. In "
                           "order to delete the subnet, delete all the resources within the subnet.",
                           code="InUseSubnetCannotBeDeleted", status=400)

    def _build_subnet(self, vnet_id: ResourceId, name: str, body: dict[str, Any], space: list[str],
                      previous: dict[str, Any] | None, location: str) -> dict[str, Any]:
        props = dict(_props(body))
        for computed in ("ipConfigurations", "provisioningState"):
            props.pop(computed, None)
        sid = str(vnet_id.child("subnets", name))
        prefixes = props.get("addressPrefixes") or ([props["addressPrefix"]] if props.get("addressPrefix") else [])
        if not prefixes:
            raise BadRequest(f"Subnet '{name}' has no addressPrefix.", code="InvalidRequestFormat")
        nets = [_network(p, f"subnet '{name}'") for p in prefixes]
        vnets = [ipaddress.ip_network(p) for p in space]
        for net in nets:
            if not any(net.version == v.version and net.subnet_of(v) for v in vnets):
                raise ArmError(f"Subnet '{name}' is not valid because its IP address range {net} is outside the "
                               f"IP address range of virtual network '{vnet_id.name}'.",
                               code="NetcfgSubnetRangeOutsideVnet", status=400)
        nsg = _ref(props.get("networkSecurityGroup"))
        if nsg:
            nsg_record = self.get(nsg)
            if nsg_record is None or nsg_record["body"]["type"] != f"{NS}/networkSecurityGroups":
                raise ArmError(f"Resource {nsg} referenced by resource {sid} was not found. Please make sure that "
                               "the referenced resource exists, and that both resources are in the same region.",
                               code="InvalidResourceReference", status=400)
            if nsg_record["body"]["location"] != location:
                raise ArmError(f"Network security group {nsg} is in location '{nsg_record['body']['location']}', "
                               f"not in the virtual network's location '{location}'.",
                               code="InvalidResourceReference", status=400)
            props["networkSecurityGroup"] = {"id": nsg_record["body"]["id"]}
        if previous:
            for _, ipc in self.ip_configs_in(sid):
                addr = ipaddress.ip_address(ipc["properties"]["privateIPAddress"])
                if not any(addr in n for n in nets):
                    raise ArmError(f"Subnet '{name}' cannot change its address prefix: {ipc['id']} uses {addr}, "
                                   "outside the new range.", code="InUseSubnetCannotBeUpdated", status=400)
        props.setdefault("privateEndpointNetworkPolicies", "Disabled")
        props.setdefault("privateLinkServiceNetworkPolicies", "Enabled")
        props.setdefault("delegations", [])
        props["provisioningState"] = "Updating"
        return {"name": name, "id": sid, "etag": etag(), "type": f"{NS}/virtualNetworks/subnets", "properties": props}

    @staticmethod
    def _check_overlap(subnets: list[dict[str, Any]], vnet_name: str) -> None:
        seen: list[tuple[str, Any]] = []
        for s in subnets:
            for p in subnet_prefixes(s):
                net = ipaddress.ip_network(p)
                for other_name, other in seen:
                    if net.version == other.version and net.overlaps(other):
                        raise ArmError(f"Subnet '{s['name']}' is not valid because its IP address range overlaps "
                                       f"with that of an existing subnet '{other_name}' in virtual network "
                                       f"'{vnet_name}'.", code="NetcfgSubnetRangesOverlap", status=400)
                seen.append((s["name"], net))

    def put_vnet(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, "virtualNetworks", name, body)
        props = dict(_props(body))
        space = ((props.get("addressSpace") or {}).get("addressPrefixes")) or []
        if not space:
            raise BadRequest(f"Virtual network '{name}' needs addressSpace.addressPrefixes.",
                             code="InvalidRequestFormat")
        for p in space:
            _network(p, f"virtual network '{name}'")
        old_subnets = {s["name"].lower(): s for s in (existing["body"]["properties"]["subnets"] if existing else [])}
        subnets = []
        names = set()
        for s in props.get("subnets") or []:
            sname = s.get("name") or ""
            if not sname or sname.lower() in names:
                raise BadRequest(f"Subnet names in virtual network '{name}' must be present and unique.",
                                 code="InvalidRequestFormat")
            names.add(sname.lower())
            subnets.append(self._build_subnet(rid, sname, s, space, old_subnets.get(sname.lower()), location))
        self._check_overlap(subnets, name)
        for old_name, old in old_subnets.items():
            if old_name not in names:
                self._subnet_unused(old, "deleted")
        peerings = existing["body"]["properties"].get("virtualNetworkPeerings", []) if existing else []
        for key in ("subnets", "virtualNetworkPeerings", "provisioningState", "resourceGuid"):
            props.pop(key, None)
        props.setdefault("enableDdosProtection", False)
        props.update({"provisioningState": "Updating", "addressSpace": {"addressPrefixes": list(space)},
                      "subnets": subnets, "virtualNetworkPeerings": peerings,
                      "resourceGuid": _guid(existing)})
        record = existing or self.new_record(rid, location, tags, props, etag=etag())
        record["body"].update({"tags": tags, "properties": props, "etag": etag()})
        return self._net_accept(record, str(rid), existing is None, f"{NS}/virtualNetworks/write",
                                self.render_network(record))

    def put_subnet(self, sub: str, rg: str, vnet: str, name: str, body: dict[str, Any]) -> Written:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, "virtualNetworks", vnet))
        self.busy(record)
        vbody = record["body"]
        rid = parse_id(vbody["id"])
        subnets = vbody["properties"]["subnets"]
        old = next((s for s in subnets if s["name"].lower() == name.lower()), None)
        new = self._build_subnet(rid, old["name"] if old else name, body,
                                 vbody["properties"]["addressSpace"]["addressPrefixes"], old, vbody["location"])
        others = [s for s in subnets if s is not old]
        self._check_overlap(others + [new], vbody["name"])
        if old:
            subnets[subnets.index(old)] = new
        else:
            subnets.append(new)
        return self._net_accept(record, new["id"], old is None, f"{NS}/virtualNetworks/subnets/write",
                                self.render_subnet(new))

    def get_child(self, sub: str, rg: str, parent_type: str, parent: str, child_type: str, name: str) -> dict[str, Any]:
        record = self.require(self.rid(sub, rg, NS, parent_type, parent))
        rid = parse_id(record["body"]["id"]).child(child_type, name)
        child = self._find_child(record, rid)
        if child is None:
            raise NotFound(f"Resource {rid} not found.", code="NotFound")
        return self.render_subnet(child) if child_type == "subnets" else child

    def list_children(self, sub: str, rg: str, parent_type: str, parent: str, child_type: str) -> list[dict[str, Any]]:
        record = self.require(self.rid(sub, rg, NS, parent_type, parent))
        items = self._child_list(record, child_type)
        if child_type == "subnets":
            items = [self.render_subnet(s) for s in items]
        return items

    def delete_child(self, sub: str, rg: str, parent_type: str, parent: str, child_type: str, name: str) -> Deletion:
        self.writable_rg(sub, rg)
        record = self.get(self.rid(sub, rg, NS, parent_type, parent))
        if record is None:
            return Deletion(existed=False)
        rid = parse_id(record["body"]["id"]).child(child_type, name)
        child = self._find_child(record, rid)
        if child is None:
            return Deletion(existed=False)
        self.busy(record)
        if child_type == "subnets":
            self._subnet_unused(child, "deleted")
        child["properties"]["provisioningState"] = "Deleting"
        return self._net_delete(record, child["id"])

    # -- peerings ------------------------------------------------------------------------------
    def put_peering(self, sub: str, rg: str, vnet: str, name: str, body: dict[str, Any]) -> Written:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, "virtualNetworks", vnet))
        self.busy(record)
        vbody = record["body"]
        pid = str(parse_id(vbody["id"]).child("virtualNetworkPeerings", name))
        props = dict(_props(body))
        remote_id = _ref(props.get("remoteVirtualNetwork"))
        remote = self.get(remote_id) if remote_id else None
        if remote is None or remote["body"]["type"] != f"{NS}/virtualNetworks":
            raise ArmError(f"Resource {remote_id} referenced by resource {pid} was not found. Please make sure "
                           "that the referenced resource exists.", code="InvalidResourceReference", status=400)
        if same_id(remote["body"]["id"], vbody["id"]):
            raise BadRequest(f"Virtual network {vbody['id']} cannot be peered with itself.",
                             code="CannotPeerVnetToItself")
        mine = [ipaddress.ip_network(p) for p in vbody["properties"]["addressSpace"]["addressPrefixes"]]
        theirs = [ipaddress.ip_network(p) for p in remote["body"]["properties"]["addressSpace"]["addressPrefixes"]]
        for a in mine:
            for b in theirs:
                if a.version == b.version and a.overlaps(b):
                    raise ArmError(f"Cannot create or update peering {pid}. Virtual networks {vbody['id']} and "
                                   f"{remote['body']['id']} cannot be peered because their address spaces "
                                   f"overlap ({a} and {b}).", code="VnetAddressSpacesOverlap", status=400)
        peerings = vbody["properties"].setdefault("virtualNetworkPeerings", [])
        old = next((p for p in peerings if p["name"].lower() == name.lower()), None)
        for other in peerings:
            if other is not old and same_id(other["properties"]["remoteVirtualNetwork"]["id"], remote["body"]["id"]):
                raise BadRequest(f"Virtual network {vbody['id']} is already peered with {remote['body']['id']} "
                                 f"by peering {other['id']}.", code="VnetPeeringAlreadyExists")
        for computed in ("provisioningState", "peeringState", "peeringSyncLevel", "remoteAddressSpace"):
            props.pop(computed, None)
        for flag, default in (("allowVirtualNetworkAccess", True), ("allowForwardedTraffic", False),
                              ("allowGatewayTransit", False), ("useRemoteGateways", False)):
            props.setdefault(flag, default)
        back = self._peering_to(remote, vbody["id"])
        props.update({"remoteVirtualNetwork": {"id": remote["body"]["id"]},
                      "remoteAddressSpace": {"addressPrefixes": list(remote["body"]["properties"]["addressSpace"]
                                                                     ["addressPrefixes"])},
                      "peeringState": "Connected" if back else "Initiated", "peeringSyncLevel": "FullyInSync",
                      "provisioningState": "Updating"})
        peering = {"name": old["name"] if old else name, "id": pid, "etag": etag(),
                   "type": f"{NS}/virtualNetworks/virtualNetworkPeerings", "properties": props}
        if old:
            peerings[peerings.index(old)] = peering
        else:
            peerings.append(peering)
        if back:
            back["properties"]["peeringState"] = "Connected"
            self.save(remote)
        return self._net_accept(record, pid, old is None, f"{NS}/virtualNetworks/virtualNetworkPeerings/write",
                                peering)

    @staticmethod
    def _peering_to(vnet_record: dict[str, Any], remote_id: str) -> dict[str, Any] | None:
        for p in vnet_record["body"]["properties"].get("virtualNetworkPeerings") or []:
            if same_id(p["properties"]["remoteVirtualNetwork"]["id"], remote_id):
                return p
        return None

    def _peering_lost(self, vnet_record: dict[str, Any], peering: dict[str, Any]) -> None:
        remote = self.get(peering["properties"]["remoteVirtualNetwork"]["id"])
        if remote:
            back = self._peering_to(remote, vnet_record["body"]["id"])
            if back:
                back["properties"]["peeringState"] = "Disconnected"
                self.store.touch()

    # -- network security groups ---------------------------------------------------------------
    def _build_rule(self, nsg_id: ResourceId, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name") or ""
        props = dict(_props(body))
        props.pop("provisioningState", None)
        where = f"security rule '{name}'"
        if not name:
            raise BadRequest("Every security rule needs a name.", code="InvalidRequestFormat")
        protocol = PROTOCOLS.get(str(props.get("protocol", "")).lower())
        if protocol is None:
            raise BadRequest(f"The protocol '{props.get('protocol')}' of {where} is invalid; use Tcp, Udp, Icmp, "
                             "Esp, Ah or *.", code="SecurityRuleInvalidProtocol")
        props["protocol"] = protocol
        for field, allowed in (("access", ("Allow", "Deny")), ("direction", ("Inbound", "Outbound"))):
            value = next((a for a in allowed if a.lower() == str(props.get(field, "")).lower()), None)
            if value is None:
                raise BadRequest(f"The {field} '{props.get(field)}' of {where} must be one of {', '.join(allowed)}.",
                                 code="SecurityRuleParameterContainsUnsupportedValue")
            props[field] = value
        try:
            priority = int(props.get("priority"))
        except (TypeError, ValueError):
            priority = -1
        if not 100 <= priority <= 4096:
            raise BadRequest(f"The priority {props.get('priority')} of {where} must be between 100 and 4096.",
                             code="SecurityRuleInvalidPriority")
        props["priority"] = priority
        for side in ("source", "destination"):
            if not (props.get(f"{side}AddressPrefix") or props.get(f"{side}AddressPrefixes")
                    or props.get(f"{side}ApplicationSecurityGroups")):
                raise BadRequest(f"{where} needs {side}AddressPrefix(es).", code="SecurityRuleParameterMissing")
            if not (props.get(f"{side}PortRange") or props.get(f"{side}PortRanges")):
                raise BadRequest(f"{where} needs {side}PortRange(s).", code="SecurityRuleParameterMissing")
        props["provisioningState"] = "Updating"
        return {"name": name, "id": str(nsg_id.child("securityRules", name)), "etag": etag(),
                "type": f"{NS}/networkSecurityGroups/securityRules", "properties": props}

    @staticmethod
    def _check_priorities(rules: list[dict[str, Any]]) -> None:
        seen: dict[tuple[str, int], str] = {}
        for r in rules:
            key = (r["properties"]["direction"], r["properties"]["priority"])
            if key in seen:
                raise BadRequest(f"Security rules '{seen[key]}' and '{r['name']}' have the same priority "
                                 f"{key[1]} and direction {key[0]}.", code="SecurityRuleConflict")
            seen[key] = r["name"]

    def _default_rules(self, nsg_id: ResourceId) -> list[dict[str, Any]]:
        out = []
        for name, desc, src, dst, access, prio, direction in DEFAULT_RULES:
            out.append({"name": name, "id": str(nsg_id.child("defaultSecurityRules", name)), "etag": etag(),
                        "type": f"{NS}/networkSecurityGroups/defaultSecurityRules",
                        "properties": {"provisioningState": "Succeeded", "description": desc, "protocol": "*",
                                       "sourcePortRange": "*", "destinationPortRange": "*",
                                       "sourceAddressPrefix": src, "destinationAddressPrefix": dst,
                                       "access": access, "priority": prio, "direction": direction}})
        return out

    def put_nsg(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, "networkSecurityGroups", name, body)
        props = dict(_props(body))
        rules = [self._build_rule(rid, r) for r in props.get("securityRules") or []]
        if len({r["name"].lower() for r in rules}) != len(rules):
            raise BadRequest("Security rule names must be unique.", code="InvalidRequestFormat")
        self._check_priorities(rules)
        for computed in ("subnets", "networkInterfaces", "defaultSecurityRules", "provisioningState", "resourceGuid"):
            props.pop(computed, None)
        props.update({"securityRules": rules, "defaultSecurityRules": self._default_rules(rid),
                      "provisioningState": "Updating",
                      "resourceGuid": _guid(existing)})
        record = existing or self.new_record(rid, location, tags, props, etag=etag())
        record["body"].update({"tags": tags, "properties": props, "etag": etag()})
        return self._net_accept(record, str(rid), existing is None, f"{NS}/networkSecurityGroups/write",
                                self.render_network(record))

    def put_rule(self, sub: str, rg: str, nsg: str, name: str, body: dict[str, Any]) -> Written:
        self.writable_rg(sub, rg)
        record = self.require(self.rid(sub, rg, NS, "networkSecurityGroups", nsg))
        self.busy(record)
        rules = record["body"]["properties"]["securityRules"]
        rule = self._build_rule(parse_id(record["body"]["id"]), {**body, "name": name})
        old = next((r for r in rules if r["name"].lower() == name.lower()), None)
        self._check_priorities([r for r in rules if r is not old] + [rule])
        if old:
            rule["name"] = old["name"]
            rules[rules.index(old)] = rule
        else:
            rules.append(rule)
        return self._net_accept(record, rule["id"], old is None, f"{NS}/networkSecurityGroups/securityRules/write",
                                rule)

    def list_default_rules(self, sub: str, rg: str, nsg: str) -> list[dict[str, Any]]:
        record = self.require(self.rid(sub, rg, NS, "networkSecurityGroups", nsg))
        return record["body"]["properties"]["defaultSecurityRules"]

    # -- public IP addresses ---------------------------------------------------------------------
    def put_pip(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, "publicIPAddresses", name, body)
        props = dict(_props(body))
        sku = (body.get("sku") or {}).get("name") or "Standard"
        if sku.lower() not in ("standard", "basic"):
            raise BadRequest(f"Public IP SKU '{sku}' is invalid; use Standard or Basic.", code="InvalidRequestFormat")
        sku = sku.capitalize()
        method = props.get("publicIPAllocationMethod") or ("Static" if sku == "Standard" else "Dynamic")
        method = method.capitalize()
        if method not in ("Static", "Dynamic"):
            raise BadRequest(f"publicIPAllocationMethod '{method}' is invalid.", code="InvalidRequestFormat")
        if sku == "Standard" and method == "Dynamic":
            raise BadRequest("Standard sku publicIp addresses must have the allocation method Static.",
                             code="StandardSkuPublicIPAddressesCannotBeDynamic")
        old_ip = existing["body"]["properties"].get("ipAddress") if existing else None
        for computed in ("ipAddress", "ipConfiguration", "provisioningState", "resourceGuid"):
            props.pop(computed, None)
        props.update({"publicIPAllocationMethod": method, "publicIPAddressVersion": "IPv4",
                      "idleTimeoutInMinutes": props.get("idleTimeoutInMinutes", 4), "provisioningState": "Updating",
                      "resourceGuid": _guid(existing)})
        if method == "Static":
            props["ipAddress"] = old_ip or self._new_public_ip()
        elif old_ip:
            props["ipAddress"] = old_ip
        record = existing or self.new_record(rid, location, tags, props, etag=etag())
        record["body"].update({"tags": tags, "properties": props, "etag": etag(),
                               "sku": {"name": sku, "tier": "Regional"}})
        return self._net_accept(record, str(rid), existing is None, f"{NS}/publicIPAddresses/write",
                                self.render_network(record))

    def _new_public_ip(self) -> str:
        counters = self.store.settings.setdefault("counters", {})
        n = counters.get("publicIp", 0) + 1
        counters["publicIp"] = n
        return str(ipaddress.ip_address("20.50.0.0") + n)

    def set_dynamic_pips(self, nic_ids: list[str], allocated: bool) -> None:
        """Dynamic public IPs get an address while their VM is allocated, as in Azure."""
        for nic_id in nic_ids:
            nic = self.get(nic_id)
            if not nic:
                continue
            for ipc in nic["body"]["properties"]["ipConfigurations"]:
                pip = self.get(_ref(ipc["properties"].get("publicIPAddress")) or "")
                if pip and pip["body"]["properties"]["publicIPAllocationMethod"] == "Dynamic":
                    if allocated:
                        pip["body"]["properties"].setdefault("ipAddress", self._new_public_ip())
                    else:
                        pip["body"]["properties"].pop("ipAddress", None)
                    self.store.touch()

    # -- network interfaces --------------------------------------------------------------------
    def _subnet(self, subnet_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        vnet = self.get(subnet_id)
        if not vnet or vnet["body"]["type"] != f"{NS}/virtualNetworks":
            return None
        rid = parse_id(subnet_id)
        if not rid.children or rid.children[0][0] != "subnets":
            return None
        subnet = self._find_child(vnet, rid)
        return (vnet, subnet) if subnet else None

    def _allocate(self, ipc_id: str, subnet: dict[str, Any], requested: str | None, method: str,
                  keep: str | None) -> str:
        net = ipaddress.ip_network(subnet_prefixes(subnet)[0])
        used = {ipc["properties"].get("privateIPAddress"): ipc["id"] for _, ipc in self.ip_configs_in(subnet["id"])
                if not same_id(ipc["id"], ipc_id)}
        reserved = {net.network_address + i for i in range(4)} | {net.broadcast_address}
        if method == "Static":
            if not requested:
                raise BadRequest(f"Private IP address is required when privateIPAllocationMethod is Static in IP "
                                 f"configuration {ipc_id}.", code="PrivateIPAddressMissing")
            try:
                addr = ipaddress.ip_address(requested)
            except ValueError:
                raise BadRequest(f"The private IP address '{requested}' of {ipc_id} is not a valid IP address.",
                                 code="InvalidPrivateIPAddressFormat") from None
            if addr not in net:
                raise BadRequest(f"IP configuration {ipc_id} is referencing private IP address {addr} which does "
                                 f"not belong to the subnet {subnet['id']} ({net}).",
                                 code="PrivateIPAddressNotInSubnet")
            if addr in reserved:
                raise BadRequest(f"Private static IP address {addr} falls within reserved IP range of subnet "
                                 f"prefix {net}: the first four and the last address are reserved.",
                                 code="PrivateIPAddressInReservedRange")
            if str(addr) in used:
                raise BadRequest(f"IP configuration {ipc_id} is using the private IP address {addr} which is "
                                 f"already allocated to resource {used[str(addr)]}.",
                                 code="PrivateIPAddressIsAllocated")
            return str(addr)
        if keep and ipaddress.ip_address(keep) in net and keep not in used:
            return keep
        for host in net.hosts():
            if host not in reserved and str(host) not in used:
                return str(host)
        raise BadRequest(f"Subnet {subnet['name']} with address prefix {net} does not have enough capacity for 1 "
                         "IP address.", code="SubnetIsFull")

    def put_nic(self, sub: str, rg: str, name: str, body: dict[str, Any]) -> Written:
        rid, existing, location, tags = self.prepare_put(sub, rg, NS, "networkInterfaces", name, body)
        props = dict(_props(body))
        configs = props.get("ipConfigurations") or []
        if not configs:
            raise BadRequest(f"Network interface {rid} needs at least one IP configuration.",
                             code="NetworkInterfaceMustHaveIpConfiguration")
        old_configs = {c["name"].lower(): c for c in (existing["body"]["properties"]["ipConfigurations"]
                                                      if existing else [])}
        built = []
        primaries = 0
        for i, cfg in enumerate(configs):
            cname = cfg.get("name") or f"ipconfig{i + 1}"
            ipc_id = str(rid.child("ipConfigurations", cname))
            cprops = dict(_props(cfg))
            subnet_id = _ref(cprops.get("subnet"))
            found = self._subnet(subnet_id) if subnet_id else None
            if not found:
                raise ArmError(f"Resource {subnet_id} referenced by resource {ipc_id} was not found. Please make "
                               "sure that the referenced resource exists, and that both resources are in the same "
                               "region.", code="InvalidResourceReference", status=400)
            vnet, subnet = found
            if vnet["body"]["location"] != location:
                raise ArmError(f"Subnet {subnet['id']} referenced by {ipc_id} is in location "
                               f"'{vnet['body']['location']}', not in the network interface's location "
                               f"'{location}'. Both resources must be in the same region.",
                               code="InvalidResourceReference", status=400)
            method = str(cprops.get("privateIPAllocationMethod") or "Dynamic").capitalize()
            if method not in ("Static", "Dynamic"):
                raise BadRequest(f"privateIPAllocationMethod '{method}' is invalid.", code="InvalidRequestFormat")
            old = old_configs.get(cname.lower())
            keep = old["properties"].get("privateIPAddress") if old and \
                same_id(_ref(old["properties"].get("subnet")), subnet["id"]) else None
            address = self._allocate(ipc_id, subnet, cprops.get("privateIPAddress"), method, keep)
            pip_id = _ref(cprops.get("publicIPAddress"))
            if pip_id:
                pip = self.get(pip_id)
                if pip is None or pip["body"]["type"] != f"{NS}/publicIPAddresses":
                    raise ArmError(f"Resource {pip_id} referenced by resource {ipc_id} was not found.",
                                   code="InvalidResourceReference", status=400)
                user = self.pip_user(pip["body"]["id"])
                if user and not same_id(user, ipc_id):
                    raise BadRequest(f"Resource {ipc_id} is referencing public IP address {pip['body']['id']} that "
                                     f"is already allocated to resource {user}.", code="PublicIPAddressInUse")
                cprops["publicIPAddress"] = {"id": pip["body"]["id"]}
            primary = bool(cprops.get("primary", len(configs) == 1))
            primaries += primary
            cprops.update({"subnet": {"id": subnet["id"]}, "privateIPAddress": address,
                           "privateIPAllocationMethod": method, "privateIPAddressVersion": "IPv4",
                           "primary": primary, "provisioningState": "Updating"})
            built.append({"name": cname, "id": ipc_id, "etag": etag(),
                          "type": f"{NS}/networkInterfaces/ipConfigurations", "properties": cprops})
        if primaries != 1:
            raise BadRequest(f"Network interface {rid} must have exactly one primary IP configuration.",
                             code="NetworkInterfaceMustHaveOnePrimaryIpConfiguration")
        seen: set[str] = set()
        for ipc in built:
            addr = ipc["properties"]["privateIPAddress"]
            if addr in seen:
                raise BadRequest(f"Private IP address {addr} is used twice in network interface {rid}.",
                                 code="PrivateIPAddressIsAllocated")
            seen.add(addr)
        nsg_id = _ref(props.get("networkSecurityGroup"))
        if nsg_id:
            nsg = self.get(nsg_id)
            if nsg is None or nsg["body"]["type"] != f"{NS}/networkSecurityGroups":
                raise ArmError(f"Resource {nsg_id} referenced by resource {rid} was not found.",
                               code="InvalidResourceReference", status=400)
            props["networkSecurityGroup"] = {"id": nsg["body"]["id"]}
        keep_fields = {k: existing["body"]["properties"][k] for k in ("virtualMachine", "macAddress", "primary")
                       if existing and k in existing["body"]["properties"]}
        for computed in ("virtualMachine", "macAddress", "provisioningState", "resourceGuid"):
            props.pop(computed, None)
        props.setdefault("enableAcceleratedNetworking", False)
        props.setdefault("enableIPForwarding", False)
        props.setdefault("dnsSettings", {"dnsServers": [], "appliedDnsServers": []})
        props.update({"ipConfigurations": built, "nicType": "Standard", "provisioningState": "Updating",
                      "resourceGuid": _guid(existing),
                      **keep_fields})
        record = existing or self.new_record(rid, location, tags, props, etag=etag())
        record["body"].update({"tags": tags, "properties": props, "etag": etag()})
        return self._net_accept(record, str(rid), existing is None, f"{NS}/networkInterfaces/write", record["body"])

    # -- references, for resource-group deletion ---------------------------------------------
    def network_references(self, record: dict[str, Any]) -> list[str]:
        body = record["body"]
        refs: list[str] = []
        if body["type"] == f"{NS}/networkInterfaces":
            for ipc in body["properties"]["ipConfigurations"]:
                refs += [r for r in (_ref(ipc["properties"].get("subnet")),
                                     _ref(ipc["properties"].get("publicIPAddress"))) if r]
            nsg = _ref(body["properties"].get("networkSecurityGroup"))
            refs += [nsg] if nsg else []
        elif body["type"] == f"{NS}/virtualNetworks":
            for s in body["properties"]["subnets"]:
                nsg = _ref(s["properties"].get("networkSecurityGroup"))
                refs += [nsg] if nsg else []
        return refs

    def network_release(self, record: dict[str, Any]) -> None:
        body = record["body"]
        if body["type"] == f"{NS}/virtualNetworks":
            for peering in body["properties"].get("virtualNetworkPeerings") or []:
                self._peering_lost(record, peering)


def _guid(existing: dict[str, Any] | None) -> str:
    return existing["body"]["properties"]["resourceGuid"] if existing else str(uuid.uuid4())


def _op_type(target_id: str, verb: str) -> str:
    rid = parse_id(target_id)
    return f"{rid.full_type}/{verb}"
