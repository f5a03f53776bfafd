"""SshShell against real OpenSSH servers made by lab.machines (own loopback addresses,
own temp lab): commands, binary streaming, SFTP, and the error table at the boundary."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from drbook.adapters.ssh import REKEY_BYTES, SshShell
from drbook.config import DiskConfig, MachineConfig
from drbook.errors import AuthenticationError, CommandTimeout, ConnectError, HostKeyError, RemoteExecError
from lab.machines import SshKeys, disk_path, ensure_client_key, ensure_machine, machine_dir
from lab.procs import Managed, port_in_use
from lab.spec import DiskSpec, MachineSpec

# The lead's lab uses 127.0.1.11-13; these tests take free addresses from this range.
_ADDRESSES = [f"127.0.1.{n}" for n in range(201, 210)]
_claimed: set[str] = set()
_claim_lock = threading.Lock()


def free_address() -> str:
    with _claim_lock:
        for address in _ADDRESSES:
            if address not in _claimed and not port_in_use(address, 22):
                _claimed.add(address)
                return address
    raise RuntimeError("no free loopback address in 127.0.1.201-209 for a test sshd")


@dataclass
class SshLab:
    dir: Path
    keys: SshKeys
    procs: list[Managed]

    def machine(self, name: str, *, python: bool = True, disk_mib: int = 2) -> MachineConfig:
        spec = MachineSpec(
            name=name, address=free_address(), ip="10.99.0.1", network="test-net",
            disks=[DiskSpec(name="disk0", size_mib=disk_mib)], vmware=False, python=python,
        )
        self.procs.append(ensure_machine(self.dir, spec, self.keys))
        return MachineConfig(
            name=name,
            address=spec.address,
            key_file=self.keys.client_key,
            known_hosts=self.keys.known_hosts,
            agent_dir=str(machine_dir(self.dir, name) / "opt" / "drbook"),
            disks=[DiskConfig(name="disk0", path=str(disk_path(self.dir, name, "disk0")))],
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture(scope="module")
def ssh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    base = tmp_path_factory.mktemp("sshlab")
    lab = SshLab(base, ensure_client_key(base / "ssh"), [])
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def box(ssh_lab: SshLab) -> MachineConfig:
    return ssh_lab.machine("box01")


@pytest.fixture
def shell(box: MachineConfig) -> Iterator[SshShell]:
    with SshShell(box) as sh:
        yield sh


def _other_ed25519_public() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# -- commands ------------------------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_status(shell: SshShell):
    result = shell.run("echo out; echo err >&2; exit 3")
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert shell.run("printf %s $DRBOOK_MACHINE").stdout == "box01"  # it is the lab machine's sshd


def test_run_feeds_stdin_and_sends_eof(shell: SshShell):
    data = os.urandom(300_000)
    result = shell.run("sha256sum", stdin=data)
    assert result.exit_status == 0
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_run_timeout_is_a_retryable_error(shell: SshShell):
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as err:
        shell.run("sleep 20", timeout=0.5)
    assert err.value.retryable and time.monotonic() - started < 5
    assert shell.run("echo still usable").stdout == "still usable\n"


# -- streaming -----------------------------------------------------------------------------


def test_open_process_streams_a_file_byte_for_byte(shell: SshShell, ssh_lab: SshLab):
    # The machines share this host's filesystem, so the test knows the true bytes.
    src = ssh_lab.dir / "stream.bin"
    payload = os.urandom(24 * 1024 * 1024 + 12345)
    src.write_bytes(payload)
    proc = shell.open_process(f"cat {src}")
    proc.stdin.close()
    digest, total = hashlib.sha256(), 0
    while chunk := proc.stdout.read(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    assert proc.wait(timeout=10) == 0
    assert total == len(payload) and digest.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_open_process_duplex_stdin_eof_ends_the_command(shell: SshShell):
    """Write and read at once (as the agent protocol does); close() on stdin is the EOF."""
    payload = os.urandom(16 * 1024 * 1024)
    proc = shell.open_process("cat")

    def feed() -> None:
        for i in range(0, len(payload), 256 * 1024):
            proc.stdin.write(payload[i : i + 256 * 1024])
        proc.stdin.close()

    writer = threading.Thread(target=feed)
    writer.start()
    received = bytearray()
    while chunk := proc.stdout.read(1 << 20):
        received += chunk
    writer.join(timeout=10)
    assert proc.wait(timeout=10) == 0
    assert bytes(received) == payload


def test_open_process_exit_status_and_stderr(shell: SshShell):
    proc = shell.open_process("head -c 100 /dev/zero; echo 'disk is gone' >&2; exit 7")
    assert proc.stdout.read() == b"\0" * 100
    assert proc.wait(timeout=10) == 7
    assert proc.stderr_text() == "disk is gone\n"


def test_open_process_large_stderr_does_not_block_stdout(shell: SshShell):
    # 2 MiB of stderr nobody asked for must not stall the command on a full window.
    proc = shell.open_process("head -c 2097152 /dev/zero >&2; echo done")
    assert proc.stdout.read() == b"done\n"
    assert proc.wait(timeout=10) == 0
    assert len(proc.stderr_text()) == 64 * 1024  # the bounded tail


def test_open_process_kill_and_wait_timeout(shell: SshShell):
    proc = shell.open_process("sleep 30")
    with pytest.raises(CommandTimeout):
        proc.wait(timeout=0.2)
    started = time.monotonic()
    proc.kill()
    assert proc.stdout.read() == b""
    assert time.monotonic() - started < 5


def test_transport_rekey_limit_avoids_paramikos_512mib_rekey(shell: SshShell):
    shell.run("true")
    transport = shell._connected().get_transport()
    assert transport.packetizer.REKEY_BYTES == REKEY_BYTES == 16 * 1024**3
    assert transport.remote_cipher.endswith("gcm@openssh.com")


# -- SFTP ----------------------------------------------------------------------------------


def test_put_file_uploads_bytes_and_mode(shell: SshShell, ssh_lab: SshLab, tmp_path: Path):
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(1_000_003))
    remote = ssh_lab.dir / "machines" / "box01" / "uploaded.bin"
    shell.put_file(str(local), str(remote), 0o640)
    assert remote.read_bytes() == local.read_bytes()
    assert remote.stat().st_mode & 0o777 == 0o640


def test_put_file_into_a_missing_directory_is_a_remote_error(shell: SshShell, tmp_path: Path):
    local = tmp_path / "x"
    local.write_text("x")
    with pytest.raises(RemoteExecError, match="cannot upload") as err:
        shell.put_file(str(local), "/nonexistent-dir-drbook/x")
    assert not err.value.retryable


# -- the error table -----------------------------------------------------------------------


def test_wrong_host_key_is_refused_and_never_retried(box: MachineConfig, tmp_path: Path):
    known = tmp_path / "known_hosts"
    known.write_text(f"{box.address} {_other_ed25519_public()}\n")
    machine = box.model_copy(update={"known_hosts": known})
    with pytest.raises(HostKeyError) as err:
        SshShell(machine).run("true")
    assert str(err.value) == f"host key for {box.address} does not match known_hosts {known}; refusing to connect"
    assert err.value.retryable is False


def test_unknown_host_is_refused_never_added(box: MachineConfig, tmp_path: Path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    machine = box.model_copy(update={"known_hosts": known})
    with pytest.raises(HostKeyError, match="is not in known_hosts .*ssh-keyscan"):
        SshShell(machine).run("true")
    assert known.read_text() == ""  # nothing was added


def test_missing_known_hosts_says_how_to_get_one(box: MachineConfig, tmp_path: Path):
    with pytest.raises(HostKeyError, match="no known_hosts file is configured.*ssh-keyscan"):
        SshShell(box.model_copy(update={"known_hosts": None})).run("true")
    with pytest.raises(HostKeyError, match="does not exist"):
        SshShell(box.model_copy(update={"known_hosts": tmp_path / "nope"})).run("true")


def test_bad_client_key_is_an_authentication_error(box: MachineConfig, tmp_path: Path):
    other = tmp_path / "id_other"
    other.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    other.chmod(0o600)
    with pytest.raises(AuthenticationError) as err:
        SshShell(box.model_copy(update={"key_file": other})).run("true")
    assert "authentication as 'root' failed" in str(err.value) and not err.value.retryable


def test_nothing_listening_is_a_retryable_connect_error(box: MachineConfig):
    address = free_address()  # no sshd was started there
    with pytest.raises(ConnectError) as err:
        SshShell(box.model_copy(update={"address": address}), connect_timeout=3).run("true")
    assert err.value.retryable and address in str(err.value)


def test_writing_to_an_ended_command_is_a_drbook_error(shell: SshShell):
    proc = shell.open_process("exit 0")
    assert proc.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while not proc._channel.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RemoteExecError):  # not paramiko's or the socket's exception
        proc.stdin.write(b"x" * 1024 * 1024)
        proc.stdin.flush()
