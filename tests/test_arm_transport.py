"""The ARM emulator's transport, LROs, faults, persistence: raw HTTPS and the real SDK pollers."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid

import azure.mgmt.compute.models as cm
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError
from azure.mgmt.resource.resources import ResourceManagementClient

from lab.arm.credential import StaticTokenCredential
from tests.arm_fixtures import LOCATION, arm, arm_azurite, arm_certs, arm_server, start_server  # noqa: F401

RG_API = "2025-04-01"
VM_API = "2026-04-01"


def call(arm, method: str, path: str, body=None, token: str | None = "t", headers=None):
    """Raw HTTPS to the emulator, verified against the lab CA; returns (status, headers, json|None)."""
    req = urllib.request.Request(arm.base_url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(arm.ca))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            raw, status, hdrs = resp.read(), resp.status, resp.headers
    except urllib.error.HTTPError as err:
        raw, status, hdrs = err.read(), err.code, err.headers
    return status, hdrs, json.loads(raw) if raw else None



def _poll_operation(arm, path: str, timeout: float = 20) -> dict:
    """The operation once it is no longer InProgress (polled as the SDKs poll: a loaded
    machine finishes a 0.5 s operation late, never early)."""
    deadline = time.monotonic() + timeout
    while True:
        _, _, op = call(arm, "GET", path)
        if op["status"] != "InProgress" or time.monotonic() > deadline:
            return op
        time.sleep(0.1)

def test_missing_token_is_401_with_arm_error_body(arm):
    status, headers, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups?api-version={RG_API}",
                                 token=None)
    assert status == 401
    assert body["error"]["code"] == "AuthenticationFailed"
    assert "Bearer" in headers["WWW-Authenticate"]
    status, _, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups?api-version={RG_API}",
                           token=None, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert (status, body["error"]["code"]) == (401, "InvalidAuthenticationToken")


def test_api_version_is_required_and_checked(arm):
    status, _, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups")
    assert (status, body["error"]["code"]) == (400, "MissingApiVersionParameter")
    status, _, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups?api-version=2099-01-01")
    assert (status, body["error"]["code"]) == (400, "InvalidApiVersionParameter")
    assert RG_API in body["error"]["message"]
    path = f"/subscriptions/{arm.sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x"
    status, _, body = call(arm, "GET", f"{path}?api-version=2099-01-01")
    assert (status, body["error"]["code"]) == (400, "NoRegisteredProviderFound")
    # a disk api-version is not a VM api-version
    status, _, body = call(arm, "GET", f"{path}?api-version=2026-03-02")
    assert (status, body["error"]["code"]) == (400, "NoRegisteredProviderFound")


def test_not_found_bodies_and_sdk_exceptions(arm):
    status, _, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups/nope?api-version={RG_API}")
    assert (status, body["error"]["code"]) == (404, "ResourceGroupNotFound")
    with pytest.raises(ResourceNotFoundError) as exc:
        arm.compute.virtual_machines.get("nope", "vm")
    assert exc.value.error.code == "ResourceGroupNotFound"
    arm.rg("rg")
    with pytest.raises(ResourceNotFoundError) as exc:
        arm.compute.virtual_machines.get("rg", "missing")
    assert exc.value.error.code == "ResourceNotFound"
    assert "Microsoft.Compute/virtualMachines/missing" in exc.value.error.message
    status, _, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourceGroups/rg/providers/Microsoft.Compute/"
                                       f"widgets/x?api-version={VM_API}")
    assert (status, body["error"]["code"]) == (404, "InvalidResourceType")
    other = str(uuid.uuid4())
    status, _, body = call(arm, "GET", f"/subscriptions/{other}/resourcegroups/rg?api-version={RG_API}")
    assert (status, body["error"]["code"]) == (404, "SubscriptionNotFound")


def test_paths_are_case_insensitive_where_arm_s_are(arm):
    arm.rg("MyGroup")
    arm.disk("MyGroup", "disk1")
    status, _, body = call(arm, "GET", f"/SUBSCRIPTIONS/{arm.sub}/RESOURCEGROUPS/mygroup/providers/"
                                       f"microsoft.compute/DISKS/DISK1?api-version=2026-03-02")
    assert status == 200
    assert body["id"] == f"/subscriptions/{arm.sub}/resourceGroups/MyGroup/providers/Microsoft.Compute/disks/disk1"
    assert arm.compute.disks.get("mygroup", "Disk1").name == "disk1"


def test_tls_is_verified_against_the_lab_ca(arm):
    client = ResourceManagementClient(StaticTokenCredential(), arm.sub, base_url=arm.base_url,
                                      retry_total=0)  # default trust store: the lab CA is unknown to it
    with pytest.raises(ServiceRequestError):
        client.resource_groups.check_existence("rg")


def test_lro_headers_and_operation_status_progress(arm):
    arm.rg("rg")
    arm.control.set_operation("Microsoft.Compute/disks/write", duration=0.6)
    disk_path = (f"/subscriptions/{arm.sub}/resourceGroups/rg/providers/Microsoft.Compute/disks/{{}}"
                 "?api-version=2026-03-02")
    path = disk_path.format("d1")
    status, headers, body = call(arm, "PUT", path, {"location": LOCATION, "properties": {
        "creationData": {"createOption": "Empty"}, "diskSizeGB": 1}})
    assert status == 202
    assert body["properties"]["provisioningState"] == "Creating"
    assert headers["Retry-After-Ms"] and "Retry-After" not in headers
    op_url = headers["Azure-AsyncOperation"]
    assert op_url.startswith(arm.base_url) and "api-version=2026-03-02" in op_url
    _, _, op = call(arm, "GET", op_url[len(arm.base_url):])
    assert op["status"] == "InProgress"
    op = _poll_operation(arm, op_url[len(arm.base_url):])
    assert op["status"] == "Succeeded" and op["endTime"]
    _, _, disk = call(arm, "GET", path)
    assert disk["properties"]["provisioningState"] == "Succeeded"
    # a whole-second wait is written as ARM writes it
    arm.control.set_operation("Microsoft.Compute/disks/write", duration=1.5)
    _, headers, _ = call(arm, "PUT", disk_path.format("d2"), {"location": LOCATION, "properties": {
        "creationData": {"createOption": "Empty"}, "diskSizeGB": 1}})
    assert headers["Retry-After"] == "2"


def test_operation_duration_and_failure_are_settable(arm):
    arm.rg("rg")
    arm.control.set_operation("Microsoft.Compute/disks/write", duration=0.4)
    t0 = time.monotonic()
    arm.disk("rg", "slow")
    assert time.monotonic() - t0 >= 0.4
    arm.control.set_operation("Microsoft.Compute/disks/write", outcome="fail", error_code="ZonalAllocationFailed",
                              error_message="no capacity")
    with pytest.raises(HttpResponseError) as exc:
        arm.disk("rg", "doomed")
    assert exc.value.error.code == "ZonalAllocationFailed"
    assert arm.compute.disks.get("rg", "doomed").provisioning_state == "Failed"
    arm.control.set_operation("Microsoft.Compute/disks/write", clear=True)
    assert arm.disk("rg", "fine").provisioning_state == "Succeeded"


def test_faults_throttle_server_error_latency_and_failed_provisioning(arm):
    fast = arm.clients(retry_backoff_factor=0.01)
    arm.rg("rg")
    op = "Microsoft.Resources/subscriptions/resourceGroups/read"
    arm.control.inject_fault(op, throttle=2, retry_after=0.1)
    status, headers, body = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups/rg?api-version={RG_API}")
    assert (status, body["error"]["code"]) == (429, "TooManyRequests")
    assert headers["Retry-After-Ms"] == "100"
    assert fast.resources.resource_groups.get("rg").name == "rg"  # the SDK's retry policy waits and retries
    assert arm.control.faults()[op.lower()]["throttle"] == 0

    arm.control.inject_fault(op, server_error=1)
    assert fast.resources.resource_groups.get("rg").name == "rg"
    status, _, _ = call(arm, "GET", f"/subscriptions/{arm.sub}/resourcegroups/rg?api-version={RG_API}")
    assert status == 200

    arm.control.inject_fault(op, latency=0.3)
    t0 = time.monotonic()
    arm.resources.resource_groups.get("rg")
    assert time.monotonic() - t0 >= 0.3
    arm.control.clear_faults()

    arm.control.inject_fault("Microsoft.Compute/disks/*", fail_provisioning=1)
    with pytest.raises(HttpResponseError) as exc:
        arm.disk("rg", "d1")
    assert exc.value.error.code == "InternalOperationError"
    assert arm.disk("rg", "d2").provisioning_state == "Succeeded"


def test_state_survives_a_restart_and_reset_forgets_it(arm, arm_certs, arm_azurite, tmp_path):
    sub = str(uuid.uuid4())
    server = start_server(arm_certs, arm_azurite, tmp_path / "state", sub)
    port = server.port
    try:
        a = arm.__class__(server, arm.ca, arm_azurite)
        a.rg("keep", team="dr")
        vm = a.vm("vm1", "keep")
        a.control.set_operation("Microsoft.Compute/virtualMachines/delete", duration=0.3)
    finally:
        server.stop()
    server = start_server(arm_certs, arm_azurite, tmp_path / "state", sub, port=port)
    try:
        a = arm.__class__(server, arm.ca, arm_azurite)
        assert a.resources.resource_groups.get("keep").tags == {"team": "dr"}
        again = a.compute.virtual_machines.get("keep", "vm1")
        assert again.vm_id == vm.vm_id
        assert a.compute.disks.get("keep", "vm1-os").managed_by == vm.id
        t0 = time.monotonic()
        a.compute.virtual_machines.begin_delete("keep", "vm1").result(timeout=20)  # the setting persisted too
        assert time.monotonic() - t0 >= 0.3
        a.control.reset()
        assert not a.resources.resource_groups.check_existence("keep")
    finally:
        server.stop()


def test_an_operation_in_flight_finishes_after_a_restart(arm, arm_certs, arm_azurite, tmp_path):
    sub = str(uuid.uuid4())
    server = start_server(arm_certs, arm_azurite, tmp_path / "state", sub)
    port = server.port
    a = arm.__class__(server, arm.ca, arm_azurite)
    path = f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/disks/d?api-version=2026-03-02"
    try:
        a.rg("rg")
        a.control.set_operation("Microsoft.Compute/disks/write", duration=0.5)
        status, headers, _ = call(a, "PUT", path, {"location": LOCATION, "properties": {
            "creationData": {"createOption": "Empty"}, "diskSizeGB": 1}})
        assert status == 202
    finally:
        server.stop()
    server = start_server(arm_certs, arm_azurite, tmp_path / "state", sub, port=port)
    try:
        _, _, disk = call(a, "GET", path)
        assert disk["properties"]["provisioningState"] == "Creating"
        op = _poll_operation(a, headers["Azure-AsyncOperation"][len(server.base_url):])
        assert op["status"] == "Succeeded"
        assert a.compute.disks.get("rg", "d").provisioning_state == "Succeeded"
    finally:
        server.stop()


def test_run_command_control_endpoints(arm):
    arm.rg("rg")
    arm.vm("vm1")
    arm.control.set_run_command_output("hello from vm1\n", vm="vm1")
    result = arm.compute.virtual_machines.begin_run_command("rg", "vm1", cm.RunCommandInput(
        command_id="RunShellScript", script=["echo $1", "uname -a"],
        parameters=[cm.RunCommandInputParameter(name="arg1", value="x")])).result(timeout=20)
    assert result.value[0].code == "ProvisioningState/succeeded"
    assert result.value[0].message == "hello from vm1\n"
    recorded = arm.control.run_commands()
    assert recorded[-1]["script"] == ["echo $1", "uname -a"]
    assert recorded[-1]["parameters"] == [{"name": "arg1", "value": "x"}]
    assert recorded[-1]["vmName"] == "vm1"


def test_python_m_lab_arm_runs_until_sigterm_and_keeps_its_state(arm_certs, arm_azurite, tmp_path):
    """The interface the lab calls: every flag, HTTPS with the lab CA, state on disk after SIGTERM."""
    import signal
    import subprocess
    import sys

    from lab.arm.control import ArmLabControl
    from lab.paths import REPO_ROOT
    from tests.arm_fixtures import ACCOUNT, KEY, free_port

    port, sub = free_port(), str(uuid.uuid4())
    argv = [sys.executable, "-m", "lab.arm", "--host", "127.0.0.1", "--port", str(port),
            "--cert", str(arm_certs.server_cert), "--key", str(arm_certs.server_key),
            "--state-dir", str(tmp_path / "state"), "--subscription-id", sub, "--location", LOCATION,
            "--blob-endpoint", arm_azurite.endpoint, "--blob-account", ACCOUNT, "--blob-key", KEY,
            "--ca-bundle", str(arm_certs.ca_cert)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        control = ArmLabControl(f"https://127.0.0.1:{port}", arm_certs.ca_cert)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert control.health()["subscriptionId"] == sub
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        client = ResourceManagementClient(StaticTokenCredential(), sub, base_url=f"https://127.0.0.1:{port}",
                                          connection_verify=str(arm_certs.ca_cert))
        client.resource_groups.create_or_update("persisted", {"location": LOCATION})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert "persisted" in state["subscriptions"][sub]["resourceGroups"]


@pytest.mark.parametrize("trusted", [True, False])
def test_drbooks_clients_verify_the_emulator_against_the_sites_ca_bundle_only(arm, trusted):  # noqa: F811
    """drbook's ARM clients share one connection pool (drbook.adapters.azure.AzureClients): its
    transport verifies the server with the site's CA bundle, and refuses a server that bundle
    does not vouch for."""
    import certifi

    from drbook.adapters.azure import AzureClients
    from drbook.config import AzureConfig

    cfg = AzureConfig(subscription_id=arm.sub, resource_group="rg", location=LOCATION, arm_base_url=arm.base_url,
                      storage_account="devstoreaccount1", blob_endpoint="https://127.0.0.1:1/devstoreaccount1",
                      ca_bundle=arm.ca if trusted else certifi.where(), encryption_key="env:UNUSED")
    clients = AzureClients(cfg)
    clients.__dict__["credential"] = StaticTokenCredential()
    if trusted:
        assert isinstance(list(clients.resource.resource_groups.list()), list)
    else:
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            list(clients.resource.resource_groups.list())
