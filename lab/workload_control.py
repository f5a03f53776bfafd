"""Starting the workload writer on a lab machine (`drbook-lab workload`), or on the Azure VM a
machine failed over to (`start_azure_workload`: the lab's stand-in for its guest OS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lab.errors import LabError
from lab.control import HOST, Lab
from lab.machines import disk_path, machine_dir
from lab.procs import Managed
from lab.spec import MachineSpec


def control_dir(lab: Lab, machine: str) -> Path:
    return machine_dir(lab.dir, machine) / "workload"


def writer(lab: Lab, machine: str) -> Managed:
    return lab.managed(f"workload-{machine}")


def _machine(lab: Lab, machine: str) -> MachineSpec:
    spec = next((m for m in lab.spec.machines if m.name == machine), None)
    if spec is None:
        raise LabError(f"no lab machine {machine!r}; known: {', '.join(m.name for m in lab.spec.machines)}")
    return spec


def start_workload(lab: Lab, machine: str, *, rate: float, seconds: float, seed: int = 1,
                   background: bool = False) -> str:
    spec = _machine(lab, machine)
    control = control_dir(lab, machine)
    control.mkdir(parents=True, exist_ok=True)
    log = control / f"log-{time.strftime('%Y%m%dT%H%M%S')}-{seed}.jsonl"
    argv = [sys.executable, "-m", "lab.workload", "run", "--log", str(log), "--control", str(control),
            "--rate", str(rate), "--seconds", str(seconds), "--seed", str(seed)]
    for d in spec.disks:
        argv += ["--disk", f"{d.name}={disk_path(lab.dir, machine, d.name)}"]
    if background:
        w = writer(lab, machine)
        if w.running():
            raise LabError(f"a workload writer already runs on {machine} (pid {w.pid()})")
        w.start(argv)
        return f"workload writer started on {machine}: {rate} MB/s for {seconds:g} s, log {log}"
    proc = subprocess.run(argv)
    if proc.returncode != 0:
        raise LabError(f"the workload writer on {machine} failed (exit {proc.returncode})")
    return f"wrote to {machine} for {seconds:g} s; log {log}"


def azure_control_dir(lab: Lab, machine: str) -> Path:
    return machine_dir(lab.dir, machine) / "azure-workload"


def azure_writer(lab: Lab, machine: str) -> Managed:
    return lab.managed(f"azure-workload-{machine}")


def start_azure_workload(lab: Lab, machine: str, vm_id: str, *, rate: float, seconds: float, seed: int = 1,
                         max_writes: int | None = None) -> tuple[str, Path]:
    """Start, in the background, the workload writer on the Azure VM `vm_id` that `machine` failed
    over to: it writes the VM's disks through the ARM emulator's guest URLs, which refuse writes
    once the VM is no longer running (the writer then stops, see lab/workload.py). The disks are
    named after the machine's: the OS disk is its first disk, LUN k its (k+2)th. Stop it with
    `stop_writer(azure_control_dir(lab, machine))`. Answers a message and the log's path."""
    from lab.arm.control import ArmLabControl

    spec = _machine(lab, machine)
    w = azure_writer(lab, machine)
    if w.running():
        raise LabError(f"a workload writer already runs on {machine}'s Azure VM (pid {w.pid()})")
    disks = ArmLabControl(f"https://{HOST}:{lab.spec.ports.arm}", lab.certs.ca_cert).guest_disks(vm_id)
    places = [0 if d["lun"] is None else d["lun"] + 1 for d in disks]
    if sorted(places) != list(range(len(spec.disks))):
        raise LabError(f"the Azure VM's disks (OS disk and LUNs {[d['lun'] for d in disks[1:]]}) do not match "
                       f"{machine}'s {len(spec.disks)} disks (the OS disk, then LUN 0, 1, ...)")
    control = azure_control_dir(lab, machine)
    control.mkdir(parents=True, exist_ok=True)
    log = control / f"log-{time.strftime('%Y%m%dT%H%M%S')}-{seed}.jsonl"
    argv = [sys.executable, "-m", "lab.workload", "run", "--log", str(log), "--control", str(control),
            "--rate", str(rate), "--seconds", str(seconds), "--seed", str(seed), "--ca-bundle", str(lab.certs.ca_cert)]
    for place, disk in sorted(zip(places, disks), key=lambda p: p[0]):
        name = spec.disks[place].name
        url_file = control / f"{name}.url"  # the URL is a secret: never on a command line or in a message
        url_file.unlink(missing_ok=True)
        fd = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(disk["url"])
        argv += ["--azure-disk", f"{name}=@{url_file}"]
    if max_writes is not None:
        argv += ["--max-writes", str(max_writes)]
    (control / "running").unlink(missing_ok=True)
    w.start(argv)
    forget_urls(control, lambda: w.running())
    return (f"workload writer started on {machine}'s Azure VM: {rate} MB/s for {seconds:g} s, log {log}", log)


def forget_urls(control: Path, alive, timeout: float = 30.0) -> None:  # noqa: ANN001 - () -> bool
    """Delete the guest-disk URL files once the writer has read them (it has when it says it runs,
    or once it has exited): a SAS URL left on disk is a secret left behind."""
    deadline = time.monotonic() + timeout
    try:
        while not (control / "running").exists() and alive() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for url_file in control.glob("*.url"):
            url_file.unlink(missing_ok=True)


def stop_writer(control: Path, timeout: float = 30.0) -> str:
    """Stop the workload writer for good (the lab's "stop the application" hook): it
    finishes its current write, logs its last seq and exits."""
    import json
    import os
    import signal

    try:
        pid = int((control / "running").read_text())
    except (OSError, ValueError):
        return "stopped (no writer running)"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "stopped (no writer running)"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            last = json.loads((control / "stopped").read_text())["seq"]
            if not (control / "running").exists():
                return f"stopped seq={last}"
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise LabError(f"the workload writer (pid {pid}) did not stop within {timeout}s")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lab.workload_control")
    sub = parser.add_subparsers(dest="cmd", required=True)
    stop = sub.add_parser("stop", help="stop the writer for good (a planned failover's stop hook)")
    stop.add_argument("--control", type=Path, required=True)
    args = parser.parse_args(argv)
    print(stop_writer(args.control))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
