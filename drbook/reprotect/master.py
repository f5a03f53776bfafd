"""The master target: the agent on the host that can write the target disks (the original
VM's disks, another VM's, or a physical server booted into a recovery environment), run over
its RemoteShell. Two conversations: a hashes-only scan (which blocks of the target differ from
a manifest: its drift) and an apply stream (positioned writes, fsync, a report per disk)."""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from drbook.adapters.shell import RemoteProcess, RemoteShell
from drbook.agent import agent as wire
from drbook.config import MachineConfig
from drbook.errors import ProtocolError, ReplicationError
from drbook.mobility import agent_path
from drbook.replication import protocol as p
from drbook.replication.manifest import Manifest


@dataclass(frozen=True)
class TargetDisk:
    name: str
    path: str
    size: int


def _command(machine: MachineConfig, mode: str) -> str:
    # python stays unquoted: a site may set it to a command line (e.g. "sudo -n python3").
    return f"{machine.python} {shlex.quote(agent_path(machine))} {mode}"


def _stderr(proc: RemoteProcess) -> str:
    with contextlib.suppress(Exception):
        proc.kill()
        return proc.stderr_text().strip()[-1000:] or "(empty)"
    return "(unavailable)"


def drift(shell: RemoteShell, machine: MachineConfig, disks: list[TargetDisk], manifests: list[Manifest]) -> dict[str, set[int]]:
    """Per disk, the blocks whose bytes on the target differ from `manifests` (a hashes-only
    scan: nothing but indexes and hashes crosses the wire)."""
    block_size = manifests[0].block_size
    header = {"disks": [{"name": d.name, "path": d.path, "size": d.size} for d in disks],
              "block_size": block_size, "sub_block_size": 0, "sub_hash_len": 8, "hooks": {"freeze": [], "thaw": []},
              "hook_timeout": 30, "max_freeze": 30, "barrier": False, "barrier_timeout": 60, "hashes_only": True}
    proc = shell.open_process(_command(machine, "scan"))
    try:
        p.write_request(proc.stdin, header, [(m.hashes, b"") for m in manifests])
        proc.stdin.flush()
        proc.stdin.close()
    except Exception as exc:
        raise ProtocolError(f"{machine.name}: could not send the scan request ({type(exc).__name__}); "
                            f"agent stderr: {_stderr(proc)}") from None
    found: dict[str, set[int]] = {d.name: set() for d in disks}
    layout = p.Layout(block_size=block_size)
    current: str | None = None
    trailer = None
    for kind, payload in p.FrameReader(proc.stdout, layout=layout):
        if kind == p.DISK:
            current = disks[p.parse_json(kind, payload)["index"]].name
        elif kind == p.BLOCK:
            found[_disk(current)].add(p.parse_block(payload, layout).index)
        elif kind == p.ZERO:
            first, count = p.parse_zeros(payload)
            found[_disk(current)].update(range(first, first + count))
        elif kind == p.ERROR:
            doc = p.parse_json(kind, payload)
            raise ReplicationError(f"{machine.name}: the agent could not read {doc.get('disk')}: {doc.get('message')}")
        elif kind == p.TRAILER:
            trailer = p.parse_json(kind, payload)
            break
    if trailer is None or not trailer.get("ok"):
        raise ProtocolError(f"{machine.name}: the drift scan ended without a good trailer "
                            f"({(trailer or {}).get('error')}); agent stderr: {_stderr(proc)}")
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)
    return found


def _disk(name: str | None) -> str:
    if name is None:
        raise ProtocolError("the agent sent a block before its disk frame")
    return name


@dataclass
class ApplyReport:
    disks: dict[str, dict] = field(default_factory=dict)  # name -> the agent's disk-end report
    trailer: dict | None = None


class ApplySession:
    """One apply stream to the master target: `block` and `zeros` queue writes, `close` ends
    the stream and waits for every disk's report (the agent has fsynced by then). Every target
    is checked (exists, is a file or block device, is large enough) before anything is written;
    a refusal surfaces on the first call after it, or at close."""

    def __init__(self, shell: RemoteShell, machine: MachineConfig, disks: list[TargetDisk]) -> None:
        self.machine = machine
        self.disks = disks
        self.report = ApplyReport()
        self.error: str | None = None
        self.bytes_sent = 0
        self.proc = shell.open_process(_command(machine, "apply"))
        self._reader = threading.Thread(target=self._read, name=f"apply-{machine.name}", daemon=True)
        self._reader.start()
        self._send(wire.encode_apply_header({"disks": [{"name": d.name, "path": d.path, "size": d.size} for d in disks]}))

    def _read(self) -> None:
        # Apply mode's frames are JSON reports of their own (not a scan's: parse_json checks those).
        try:
            for kind, payload in p.FrameReader(self.proc.stdout, max_payload=p.MAX_JSON):
                doc = json.loads(payload) if kind in p.JSON_FRAMES else {}
                if not isinstance(doc, dict):
                    raise ProtocolError(f"apply frame {p.frame_name(kind)} is not a JSON object")
                if kind == p.DISK_END:
                    self.report.disks[str(doc.get("name"))] = doc
                elif kind == p.ERROR:
                    self.error = self.error or f"{doc.get('disk') or 'stream'}: {doc.get('message')}"
                elif kind == p.TRAILER:
                    self.report.trailer = doc
                    return
        except Exception as exc:  # noqa: BLE001 - reported by close()
            self.error = self.error or f"{type(exc).__name__}: {exc}"

    def _send(self, data: bytes) -> None:
        if self.error:
            raise ReplicationError(f"{self.machine.name}: the master target refused: {self.error}")
        try:
            self.proc.stdin.write(data)
        except Exception as exc:
            self._reader.join(5)
            raise ReplicationError(f"{self.machine.name}: the master target stopped reading "
                                   f"({self.error or type(exc).__name__}); agent stderr: {_stderr(self.proc)}") from None
        self.bytes_sent += len(data)

    def block(self, disk: int, offset: int, data: bytes | memoryview) -> None:
        for start in range(0, len(data), wire.APPLY_MAX_DATA):
            self._send(wire.apply_block_frame(disk, offset + start, data[start:start + wire.APPLY_MAX_DATA]))

    def zeros(self, disk: int, offset: int, length: int) -> None:
        self._send(wire.apply_zero_frame(disk, offset, length))

    def end_disk(self, disk: int) -> None:
        self._send(wire.apply_end_frame(disk))

    def close(self, timeout: float = 600) -> ApplyReport:
        self._send(wire.apply_done_frame())
        with contextlib.suppress(Exception):
            self.proc.stdin.flush()
            self.proc.stdin.close()
        self._reader.join(timeout)
        trailer = self.report.trailer
        if self.error or trailer is None or not trailer.get("ok"):
            why = self.error or (trailer or {}).get("error") or "no trailer"
            raise ReplicationError(f"{self.machine.name}: applying the changes failed: {why}; "
                                   f"agent stderr: {_stderr(self.proc)}")
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=30)
        return self.report

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()


@contextlib.contextmanager
def apply_session(shell_for: Callable[[MachineConfig], RemoteShell], machine: MachineConfig,
                  disks: list[TargetDisk]) -> Iterator[ApplySession]:
    shell = shell_for(machine)
    session = None
    try:
        session = ApplySession(shell, machine, disks)
        yield session
    except BaseException:
        if session is not None:
            session.abort()
        raise
    finally:
        shell.close()
