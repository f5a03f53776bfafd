"""vCenter through pyVmomi: a verified-TLS session, one-shot inventory, power operations.

Everything pyVmomi raises is translated here (`map_vsphere_errors`), so callers only ever
see VSphereError with `retryable` set. The inventory is ONE PropertyCollector retrieval
over a ContainerView (plus ContinueRetrievePropertiesEx pages): a vCenter with thousands
of VMs answers it in one round trip instead of one call per VM and property.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import VmomiSupport, vim, vmodl

from drbook.errors import ConfigError, DRError, VSphereError

if TYPE_CHECKING:
    from drbook.config import SiteConfig

log = logging.getLogger(__name__)

PowerState = Literal["poweredOn", "poweredOff", "suspended"]
ShutdownOutcome = Literal["already-off", "guest-shutdown", "powered-off"]


# --- exception translation -------------------------------------------------------------

def _fault_name(exc: BaseException) -> str:
    return getattr(exc, "_wsdlName", None) or type(exc).__name__


def _fault_text(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or ""
    name = _fault_name(exc)
    return f"{name}: {msg}" if msg else name


# (exception type, retryable, what to say). First match wins, so specific types go first.
_ERROR_TABLE: list[tuple[type[BaseException], bool, Any]] = [
    (vim.fault.InvalidLogin, False, lambda e: "vCenter refused the user name or password"),
    (vim.fault.NotAuthenticated, True, lambda e: "the vCenter session is no longer authenticated"),
    (vim.fault.NoPermission, False, lambda e: f"permission denied ({_fault_text(e)})"),
    (vmodl.fault.ManagedObjectNotFound, False, lambda e: "the object no longer exists in vCenter"),
    (vim.fault.TaskInProgress, True, lambda e: "another task is running on the object"),
    (vmodl.fault.RequestCanceled, True, lambda e: "the request was cancelled"),
    (vmodl.MethodFault, False, _fault_text),
    (ssl.SSLCertVerificationError, False, lambda e: f"TLS certificate of vCenter not trusted ({e.verify_message}); check vcenter.ca_bundle"),
    (ssl.SSLError, False, lambda e: f"TLS handshake with vCenter failed ({e.reason or e})"),
    (ConnectionError, True, lambda e: f"cannot reach vCenter ({e.strerror or type(e).__name__})"),
    (socket.timeout, True, lambda e: "vCenter did not answer in time"),
    (http.client.HTTPException, True, lambda e: f"vCenter's HTTP answer broke off ({type(e).__name__})"),
    (OSError, True, lambda e: f"cannot reach vCenter ({e.strerror or type(e).__name__})"),
]


def translate(exc: BaseException, action: str) -> VSphereError:
    """The VSphereError a pyVmomi / socket / TLS exception stands for."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason  # pyVmomi's version probe wraps the TLS / socket error
    for kind, retryable, describe in _ERROR_TABLE:
        if isinstance(exc, kind):
            return VSphereError(f"{action}: {describe(exc)}", retryable=retryable)
    return VSphereError(f"{action}: {type(exc).__name__}", retryable=False)


@contextmanager
def map_vsphere_errors(action: str) -> Iterator[None]:
    try:
        yield
    except DRError:
        raise
    except (vmodl.MethodFault, OSError, http.client.HTTPException, urllib.error.URLError) as exc:
        raise translate(exc, action) from exc


# --- connection --------------------------------------------------------------------------

def ssl_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """Always verifying: the lab's CA bundle, or the system's trust store when None."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(slots=True)
class MoRecord:
    """One managed object of an inventory retrieval, in plain Python (no pyVmomi types):
    references become moid strings, devices and guest NICs become dicts."""

    type: str
    moid: str
    props: dict[str, Any] = field(default_factory=dict)


# Exact type names: the simulator's ContainerView matches types exactly (vCenter also
# matches subtypes, so listing the subtypes is harmless there).
VIEW_TYPES = [
    vim.VirtualMachine, vim.HostSystem, vim.ComputeResource, vim.ClusterComputeResource,
    vim.Datacenter, vim.Folder, vim.Network, vim.dvs.DistributedVirtualPortgroup, vim.OpaqueNetwork,
]

PROPERTIES: dict[type, list[str]] = {
    vim.VirtualMachine: [
        "name", "parent", "config.uuid", "config.instanceUuid", "config.template",
        "config.guestId", "config.guestFullName", "config.hardware.numCPU",
        "config.hardware.memoryMB", "config.hardware.device", "runtime.powerState",
        "runtime.host", "guest.toolsStatus", "guest.toolsRunningStatus", "guest.ipAddress",
        "guest.net", "guest.guestFullName",
    ],
    vim.HostSystem: ["name", "parent"],
    vim.ComputeResource: ["name", "parent"],  # covers ClusterComputeResource as well
    vim.Datacenter: ["name", "parent"],
    vim.Folder: ["name", "parent"],
    vim.Network: ["name"],
    vim.dvs.DistributedVirtualPortgroup: ["key"],
    vim.OpaqueNetwork: ["summary"],
}


class VSphereConnection:
    """A logged-in vCenter session; a context manager that logs out on exit."""

    def __init__(self, service_instance: Any, url: str) -> None:
        self._si = service_instance
        self.url = url
        with map_vsphere_errors("reading vCenter's service content"):
            self.content = service_instance.RetrieveContent()

    @property
    def service_instance(self) -> Any:
        return self._si

    def close(self) -> None:
        if self._si is None:
            return
        si, self._si = self._si, None
        try:
            Disconnect(si)
        except (vmodl.MethodFault, OSError, http.client.HTTPException) as exc:
            # The session dies with the server anyway; a failed logout changes nothing.
            log.debug("vCenter logout failed: %s", translate(exc, "logout"))

    def __enter__(self) -> "VSphereConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inventory ---------------------------------------------------------------------

    def inventory(self, page_size: int = 1000) -> list[MoRecord]:
        """Every datacenter, folder, cluster, host, network and VM with the properties
        discovery needs, in one retrieval (paged by `page_size` objects)."""
        with map_vsphere_errors("retrieving vCenter inventory"):
            objects = self._collect(VIEW_TYPES, PROPERTIES, page_size)
        return [_record(o) for o in objects]

    def _collect(self, types: list[type], properties: dict[type, list[str]], page_size: int = 1000) -> list[Any]:
        """One RetrievePropertiesEx over a ContainerView of `types` from the root folder."""
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, types, True)
        try:
            return self._retrieve(view, properties, page_size)
        finally:
            view.DestroyView()

    def _retrieve(self, view: Any, properties: dict[type, list[str]], page_size: int) -> list[Any]:
        pc = self.content.propertyCollector
        traverse = vmodl.query.PropertyCollector.TraversalSpec(
            name="traverseView", type=vim.view.ContainerView, path="view", skip=False
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=paths, all=False)
                for kind, paths in properties.items()
            ],
        )
        result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=page_size))
        objects: list[Any] = []
        while result is not None:
            objects.extend(result.objects)
            if not result.token:
                break
            result = pc.ContinueRetrievePropertiesEx(result.token)
        return objects

    # --- power -----------------------------------------------------------------------------

    def vms_by_name(self) -> dict[str, list[Any]]:
        """Every VM (pyVmomi object) by name, from one retrieval."""
        with map_vsphere_errors("listing VMs"):
            objects = self._collect([vim.VirtualMachine], {vim.VirtualMachine: ["name"]})
        found: dict[str, list[Any]] = {}
        for o in objects:
            if o.propSet:
                found.setdefault(o.propSet[0].val, []).append(o.obj)
        return found

    def find_vm(self, vm_name: str) -> Any:
        """The VM of that name; exactly one must exist."""
        found = self.vms_by_name().get(vm_name, [])
        if not found:
            raise VSphereError(f"no VM named {vm_name!r} in vCenter {self.url}")
        if len(found) > 1:
            raise VSphereError(f"{len(found)} VMs are named {vm_name!r} in vCenter {self.url}; names must be unique")
        return found[0]

    def power_state(self, vm_name: str) -> PowerState:
        vm = self.find_vm(vm_name)
        with map_vsphere_errors(f"reading the power state of {vm_name!r}"):
            return str(vm.runtime.powerState)  # type: ignore[return-value]

    def power_off(self, vm_name: str, timeout: float = 300.0) -> bool:
        """Hard power-off; True when it was on, False when it was already off."""
        vm = self.find_vm(vm_name)
        action = f"powering off {vm_name!r}"
        with map_vsphere_errors(action):
            if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOff:
                return False
            try:
                self._wait(vm.PowerOffVM_Task(), action, timeout)
            except vim.fault.InvalidPowerState:
                if vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOff:
                    raise
                return False  # someone else powered it off meanwhile
        return True

    def power_on(self, vm_name: str, timeout: float = 300.0) -> bool:
        """True when it was off and is now on, False when it was already on."""
        vm = self.find_vm(vm_name)
        action = f"powering on {vm_name!r}"
        with map_vsphere_errors(action):
            if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
                return False
            try:
                self._wait(vm.PowerOnVM_Task(), action, timeout)
            except vim.fault.InvalidPowerState:
                if vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOn:
                    raise
                return False
        return True

    def shutdown_guest(self, vm_name: str, timeout: float = 300.0, poll: float = 1.0) -> ShutdownOutcome:
        """Clean shutdown through VMware Tools when they run; otherwise, or when the guest
        is still up after `timeout`, a hard power-off (what SRM does)."""
        vm = self.find_vm(vm_name)
        with map_vsphere_errors(f"shutting down the guest of {vm_name!r}"):
            if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOff:
                return "already-off"
            if vm.guest.toolsRunningStatus != "guestToolsRunning":
                log.info("VMware Tools not running in %s: powering off instead", vm_name)
                self.power_off(vm_name, timeout)
                return "powered-off"
            try:
                vm.ShutdownGuest()
            except vim.fault.InvalidPowerState:
                return "already-off"  # it went down between our look and the request
            except (vim.fault.ToolsUnavailable, vim.fault.GuestOperationsUnavailable):
                log.info("VMware Tools of %s stopped answering: powering off instead", vm_name)
                self.power_off(vm_name, timeout)
                return "powered-off"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOff:
                    return "guest-shutdown"
                time.sleep(poll)
        log.warning("guest of %s still running %.0fs after shutdown: powering off", vm_name, timeout)
        self.power_off(vm_name, timeout)
        return "powered-off"

    def _wait(self, task: Any, action: str, timeout: float) -> Any:
        """Wait for a task by polling its state; its fault is raised for the caller to map."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            info = task.info
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                raise info.error
            if time.monotonic() > deadline:
                raise VSphereError(f"{action}: task {task._moId} still {info.state} after {timeout:.0f}s", retryable=True)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def wait_for_task(self, task: Any, action: str, timeout: float = 300.0) -> Any:
        with map_vsphere_errors(action):
            return self._wait(task, action, timeout)


def connect(url: str, user: str, password: SecretStr, ca_bundle: Path | str | None = None,
            *, timeout: float = 30.0) -> VSphereConnection:
    """Log in to vCenter at its SDK URL (https://host[:port]/sdk) over verified TLS."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"vCenter URL {url!r} must be https://host[:port]/sdk")
    with map_vsphere_errors(f"connecting to vCenter {url} as {user!r}"):
        si = SmartConnect(
            protocol="https",
            host=parts.hostname,
            port=parts.port or 443,
            path=parts.path or "/sdk",
            user=user,
            pwd=password.get_secret_value(),
            sslContext=ssl_context(ca_bundle),
            httpConnectionTimeout=timeout,
        )
    return VSphereConnection(si, url)


def from_site(site: "SiteConfig") -> VSphereConnection:
    from drbook.secrets import resolve_secret

    vc = site.vcenter
    if vc is None:
        raise ConfigError(f"site {site.site!r} has no 'vcenter' section")
    return connect(vc.url, vc.user, resolve_secret(vc.password), vc.ca_bundle)


# --- pyVmomi objects to plain records ------------------------------------------------------

def _moid(ref: Any) -> str | None:
    return ref._moId if ref is not None else None


def _record(content: Any) -> MoRecord:
    rec = MoRecord(type=content.obj._wsdlName, moid=content.obj._moId)
    for prop in content.propSet or []:
        rec.props[prop.name] = _plain(prop.name, prop.val)
    return rec


def _plain(name: str, value: Any) -> Any:
    if name == "config.hardware.device":
        return [d for d in (_device(x) for x in value or []) if d is not None]
    if name == "guest.net":
        return [
            {
                "network": n.network,
                "mac": n.macAddress,
                "ips": list(n.ipAddress or []),
                "device_key": n.deviceConfigId,
                "connected": n.connected,
            }
            for n in value or []
        ]
    if name == "summary":  # OpaqueNetwork
        return {"name": value.name, "opaque_network_id": getattr(value, "opaqueNetworkId", None)}
    if isinstance(value, VmomiSupport.ManagedObject):
        return value._moId
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _device(d: Any) -> dict | None:
    label = d.deviceInfo.label if d.deviceInfo else ""
    if isinstance(d, vim.vm.device.VirtualDisk):
        b = d.backing
        capacity = d.capacityInBytes or (d.capacityInKB or 0) * 1024
        return {
            "kind": "disk",
            "key": d.key,
            "label": label,
            "capacity_bytes": int(capacity),
            "file": getattr(b, "fileName", None),
            "thin": getattr(b, "thinProvisioned", None),
            "disk_uuid": getattr(b, "uuid", None),
            "controller_key": d.controllerKey,
            "unit_number": d.unitNumber,
        }
    if isinstance(d, vim.vm.device.VirtualEthernetCard):
        b = d.backing
        nic = {
            "kind": "nic",
            "key": d.key,
            "label": label,
            "adapter": d._wsdlName,
            "mac": d.macAddress,
            "connected": bool(d.connectable.connected) if d.connectable else None,
            "network_name": None,
            "network_moid": None,
            "portgroup_key": None,
            "opaque_network_id": None,
        }
        if isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            nic["network_name"] = b.deviceName
            nic["network_moid"] = _moid(b.network)
        elif isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            nic["portgroup_key"] = b.port.portgroupKey if b.port else None
        elif isinstance(b, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
            nic["opaque_network_id"] = b.opaqueNetworkId
        return nic
    return None
