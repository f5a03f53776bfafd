"""Starting the workload writer on a lab machine (`drbook-lab workload`)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from lab.errors import LabError
from lab.control import Lab
from lab.machines import disk_path, machine_dir
from lab.procs import Managed


def control_dir(lab: Lab, machine: str) -> Path:
    return machine_dir(lab.dir, machine) / "workload"


def writer(lab: Lab, machine: str) -> Managed:
    return lab.managed(f"workload-{machine}")


def start_workload(lab: Lab, machine: str, *, rate: float, seconds: float, seed: int = 1,
                   background: bool = False) -> str:
    spec = next((m for m in lab.spec.machines if m.name == machine), None)
    if spec is None:
        raise LabError(f"no lab machine {machine!r}; known: {', '.join(m.name for m in lab.spec.machines)}")
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
