"""A RemoteShell that runs commands on this host (subprocess). For tests and benchmarks:
the engine runs the agent through it exactly as through SSH, so nothing in the engine may
assume it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from drbook.adapters.shell import CommandResult
from drbook.errors import RemoteExecError

STDERR_LIMIT = 64 * 1024


class _Drain(threading.Thread):
    def __init__(self, stream) -> None:  # noqa: ANN001
        super().__init__(daemon=True, name="local-stderr")
        self.stream = stream
        self.buf = bytearray()

    def run(self) -> None:
        while chunk := self.stream.read1(65536) if hasattr(self.stream, "read1") else self.stream.read(65536):
            self.buf += chunk
            if len(self.buf) > STDERR_LIMIT:
                del self.buf[: len(self.buf) - STDERR_LIMIT]


class LocalProcess:
    def __init__(self, command: str, env: dict[str, str] | None) -> None:
        self._proc = subprocess.Popen(
            command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            bufsize=1 << 20, env=env, start_new_session=True,
        )
        self.stdin = self._proc.stdin
        self.stdout = self._proc.stdout
        self._stderr = _Drain(self._proc.stderr)
        self._stderr.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait(self, timeout: float | None = None) -> int:
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RemoteExecError(f"local command did not end within {timeout}s", retryable=True) from None
        self._stderr.join(timeout=5)
        return code

    def stderr_text(self) -> str:
        return self._stderr.buf.decode("utf-8", "replace")

    def kill(self, grace: float = 10.0) -> None:
        """Like a dropped SSH channel: the pipes close, and the command sees EOF / EPIPE (the
        agent thaws and exits on it). Signals only for a command still there after `grace`."""
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                self._proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                self._signal(sig)  # its own session: the shell and what it runs
                grace = 5.0
        self._proc.wait()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass


class LocalShell:
    """RemoteShell on this host. `env` replaces the environment of the commands it runs."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env
        self.processes: list[LocalProcess] = []

    def run(self, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        try:
            done = subprocess.run(command, shell=True, input=stdin or b"", capture_output=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            raise RemoteExecError(f"local command {command!r} did not end within {timeout}s", retryable=True) from None
        return CommandResult(
            exit_status=done.returncode,
            stdout=done.stdout.decode("utf-8", "replace"),
            stderr=done.stderr.decode("utf-8", "replace"),
        )

    def open_process(self, command: str) -> LocalProcess:
        proc = LocalProcess(command, self.env)
        self.processes.append(proc)
        return proc

    def put_file(self, local_path: str, remote_path: str, mode: int = 0o644) -> None:
        Path(remote_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, remote_path)
        Path(remote_path).chmod(mode)

    def close(self) -> None:
        for proc in self.processes:
            if proc._proc.poll() is None:
                proc.kill()
        self.processes.clear()
