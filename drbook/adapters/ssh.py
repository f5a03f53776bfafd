"""RemoteShell over SSH (paramiko): host keys verified, never added; errors translated here.

Only this module sees paramiko. Every library exception is mapped by `_error_table` at the
boundary into drbook's tree, so callers decide on `HostKeyError` / `AuthenticationError`
(never retried) versus `ConnectError` (retried). Reading known_hosts, before any connection,
has its own mapping (`_load_known_hosts`): whatever paramiko raises there is a HostKeyError.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

from drbook.adapters.shell import CommandResult
from drbook.config import MachineConfig
from drbook.errors import AuthenticationError, CommandTimeout, ConnectError, DRError, HostKeyError, RemoteExecError
from drbook.secrets import private_file_problem, resolve_secret

# The receive window bounds throughput at window / round-trip time: paramiko's default
# (2 MiB) caps a 10 ms link at ~200 MB/s. 16 MiB allows ~1.6 GB/s there, and bounds what a
# slow reader can have buffered per channel. (On loopback the window makes no difference.)
WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET_SIZE = 256 * 1024
READ_CHUNK = 1024 * 1024
STDERR_LIMIT = 64 * 1024
# paramiko rekeys after 512 MiB and can deadlock if the server closes a channel during that
# rekey (paramiko issue #822, open): a stream of a few hundred MB then dies after 30 s. We
# rekey at 16 GiB instead, still below OpenSSH's own limit for AES (2^32 blocks = 64 GiB).
REKEY_BYTES = 16 * 1024**3
# AES-GCM needs no separate HMAC pass, which is the costliest part of paramiko's CTR+HMAC path.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")


def _fmt(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error_table(machine: MachineConfig) -> list[tuple[type[BaseException], Callable[[BaseException], DRError]]]:
    """Library exception -> drbook error, most specific first."""
    where = f"{machine.name} ({machine.address}:{machine.port})"
    return [
        (
            paramiko.BadHostKeyException,
            lambda e: HostKeyError(
                f"host key for {machine.address} does not match known_hosts {machine.known_hosts}; refusing to connect"
            ),
        ),
        (
            paramiko.AuthenticationException,
            lambda e: AuthenticationError(f"{where}: authentication as {machine.user!r} failed: {_fmt(e)}"),
        ),
        (paramiko.ssh_exception.NoValidConnectionsError, lambda e: ConnectError(f"{where}: connection failed: {_fmt(e)}")),
        (socket.timeout, lambda e: ConnectError(f"{where}: timed out: {_fmt(e)}")),
        (ConnectionError, lambda e: ConnectError(f"{where}: connection failed: {_fmt(e)}")),
        (EOFError, lambda e: ConnectError(f"{where}: the connection closed unexpectedly")),
        (socket.gaierror, lambda e: ConnectError(f"{where}: cannot resolve the address: {_fmt(e)}")),
        (paramiko.SSHException, lambda e: _ssh_exception(where, e)),
        (OSError, lambda e: RemoteExecError(f"{where}: {_fmt(e)}")),
    ]


def _ssh_exception(where: str, exc: BaseException) -> DRError:
    text = _fmt(exc)
    # paramiko reports a dropped or half-open connection as a bare SSHException.
    if "protocol banner" in text or "Key-exchange timed out" in text or "closed by remote" in text or "Connection reset" in text:
        return ConnectError(f"{where}: connection lost: {text}")
    return RemoteExecError(f"{where}: SSH error: {text}")


@contextmanager
def map_ssh_errors(machine: MachineConfig) -> Iterator[None]:
    try:
        yield
    except DRError:
        raise
    except Exception as exc:
        for exc_type, make in _error_table(machine):
            if isinstance(exc, exc_type):
                raise make(exc) from exc
        raise


class _RejectUnknownHost(paramiko.RejectPolicy):
    def __init__(self, machine: MachineConfig) -> None:
        self.machine = machine

    def missing_host_key(self, client, hostname, key):  # noqa: ANN001 - paramiko's signature
        raise HostKeyError(
            f"host key for {self.machine.address} ({key.get_name()}) is not in known_hosts {self.machine.known_hosts}; "
            f"refusing to connect. Add it after checking its fingerprint out of band, e.g. "
            f"`ssh-keyscan -p {self.machine.port} {self.machine.address} >> {self.machine.known_hosts}`"
        )


def _transport_factory(sock, **kwargs) -> paramiko.Transport:  # noqa: ANN001
    transport = paramiko.Transport(
        sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE, **kwargs
    )
    transport.packetizer.REKEY_BYTES = REKEY_BYTES
    options = transport.get_security_options()
    available = set(options.ciphers)
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in available) + tuple(
        c for c in options.ciphers if c not in PREFERRED_CIPHERS
    )
    return transport


class _ChannelReader(io.RawIOBase):
    """A channel's stdout as a raw reader (wrapped in a BufferedReader for read(n)); paramiko's
    own makefile('rb') copies its buffer on every read, quadratic for multi-MiB reads."""

    def __init__(self, channel: paramiko.Channel, machine: MachineConfig) -> None:
        self._channel = channel
        self._machine = machine

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        with map_ssh_errors(self._machine):
            data = self._channel.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ChannelWriter(io.RawIOBase):
    """A channel's stdin as a raw writer: close() sends EOF (shutdown_write), as
    makefile_stdin does, and errors are translated here rather than leaking paramiko's."""

    def __init__(self, channel: paramiko.Channel, machine: MachineConfig) -> None:
        self._channel = channel
        self._machine = machine

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        with map_ssh_errors(self._machine):
            self._channel.sendall(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            super().close()
            with map_ssh_errors(self._machine):
                self._channel.shutdown_write()


class _StderrDrain(threading.Thread):
    """Keeps reading stderr so a chatty command can never block on a full window; keeps the tail."""

    def __init__(self, channel: paramiko.Channel) -> None:
        super().__init__(daemon=True, name="ssh-stderr")
        self._channel = channel
        self._buf = bytearray()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            while data := self._channel.recv_stderr(65536):
                with self._lock:
                    self._buf += data
                    if len(self._buf) > STDERR_LIMIT:
                        del self._buf[: len(self._buf) - STDERR_LIMIT]
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def text(self) -> str:
        with self._lock:
            return self._buf.decode("utf-8", "replace")


class SshProcess:
    """A remote command's binary pipes (RemoteProcess)."""

    def __init__(self, shell: "SshShell", channel: paramiko.Channel) -> None:
        self._shell = shell
        self._channel = channel
        machine = shell.machine
        self.stdin = io.BufferedWriter(_ChannelWriter(channel, machine), buffer_size=256 * 1024)  # close() = EOF
        self.stdout = io.BufferedReader(_ChannelReader(channel, machine), buffer_size=READ_CHUNK)
        self._stderr = _StderrDrain(channel)
        self._stderr.start()

    def wait(self, timeout: float | None = None) -> int:
        if not self._channel.status_event.wait(timeout):
            raise CommandTimeout(f"{self._shell.machine.name}: the remote command did not end within {timeout}s")
        self._stderr.join(timeout=5)
        return self._channel.recv_exit_status()

    def stderr_text(self) -> str:
        return self._stderr.text()

    def kill(self) -> None:
        self._channel.close()


class SshShell:
    """RemoteShell for one machine over one SSH connection (opened on first use)."""

    def __init__(self, machine: MachineConfig, *, connect_timeout: float = 10, source_address: str | None = None) -> None:
        self.machine = machine
        self.connect_timeout = connect_timeout
        # The process server's own address (its network segment): the connection leaves from it.
        self.source_address = source_address
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "SshShell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _known_hosts(self) -> Path:
        m = self.machine
        hint = (
            f"get the host key out of band (e.g. `ssh-keyscan -p {m.port} {m.address}` run on a trusted network, "
            "then compare its fingerprint with the machine's console) and set `known_hosts` for it in the site config"
        )
        if m.known_hosts is None:
            raise HostKeyError(f"{m.name}: no known_hosts file is configured; refusing to connect. To fix: {hint}")
        if not Path(m.known_hosts).is_file():
            raise HostKeyError(f"{m.name}: known_hosts {m.known_hosts} does not exist; refusing to connect. To fix: {hint}")
        return Path(m.known_hosts)

    def _load_known_hosts(self, client: paramiko.SSHClient) -> None:
        path = self._known_hosts()
        try:
            client.load_host_keys(str(path))
        except OSError as exc:
            raise HostKeyError(
                f"{self.machine.name}: cannot read known_hosts {path} ({exc.strerror}); refusing to connect"
            ) from exc
        except Exception as exc:  # a malformed line: paramiko's InvalidHostKey, ValueError, UnicodeDecodeError ...
            raise HostKeyError(
                f"{self.machine.name}: known_hosts {path} is malformed ({type(exc).__name__}); refusing to connect. "
                f"Each line is `host key-type base64-key`; `ssh-keygen -l -f {path}` lists the keys it can read"
            ) from exc

    def _credentials(self) -> dict:
        m = self.machine
        if m.key_file is not None:
            # As ssh does: a private key others can read is refused.
            if problem := private_file_problem(Path(m.key_file)):
                raise AuthenticationError(f"{m.name}: key file {problem}")
            return {"key_filename": str(m.key_file)}
        if m.password is not None:
            return {"password": resolve_secret(m.password).get_secret_value()}
        raise AuthenticationError(f"{m.name}: neither key_file nor password is configured")

    def _connected(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is not None and transport.is_active():
                return self._client  # type: ignore[return-value]
            m = self.machine
            client = paramiko.SSHClient()
            self._load_known_hosts(client)
            client.set_missing_host_key_policy(_RejectUnknownHost(m))
            try:
                with map_ssh_errors(m):
                    sock = None
                    if self.source_address:
                        sock = socket.create_connection((m.address, m.port), timeout=self.connect_timeout,
                                                        source_address=(self.source_address, 0))
                    client.connect(
                        m.address,
                        sock=sock,
                        port=m.port,
                        username=m.user,
                        timeout=self.connect_timeout,
                        banner_timeout=self.connect_timeout,
                        auth_timeout=self.connect_timeout,
                        look_for_keys=False,
                        allow_agent=False,
                        transport_factory=_transport_factory,
                        **self._credentials(),
                    )
            except BaseException:
                client.close()
                raise
            self._client = client
            return client

    def _channel(self, command: str) -> paramiko.Channel:
        client = self._connected()
        with map_ssh_errors(self.machine):
            transport = client.get_transport()
            assert transport is not None
            channel = transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=self.connect_timeout
            )
            channel.exec_command(command)
        return channel

    def run(self, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        with map_ssh_errors(self.machine):
            channel = self._channel(command)
            try:
                stderr = _StderrDrain(channel)
                stderr.start()
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
                channel.settimeout(timeout)
                deadline = time.monotonic() + timeout
                out = bytearray()
                try:
                    while data := channel.recv(READ_CHUNK):
                        out += data
                except socket.timeout:
                    raise CommandTimeout(f"{self.machine.name}: {command!r} did not end within {timeout}s") from None
                if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                    raise CommandTimeout(f"{self.machine.name}: {command!r} did not end within {timeout}s")
                stderr.join(timeout=5)
                return CommandResult(
                    exit_status=channel.recv_exit_status(),
                    stdout=out.decode("utf-8", "replace"),
                    stderr=stderr.text(),
                )
            finally:
                channel.close()

    def open_process(self, command: str) -> SshProcess:
        return SshProcess(self, self._channel(command))

    def put_file(self, local_path: str, remote_path: str, mode: int = 0o644) -> None:
        if not Path(local_path).is_file():
            raise FileNotFoundError(f"{local_path}: no such local file to upload")
        client = self._connected()
        with map_ssh_errors(self.machine):
            try:
                with client.open_sftp() as sftp:
                    sftp.put(str(local_path), remote_path)
                    sftp.chmod(remote_path, mode)
            except FileNotFoundError as exc:
                # paramiko raises the remote side's ENOENT as a local-looking FileNotFoundError.
                raise RemoteExecError(
                    f"{self.machine.name}: cannot upload {local_path} to {remote_path}: {exc.strerror or exc}"
                ) from exc
            except PermissionError as exc:
                raise RemoteExecError(f"{self.machine.name}: cannot upload to {remote_path}: permission denied") from exc

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def ssh_shell_for(machine: MachineConfig, *, connect_timeout: float = 10) -> SshShell:
    return SshShell(machine, connect_timeout=connect_timeout)
