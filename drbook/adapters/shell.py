"""The seam between drbook and a remote machine's shell (SSH for Linux, WinRM for Windows).

Code that needs a remote command depends on these Protocols only; drbook.adapters.ssh
implements them over paramiko, drbook.adapters.winrm over pywinrm, `shell_for` picks one
for a machine, and tests may use a local subprocess implementation.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from pydantic import BaseModel

from drbook.config import MachineConfig


class CommandResult(BaseModel):
    exit_status: int
    stdout: str
    stderr: str


class RemoteProcess(Protocol):
    """A running remote command with binary pipes (the agent's framed stream runs on these)."""

    stdin: BinaryIO  # write(); close() sends EOF
    stdout: BinaryIO  # read(n) returns b"" at EOF

    def wait(self, timeout: float | None = None) -> int:
        """Exit status once the command ended."""

    def stderr_text(self) -> str:
        """What the command wrote to stderr (bounded)."""

    def kill(self) -> None:
        """Tear the command / channel down."""


class RemoteShell(Protocol):
    def run(self, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run a shell command; CommandFailed is NOT raised here (callers check exit_status)."""

    def open_process(self, command: str) -> RemoteProcess:
        """Start a command and hand back its pipes."""

    def put_file(self, local_path: str, remote_path: str, mode: int = 0o644) -> None:
        """Upload a file (SFTP for SSH)."""

    def close(self) -> None: ...


def shell_for(machine: MachineConfig, source_address: str | None = None) -> RemoteShell:
    """SSH for Linux, WinRM for Windows (close it when done; both are context managers).
    `source_address`: the process server's own address, which SSH connections leave from."""
    # Imported here: each adapter pulls in its own library (paramiko, pywinrm).
    if machine.os == "windows":
        from drbook.adapters.winrm import WinRmShell

        return WinRmShell(machine)
    from drbook.adapters.ssh import SshShell

    return SshShell(machine, source_address=source_address)
