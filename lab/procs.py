"""Background processes the lab starts: pid files, liveness, and stopping only our own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError


@dataclass(frozen=True)
class Managed:
    """A service the lab runs: its pid file and log live under `run_dir`. `stop` sends
    `stop_signal` to its process group, or to its process alone when not `whole_group`
    (PostgreSQL: its postmaster shuts its children down itself)."""

    name: str
    run_dir: Path
    stop_signal: signal.Signals = signal.SIGTERM
    whole_group: bool = True

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid, self._start_marker()) else None

    def _start_marker(self) -> str | None:
        try:
            parts = self.pid_file.read_text().split()
            return parts[1] if len(parts) > 1 else None
        except OSError:
            return None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # survives the CLI; `lab down` stops it by pid
            )
        except FileNotFoundError as exc:
            raise LabError(f"{self.name}: cannot start {argv[0]!r}: {exc.strerror}") from None
        finally:
            log.close()
        # The start time distinguishes our process from a later one that reuses the pid.
        self.pid_file.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        return proc.pid

    def stop(self, timeout: float = 10.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            if self.whole_group:
                os.killpg(pid, self.stop_signal)
            else:
                os.kill(pid, self.stop_signal)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, None):
            _reap(pid)
            time.sleep(0.05)
        if _alive(pid, None):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> list[int]:
        """Its host dies: SIGKILL the process and every descendant (see kill_tree). The pid file
        stays, as after a crash. Returns the pids killed."""
        pid = self.pid()
        return kill_tree(pid) if pid is not None else []

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def descendants(pid: int) -> list[int]:
    """Every process below `pid` in the process tree, whatever its group or session (a Prefect
    worker starts each flow run in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int, timeout: float = 5.0) -> list[int]:
    """SIGKILL `pid` and all its descendants. The tree is frozen first (SIGSTOP, walked again
    until no new process appears), so no process forks a child the walk would miss; only
    then is every collected pid killed. Returns them, once they are gone."""
    frozen: list[int] = []
    while new := [p for p in [pid, *descendants(pid)] if p not in frozen]:
        for p in new:
            _signal(p, signal.SIGSTOP)
            frozen.append(p)
    for p in frozen:
        _signal(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_alive(p, None) for p in frozen):
        if time.monotonic() > deadline:
            raise LabError(f"processes {[p for p in frozen if _alive(p, None)]} survived SIGKILL for {timeout:.0f}s")
        time.sleep(0.02)
    return frozen


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _alive(pid: int, marker: str | None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        _reap(pid)
        return False
    return marker is None or marker == "?" or fields[19] == marker


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(managed: Managed, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(host, port):
            return
        if not managed.running():
            raise LabError(f"{managed.name} exited while starting; its log ({managed.log_file}) ends:\n{managed.log_tail()}")
        time.sleep(0.1)
    raise LabError(f"{managed.name} did not listen on {host}:{port} within {timeout:.0f}s; log: {managed.log_file}")
