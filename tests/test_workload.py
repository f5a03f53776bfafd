"""The lab's workload writer: its log replays to the disks' exact bytes, and pause/resume
through the control directory quiesces it (the lab's crash-consistency hook). The same for
local disk files and for Azure page blobs (a failed-over VM's managed disks, on an Azurite of
this module's own)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
from azure.storage.blob import BlobClient, BlobSasPermissions, generate_blob_sas

from lab import workload
from lab.arm.vhd import make_footer
from tests import blob_fixtures
from tests.blob_fixtures import AzuriteInfo

azurite, azurite_blob = blob_fixtures.azurite, blob_fixtures.azurite_blob  # this module's own Azurite


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab.workload", *args], capture_output=True, text=True, timeout=timeout)


RUN_S = 4.0  # the writer's run: long enough for two pauses after a slow start


def _run_with_pauses(tmp_path: Path, disk_args: list[str], read: Callable[[], dict[str, bytes]],
                     initial: dict[str, bytes], *, rate: str, seconds: float, seed: int) -> tuple[list[dict], list[int]]:
    """Run the writer CLI on the disks, pause it twice (each time checking that the disks hold
    exactly the logged writes and stay still) and wait for its end; its log and pause marks."""
    log, ctl = tmp_path / "w.jsonl", tmp_path / "ctl"
    writer = subprocess.Popen([sys.executable, "-m", "lab.workload", "run", *disk_args, "--log", str(log),
                               "--control", str(ctl), "--rate", rate, "--seconds", str(seconds), "--seed", str(seed)])
    try:
        # started (not a fixed sleep: a loaded machine starts Python slowly), then a few writes
        deadline = time.monotonic() + 20
        while not (ctl / workload.RUNNING).exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        time.sleep(0.4)
        marks = []
        for _ in range(2):
            out = _cli("pause", "--control", str(ctl))
            assert out.returncode == 0, out.stderr
            seq = workload.paused_seq(out.stdout)
            assert seq is not None and seq > 0
            # While paused the disks hold exactly the writes up to seq, and nothing lands.
            frozen = read()
            time.sleep(0.15)
            assert read() == frozen
            for name, data in frozen.items():
                assert workload.replay(log, name, initial[name], seq) == data, name
            marks.append(seq)
            assert _cli("resume", "--control", str(ctl)).stdout.strip() == "resumed"
            time.sleep(0.3)
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    entries = workload.read_log(log)
    last = entries[-1]
    assert last["event"] == "stop"
    for name, data in read().items():
        assert workload.replay(log, name, initial[name], last["seq"]) == data, name
    events = [e for e in entries if "event" in e]
    assert [e["event"] for e in events] == ["start", "pause", "resume", "pause", "resume", "stop"]
    assert [e["seq"] for e in events if e["event"] == "pause"] == marks
    writes = [e for e in entries if "event" not in e]
    assert [w["seq"] for w in writes] == list(range(1, last["seq"] + 1))
    assert {w["disk"] for w in writes} == set(initial)
    assert all(w["offset"] % 4096 == 0 and 4096 <= w["length"] <= 256 * 1024 and w["length"] % 4096 == 0 for w in writes)
    for w in writes[:5]:
        assert hashlib.sha256(workload.data_for(seed, w["seq"], w["length"])).hexdigest() == w["sha256"]
    # Pauses really stopped the writes: nothing was written between a pause line and its resume.
    for a, b in zip(*[[e["time"] for e in events if e["event"] == kind] for kind in ("pause", "resume")]):
        assert not [w for w in writes if a < w["time"] < b]
    return entries, marks


def test_replay_equals_disks_after_a_run_with_pauses(tmp_path: Path):
    d0, d1 = tmp_path / "d0.img", tmp_path / "d1.img"
    d0.write_bytes(bytes(4 * 1024 * 1024))
    d1.write_bytes(b"\x5a" * (2 * 1024 * 1024))
    initial = {"d0": d0.read_bytes(), "d1": d1.read_bytes()}
    entries, _ = _run_with_pauses(tmp_path, ["--disk", f"d0={d0}", "--disk", f"d1={d1}"],
                                  lambda: {"d0": d0.read_bytes(), "d1": d1.read_bytes()}, initial,
                                  rate="8", seconds=RUN_S, seed=11)
    events = [e for e in entries if "event" in e]
    writes = [e for e in entries if "event" not in e]
    # The rate was kept: about 8 MB a second while not paused (a loaded machine falls behind,
    # never ahead), and the run lasted what it was asked to.
    pause_at = [e["time"] for e in events if e["event"] == "pause"]
    resume_at = [e["time"] for e in events if e["event"] == "resume"]
    paused = sum(b - a for a, b in zip(pause_at, resume_at))
    active = events[-1]["time"] - events[0]["time"] - paused
    volume = sum(w["length"] for w in writes)
    assert RUN_S - 0.5 <= events[-1]["time"] - events[0]["time"] <= RUN_S + 10
    assert 0.5 * 8e6 * active <= volume <= 8e6 * active * 1.3 + 256 * 1024, (volume, active)


# -- Azure page blobs ---------------------------------------------------------------------------

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def container(azurite_blob) -> str:
    name = f"workload-{uuid.uuid4().hex[:8]}"
    azurite_blob.create_container(name)
    return name


def _page_blob(azurite: AzuriteInfo, container: str, content: bytes) -> BlobClient:
    """A new page blob holding `content` (a whole number of 512-byte pages)."""
    blob = azurite.client().get_blob_client(container, f"disk-{uuid.uuid4().hex[:8]}.vhd")
    blob.create_page_blob(len(content))
    for at in range(0, len(content), 4 * MIB):
        chunk = content[at:at + 4 * MIB]
        if chunk.strip(b"\0"):
            blob.upload_page(chunk, offset=at, length=len(chunk))
    return blob


def _sas_url(azurite: AzuriteInfo, blob: BlobClient, **permissions: bool) -> str:
    sas = generate_blob_sas(azurite.account, blob.container_name, blob.blob_name, account_key=azurite.key,
                            permission=BlobSasPermissions(**(permissions or {"read": True, "write": True})),
                            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), protocol="https")
    return f"{blob.url}?{sas}"


def _download(blob: BlobClient) -> bytes:
    return blob.download_blob().readall()


def _comparable(entries: list[dict]) -> list[dict]:
    """The log without its clock and its sinks' addresses: what must not depend on the sink."""
    out = []
    for e in entries:
        e = {k: v for k, v in e.items() if k != "time"}
        if e.get("event") == "start":
            e["disks"] = {name: d["size"] for name, d in e["disks"].items()}
        out.append(e)
    return out


def test_same_seed_same_log_for_files_and_page_blobs(tmp_path: Path, azurite: AzuriteInfo, container: str,
                                                      monkeypatch: pytest.MonkeyPatch):
    content0, content1 = bytes(MIB), b"\x5a" * (512 * 1024)
    (tmp_path / "f0").write_bytes(content0)
    (tmp_path / "f1").write_bytes(content1)
    b0 = _page_blob(azurite, container, content0)
    # A managed disk's shape: the disk, then a VHD footer the writer must leave alone.
    footer = make_footer(len(content1))
    b1 = _page_blob(azurite, container, content1 + footer)
    files = [workload.Disk("d0", tmp_path / "f0", len(content0)), workload.Disk("d1", tmp_path / "f1", len(content1))]
    # By SAS (Azure's shape), and by the account key (how tests reach Azurite).
    blobs = [workload.BlobDisk("d0", _sas_url(azurite, b0), ca_bundle=azurite.ca_bundle),
             workload.BlobDisk("d1", b1.url, ca_bundle=azurite.ca_bundle, account_key=azurite.key)]
    logs = {}
    for kind, disks in (("files", files), ("blobs", blobs), ("mixed", [files[0], blobs[1]])):
        log = tmp_path / f"{kind}.jsonl"
        # A count, not a time: a loaded machine makes fewer blob writes in a given time.
        w = workload.Writer(disks, log, tmp_path / f"ctl-{kind}", rate_mbps=0, seconds=60, seed=5, max_write=64 * 1024,
                            max_writes=25)
        assert w.run() == 25, kind
        logs[kind] = workload.read_log(log)
        if kind == "blobs":  # the blobs hold the initial bytes and the logged writes (the footer kept)
            last = logs[kind][-1]["seq"]
            assert workload.replay(log, "d0", content0, last) == _download(b0)
            assert workload.replay(log, "d1", content1 + footer, last) == _download(b1)
    start = logs["blobs"][0]["disks"]
    assert start == {"d0": {"url": b0.url, "size": MIB}, "d1": {"url": b1.url, "size": 512 * 1024}}, "no SAS in the log"
    assert _comparable(logs["files"]) == _comparable(logs["blobs"]) == _comparable(logs["mixed"])


def test_page_blob_replay_after_a_run_with_pauses(tmp_path: Path, azurite: AzuriteInfo, container: str):
    initial = {"d0": bytes(2 * MIB), "d1": b"\x5a" * MIB}
    b0, b1 = _page_blob(azurite, container, initial["d0"]), _page_blob(azurite, container, initial["d1"])
    sas_file = tmp_path / "d0.url"  # a SAS kept off the command line (read at start)
    sas_file.write_text(_sas_url(azurite, b0) + "\n")
    try:
        entries, _ = _run_with_pauses(
            tmp_path, ["--azure-disk", f"d0=@{sas_file}", "--azure-disk", f"d1={_sas_url(azurite, b1)}",
                       "--ca-bundle", str(azurite.ca_bundle)],
            lambda: {"d0": _download(b0), "d1": _download(b1)}, initial, rate="6", seconds=3.0, seed=13)
    finally:
        sas_file.unlink()  # the secrets scan (tests/secrets_scan.py) searches pytest's tmp too
    assert entries[0]["disks"] == {"d0": {"url": b0.url, "size": 2 * MIB}, "d1": {"url": b1.url, "size": MIB}}
    assert "sig=" not in (tmp_path / "w.jsonl").read_text()


def test_a_refused_page_write_is_logged_and_stops_the_writer(tmp_path: Path, azurite: AzuriteInfo, container: str):
    blob = _page_blob(azurite, container, bytes(MIB))
    log, ctl = tmp_path / "w.jsonl", tmp_path / "ctl"
    out = _cli("run", "--azure-disk", f"d0={_sas_url(azurite, blob, read=True)}", "--ca-bundle", str(azurite.ca_bundle),
               "--log", str(log), "--control", str(ctl), "--rate", "0", "--seconds", "5")
    assert out.returncode == 1 and "write 1 " in out.stderr and "disk d0 failed" in out.stderr, out.stderr
    entries = workload.read_log(log)
    assert [e.get("event") for e in entries] == ["start", "write-failed"]
    assert entries[1]["seq"] == 1 and "AuthorizationPermissionMismatch" in entries[1]["error"]
    assert json.loads((ctl / workload.STOPPED).read_text())["seq"] == 0, "no write was acknowledged"
    assert _download(blob) == bytes(MIB)
    for text in (out.stderr, log.read_text()):
        assert "sig=" not in text.lower().replace("sig=redacted", "")
    # Refused before anything is written: a URL in clear, a SAS and a key at once, no disk.
    out = _cli("run", "--azure-disk", f"d0={blob.url.replace('https:', 'http:')}", "--log", str(log),
               "--control", str(ctl))
    assert out.returncode == 1 and "is not https" in out.stderr
    out = _cli("run", "--log", str(log), "--control", str(ctl))
    assert out.returncode == 2 and "at least one --disk" in out.stderr


def test_redact_hides_sas_signatures():
    text = "GET /c/b?sv=2021&sig=abcDEF%2B123%3D&se=x failed; url=https://h/c?sig%3Dzzzzzzzzzz"
    assert workload.redact(text) == "GET /c/b?sv=2021&sig=REDACTED&se=x failed; url=https://h/c?sig%3DREDACTED"


def test_pause_without_a_writer_and_a_pause_that_times_out(tmp_path: Path):
    ctl = tmp_path / "ctl"
    out = _cli("pause", "--control", str(ctl))
    assert out.returncode == 0 and out.stdout.strip() == "paused seq=0 (no writer running)"
    assert _cli("resume", "--control", str(ctl)).returncode == 0
    # A live process that claims to be the writer but never acks: the pause hook fails.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (ctl / workload.RUNNING).write_text(str(sleeper.pid))
        out = _cli("pause", "--control", str(ctl), "--timeout", "0.3")
        assert out.returncode == 1 and "did not pause" in out.stderr
        assert not (ctl / workload.REQUEST).exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_replay_detects_a_log_that_does_not_regenerate(tmp_path: Path):
    log = tmp_path / "w.jsonl"
    log.write_text('{"event":"start","seed":1,"time":0}\n'
                   '{"seq":1,"time":0,"disk":"d0","offset":0,"length":4096,"sha256":"00"}\n')
    try:
        workload.replay(log, "d0", bytes(8192), 1)
    except ValueError as exc:
        assert "does not regenerate" in str(exc)
    else:
        raise AssertionError("a bad log replayed")
