"""Pushing the mobility agent: preflight, decide, upload, install, verify, register.

The decisions are pure functions (`preflight_problems`, `decide_action`, `is_transient`);
the steps run through a RemoteShell (SSH for Linux, WinRM for Windows), so the Prefect
tasks around them stay thin. Every script that runs on a machine is rendered from
templates/ (`<name>.sh.j2` for Linux, `<name>.ps1.j2` for Windows) and starts with a
`# drbook:<kind>` line, so an audit trail (or the lab's WinRM responder) can tell what it is.

An install is registered in the vault only after it was verified: a failed push leaves
the vault as it was.
"""

from __future__ import annotations

import hashlib
import ntpath
import posixpath
import re
import shlex
import tempfile
import time
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import BaseModel

from drbook.adapters.shell import CommandResult, RemoteShell
from drbook.config import MachineConfig
from drbook.errors import (
    AuthenticationError,
    CommandFailed,
    ConfigError,
    ConnectError,
    HostKeyError,
    PreflightError,
    RemoteExecError,
    VerificationError,
)
from drbook.models import AuditEntry, ProtectedItem, utcnow
from drbook.templating import render

DEFAULT_AGENT = Path(__file__).resolve().parent / "agent" / "agent.py"
MIN_PYTHON = (3, 6)
MIN_FREE_KB = 16 * 1024  # the agent is a few dozen KB; this leaves room for a staging copy and logs
WINDOWS_AGENT_DIR = r"C:\Program Files\drbook"
LINUX_DEFAULT_AGENT_DIR = "/opt/drbook"
SCRIPT_TIMEOUT = 120.0

PushAction = Literal["installed", "upgraded", "unchanged"]


class DiskCheck(BaseModel):
    name: str
    path: str
    exists: bool
    readable: bool


class PreflightReport(BaseModel):
    machine: str
    os: Literal["linux", "windows"]
    python: str | None  # the version found, None when the interpreter is missing
    python_command: str
    disks: list[DiskCheck]
    free_kb: int | None
    free_path: str | None
    problems: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.problems


class InstalledAgent(BaseModel):
    """What is on the machine now, as read back from it."""

    present: bool
    version: str | None = None  # the VERSION file the install recorded
    sha256_recorded: str | None = None  # the SHA256 file the install recorded
    sha256_actual: str | None = None  # the hash of agent.py as it is now


class PushResult(BaseModel):
    machine: str
    action: PushAction
    version: str
    sha256: str
    seconds: float
    previous_version: str | None = None


# -- the agent file ------------------------------------------------------------------------

_VERSION_RE = re.compile(r"""^AGENT_VERSION\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def agent_version_of(path: Path, data: bytes | None = None) -> str:
    """The AGENT_VERSION an agent file declares (read, never executed)."""
    text = (Path(path).read_bytes() if data is None else data).decode("utf-8", errors="replace")
    match = _VERSION_RE.search(text)
    if not match:
        raise ConfigError(f"{path}: no AGENT_VERSION = '...' line; is this the drbook agent?")
    return match.group(1)


# -- per-OS paths and scripts ----------------------------------------------------------------


def agent_dir(machine: MachineConfig) -> str:
    # The config's default agent_dir is the Linux one; a Windows machine that did not set
    # its own gets the Windows default.
    if machine.os == "windows" and machine.agent_dir == LINUX_DEFAULT_AGENT_DIR:
        return WINDOWS_AGENT_DIR
    return machine.agent_dir


def python_command(machine: MachineConfig) -> str:
    # Windows installers ship python.exe (and py.exe), not python3.exe.
    if machine.os == "windows" and machine.python == "python3":
        return "python"
    return machine.python


def _join(machine: MachineConfig, *parts: str) -> str:
    return (ntpath if machine.os == "windows" else posixpath).join(agent_dir(machine), *parts)


def agent_path(machine: MachineConfig) -> str:
    return _join(machine, "agent.py")


def staging_path(machine: MachineConfig, sha256: str) -> str:
    # Staged beside agent.py, so the final rename stays within one filesystem (atomic).
    return _join(machine, f".agent.py.{sha256[:16]}.staged")


def _script(machine: MachineConfig, name: str, **values: object) -> str:
    """templates/<name>.sh.j2 for Linux, <name>.ps1.j2 for Windows; `machine` is its name."""
    suffix = "ps1" if machine.os == "windows" else "sh"
    return render(f"{name}.{suffix}.j2", machine=machine.name, **values)


def render_install_script(machine: MachineConfig, version: str, sha256: str) -> str:
    return _script(
        machine, "install", agent_dir=agent_dir(machine), staging=staging_path(machine, sha256), version=version, sha256=sha256
    )


def _parents(machine: MachineConfig) -> list[str]:
    """agent_dir and its ancestors: free space is measured on the nearest one that exists."""
    if machine.os == "windows":
        p = PureWindowsPath(agent_dir(machine))
    else:
        p = PurePosixPath(agent_dir(machine))
    return [str(p), *(str(q) for q in p.parents)]


def _preflight_script(machine: MachineConfig) -> str:
    return _script(
        machine, "preflight", python=python_command(machine), disks=[d.path for d in machine.disks], parents=_parents(machine)
    )


def _status_script(machine: MachineConfig) -> str:
    return _script(machine, "agent_status", agent_dir=agent_dir(machine))


def _version_script(machine: MachineConfig) -> str:
    return _script(machine, "agent_version", python=python_command(machine), agent=agent_path(machine))


def run_script(shell: RemoteShell, machine: MachineConfig, script: str, *, timeout: float = SCRIPT_TIMEOUT) -> CommandResult:
    """Run a rendered script: POSIX sh reading it on stdin (no quoting of the script itself),
    or PowerShell over WinRM (WinRmShell.run runs PowerShell)."""
    if machine.os == "windows":
        return shell.run(script, timeout=timeout)
    return shell.run("sh -s", timeout=timeout, stdin=script.encode())


def _key_values(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            found.setdefault(key, []).append(value.strip())
    return found


def _first(kv: dict[str, list[str]], key: str) -> str | None:
    values = kv.get(key)
    return values[0] if values else None


def _checked(result: CommandResult, machine: MachineConfig, what: str) -> CommandResult:
    if result.exit_status != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise CommandFailed(
            f"{machine.name}: {what} failed (exit {result.exit_status}): {detail}",
            exit_status=result.exit_status,
            stderr=result.stderr,
        )
    return result


# -- preflight -----------------------------------------------------------------------------


def _parse_version(text: str | None) -> tuple[int, ...] | None:
    if not text or not re.fullmatch(r"\d+(\.\d+)*", text):
        return None
    return tuple(int(p) for p in text.split("."))


def preflight_problems(report: PreflightReport, machine: MachineConfig) -> list[str]:
    """What stops the agent from working on this machine (empty = good to go)."""
    name, py = machine.name, report.python_command
    need = ".".join(map(str, MIN_PYTHON))
    problems: list[str] = []
    version = _parse_version(report.python)
    if report.python is None:
        problems.append(f"{name}: {py} not found on the machine; the agent needs Python >= {need}")
    elif version is None:
        problems.append(f"{name}: {py} is on the machine but did not report its version ({report.python!r}); the agent needs Python >= {need}")
    elif version < MIN_PYTHON:
        problems.append(f"{name}: {py} is Python {report.python}; the agent needs Python >= {need}")
    for disk in report.disks:
        if not disk.exists:
            problems.append(f"{name}: disk {disk.name} ({disk.path}) does not exist")
        elif not disk.readable:
            problems.append(f"{name}: disk {disk.name} ({disk.path}) is not readable by {machine.user}")
    if report.free_kb is None:
        problems.append(f"{name}: could not measure free space for {agent_dir(machine)}")
    elif report.free_kb < MIN_FREE_KB:
        problems.append(
            f"{name}: only {report.free_kb} KiB free in {report.free_path}; the agent needs at least {MIN_FREE_KB} KiB"
        )
    return problems


def inspect(shell: RemoteShell, machine: MachineConfig) -> PreflightReport:
    """Gather the facts preflight decides on (changes nothing on the machine)."""
    result = _checked(run_script(shell, machine, _preflight_script(machine), timeout=60), machine, "preflight")
    kv = _key_values(result.stdout)
    python = _first(kv, "python") or None
    ok, missing = set(kv.get("disk_ok", [])), set(kv.get("disk_missing", []))
    disks = [
        DiskCheck(name=d.name, path=d.path, exists=d.path not in missing, readable=d.path in ok) for d in machine.disks
    ]
    free = _first(kv, "free_kb")
    report = PreflightReport(
        machine=machine.name,
        os=machine.os,
        python=python,
        python_command=python_command(machine),
        disks=disks,
        free_kb=int(free) if free and free.isdigit() else None,
        free_path=_first(kv, "space_dir"),
    )
    report.problems = preflight_problems(report, machine)
    return report


def preflight(shell: RemoteShell, machine: MachineConfig) -> PreflightReport:
    """Check the machine can run the agent; PreflightError (nothing touched) if not."""
    report = inspect(shell, machine)
    if report.problems:
        raise PreflightError("; ".join(report.problems))
    return report


# -- what is installed ---------------------------------------------------------------------


def installed_agent(shell: RemoteShell, machine: MachineConfig) -> InstalledAgent:
    result = _checked(run_script(shell, machine, _status_script(machine), timeout=60), machine, "reading the installed agent")
    kv = _key_values(result.stdout)
    if _first(kv, "agent") != "yes":
        return InstalledAgent(present=False)
    return InstalledAgent(
        present=True,
        version=_first(kv, "version") or None,
        sha256_recorded=_first(kv, "sha256") or None,
        sha256_actual=_first(kv, "sha256_actual") or None,
    )


def installed_version(shell: RemoteShell, machine: MachineConfig) -> str | None:
    """The agent version the last install recorded on the machine, None if no agent is there."""
    found = installed_agent(shell, machine)
    return found.version if found.present else None


def decide_action(current: InstalledAgent, version: str, sha256: str, *, force: bool = False) -> PushAction:
    """unchanged only when the machine holds exactly this file, as recorded by our install."""
    if not current.present:
        return "installed"
    same = current.version == version and current.sha256_recorded == sha256 and current.sha256_actual == sha256
    if same and not force:
        return "unchanged"
    return "upgraded"


def verify_install(shell: RemoteShell, machine: MachineConfig, version: str, sha256: str) -> None:
    """The agent answers the version pushed, and the file on disk is the file we sent."""
    answer = _checked(run_script(shell, machine, _version_script(machine), timeout=60), machine, "agent.py --version")
    reported = answer.stdout.strip()
    if reported != version:
        raise VerificationError(
            f"{machine.name}: the installed agent reports version {reported!r}, but {version!r} was pushed"
        )
    current = installed_agent(shell, machine)
    if current.sha256_actual != sha256:
        raise VerificationError(
            f"{machine.name}: agent.py on the machine has sha256 {current.sha256_actual}, but {sha256} was pushed"
        )
    if current.sha256_recorded != sha256 or current.version != version:
        raise VerificationError(
            f"{machine.name}: the install recorded version {current.version!r} sha256 {current.sha256_recorded}, "
            f"expected {version!r} {sha256}"
        )


# -- the push ------------------------------------------------------------------------------


def _prepare_dir(shell: RemoteShell, machine: MachineConfig) -> None:
    if machine.os == "windows":
        return  # WinRmShell.put_file creates the parent directory itself
    d = shlex.quote(agent_dir(machine))
    _checked(shell.run(f"mkdir -p {d} && chmod 0755 {d}", timeout=60), machine, f"creating {agent_dir(machine)}")


def push_agent(
    shell: RemoteShell, machine: MachineConfig, *, agent_path: Path | None = None, force: bool = False
) -> PushResult:
    """Preflight, then install or upgrade the agent unless the same file is already there.

    Raises PreflightError (nothing touched), RemoteExecError subclasses (connection, auth,
    a failing install script as CommandFailed) or VerificationError (installed, but not what
    we pushed). Only a returned PushResult means a verified agent is on the machine."""
    started = time.monotonic()
    local = Path(agent_path or DEFAULT_AGENT)
    # One read: the version, the hash and the bytes uploaded all come from the same snapshot,
    # even if the file is replaced while we push.
    data = local.read_bytes()
    version, sha256 = agent_version_of(local, data), hashlib.sha256(data).hexdigest()
    preflight(shell, machine)
    current = installed_agent(shell, machine)
    action = decide_action(current, version, sha256, force=force)
    if action != "unchanged":
        _prepare_dir(shell, machine)
        with tempfile.TemporaryDirectory(prefix="drbook-push-") as tmp:
            snapshot = Path(tmp) / "agent.py"
            snapshot.write_bytes(data)
            shell.put_file(str(snapshot), staging_path(machine, sha256), 0o600)
        script = render_install_script(machine, version, sha256)
        _checked(run_script(shell, machine, script), machine, "the agent install script")
    verify_install(shell, machine, version, sha256)
    return PushResult(
        machine=machine.name,
        action=action,
        version=version,
        sha256=sha256,
        seconds=round(time.monotonic() - started, 3),
        previous_version=current.version if current.present else None,
    )


def install_agent(vault, machine: MachineConfig, *, force: bool = False) -> PushResult:  # noqa: ANN001 - Vault
    """Push (verified), then register: the one way an agent gets onto a machine and into the vault."""
    from drbook.adapters.shell import shell_for

    shell = shell_for(machine)
    try:
        result = push_agent(shell, machine, force=force)
    finally:
        shell.close()
    register(vault, machine, result)
    return result


def ensure_agent(vault, machine: MachineConfig) -> PushResult | None:  # noqa: ANN001 - Vault
    """Protection needs a registered agent: install one only when the vault knows none."""
    item = vault.find_item(machine.name)
    if item is not None and item.agent_version:
        return None
    return install_agent(vault, machine)


def register(vault, machine: MachineConfig, result: PushResult, *, flow_run_id: str | None = None) -> ProtectedItem:  # noqa: ANN001
    """Record the verified agent on the machine's protected item (created `unprotected` if
    missing), plus an audit entry. Call it only with the result of a successful push."""
    name = machine.name

    def apply(item: ProtectedItem) -> None:
        item.agent_version = result.version
        item.agent_sha256 = result.sha256
        item.updated = utcnow()

    item = vault.upsert_item(name, lambda: ProtectedItem(
        name=name, machine=name, vm_name=machine.vm_name, os=machine.os,
        agent_version=result.version, agent_sha256=result.sha256,
    ), apply)
    vault.audit(
        AuditEntry(
            actor=getattr(vault, "actor", "drbook"),
            item=name,
            action="agent-registered",
            flow_run_id=flow_run_id,
            detail={"push": result.action, "version": result.version, "sha256": result.sha256},
        )
    )
    return item


# -- retry policy --------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """For the push task's retry_condition_fn: only a lost/refused connection or a timeout
    may go away by itself. A wrong host key, rejected credentials or a failed preflight never do."""
    if isinstance(exc, (HostKeyError, AuthenticationError, PreflightError, VerificationError)):
        return False
    if isinstance(exc, ConnectError):
        return True
    if isinstance(exc, RemoteExecError):
        return bool(exc.retryable)  # command timeouts are retryable RemoteExecErrors
    return isinstance(exc, TimeoutError)
