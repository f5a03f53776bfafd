"""The ARM emulator's managed-disk blob front: snapshot grant URLs served by the emulator itself,
the page-range diff of two incremental snapshots, and the lab's guest disks (writes only while
the VM runs). Through the real azure-storage-blob client, against an in-process emulator."""

from __future__ import annotations

import os
import shutil
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import azure.mgmt.compute.models as cm
import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import workload
from lab.arm import vhd
from tests.arm_fixtures import LOCATION, MIB, arm, arm_azurite, arm_certs, arm_server  # noqa: F401

GRANT = cm.GrantAccessData(access="Read", duration_in_seconds=3600)
DISK = 8 * MIB  # two of the diff's 4 MiB chunks


@pytest.fixture
def fast(arm):
    """Operations finish at the next request, and incremental snapshots have no rate limit."""
    arm.control.set_operation("*", duration=0)
    arm.control.set_snapshot_limits(max_per_window=10_000)
    return arm


def running_vm(arm, data: bytes, name: str = "app", data_disks: int = 0):
    """A running VM whose OS disk is imported from `data` (+ `data_disks` empty 1 GiB data disks)."""
    arm.rg("rg")
    account = arm.storage_account("rg", "drbookreplicas")
    os_disk = arm.import_disk(f"{name}-os", arm.upload_vhd(f"{name}-os.vhd", data), account.id).result(timeout=20)
    extra = tuple(arm.disk("rg", f"{name}-data{i}", os_type=None).id for i in range(data_disks))
    nic = arm.nic(arm.vnet().subnets[0].id, "rg", f"{name}-nic")
    return arm.compute.virtual_machines.begin_create_or_update(
        "rg", name, arm.vm_body(os_disk.id, [nic.id], extra)).result(timeout=20)


def client(arm, url: str) -> BlobClient:
    return BlobClient.from_blob_url(url, connection_verify=str(arm.ca))


def guest(arm, vm, lun: int | None = None) -> BlobClient:
    return client(arm, next(d["url"] for d in arm.control.guest_disks(vm.id) if d["lun"] == lun))


def snapshot(arm, name: str, disk_name: str, incremental: bool = True) -> str:
    """An incremental (or full) snapshot of the disk, granted Read: its front URL."""
    disk = arm.compute.disks.get("rg", disk_name)
    arm.compute.snapshots.begin_create_or_update("rg", name, cm.Snapshot(
        location=LOCATION, incremental=incremental,
        creation_data=cm.CreationData(create_option="Copy", source_resource_id=disk.id))).result(timeout=20)
    return arm.compute.snapshots.begin_grant_access("rg", name, GRANT).result(timeout=20).access_sas


def drop(arm, *names: str) -> None:
    for name in names:
        arm.compute.snapshots.begin_revoke_access("rg", name).result(timeout=20)
        arm.compute.snapshots.begin_delete("rg", name).result(timeout=20)


def diff(arm, cur: str, prev: str, **kwargs) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    pages, clears = client(arm, cur).get_page_range_diff_for_managed_disk(prev, **kwargs)
    return [(r["start"], r["end"]) for r in pages], [(r["start"], r["end"]) for r in clears]


def raw(arm, url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, verify=ssl.create_default_context(cafile=str(arm.ca)), timeout=30)


def test_snapshot_grant_is_served_by_the_emulator(fast):
    arm = fast
    data = os.urandom(DISK)
    running_vm(arm, data)
    url = snapshot(arm, "s1", "app-os")
    parts = urlsplit(url)
    assert f"https://{parts.netloc}" == arm.base_url and parts.path.startswith("/mdlab/")
    assert "sig=" in parts.query and arm.azurite.endpoint.split("/")[2] not in url
    blob = client(arm, url)
    props = blob.get_blob_properties()
    assert (props.size, str(props.blob_type.value)) == (DISK + 512, "PageBlob")
    whole = blob.download_blob().readall()
    assert whole[:DISK] == data and vhd.validate(whole[DISK:], len(whole)) == DISK
    assert blob.download_blob(offset=MIB + 512, length=5000).readall() == data[MIB + 512:MIB + 5512]
    assert raw(arm, url, Range="bytes=0-4095").content == data[:4096]
    assert next(iter(blob.list_page_ranges())).start == 0  # plain Get Page Ranges passes through
    assert arm.compute.snapshots.get("rg", "s1").disk_state == "ActiveSAS"
    with pytest.raises(HttpResponseError) as exc:  # a Read grant reads
        blob.upload_page(bytes(512), offset=0, length=512)
    assert (exc.value.status_code, exc.value.error_code) == (403, "AuthorizationPermissionMismatch")

    arm.compute.snapshots.begin_revoke_access("rg", "s1").result(timeout=20)
    with pytest.raises(HttpResponseError) as exc:
        blob.get_blob_properties()
    assert (exc.value.status_code, exc.value.error_code) == (403, "AuthenticationFailed")
    gone = raw(arm, url)
    assert gone.status_code == 403 and gone.headers["x-ms-error-code"] == "AuthenticationFailed"
    assert "<Error><Code>AuthenticationFailed</Code><Message>" in gone.text
    forged = url.replace("sig=", "sig=x")
    assert raw(arm, forged).status_code == 403

    # the grant's duration ends: the URL dies too
    short = arm.compute.snapshots.begin_grant_access("rg", "s1", cm.GrantAccessData(
        access="Read", duration_in_seconds=1)).result(timeout=20).access_sas
    assert raw(arm, short, Range="bytes=0-511").status_code == 206
    time.sleep(1.1)
    expired = raw(arm, short, Range="bytes=0-511")
    assert expired.status_code == 403 and "time frame" in expired.text


def test_the_diff_is_what_changed_between_two_snapshots(fast):
    arm = fast
    data = os.urandom(DISK)
    vm = running_vm(arm, data)
    s1 = snapshot(arm, "s1", "app-os")
    disk = guest(arm, vm)
    disk.upload_page(os.urandom(8192), offset=0, length=8192)
    disk.upload_page(os.urandom(4096), offset=MIB, length=4096)
    disk.clear_page(offset=3 * MIB, length=1024)
    disk.upload_page(data[5 * MIB:5 * MIB + 4096], offset=5 * MIB, length=4096)  # the same bytes again
    disk.upload_page(os.urandom(1024), offset=4 * MIB - 512, length=1024)  # across the chunk boundary
    s2 = snapshot(arm, "s2", "app-os")

    assert diff(arm, s2, s1) == ([(0, 8191), (MIB, MIB + 4095), (4 * MIB - 512, 4 * MIB + 511)],
                                 [(3 * MIB, 3 * MIB + 1023)])
    assert diff(arm, s2, s1, offset=MIB, length=3 * MIB) == ([(MIB, MIB + 4095), (4 * MIB - 512, 4 * MIB - 1)],
                                                            [(3 * MIB, 3 * MIB + 1023)])
    assert diff(arm, s2, s1, offset=4096, length=8192) == ([(4096, 8191)], [])
    assert diff(arm, s2, s1, offset=6 * MIB) == ([], [])
    assert diff(arm, s2, s2) == ([], [])
    answer = raw(arm, s2 + "&comp=pagelist", **{"x-ms-previous-snapshot-url": s1, "x-ms-version": "2021-12-02",
                                                "x-ms-range": "bytes=0-1048575"})
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/xml"
    assert answer.text == ('<?xml version="1.0" encoding="utf-8"?><PageList><PageRange><Start>0</Start>'
                           '<End>8191</End></PageRange></PageList>')
    assert answer.headers["x-ms-blob-content-length"] == str(DISK + 512)
    for header in ("ETag", "Last-Modified", "Date", "x-ms-request-id", "x-ms-version"):
        assert answer.headers[header], header

    # a newer previous snapshot, another disk's, a full snapshot, a revoked one, the prevsnapshot form
    with pytest.raises(HttpResponseError) as exc:
        diff(arm, s1, s2)
    assert (exc.value.status_code, exc.value.error_code) == (400, "PreviousSnapshotCannotBeNewer")
    arm.disk("rg", "other")
    refused = {"other": snapshot(arm, "other-s1", "other"), "full": snapshot(arm, "full", "app-os", False)}
    s3 = snapshot(arm, "s3", "app-os")
    arm.compute.snapshots.begin_revoke_access("rg", "s3").result(timeout=20)
    refused["revoked"] = s3
    refused["not ours"] = "https://example.invalid/mdlab/x/abcd?sig=y"
    for what, prev in refused.items():
        with pytest.raises(HttpResponseError) as exc:
            diff(arm, s2, prev)
        assert (exc.value.status_code, exc.value.error_code) == (409, "PreviousSnapshotNotFound"), what
    answer = raw(arm, s2 + "&comp=pagelist&prevsnapshot=2026-01-01T00:00:00.0000000Z")
    assert answer.status_code == 400 and answer.headers["x-ms-error-code"] == "InvalidQueryParameterValue"
    drop(arm, "s1", "s2")


@st.composite
def _writes(draw):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        pages = draw(st.integers(1, 24))
        offset = draw(st.integers(0, DISK // 512 - pages)) * 512
        out.append((offset, pages * 512, draw(st.sampled_from(["random", "zeros", "same"]))))
    return out


def test_the_diff_reports_exactly_the_pages_whose_bytes_differ(fast):
    arm = fast
    model = bytearray(os.urandom(DISK))
    vm = running_vm(arm, bytes(model))
    disk = guest(arm, vm)
    names = iter(range(1_000))

    @settings(derandomize=True, database=None, max_examples=8, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_writes())
    def check(writes):
        before = bytes(model)
        a, b = f"p{next(names)}", f"p{next(names)}"
        prev = snapshot(arm, a, "app-os")
        for offset, length, kind in writes:
            data = {"random": os.urandom(length), "zeros": bytes(length), "same": before[offset:offset + length]}[kind]
            disk.upload_page(data, offset=offset, length=length)
            model[offset:offset + length] = data
        cur = snapshot(arm, b, "app-os")
        pages, clears = diff(arm, cur, prev)
        reported = {p: False for s, e in pages for p in range(s, e + 1, 512)}
        reported |= {p: True for s, e in clears for p in range(s, e + 1, 512)}
        changed = {p: model[p:p + 512] == bytes(512) for p in range(0, DISK, 512) if model[p:p + 512] != before[p:p + 512]}
        assert reported == changed
        drop(arm, a, b)

    check()


def test_guest_disks_write_only_while_the_vm_runs(fast):
    arm = fast
    data = os.urandom(DISK)
    vm = running_vm(arm, data, data_disks=2)
    disks = arm.control.guest_disks(vm.id)
    assert [(d["lun"], d["name"], d["size"]) for d in disks] == \
        [(None, "app-os", DISK), (0, "app-data0", 1 << 30), (1, "app-data1", 1 << 30)]
    assert all(urlsplit(d["url"]).path.startswith("/mdlab/") for d in disks)
    os_disk = workload.BlobDisk("os", disks[0]["url"], ca_bundle=arm.ca)
    os_disk.open()
    assert os_disk.size == DISK  # the VHD footer is seen and left alone
    os_disk.write(b"\1" * 4096, 8192)
    lun1 = workload.BlobDisk("lun1", disks[2]["url"], ca_bundle=arm.ca)
    lun1.open()
    lun1.write(b"\2" * 4096, 1 << 20)
    with pytest.raises(HttpResponseError) as exc:  # not into the footer, whoever asks
        os_disk.client.upload_page(b"\0" * 512, offset=DISK, length=512)
    assert exc.value.status_code == 416
    written = client(arm, snapshot(arm, "after", "app-os", incremental=False)).download_blob().readall()
    assert written[:DISK] == data[:8192] + b"\1" * 4096 + data[12288:]
    assert written[DISK:DISK + 8] == b"conectix"
    data1 = client(arm, snapshot(arm, "after1", "app-data1", incremental=False))
    assert data1.download_blob(offset=1 << 20, length=4096).readall() == b"\2" * 4096

    vms = arm.compute.virtual_machines
    for stop in (vms.begin_power_off, vms.begin_deallocate):
        stop("rg", "app").result(timeout=20)
        with pytest.raises(HttpResponseError) as exc:
            os_disk.write(b"\3" * 4096, 0)
        assert (exc.value.status_code, exc.value.error_code) == (409, "OperationNotAllowed")
        assert "'app'" in exc.value.message and ("stopped" in exc.value.message or "deallocated" in exc.value.message)
        vms.begin_start("rg", "app").result(timeout=20)
        os_disk.write(b"\4" * 4096, 0)  # running again: accepted
    assert os_disk.client.download_blob(offset=0, length=4096).readall() == b"\4" * 4096

    vms.begin_delete("rg", "app").result(timeout=20)
    with pytest.raises(HttpResponseError) as exc:
        os_disk.write(b"\5" * 4096, 0)
    assert (exc.value.status_code, exc.value.error_code) == (403, "AuthenticationFailed")
    os_disk.close()
    lun1.close()


def test_the_writer_stops_at_the_first_refused_write(fast, tmp_path):
    arm = fast
    data = os.urandom(DISK)
    vm = running_vm(arm, data)
    disk = workload.BlobDisk("disk0", arm.control.guest_disks(vm.id)[0]["url"], ca_bundle=arm.ca)
    log = tmp_path / "w.jsonl"
    w = workload.Writer([disk], log, tmp_path / "ctl", rate_mbps=0, seconds=60, seed=3, max_write=64 * 1024)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            w.run()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while w.seq < 5:
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.02)
        arm.compute.virtual_machines.begin_power_off("rg", "app").result(timeout=20)
        thread.join(30)
    finally:
        w.stopping = True
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], workload.WriteFailed)
    assert "HTTP 409 OperationNotAllowed" in str(outcome[0])
    entries = workload.read_log(log)
    writes = [e for e in entries if "event" not in e]
    assert entries[-1]["event"] == "write-failed" and entries[-1]["seq"] == writes[-1]["seq"] + 1
    assert "sig=" not in log.read_text() or "sig=REDACTED" in log.read_text()
    # the disk holds exactly the logged writes: none landed after the VM stopped
    arm.compute.virtual_machines.begin_deallocate("rg", "app").result(timeout=20)
    got = client(arm, snapshot(arm, "end", "app-os", incremental=False)).download_blob(offset=0, length=DISK).readall()
    assert got == workload.replay(log, "disk0", data, writes[-1]["seq"])


def test_start_azure_workload_writes_the_vms_disks_by_the_machines_names(fast, arm_certs, tmp_path):
    from lab.control import Lab
    from lab.errors import LabError
    from lab.spec import load_spec
    from lab.workload_control import azure_control_dir, start_azure_workload, stop_writer

    arm = fast
    spec = load_spec()
    spec = spec.model_copy(update={"ports": spec.ports.model_copy(update={"arm": arm.server.port})})
    (tmp_path / "ca").mkdir()
    for f in ("ca_cert", "ca_key", "server_cert", "server_key"):
        shutil.copy(getattr(arm_certs, f), tmp_path / "ca" / getattr(arm_certs, f).name)
    lab = Lab(spec, tmp_path)
    machine = next(m for m in spec.machines if len(m.disks) == 2)
    vm = running_vm(arm, os.urandom(DISK), data_disks=1)
    message, log = start_azure_workload(lab, machine.name, vm.id, rate=0, seconds=30, seed=4)
    control = azure_control_dir(lab, machine.name)
    assert str(log) in message and "sig=" not in message
    # written once the writer has opened both disks; by then the URL files (secrets) are gone
    assert (control / "running").exists(), [p.read_text() for p in (tmp_path / "run").glob("*.log")]
    assert list(control.glob("*.url")) == []
    time.sleep(0.3)
    stopped = stop_writer(control)
    assert int(stopped.removeprefix("stopped seq=")) > 0, stopped
    entries = workload.read_log(log)
    assert sorted(entries[0]["disks"]) == sorted(d.name for d in machine.disks)
    assert {e["disk"] for e in entries if "event" not in e} <= {d.name for d in machine.disks}
    assert "sig=" not in log.read_text() and "sig=" not in " ".join(p.read_text() for p in (tmp_path / "run").glob("*.log"))
    with pytest.raises(LabError, match="do not match"):
        start_azure_workload(lab, next(m for m in spec.machines if len(m.disks) == 1).name, vm.id, rate=0, seconds=1)


class _Recorder(BaseHTTPRequestHandler):
    """Records each request's path; redirects it to `location` (another host) when set."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []
    location = ""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        self.send_response(307 if self.location else 404)
        if self.location:
            self.send_header("Location", self.location + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _recorder(ctx: ssl.SSLContext, location: str) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), type("Recorder", (_Recorder,), {"seen": [], "location": location}))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_why_the_front_streams_the_sdk_drops_the_signature_on_a_redirect_to_another_host(arm_certs):
    """The evidence for passing bytes through rather than a 307 to Azurite: azure-storage-blob
    strips `sig` from the URL when a redirect changes host (StorageSensitiveHeaderCleanupPolicy)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(arm_certs.server_cert), str(arm_certs.server_key))
    target = _recorder(ctx, "")
    front = _recorder(ctx, f"https://127.0.0.1:{target.server_address[1]}")
    try:
        url = f"https://127.0.0.1:{front.server_address[1]}/mdlab/g/abcd?sv=2018-03-28&sr=b&sig=secret"
        with pytest.raises(HttpResponseError):
            BlobClient.from_blob_url(url, connection_verify=str(arm_certs.ca_cert)).get_blob_properties()
        assert "sig=secret" in front.RequestHandlerClass.seen[0]
        assert target.RequestHandlerClass.seen and "sig=" not in target.RequestHandlerClass.seen[0]
    finally:
        for srv in (front, target):
            srv.shutdown()
            srv.server_close()


def test_a_retried_upstream_request_is_logged_without_its_sas_signature(caplog):
    import logging

    import lab.arm.front  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.WARNING, logger="urllib3.connectionpool"):
        logging.getLogger("urllib3.connectionpool").warning(
            "Retrying (Retry(total=1)) after connection broken: %s", "/acct/arm-disks/s.vhd?snapshot=t&sp=r&sig=c2VjcmV0%3D&x=1")
    assert "sig=REDACTED&x=1" in caplog.text and "c2VjcmV0" not in caplog.text
