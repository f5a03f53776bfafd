"""RemoteShell over WinRM (pywinrm): HTTPS with a verified certificate, NTLM (or Kerberos).

`run()` runs a PowerShell script (`powershell -EncodedCommand`), `put_file()` streams the
file as base64 lines on the command's stdin into a small receiver script
(templates/receive.ps1.j2) that writes it and answers its SHA-256 (the way Ansible's winrm
connection copies files), and `open_process()` is not supported yet: the replication
stream needs SSH (Windows' OpenSSH server works).
Only this module sees pywinrm / requests exceptions; `_error_table` maps them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from drbook.adapters.shell import CommandResult
from drbook.config import MachineConfig
from drbook.errors import (
    AuthenticationError,
    CommandTimeout,
    ConnectError,
    DRError,
    HostKeyError,
    RemoteExecError,
)
from drbook.secrets import resolve_secret
from drbook.templating import render

WINRM_HTTPS_PORT = 5986
CMD_LINE_LIMIT = 8191  # cmd.exe's limit: WinRS starts commands through cmd
# 64 KiB of file per Send. The line is base64 (87 KB), and pywinrm base64-encodes the Send
# stream again (117 KB): with the envelope that stays under the 150 KB MaxEnvelopeSizekb of
# older Windows (2012 and later allow 500 KB). 96 KiB came to 176 KB and was refused.
PUT_CHUNK = 64 * 1024
POWERSHELL = ["powershell.exe", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand"]
# Progress records would arrive on stderr as CLIXML noise.
PREAMBLE = "$ProgressPreference = 'SilentlyContinue'\n"

def encode_powershell(script: str, *, preamble: bool = True) -> list[str]:
    """argv of `powershell -EncodedCommand <base64 of the UTF-16LE script>`."""
    text = (PREAMBLE + script) if preamble else script
    return [*POWERSHELL, base64.b64encode(text.encode("utf-16-le")).decode("ascii")]


def clixml_to_text(data: bytes) -> str:
    """PowerShell writes errors to stderr as CLIXML; keep only their text."""
    text = data.decode("utf-8", "replace")
    if not text.startswith("#< CLIXML"):
        return text
    try:
        root = ET.fromstring(text.split("\n", 1)[1] if "\n" in text else "")
    except ET.ParseError:
        return text
    parts = [
        (node.text or "").replace("_x000D__x000A_", "\n")
        for node in root.iter()
        if node.tag.endswith("}S") and node.get("S") == "Error"
    ]
    return "".join(parts).strip() or text


def _fmt(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error_table(where: str, machine: MachineConfig, ca: str) -> list[tuple[type[BaseException], Callable[[BaseException], DRError]]]:
    """Library exception -> drbook error, most specific first."""
    return [
        (
            InvalidCredentialsError,
            lambda e: AuthenticationError(f"{where}: the WinRM listener rejected the credentials of {machine.user!r}"),
        ),
        (
            PermissionError,  # requests_ntlm: the server never sent an NTLM challenge
            lambda e: AuthenticationError(f"{where}: NTLM authentication failed: {_fmt(e)}"),
        ),
        (
            requests.exceptions.SSLError,
            lambda e: HostKeyError(
                f"{where}: the WinRM listener's certificate is not trusted by {ca}; refusing to connect ({_fmt(e)[:200]})"
            ),
        ),
        (requests.exceptions.ConnectTimeout, lambda e: ConnectError(f"{where}: connection timed out")),
        (requests.exceptions.ReadTimeout, lambda e: CommandTimeout(f"{where}: no answer within the read timeout")),
        (requests.exceptions.ConnectionError, lambda e: ConnectError(f"{where}: connection failed: {_fmt(e)[:300]}")),
        (
            WSManFaultError,
            lambda e: RemoteExecError(
                f"{where}: WS-Management fault {getattr(e, 'wsman_fault_code', None)}: {getattr(e, 'reason', _fmt(e))}"
            ),
        ),
        (WinRMTransportError, lambda e: _transport_error(where, e)),
        (WinRMError, lambda e: RemoteExecError(f"{where}: WinRM error: {_fmt(e)}")),
        (requests.exceptions.RequestException, lambda e: RemoteExecError(f"{where}: HTTP error: {_fmt(e)[:300]}")),
    ]


def _transport_error(where: str, exc: BaseException) -> DRError:
    code = getattr(exc, "code", None)
    if code in (502, 503, 504):
        return ConnectError(f"{where}: the WinRM listener answered HTTP {code}")
    return RemoteExecError(f"{where}: the WinRM listener answered HTTP {code}")


class WinRmShell:
    """RemoteShell for a Windows machine; `run()` runs PowerShell."""

    def __init__(
        self,
        machine: MachineConfig,
        *,
        auth: str = "ntlm",
        ca_bundle: Path | None = None,
        connect_timeout: float = 10,
        operation_timeout: int = 20,
    ) -> None:
        self.machine = machine
        self.auth = auth
        # MachineConfig.port defaults to SSH's 22; a Windows machine then means WinRM's HTTPS port.
        port = machine.port if machine.port != 22 else WINRM_HTTPS_PORT
        self.endpoint = f"https://{machine.address}:{port}/wsman"
        self.ca_bundle = ca_bundle or machine.ca_bundle
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self._protocol: Protocol | None = None
        self._lock = threading.Lock()
        self._where = f"{machine.name} ({self.endpoint})"

    def __enter__(self) -> "WinRmShell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        ca = str(self.ca_bundle) if self.ca_bundle else "the system CA store"
        try:
            yield
        except DRError:
            raise
        except Exception as exc:
            for exc_type, make in _error_table(self._where, self.machine, ca):
                if isinstance(exc, exc_type):
                    raise make(exc) from exc
            raise

    def _connected(self) -> Protocol:
        with self._lock:
            if self._protocol is None:
                m = self.machine
                if m.password is None:
                    raise AuthenticationError(f"{m.name}: WinRM needs a password (a secret reference in `password`)")
                with self._errors():
                    self._protocol = Protocol(
                        self.endpoint,
                        transport=self.auth,  # type: ignore[arg-type]
                        username=m.user,
                        password=resolve_secret(m.password).get_secret_value(),
                        server_cert_validation="validate",
                        # None = the system store; never the REQUESTS_CA_BUNDLE/env fallback.
                        ca_trust_path=str(self.ca_bundle) if self.ca_bundle else None,  # type: ignore[arg-type]
                        read_timeout_sec=self.operation_timeout + 10,
                        operation_timeout_sec=self.operation_timeout,
                        message_encryption="auto",  # over HTTPS: none, TLS protects the messages
                        proxy=None,
                    )
            return self._protocol

    def _exec(self, argv: list[str], *, stdin_chunks: list[bytes] | None, timeout: float) -> tuple[bytes, bytes, int]:
        command_line = " ".join(argv)
        if len(command_line) > CMD_LINE_LIMIT:
            raise RemoteExecError(
                f"{self._where}: the command line is {len(command_line)} characters, over cmd.exe's {CMD_LINE_LIMIT}; "
                "send the data on stdin instead"
            )
        protocol = self._connected()
        with self._errors():
            shell_id = protocol.open_shell(codepage=65001, noprofile=True)
            try:
                command_id = protocol.run_command(shell_id, argv[0], argv[1:])
                try:
                    if stdin_chunks is not None:
                        chunks = stdin_chunks or [b""]
                        for i, chunk in enumerate(chunks):
                            protocol.send_command_input(shell_id, command_id, chunk, end=i == len(chunks) - 1)
                    return self._collect(protocol, shell_id, command_id, timeout)
                finally:
                    protocol.cleanup_command(shell_id, command_id)
            finally:
                protocol.close_shell(shell_id, close_session=False)

    def _collect(self, protocol: Protocol, shell_id: str, command_id: str, timeout: float) -> tuple[bytes, bytes, int]:
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        while True:
            try:
                o, e, code, done = protocol.get_command_output_raw(shell_id, command_id)
            except WinRMOperationTimeoutError:
                o, e, code, done = b"", b"", -1, False  # the command is still running: ask again
            out += o
            err += e
            if done:
                return bytes(out), bytes(err), code
            if time.monotonic() > deadline:
                raise CommandTimeout(f"{self._where}: the command did not end within {timeout}s")

    def run(self, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run `command` as a PowerShell script."""
        chunks = None if stdin is None else [stdin[i : i + PUT_CHUNK] for i in range(0, len(stdin), PUT_CHUNK)]
        out, err, code = self._exec(encode_powershell(command), stdin_chunks=chunks, timeout=timeout)
        return CommandResult(exit_status=code, stdout=out.decode("utf-8", "replace"), stderr=clixml_to_text(err))

    def open_process(self, command: str):  # noqa: ANN201
        raise RemoteExecError("streaming is not supported over WinRM yet")

    def put_file(self, local_path: str, remote_path: str, mode: int = 0o644) -> None:
        """Upload through the receiver script; `mode` has no meaning on Windows (ACLs are inherited)."""
        data = Path(local_path).read_bytes()
        chunks = [base64.b64encode(data[i : i + PUT_CHUNK]) + b"\r\n" for i in range(0, len(data), PUT_CHUNK)]
        script = render("receive.ps1.j2", path=remote_path)
        out, err, code = self._exec(encode_powershell(script, preamble=False), stdin_chunks=chunks, timeout=300)
        if code != 0:
            raise RemoteExecError(f"{self._where}: cannot upload {local_path} to {remote_path}: {clixml_to_text(err).strip()}")
        match = re.search(r'"sha256"\s*:\s*"([0-9a-f]{64})"', out.decode("utf-8", "replace"))
        expected = hashlib.sha256(data).hexdigest()
        if not match:
            raise RemoteExecError(f"{self._where}: the upload of {remote_path} did not report its SHA-256")
        if match.group(1) != expected:
            raise RemoteExecError(
                f"{self._where}: {remote_path} arrived with sha256 {match.group(1)}, but {expected} was sent"
            )

    def close(self) -> None:
        with self._lock:
            if self._protocol is not None:
                self._protocol.transport.close_session()
                self._protocol = None


def winrm_shell_for(machine: MachineConfig, **kwargs) -> WinRmShell:
    return WinRmShell(machine, **kwargs)
