"""Source machines: one real OpenSSH server per machine on its own loopback address.

Each machine gets a host key made here (and written to the lab's known_hosts, so clients
verify it), the lab's client key in its authorized keys, and sparse disk files. All
machines share this host's filesystem, so each has its own directory standing in for
its root: `<lab>/machines/<name>/` with `disks/` and `opt/drbook/` (the agent's home).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lab.errors import LabError
from lab.procs import Managed, port_in_use, wait_for_port
from lab.spec import MachineSpec

SSHD = Path("/usr/sbin/sshd")
INITIAL_FILL = 0.25  # the share of each new disk filled with data, the rest left sparse
# Tools a machine without python still has (the lab's stand-in for a minimal server).
_MINIMAL_TOOLS = ("sh", "cat", "mkdir", "rm", "mv", "chmod", "sha256sum", "df", "test", "printf", "echo", "dd", "stat", "uname", "head", "ls")


@dataclass(frozen=True)
class SshKeys:
    client_key: Path
    client_pub: Path
    authorized_keys: Path
    known_hosts: Path


def _new_ed25519(path: Path) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    path.chmod(0o600)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def ensure_client_key(ssh_dir: Path) -> SshKeys:
    ssh_dir.mkdir(parents=True, exist_ok=True)
    keys = SshKeys(ssh_dir / "id_ed25519", ssh_dir / "id_ed25519.pub", ssh_dir / "authorized_keys", ssh_dir / "known_hosts")
    if not keys.client_key.exists():
        pub = _new_ed25519(keys.client_key)
        keys.client_pub.write_text(pub + " drbook-lab\n")
        keys.authorized_keys.write_text(pub + " drbook-lab\n")
    keys.known_hosts.touch()
    return keys


def host_key_line(address: str, pub: str) -> str:
    return f"{address} {pub}"


def _record_known_host(known_hosts: Path, address: str, pub: str) -> None:
    lines = [ln for ln in known_hosts.read_text().splitlines() if ln and not ln.startswith(address + " ")]
    lines.append(host_key_line(address, pub))
    known_hosts.write_text("\n".join(lines) + "\n")


def machine_dir(lab: Path, name: str) -> Path:
    return lab / "machines" / name


def disk_path(lab: Path, machine: str, disk: str) -> Path:
    return machine_dir(lab, machine) / "disks" / f"{disk}.img"


def ensure_disks(lab: Path, spec: MachineSpec) -> None:
    for disk in spec.disks:
        path = disk_path(lab, spec.name, disk.name)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        size = disk.size_mib * 1024 * 1024
        rng = random.Random(f"{spec.name}/{disk.name}")
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.truncate(size)
            filled = int(size * INITIAL_FILL) // (1024 * 1024)
            for _ in range(filled):
                f.write(rng.randbytes(1024 * 1024))
        tmp.rename(path)


def _minimal_path_dir(mdir: Path) -> Path:
    """A PATH with a shell and coreutils but no python3: the lab's machine without python."""
    bin_dir = mdir / "minimal-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in _MINIMAL_TOOLS:
        target = shutil.which(tool)
        link = bin_dir / tool
        if target and not link.exists():
            link.symlink_to(target)
    return bin_dir


def ensure_machine(lab: Path, spec: MachineSpec, keys: SshKeys) -> Managed:
    """Write the machine's sshd config, host key and disks; start its sshd if it is not running."""
    mdir = machine_dir(lab, spec.name)
    (mdir / "opt" / "drbook").mkdir(parents=True, exist_ok=True)
    host_key = mdir / "ssh_host_ed25519_key"
    if not host_key.exists():
        pub = _new_ed25519(host_key)
        (mdir / "ssh_host_ed25519_key.pub").write_text(pub + "\n")
    _record_known_host(keys.known_hosts, spec.address, (mdir / "ssh_host_ed25519_key.pub").read_text().strip())
    ensure_disks(lab, spec)

    env_lines = [f"SetEnv DRBOOK_MACHINE={spec.name}"]
    if not spec.python:
        # The login shell's rc files would put python back on PATH; a clean environment won't.
        env_lines.append(
            f"ForceCommand /usr/bin/env -i PATH={_minimal_path_dir(mdir)} HOME={mdir} DRBOOK_MACHINE={spec.name}"
            ' /bin/sh -c "$SSH_ORIGINAL_COMMAND"'
        )
    config = mdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {spec.address}:22",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {keys.authorized_keys}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                f"PidFile {mdir / 'sshd.pid'}",
                "Subsystem sftp internal-sftp",
                "MaxSessions 64",
                "MaxStartups 64:30:128",
                "LogLevel ERROR",
                *env_lines,
                "",
            ]
        )
    )
    managed = Managed(f"sshd-{spec.name}", lab / "run")
    if managed.running():
        return managed
    if not SSHD.exists():
        raise LabError("openssh-server is not installed (/usr/sbin/sshd missing): run `make setup`")
    if port_in_use(spec.address, 22):
        raise LabError(f"machine {spec.name}: {spec.address}:22 is already in use by a process the lab did not start")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    managed.start([str(SSHD), "-D", "-e", "-f", str(config)])
    wait_for_port(managed, spec.address, 22, timeout=10)
    return managed


def machine_status(lab: Path, spec: MachineSpec, keys: SshKeys) -> dict:
    return {
        "name": spec.name,
        "vm_name": spec.name if spec.vmware else None,
        "os": "linux",
        "address": spec.address,
        "port": 22,
        "user": "root",
        "key_file": str(keys.client_key),
        "known_hosts": str(keys.known_hosts),
        "agent_dir": str(machine_dir(lab, spec.name) / "opt" / "drbook"),
        "ip": spec.ip,
        "network": spec.network,
        "cpus": spec.cpus,
        "memory_mb": spec.memory_mb,
        "disks": [
            {"name": d.name, "path": str(disk_path(lab, spec.name, d.name)), "size_bytes": d.size_mib * 1024 * 1024}
            for d in spec.disks
        ],
    }
