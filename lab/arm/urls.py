"""ARM paths the emulator serves, matched case-insensitively, the longest pattern first.

Each route names its method, path template, handler, the api-version family it checks and the
operation type (ARM's RBAC name) that faults and durations are keyed by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from . import responses as h

SUB = "/subscriptions/{sub}"
RG = SUB + "/resourceGroups/{rg}"
CP = RG + "/providers/Microsoft.Compute"
NP = RG + "/providers/Microsoft.Network"
SP = RG + "/providers/Microsoft.Storage"


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Callable
    family: str
    op_type: str
    regex: re.Pattern

    @property
    def weight(self) -> tuple[int, int]:
        literal = re.sub(r"\{[^}]+\}", "", self.template)
        return len(literal), self.template.count("/")


def _compile(template: str) -> re.Pattern:
    out = ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{"):
            name = part[1:-1]
            out += f"(?P<{name[:-1]}>/.+?)" if name.endswith("*") else f"(?P<{name}>[^/]+)"
        else:
            out += re.escape(part)
    return re.compile(f"^{out}/?$", re.IGNORECASE)


_ROUTES: list[Route] = []


def add(method: str, template: str, handler: Callable, family: str, op_type: str) -> None:
    _ROUTES.append(Route(method, template, handler, family, op_type, _compile(template)))


# -- Microsoft.Resources --------------------------------------------------------------------
RGT = "Microsoft.Resources/subscriptions/resourceGroups"
add("PUT", RG, h.rg_put, "resources", f"{RGT}/write")
add("GET", RG, h.rg_get, "resources", f"{RGT}/read")
add("HEAD", RG, h.rg_head, "resources", f"{RGT}/read")
add("PATCH", RG, h.rg_patch, "resources", f"{RGT}/write")
add("DELETE", RG, h.rg_delete, "resources", f"{RGT}/delete")
add("GET", SUB + "/resourceGroups", h.rg_list, "resources", f"{RGT}/read")
add("GET", SUB + "/resources", h.resources_list, "resources", "Microsoft.Resources/subscriptions/resources/read")
add("GET", RG + "/resources", h.resources_list, "resources", f"{RGT}/resources/read")
add("GET", SUB + "/operationresults/{opid}", h.op_result, "resources", "Microsoft.Resources/operationresults/read")
TAGS = "{scope*}/providers/Microsoft.Resources/tags/default"
add("GET", TAGS, h.tags_get, "resources", "Microsoft.Resources/tags/read")
add("PUT", TAGS, h.tags_put, "resources", "Microsoft.Resources/tags/write")
add("PATCH", TAGS, h.tags_patch, "resources", "Microsoft.Resources/tags/write")
add("DELETE", TAGS, h.tags_delete, "resources", "Microsoft.Resources/tags/delete")

# -- operation status, per provider -----------------------------------------------------------
for ns, family in (("Microsoft.Compute", "compute"), ("Microsoft.Network", "network"),
                   ("Microsoft.Storage", "storage")):
    base = SUB + f"/providers/{ns}/locations/{{loc}}"
    add("GET", base + "/operations/{opid}", h.op_status, family, f"{ns}/locations/operations/read")
    add("GET", base + "/operationResults/{opid}", h.op_result, family, f"{ns}/locations/operationResults/read")
DISK_OPS = SUB + "/providers/Microsoft.Compute/locations/{loc}"
add("GET", DISK_OPS + "/DiskOperations/{opid}", h.op_status, "disks", "Microsoft.Compute/locations/DiskOperations/read")
add("GET", DISK_OPS + "/DiskOperationResults/{opid}", h.op_result, "disks",
    "Microsoft.Compute/locations/DiskOperations/read")

# -- Microsoft.Compute ----------------------------------------------------------------------------
VM = CP + "/virtualMachines/{name}"
VMT = "Microsoft.Compute/virtualMachines"
add("PUT", VM, h.vm_put, "compute", f"{VMT}/write")
add("GET", VM, h.vm_get, "compute", f"{VMT}/read")
add("PATCH", VM, h.vm_patch, "compute", f"{VMT}/write")
add("DELETE", VM, h.vm_delete, "compute", f"{VMT}/delete")
add("GET", CP + "/virtualMachines", h.vm_list, "compute", f"{VMT}/read")
add("GET", SUB + "/providers/Microsoft.Compute/virtualMachines", h.vm_list, "compute", f"{VMT}/read")
add("GET", SUB + "/providers/Microsoft.Compute/locations/{loc}/virtualMachines", h.vm_list, "compute",
    f"{VMT}/read")
add("GET", VM + "/instanceView", h.vm_instance_view, "compute", f"{VMT}/instanceView/read")
add("GET", VM + "/vmSizes", h.vm_available_sizes, "compute", f"{VMT}/vmSizes/read")
for action in ("start", "powerOff", "deallocate", "restart"):
    add("POST", VM + f"/{action}", h._vm_action(action), "compute", f"{VMT}/{action}/action")
add("POST", VM + "/runCommand", h.vm_run_command, "compute", f"{VMT}/runCommand/action")
add("GET", SUB + "/providers/Microsoft.Compute/locations/{loc}/vmSizes", h.vm_sizes, "compute",
    "Microsoft.Compute/locations/vmSizes/read")
for kind in ("disks", "snapshots"):
    one = CP + f"/{kind}/{{name}}"
    t = f"Microsoft.Compute/{kind}"
    add("PUT", one, h._disk_put(kind), "disks", f"{t}/write")
    add("GET", one, h._kind(kind, "get"), "disks", f"{t}/read")
    add("PATCH", one, h._kind(kind, "patch"), "disks", f"{t}/write")
    add("DELETE", one, h._kind(kind, "delete"), "disks", f"{t}/delete")
    add("GET", CP + f"/{kind}", h._kind(kind, "list"), "disks", f"{t}/read")
    add("GET", SUB + f"/providers/Microsoft.Compute/{kind}", h._kind(kind, "list"), "disks", f"{t}/read")
    add("POST", one + "/beginGetAccess", h._grant(kind), "disks", f"{t}/beginGetAccess/action")
    add("POST", one + "/endGetAccess", h._kind(kind, "revoke"), "disks", f"{t}/endGetAccess/action")

# -- Microsoft.Network ------------------------------------------------------------------------------
for type_ in ("virtualNetworks", "networkSecurityGroups", "networkInterfaces", "publicIPAddresses"):
    one = NP + f"/{type_}/{{name}}"
    t = f"Microsoft.Network/{type_}"
    add("PUT", one, h._net_top(type_, "put"), "network", f"{t}/write")
    add("GET", one, h._net_top(type_, "get"), "network", f"{t}/read")
    add("PATCH", one, h._net_top(type_, "patch"), "network", f"{t}/write")
    add("DELETE", one, h._net_top(type_, "delete"), "network", f"{t}/delete")
    add("GET", NP + f"/{type_}", h._net_top(type_, "list"), "network", f"{t}/read")
    add("GET", SUB + f"/providers/Microsoft.Network/{type_}", h._net_top(type_, "list"), "network", f"{t}/read")
for parent, child in (("virtualNetworks", "subnets"), ("networkSecurityGroups", "securityRules"),
                      ("virtualNetworks", "virtualNetworkPeerings")):
    many = NP + f"/{parent}/{{parent}}/{child}"
    t = f"Microsoft.Network/{parent}/{child}"
    add("PUT", many + "/{name}", h._net_child(parent, child, "put"), "network", f"{t}/write")
    add("GET", many + "/{name}", h._net_child(parent, child, "get"), "network", f"{t}/read")
    add("DELETE", many + "/{name}", h._net_child(parent, child, "delete"), "network", f"{t}/delete")
    add("GET", many, h._net_child(parent, child, "list"), "network", f"{t}/read")
add("GET", NP + "/networkSecurityGroups/{parent}/defaultSecurityRules", h.nsg_default_rules, "network",
    "Microsoft.Network/networkSecurityGroups/defaultSecurityRules/read")

# -- Microsoft.Storage ------------------------------------------------------------------------------
SA = SP + "/storageAccounts/{name}"
SAT = "Microsoft.Storage/storageAccounts"
add("PUT", SA, h.sa_put, "storage", f"{SAT}/write")
add("GET", SA, h.sa_get, "storage", f"{SAT}/read")
add("PATCH", SA, h.sa_patch, "storage", f"{SAT}/write")
add("DELETE", SA, h.sa_delete, "storage", f"{SAT}/delete")
add("GET", SP + "/storageAccounts", h.sa_list, "storage", f"{SAT}/read")
add("GET", SUB + "/providers/Microsoft.Storage/storageAccounts", h.sa_list, "storage", f"{SAT}/read")
add("POST", SA + "/listKeys", h.sa_keys, "storage", f"{SAT}/listKeys/action")
add("POST", SUB + "/providers/Microsoft.Storage/checkNameAvailability", h.sa_name_check, "storage",
    "Microsoft.Storage/checkNameAvailability/read")

ROUTES: tuple[Route, ...] = tuple(sorted(_ROUTES, key=lambda r: r.weight, reverse=True))

LAB_ROUTES: dict[tuple[str, str], Callable] = {
    ("GET", "/_lab/health"): h.lab_health,
    ("POST", "/_lab/reset"): h.lab_reset,
    ("GET", "/_lab/operations"): h.lab_operations,
    ("POST", "/_lab/operations"): h.lab_operations,
    ("GET", "/_lab/faults"): h.lab_faults,
    ("POST", "/_lab/faults"): h.lab_faults,
    ("DELETE", "/_lab/faults"): h.lab_faults,
    ("GET", "/_lab/snapshot-limits"): h.lab_snapshot_limits,
    ("POST", "/_lab/snapshot-limits"): h.lab_snapshot_limits,
    ("GET", "/_lab/snapshot-families"): h.lab_snapshot_families,
    ("POST", "/_lab/run-command-output"): h.lab_run_command_output,
    ("GET", "/_lab/run-commands"): h.lab_run_commands,
    ("DELETE", "/_lab/run-commands"): h.lab_run_commands,
    ("POST", "/_lab/guest-disks"): h.lab_guest_disks,
}


def match(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """The route for a request, its path parameters, and whether the path exists for another method."""
    other_method = False
    for route in ROUTES:
        m = route.regex.match(path)
        if not m:
            continue
        if route.method != method:
            other_method = True
            continue
        return route, dict(m.groupdict()), False
    return None, {}, other_method
