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
    "prefect": {"api_url", "ui_url", "database"},
    "worker": {"name", "pool", "health_url"},
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
    assert list(status["process_servers"]) == ["ps1", "ps2", "ps3"]
    for ps in status["process_servers"].values():
        assert {"running", "address", "queue", "worker_name", "health_url"} <= set(ps)
    assert status["process_servers"]["ps1"]["running"] and status["worker"]["name"] == "drbook-ps1"
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


# -- process servers -------------------------------------------------------------------------

def _spec_text(process_servers: str, ports: str = "") -> str:
    return (f"{ports}networks: [{{name: n, prefix: 10.0.0.0/24}}]\n"
            "machines: [{name: m1, address: 127.0.1.1, ip: 10.0.0.5, network: n, disks: [{name: d, size_mib: 4}]}]\n"
            + process_servers)


def test_the_lab_spec_lists_three_process_servers_and_ps1_runs_the_stages():
    spec = load_spec()
    assert [(ps.name, ps.address, ps.health_port, ps.runs_stages) for ps in spec.process_servers] == [
        ("ps1", "127.0.2.1", 14201, True), ("ps2", "127.0.2.2", 14202, False), ("ps3", "127.0.2.3", 14203, False)]
    assert spec.ports.postgres == 15432


def test_a_spec_without_process_servers_gets_the_one_the_lab_starts(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(_spec_text(""))
    [ps] = load_spec(path).process_servers
    assert (ps.name, ps.address, ps.health_port, ps.runs_stages) == ("ps1", "127.0.2.1", 14201, True)


@pytest.mark.parametrize("servers, ports, problem", [
    ("process_servers: [{name: ps1, address: 10.0.2.1, health_port: 14201}]\n", "",
     r"process_servers\.0\.address.*not a loopback address"),
    ("process_servers: [{name: ps1, address: 127.0.2.1, health_port: 14201, runs_stages: false}]\n", "",
     r"process server 'ps1': the first one is the lab's .*runs_stages: true"),
    ("process_servers: [{name: ps1, address: 127.0.2.1, health_port: 14201}, {name: ps1, address: 127.0.2.2, health_port: 14202}]\n",
     "", r"process servers 'ps1' and 'ps1' have the same name ps1"),
    ("process_servers: [{name: ps1, address: 127.0.2.1, health_port: 14201}, {name: ps2, address: 127.0.2.1, health_port: 14202}]\n",
     "", r"process servers 'ps1' and 'ps2' have the same address 127.0.2.1"),
    ("process_servers: [{name: ps1, address: 127.0.2.1, health_port: 14201}, {name: ps2, address: 127.0.2.2, health_port: 14201}]\n",
     "", r"process servers 'ps1' and 'ps2' have the same health_port 14201"),
    ("process_servers: [{name: ps1, address: 127.0.1.1, health_port: 14201}]\n", "",
     r"process server 'ps1': address 127.0.1.1 is a machine's"),
    ("process_servers: [{name: ps1, address: 127.0.2.1, health_port: 14200}]\n", "",
     r"process server 'ps1': health_port 14200 is ports\.prefect"),
    ("process_servers: [{name: ps1, address: 127.0.2.1, health_port: 15000}]\n", "ports: {postgres: 15000}\n",
     r"health_port 15000 is ports\.postgres"),
    ("process_servers: [{name: 'ps 1', address: 127.0.2.1, health_port: 14201}]\n", "", r"process_servers\.0\.name"),
    ("process_servers: [{name: ps1, address: 127.0.2.1}]\n", "", r"process_servers\.0\.health_port"),
    ("process_servers: []\n", "", r"process_servers"),
])
def test_an_invalid_process_server_in_the_spec_is_named(tmp_path, servers, ports, problem):
    import re

    path = tmp_path / "spec.yaml"
    path.write_text(_spec_text(servers, ports))
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert re.search(problem, str(err.value)), str(err.value)


def test_each_process_server_polls_its_own_queue_and_ps1_the_stages_too(tmp_path):
    """The workers' command lines are drbook's (drbook.scaleout.worker), one Managed name each."""
    from drbook.scaleout.worker import worker_argv, worker_env

    lab = Lab(load_spec(), tmp_path / "lab", say=lambda _m: None)
    queues = {}
    for ps in lab.spec.process_servers:
        argv = worker_argv(lab._ps_config(ps))
        queues[ps.name] = [argv[i + 1] for i, a in enumerate(argv) if a == "--work-queue"]
        assert worker_env(lab._ps_config(ps), environ={}) == {"DRBOOK_PROCESS_SERVER": ps.name,
                                                              "PREFECT_WORKER_HEARTBEAT_SECONDS": "10"}
    assert queues == {"ps1": ["ps1", "default"], "ps2": ["ps2"], "ps3": ["ps3"]}
    assert [lab.worker_managed(ps).name for ps in lab.spec.process_servers] == ["worker", "worker-ps2", "worker-ps3"]
    status = lab.process_servers_status()
    assert status["ps2"] == {"running": False, "address": "127.0.2.2", "queue": "ps2", "worker_name": "drbook-ps2",
                             "health_url": "http://127.0.0.1:14202/health"}
    with pytest.raises(LabError, match="no process server named 'ps9'.*known: ps1, ps2, ps3"):
        lab.start_process_server("ps9")
    with pytest.raises(LabError, match="Prefect server is not running"):
        lab.start_process_server("ps2")
    with pytest.raises(LabError, match="unknown Prefect database 'mysql'"):
        lab.up("mysql")  # type: ignore[arg-type]


def test_kill_tree_kills_descendants_in_other_sessions(tmp_path):
    """A worker's flow runs are sessions of their own: a process-group kill would miss them."""
    from lab.procs import Managed, descendants

    ready = tmp_path / "ready"
    script = ("import subprocess, sys, time, pathlib\n"
              "kids = [subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; "
              "subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\"]); time.sleep(60)'], "
              "start_new_session=True) for _ in range(2)]\n"
              f"pathlib.Path({str(ready)!r}).touch()\n"
              "time.sleep(60)\n")
    m = Managed("tree", tmp_path / "run")
    pid = m.start([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while len(descendants(pid)) < 4 or not ready.exists():
        assert time.monotonic() < deadline, f"the tree did not grow: {descendants(pid)}"
        time.sleep(0.05)
    tree = [pid, *descendants(pid)]
    assert len({os.getsid(p) for p in tree}) == 3  # the root's session and two of their own
    killed = m.kill()
    assert sorted(killed) == sorted(tree)
    assert not any(_alive(p) for p in tree)
    assert not m.running() and m.pid_file.exists()  # a dead host leaves its pid file, as a crash does


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: only its exit status is left)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_scram_verifier_is_what_postgresql_stores():
    import base64
    import hashlib
    import hmac

    from lab.postgres import scram_verifier

    head, keys = scram_verifier("pw").split("$", 1)[1].split("$")
    iterations, salt = head.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", base64.b64decode(salt), int(iterations))
    assert scram_verifier("pw").startswith("SCRAM-SHA-256$4096:")
    assert stored == hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    assert server == hmac.new(salted, b"Server Key", "sha256").digest()


def test_the_lab_worker_is_process_server_ps1(lab_control):
    """`up` starts ps1 only, with drbook's command line: its own queue and the stages' `default`."""
    pid = lab_control.managed("worker").pid()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--work-queue"] == ["ps1", "default"]
    environ = dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in line)
    assert environ["DRBOOK_PROCESS_SERVER"] == "ps1" and environ["DRBOOK_SITE"] == lab_control.status()["site_config"]
    from drbook.config import load_site

    site = load_site(Path(lab_control.status()["site_config"]))
    assert [(ps.name, ps.address) for ps in site.process_servers] == [("ps1", "127.0.2.1")]


@pytest.mark.serial  # ps2 is the lab's: other tests of process servers may start it too
def test_a_process_server_started_on_demand_answers_and_dies_with_its_runs(lab_control):
    from prefect import get_client
    from prefect.deployments import run_deployment

    from lab.procs import descendants

    lab_control.stop_process_server("ps2")
    st = lab_control.start_process_server("ps2")
    assert st["running"] and st["queue"] == "ps2" and st["address"] == "127.0.2.2"
    assert lab_control.start_process_server("ps2") == st  # idempotent
    assert lab_control.status()["process_servers"]["ps2"]["running"]
    assert "worker-ps2" not in lab_control.services()  # on demand: not part of `up`
    deadline = time.monotonic() + 30
    while True:  # the health check answers 200 once the worker has polled
        try:
            with urllib.request.urlopen(st["health_url"], timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "ps2's health check never answered 200"
        time.sleep(0.2)
    worker = lab_control.worker_managed(lab_control.process_server("ps2"))
    pid = worker.pid()
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
    assert "DRBOOK_PROCESS_SERVER=ps2\0" in environ and "PREFECT_WORKER_WEBSERVER_PORT=14202\0" in environ
    # A run on ps2's queue: the worker starts it in a session of its own.
    run = run_deployment("discover/discover", timeout=0, work_queue_name="ps2", tags=["lab-test-ps2"])
    try:
        deadline = time.monotonic() + 60
        while not (tree := [p for p in descendants(pid) if os.getsid(p) != os.getsid(pid)]):
            assert time.monotonic() < deadline, "ps2 never started its run"
            time.sleep(0.05)
        killed = lab_control.kill_process_server("ps2")
        assert pid in killed and set(tree) <= set(killed)
        assert not any(_alive(p) for p in killed)
        assert not lab_control.status()["process_servers"]["ps2"]["running"]
        with pytest.raises(OSError):
            urllib.request.urlopen(st["health_url"], timeout=2)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(run.id)  # its process is gone: nothing will ever end it
        lab_control.stop_process_server("ps2")  # the pid file of the dead worker


def test_prefect_keeps_its_data_in_the_database_status_names(lab_control):
    """`status` names Prefect's database; the server's deployments are in that database."""
    from drbook.deploy import existing_deployments

    status = lab_control.status()
    database = status["prefect"]["database"]
    deployments = {name.split("/", 1)[1] for name in existing_deployments()}
    assert deployments
    if database == "postgresql":
        import asyncio

        import asyncpg

        assert lab_control.services()["postgres"]

        async def names() -> set[str]:
            # The prefect role's password from the lab's pgpass file, as the Prefect server reads it.
            conn = await asyncpg.connect(host="127.0.0.1", port=lab_control.spec.ports.postgres, user="prefect",
                                         database="prefect", passfile=lab_control.postgres.pgpass_file)
            try:
                return {r["name"] for r in await conn.fetch("SELECT name FROM deployment")}
            finally:
                await conn.close()

        assert deployments <= asyncio.run(names())
    else:
        import sqlite3

        assert database == "sqlite" and "postgres" not in lab_control.services()
        db = Path(status["lab_dir"]) / "prefect" / "prefect.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert deployments <= {row[0] for row in conn.execute("SELECT name FROM deployment")}


def test_postgresql_not_installed_is_named_before_anything_starts(tmp_path, monkeypatch):
    from lab import postgres

    lab = Lab(load_spec(), tmp_path / "lab", say=lambda _m: None)
    monkeypatch.setattr(postgres, "PG_ROOT", tmp_path / "no-postgresql-here")
    with pytest.raises(LabError, match=r"PostgreSQL is not installed .*make setup-postgres"):
        lab.up("postgresql")
    assert not any(lab.services().values())
