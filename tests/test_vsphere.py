"""The vSphere adapter against a real govmomi simulator over verified TLS: login, the error
table, power operations, and the lab's VMs made by lab.vcenter.populate."""

from __future__ import annotations

import socket
import ssl
import urllib.error
from pathlib import Path

import pytest
from pydantic import SecretStr
from pyVmomi import vim, vmodl

from drbook.adapters.vsphere import connect, from_site, map_vsphere_errors, translate
from drbook.config import SiteConfig
from drbook.errors import ConfigError, VSphereError
from lab.ca import ensure_certs
from lab.spec import MachineSpec, load_spec
from lab.vcenter import Placement, SimulatorInfo, create_vm, populate, power_on_all

SPEC = load_spec()


# --- TLS and login --------------------------------------------------------------------------

def test_connects_over_verified_tls(vc: SimulatorInfo):
    with vc.connect() as c:
        assert c.content.about.apiType == "VirtualCenter"
        stub = c.service_instance._stub
        # The session's own SSL context is the verifying one we gave it.
        ctx = stub.schemeArgs["context"]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # Logged out on exit: the session is gone.
    assert c.service_instance is None


def test_wrong_ca_is_refused(vc: SimulatorInfo, tmp_path: Path):
    other_ca = ensure_certs(tmp_path / "other").ca_cert
    with pytest.raises(VSphereError) as err:
        connect(vc.url, vc.user, vc.password, other_ca)
    assert "certificate" in str(err.value) and "not trusted" in str(err.value)
    assert not err.value.retryable
    # Without a bundle the system trust store is used, which does not know the lab CA either.
    with pytest.raises(VSphereError, match="not trusted"):
        connect(vc.url, vc.user, vc.password, None)


def test_wrong_password_is_not_retryable_and_not_echoed(vc: SimulatorInfo):
    with pytest.raises(VSphereError) as err:
        connect(vc.url, vc.user, SecretStr("hunter2-wrong"), vc.ca_bundle)
    assert "refused the user name or password" in str(err.value)
    assert not err.value.retryable
    assert "hunter2" not in str(err.value) and vc.password.get_secret_value() not in str(err.value)


def test_nobody_listening_is_retryable(vc: SimulatorInfo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VSphereError) as err:
        connect(f"https://127.0.0.1:{port}/sdk", vc.user, vc.password, vc.ca_bundle, timeout=5)
    assert err.value.retryable and "cannot reach vCenter" in str(err.value)


def test_url_must_be_https():
    with pytest.raises(ConfigError):
        connect("http://127.0.0.1/sdk", "u", SecretStr("p"))


def test_from_site_resolves_the_password_reference(vc: SimulatorInfo, tmp_path: Path):
    pw = tmp_path / "pw"
    pw.write_text(vc.password.get_secret_value())
    site = SiteConfig.model_validate({
        "site": "t",
        "vcenter": {"url": vc.url, "user": vc.user, "password": f"file:{pw}", "ca_bundle": str(vc.ca_bundle)},
        "azure": {"subscription_id": "s", "resource_group": "rg", "location": "westeurope", "storage_account": "a",
                  "blob_endpoint": "https://127.0.0.1:1/a", "encryption_key": "env:NOPE"},
    })
    with from_site(site) as c:
        assert "app01" in c.vms_by_name()
    with pytest.raises(ConfigError, match="no 'vcenter'"):
        from_site(site.model_copy(update={"vcenter": None}))


# --- the error table (pure) --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("exc", "retryable", "text"),
    [
        (vim.fault.InvalidLogin(msg="Login failure"), False, "refused the user name or password"),
        (vim.fault.NotAuthenticated(), True, "no longer authenticated"),
        (vim.fault.NoPermission(msg="denied"), False, "permission denied"),
        (vmodl.fault.ManagedObjectNotFound(), False, "no longer exists"),
        (vim.fault.TaskInProgress(), True, "another task"),
        (vim.fault.InvalidPowerState(msg="bad state"), False, "InvalidPowerState: bad state"),
        (vim.fault.DuplicateName(), False, "DuplicateName"),
        (ConnectionResetError(104, "Connection reset by peer"), True, "cannot reach vCenter"),
        (socket.timeout("timed out"), True, "did not answer in time"),
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), True, "Connection refused"),
    ],
)
def test_error_table(exc: BaseException, retryable: bool, text: str):
    err = translate(exc, "doing x")
    assert isinstance(err, VSphereError)
    assert err.retryable is retryable
    assert str(err).startswith("doing x: ") and text in str(err)


def test_map_errors_keeps_the_cause_and_passes_dr_errors():
    with pytest.raises(VSphereError) as err:
        with map_vsphere_errors("x"):
            raise vim.fault.TaskInProgress()
    assert isinstance(err.value.__cause__, vim.fault.TaskInProgress)
    with pytest.raises(ConfigError):
        with map_vsphere_errors("x"):
            raise ConfigError("mine")


# --- populate and power ------------------------------------------------------------------------

def test_populate_made_the_lab_vms_and_is_idempotent(vc: SimulatorInfo, conn):
    names = conn.vms_by_name()
    assert all(len(names[m.name]) == 1 for m in SPEC.machines if m.vmware)
    assert "phys01" not in names  # a physical server has no VM
    assert conn.power_state("spare01") == "poweredOff"  # a spare stays off
    before = sum(len(v) for v in names.values())
    assert populate(vc.url, vc.user, vc.password, str(vc.ca_bundle), SPEC) == []
    assert sum(len(v) for v in conn.vms_by_name().values()) == before
    # Port groups exist once per network, named after the spec's networks.
    dc = Placement(conn).datacenter
    nets = [n.name for n in dc.network]
    assert nets.count("app-net") == 1 and nets.count("db-net") == 1


def test_guest_ip_and_tools_after_power_on(conn):
    vm = conn.find_vm("db01")
    assert vm.runtime.powerState == "poweredOn"
    assert vm.guest.ipAddress == "10.10.2.13"
    assert [list(n.ipAddress) for n in vm.guest.net] == [["10.10.2.13"]]
    assert vm.guest.net[0].network == "db-net"
    assert vm.guest.toolsRunningStatus == "guestToolsRunning" and vm.guest.toolsStatus == "toolsOk"
    assert vm.guest.hostName == "db01"


def test_power_off_and_on_are_idempotent(conn):
    assert conn.power_off("app02") is True
    assert conn.power_state("app02") == "poweredOff"
    assert conn.find_vm("app02").guest.toolsRunningStatus == "guestToolsNotRunning"
    assert conn.power_off("app02") is False
    assert conn.power_on("app02") is True
    assert conn.power_on("app02") is False
    assert conn.power_state("app02") == "poweredOn"
    assert conn.find_vm("app02").guest.toolsStatus == "toolsOk"


def test_shutdown_guest_uses_tools_and_falls_back_to_power_off(vc: SimulatorInfo, conn):
    assert conn.shutdown_guest("app02", timeout=10, poll=0.05) == "guest-shutdown"
    assert conn.power_state("app02") == "poweredOff"
    assert conn.shutdown_guest("app02") == "already-off"
    assert power_on_all(vc.url, vc.user, vc.password, str(vc.ca_bundle), SPEC) == ["app02"]

    notools = MachineSpec(name="notools01", address="127.0.1.99", ip="10.10.1.99", network="app-net",
                          disks=[{"name": "disk0", "size_mib": 8}])
    create_vm(conn, Placement(conn), notools, tools=False)
    try:
        assert conn.find_vm("notools01").guest.toolsRunningStatus == "guestToolsNotRunning"
        assert conn.shutdown_guest("notools01", timeout=10, poll=0.05) == "powered-off"
        assert conn.power_state("notools01") == "poweredOff"
    finally:
        conn.wait_for_task(conn.find_vm("notools01").Destroy_Task(), "destroy notools01")


def test_unknown_vm_is_a_clear_error(conn):
    with pytest.raises(VSphereError, match="no VM named 'nope'"):
        conn.power_off("nope")


def test_simulator_fault_is_translated(conn):
    vm = conn.find_vm("app01")
    with pytest.raises(VSphereError) as err:
        with map_vsphere_errors("powering on app01 again"):
            conn._wait(vm.PowerOnVM_Task(), "x", 10)  # already on: the server refuses
    assert "InvalidPowerState" in str(err.value) and not err.value.retryable
