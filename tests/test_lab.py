"""The lab's services, each through its real client."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import paramiko
import pytest
from azure.storage.blob import BlobServiceClient

from drbook.errors import ConfigError
from lab.errors import LabError
from lab.control import Lab
from lab.spec import load_spec

STATUS_SHAPE = {
    "lab_dir": str,
    "ca_bundle": str,
    "vcenter": {"url", "host", "port", "user", "password_ref"},
    "azurite": {"blob_endpoint", "account", "key", "connection_string"},
    "arm": {"base_url", "subscription_id", "location"},
    "prefect": {"api_url", "ui_url"},
}


def test_status_json_has_the_documented_shape(lab):
    out = subprocess.run([sys.executable, "-m", "lab", "status", "--json"], capture_output=True, text=True, check=True)
    status = json.loads(out.stdout)
    for key, shape in STATUS_SHAPE.items():
        assert key in status
        if isinstance(shape, set):
            assert shape <= set(status[key]), f"{key} lacks {shape - set(status[key])}"
    names = [m["name"] for m in status["machines"]]
    assert names == ["app01", "app02", "db01", "spare01", "phys01"]
    for m in status["machines"]:
        assert {"name", "vm_name", "os", "address", "port", "user", "key_file", "known_hosts", "disks"} <= set(m)
        assert m["vm_name"] == (None if m["name"] == "phys01" else m["name"])  # phys01: a physical server
        for d in m["disks"]:
            assert Path(d["path"]).stat().st_size == d["size_bytes"]
    # references to the lab's secrets, never their values (the Azurite key is Microsoft's
    # published development key)
    for secret in (Path(status["lab_dir"]) / "secrets").iterdir():
        if secret.name != "azurite-key":
            assert secret.read_text().strip() not in out.stdout, f"status --json prints the secret {secret.name}"


def _vcenter_password(vc: dict) -> str:
    return Path(vc["password_ref"].removeprefix("file:")).read_text().strip()


def test_vcenter_lists_lab_vms_over_verified_tls(lab):
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    ctx = ssl.create_default_context(cafile=lab["ca_bundle"])
    vc = lab["vcenter"]
    si = SmartConnect(host=vc["host"], port=vc["port"], user=vc["user"], pwd=_vcenter_password(vc), sslContext=ctx)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        vms = {vm.name: vm for vm in view.view}
        spec = load_spec()
        assert "phys01" not in vms  # a physical server has no VM
        for m in spec.machines:
            if not m.vmware:
                continue
            vm = vms[m.name]
            assert vm.config.hardware.numCPU == m.cpus
            assert vm.config.hardware.memoryMB == m.memory_mb
            assert vm.guest.ipAddress == m.ip
            disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
            assert [d.capacityInKB // 1024 for d in disks] == [d.size_mib for d in m.disks]
    finally:
        Disconnect(si)


def test_vcenter_refuses_a_client_that_does_not_trust_the_lab_ca(lab):
    from pyVim.connect import SmartConnect

    vc = lab["vcenter"]
    with pytest.raises(ssl.SSLError):
        SmartConnect(host=vc["host"], port=vc["port"], user=vc["user"], pwd=_vcenter_password(vc), sslContext=ssl.create_default_context())


def _ssh(machine: dict, known_hosts: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(machine["address"], port=machine["port"], username=machine["user"], key_filename=machine["key_file"],
                   look_for_keys=False, allow_agent=False, timeout=5)
    return client


def test_every_machine_answers_ssh_with_a_verified_host_key(lab):
    for m in lab["machines"]:
        client = _ssh(m, m["known_hosts"])
        try:
            _, stdout, _ = client.exec_command("echo $DRBOOK_MACHINE")
            assert stdout.read().decode().strip() == m["name"]
        finally:
            client.close()


def test_a_wrong_host_key_is_refused(lab, tmp_path):
    m = lab["machines"][0]
    other = lab["machines"][1]
    # Claim app01's address has app02's host key.
    other_pub = (Path(lab["lab_dir"]) / "machines" / other["name"] / "ssh_host_ed25519_key.pub").read_text().strip()
    bad = tmp_path / "known_hosts"
    bad.write_text(f"{m['address']} {other_pub}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh(m, str(bad))
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _ssh(m, str(empty))


def test_azurite_page_blob_snapshot_round_trip(lab):
    az = lab["azurite"]
    svc = BlobServiceClient(az["blob_endpoint"], credential={"account_name": az["account"], "account_key": az["key"]},
                            connection_verify=lab["ca_bundle"])
    container = svc.get_container_client(f"labtest-{uuid.uuid4().hex[:8]}")
    container.create_container()
    try:
        blob = container.get_blob_client("disk.vhd")
        blob.create_page_blob(size=1024 * 1024)
        first = os.urandom(4096)
        blob.upload_page(first, offset=0, length=4096)
        snap = blob.create_snapshot()
        second = os.urandom(4096)
        blob.upload_page(second, offset=0, length=4096)
        assert blob.download_blob(offset=0, length=4096).readall() == second
        old = container.get_blob_client("disk.vhd", snapshot=snap["snapshot"])
        assert old.download_blob(offset=0, length=4096).readall() == first
        ranges = [(r.start, r.end) for r in blob.list_page_ranges()]
        assert ranges == [(0, 4095)]
    finally:
        container.delete_container()


def test_prefect_server_answers(lab):
    with urllib.request.urlopen(f"{lab['prefect']['api_url']}/health", timeout=5) as r:
        assert json.loads(r.read()) is True


@pytest.mark.serial  # kills the shared Azurite
def test_lab_up_is_idempotent_and_restarts_what_died(lab_control):
    azurite = lab_control.managed("azurite")
    pid = azurite.pid()
    assert pid
    os.killpg(pid, signal.SIGKILL)  # a crash: the pid file stays, the process is gone
    deadline = time.monotonic() + 10
    while azurite.running() and time.monotonic() < deadline:  # the kill lands asynchronously
        time.sleep(0.05)
    lab_control.up()
    assert azurite.running() and azurite.pid() != pid
    before = {n: lab_control.managed(n).pid() for n in lab_control.services()}
    lab_control.up()
    after = {n: lab_control.managed(n).pid() for n in lab_control.services()}
    assert before == after


def test_an_invalid_lab_spec_names_file_and_field(tmp_path):
    bad = tmp_path / "spec.yaml"
    bad.write_text(
        "networks: [{name: n, prefix: 10.0.0.0/24}]\n"
        "machines: [{name: m1, address: 10.1.1.1, ip: 10.0.0.5, network: n, disks: [{name: d, size_mib: 4}]}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_spec(bad)
    assert str(bad) in str(err.value) and "machines.0.address" in str(err.value) and "loopback" in str(err.value)


def test_a_port_in_use_stops_lab_up_with_a_clear_message(tmp_path):
    import socket

    spec = load_spec()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        spec = spec.model_copy(update={"ports": spec.ports.model_copy(update={"azurite": port})})
        lab = Lab(spec, tmp_path / "lab", say=lambda _m: None)
        with pytest.raises(LabError, match=f"port 127.0.0.1:{port} is already in use"):
            lab.up()
        assert not any(lab.services().values()), "nothing may be left half-started"
    finally:
        sock.close()


@pytest.mark.serial  # writes app02's disk, which test_e2e_continuous replicates
def test_the_workload_log_reproduces_a_machine_disk_exactly(lab):
    from lab.workload import read_log, replay

    machine = next(m for m in lab["machines"] if m["name"] == "app02")
    disk = machine["disks"][0]
    before = Path(disk["path"]).read_bytes()
    out = subprocess.run([sys.executable, "-m", "lab", "workload", "app02", "--rate", "20",
                          "--seconds", "1.5", "--seed", "5"], capture_output=True, text=True, check=True)
    log = Path(out.stderr.split("log ")[-1].strip())
    writes = [e for e in read_log(log) if "seq" in e and "event" not in e]
    assert len(writes) > 10
    after = Path(disk["path"]).read_bytes()
    assert after != before
    assert replay(log, disk["name"], before, max(w["seq"] for w in writes)) == after


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.lab  # starts Azurite and the ARM emulator of its own before the build fails
def test_a_failed_vcsim_build_stops_lab_up_and_leaves_nothing_started(tmp_path, monkeypatch):
    import lab.control as control

    spec = load_spec()
    ports = spec.ports.model_copy(update={k: _free_port() for k in ("vcenter", "azurite", "arm", "prefect", "winrm")})
    lab = Lab(spec.model_copy(update={"ports": ports}), tmp_path / "lab", say=lambda _m: None)
    monkeypatch.setitem(control.GO_ENV, "GOPATH", str(tmp_path / "no-govmomi-here"))  # the real `go build` fails
    with pytest.raises(LabError, match="building vcsim failed"):
        lab.up()
    assert not any(lab.services().values()), "what this `lab up` started (Azurite, ARM) must be stopped again"


def test_a_missing_debian_package_is_named(tmp_path, monkeypatch):
    import lab.control as control

    lab = Lab(load_spec(), tmp_path / "lab", say=lambda _m: None)
    monkeypatch.setattr(control.shutil, "which", lambda name: None)  # no `go` on PATH, no vcsim built yet
    with pytest.raises(LabError, match=r"golang-go \(Debian\).*make setup"):
        lab.up()
    assert not any(lab.services().values())


def test_lab_up_writes_what_a_real_site_writes_by_hand(lab):
    """A site config and Prefect's own API URL; drbook reads nothing else of the lab."""
    import shlex

    env_file = Path(lab["env_file"]).read_text()
    assert f"DRBOOK_SITE={shlex.quote(lab['site_config'])}" in env_file
    assert f"PREFECT_API_URL={shlex.quote(lab['prefect']['api_url'])}" in env_file
    out = subprocess.run([sys.executable, "-m", "lab", "env"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [f"export DRBOOK_SITE={shlex.quote(lab['site_config'])}",
                                       f"export PREFECT_API_URL={shlex.quote(lab['prefect']['api_url'])}"]
    items = subprocess.run([sys.executable, "-m", "drbook.cli", "items", "--json"], capture_output=True, text=True,
                           env={**os.environ, "DRBOOK_SITE": lab["site_config"]})
    assert items.returncode == 0, items.stderr
    assert isinstance(json.loads(items.stdout), list)
