"""Helpers for end-to-end tests on the lab: the workload writer with what the disks held
before it started, and flows run in a thread while a test answers their approval."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


# Module-scoped fixtures of a module's own site (`site_path`); import them into the test module.
@pytest.fixture(scope="module")
def site(site_path):
    from drbook.site import open_site

    return open_site(site_path)


@pytest.fixture(scope="module")
def sdk(site):
    """The ARM SDK's own clients: Azure as an observer sees it, independently of drbook's RecoverySite."""
    from drbook.adapters.azure import AzureClients

    return AzureClients(site.cfg.azure)


@pytest.fixture(scope="module")
def arm(lab):
    """The ARM emulator's fault controls; faults are cleared when the module ends."""
    from lab.arm.control import ArmLabControl

    control = ArmLabControl(lab["arm"]["base_url"], lab["ca_bundle"])
    yield control
    control.clear_faults()


@dataclass
class Writer:
    machine: str
    log: Path
    control: Path
    initial: dict[str, bytes]
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def expected(self, disk: str, until_seq: int) -> bytes:
        from lab.workload import replay

        return replay(self.log, disk, self.initial[disk], until_seq)

    def last_seq(self) -> int:
        from lab.workload import read_log

        return max((e["seq"] for e in read_log(self.log) if "seq" in e and "event" not in e), default=0)


def start_writer(lab: dict, machine: str, tmp: Path, *, rate: float = 4.0, seconds: float = 300, seed: int = 3) -> Writer:
    """Start the workload writer on a lab machine, keeping what its disks held before."""
    m = next(x for x in lab["machines"] if x["name"] == machine)
    control = Path(lab["lab_dir"]) / "machines" / machine / "workload"
    control.mkdir(parents=True, exist_ok=True)
    for stale in ("pause.request", "pause.ack"):
        (control / stale).unlink(missing_ok=True)
    initial = {d["name"]: Path(d["path"]).read_bytes() for d in m["disks"]}
    log = tmp / f"{machine}-{uuid.uuid4().hex[:6]}.jsonl"
    argv = [sys.executable, "-m", "lab.workload", "run", "--log", str(log), "--control", str(control),
            "--rate", str(rate), "--seconds", str(seconds), "--seed", str(seed)]
    for d in m["disks"]:
        argv += ["--disk", f"{d['name']}={d['path']}"]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while not (control / "running").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the workload writer on {machine} did not start")
        time.sleep(0.02)
    return Writer(machine, log, control, initial, proc)


def run_in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Run a flow in a thread (it pauses for approval); the outcome lands in the dict."""
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # the test inspects what the flow raised
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for_paused_run(machines: list[str] | None, site_path: str, timeout: float = 60, *, flow: str | None = None) -> str:
    """The paused run of exactly these machines (or, for a plan's run, of this `flow`) of this
    site (the lab's Prefect server is shared: other sites' runs of the same machines may wait too)."""
    from drbook.approvals import waiting_approvals

    want = ", ".join(machines or [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in waiting_approvals():
            if row["site_path"] == site_path and (row["flow"] == flow if flow else row["machines"] == want):
                return row["run_id"]
        time.sleep(0.2)
    raise AssertionError(f"no paused run for {flow or want} of {site_path}")


def point_problems(site, item: str, point, expected) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """A recovery point held to the truth with one read of each disk's snapshot: its blocks
    against the point's manifest, VHD footer and padding (torn?), and its bytes against
    `expected(disk)`, what the workload log says the disk held at the freeze instant
    (mismatch?). Returns (torn, mismatched), each a list of what is wrong."""
    from drbook.replication.verify import check_against_manifest

    torn, mismatched = [], []
    for d in point.disks:
        manifest = site.engine.points.manifest(item, point.id, d.disk)
        if manifest is None:
            torn.append(f"{point.id} {d.disk}: no manifest")
            continue
        blob = site.blob_service.get_blob_client(d.container, d.blob, snapshot=d.snapshot)
        raw = blob.download_blob(max_concurrency=4).readall()
        check = check_against_manifest(lambda offset, length: raw[offset:offset + length], len(raw), manifest)
        if not check.ok:
            torn.append(f"{point.id} {d.disk}: bad blocks {check.bad_blocks[:8]}, footer {check.footer_error}, "
                        f"padding zero: {check.tail_ok}")
        elif raw[:d.size_bytes] != expected(d.disk):
            mismatched.append(f"{point.id} {d.disk}: not the disk at its freeze instant")
    return torn, mismatched


def start_azure_writer(lab: dict, arm, machine: str, vm_id: str, initial: dict[str, bytes], tmp: Path, *,  # noqa: ANN001
                       rate: float = 2.0, seconds: float = 300, seed: int = 5) -> Writer:
    """The guest of a failed-over VM writing its disks (the lab's guest-disk URLs: refused once
    the VM stops running), with `initial` (what each disk held at the failover point) kept so
    that `expected` is the disk's true content at any seq."""
    m = next(x for x in lab["machines"] if x["name"] == machine)
    guest = arm.guest_disks(vm_id)
    names = [d["name"] for d in m["disks"]]
    assert len(guest) == len(names), f"{vm_id} has {len(guest)} disks, {machine} {len(names)}"
    control = tmp / f"{machine}-azure-control-{uuid.uuid4().hex[:6]}"
    control.mkdir(parents=True)
    log = tmp / f"{machine}-azure-{uuid.uuid4().hex[:6]}.jsonl"
    argv = [sys.executable, "-m", "lab.workload", "run", "--log", str(log), "--control", str(control),
            "--rate", str(rate), "--seconds", str(seconds), "--seed", str(seed), "--ca-bundle", lab["ca_bundle"]]
    for name, disk in zip(names, guest):
        url_file = control / f"{name}.url"
        url_file.write_text(disk["url"])
        url_file.chmod(0o600)
        argv += ["--azure-disk", f"{name}=@{url_file}"]
    proc = subprocess.Popen(argv)
    from lab.workload_control import forget_urls

    forget_urls(control, lambda: proc.poll() is None, timeout=20)  # the SAS URLs: not left on disk
    if not (control / "running").exists():
        raise RuntimeError(f"the Azure workload writer of {machine} did not start")
    return Writer(machine, log, control, initial, proc)
