"""The lab's workload writer: writes to a machine's disks at a steady rate and logs every
write, so a test knows the true content of a disk at any instant.

A disk is a local file (`--disk NAME=PATH`: an on-premises machine's disk file) or an Azure
page blob (`--azure-disk NAME=URL`: a failed-over VM's managed disk, reached by a SAS URL as
Azure hands them out; `NAME=@FILE` reads the URL from a file so the SAS is not on a command
line). Each write to a blob is one Put Page (4 KiB aligned, at most 4 MiB: atomic), so the two
kinds behave alike: a write is logged only after the disk acknowledged it (pwrite returned,
Put Page answered 201), one write is in flight at a time, and the log, seeds, seq numbers and
pause/resume are the same. A page blob whose last 512 bytes are a VHD footer (a managed disk)
is written only below it.

Every write's data is derived from (seed, seq) (an AES-CTR keystream), so the log of
(seq, disk, offset, length, sha256) is enough to rebuild a disk: `replay()`.

It can be paused and resumed through a control directory; that is the lab's
crash-consistency hook (a "freeze" of the application):

    python -m lab.workload run --disk disk0=/path/disk0.img --log w.jsonl --control ctl \
        --rate 20 --seconds 60 --seed 7
    python -m lab.workload run --azure-disk disk0=@disk0.url --ca-bundle ca.pem ...   # a page blob
    python -m lab.workload pause --control ctl      # blocks until the writer acks: "paused seq=N"
    python -m lab.workload resume --control ctl

Pause: `pause` creates `ctl/pause.request`; the writer finishes its current write, logs
{"event": "pause", "seq": N, "time": ...}, writes `ctl/pause.ack` (the seq) and waits.
Resume: `resume` removes the request; the writer logs {"event": "resume", ...}, removes the
ack and goes on. Writes with seq <= N are exactly what the disks held while paused.

A write a disk refuses or does not answer (a page blob of a VM that was stopped, a lost
connection) stops the writer with exit status 1. Its line {"event": "write-failed", "seq": N,
"disk", "offset", "length", "sha256", "error"} says what may have landed (nothing, for a
refusal); `replay()` skips it, as it skips every event.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REQUEST = "pause.request"
ACK = "pause.ack"
RUNNING = "running"
STOPPED = "stopped"
PAUSE_MARK = re.compile(r"paused seq=(\d+)")
ALIGN = 4096
MIN_WRITE = 4096
MAX_WRITE = 256 * 1024
MAX_PAUSE_S = 900.0
MAX_PUT_PAGE = 4 * 1024 * 1024  # Azure's largest Put Page: one request, applied whole or not at all
PAGE = 512
VHD_FOOTER = 512
VHD_COOKIE = b"conectix"
_SAS_SIG = re.compile(r"(sig(?:=|%3d|%253d))[^&\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every SAS signature replaced (an SDK or requests error can quote a URL)."""
    return _SAS_SIG.sub(r"\1REDACTED", text)


def _error(exc: BaseException) -> str:
    """One line for a failed disk operation: the storage error code and status if any, never a SAS."""
    status, code = getattr(exc, "status_code", None), getattr(exc, "error_code", None)
    first = (str(exc).strip().splitlines() or [""])[0]
    head = f"HTTP {status} {code}" if status else type(exc).__name__
    return redact(f"{head}: {first}")


def data_for(seed: int, seq: int, length: int) -> bytes:
    """The bytes of write `seq`: AES-CTR keystream under a key from the seed, counter
    starting at seq << 64 (so no two writes share keystream)."""
    # Imported here: the pause/resume hooks run per cycle and should start fast.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = hashlib.sha256(f"drbook-workload:{seed}".encode()).digest()
    enc = Cipher(algorithms.AES(key), modes.CTR((seq << 64).to_bytes(16, "big"))).encryptor()
    return enc.update(bytes(length)) + enc.finalize()


def paused_seq(text: str) -> int | None:
    """The seq in a pause hook's output ("paused seq=N"), if any."""
    m = PAUSE_MARK.search(text)
    return int(m.group(1)) if m else None


@dataclass
class Disk:
    """A local disk file, written with pwrite."""

    name: str
    path: Path
    size: int
    fd: int = -1

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR)

    def write(self, data: bytes, offset: int) -> None:
        os.pwrite(self.fd, data, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def describe(self) -> dict:
        return {"path": str(self.path), "size": self.size}


@dataclass
class BlobDisk:
    """An Azure page blob, written with Put Page through `url` (a SAS URL, or a plain blob
    URL with `account_key`). `size` is known once opened: the blob's length, less a VHD
    footer if it ends with one."""

    name: str
    url: str
    ca_bundle: Path | None = None
    account_key: str | None = None
    size: int = 0
    client: Any = field(default=None, repr=False)

    def open(self) -> None:
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.storage.blob import BlobClient, BlobType, ExponentialRetry

        parts = urlsplit(self.url)
        if parts.scheme != "https":
            raise ValueError(f"disk {self.name}: {self.safe_url()} is not https")
        has_sas = "sig=" in parts.query.lower()
        if has_sas == (self.account_key is not None):
            raise ValueError(f"disk {self.name}: give a SAS URL, or a plain URL and the account key (not both)")
        credential = None
        if self.account_key is not None:
            credential = AzureNamedKeyCredential(BlobClient.from_blob_url(self.url).account_name, self.account_key)
        # Short retries: Put Page of the same bytes at the same offset is idempotent.
        self.client = BlobClient.from_blob_url(
            self.url, credential=credential,
            connection_verify=str(self.ca_bundle) if self.ca_bundle else True,
            retry_policy=ExponentialRetry(initial_backoff=0.5, increment_base=2, retry_total=3),
            connection_timeout=10, read_timeout=30)
        props = self.client.get_blob_properties()
        if props.blob_type != BlobType.PAGEBLOB:
            raise ValueError(f"disk {self.name}: {self.safe_url()} is a {props.blob_type}, not a page blob")
        self.size = props.size
        if self.size % ALIGN == VHD_FOOTER and self.size > VHD_FOOTER:
            tail = self.client.download_blob(offset=self.size - VHD_FOOTER, length=VHD_FOOTER).readall()
            if tail.startswith(VHD_COOKIE):
                self.size -= VHD_FOOTER

    def write(self, data: bytes, offset: int) -> None:
        if not data or offset % PAGE or len(data) % PAGE or len(data) > MAX_PUT_PAGE or offset + len(data) > self.size:
            raise ValueError(f"disk {self.name}: {len(data)} bytes at {offset} is not one Put Page inside the disk")
        self.client.upload_page(data, offset=offset, length=len(data), validate_content="md5")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def safe_url(self) -> str:
        """The blob's URL without its query (no SAS)."""
        p = urlsplit(self.url)
        return f"{p.scheme}://{p.netloc}{p.path}"

    def describe(self) -> dict:
        return {"url": self.safe_url(), "size": self.size}


class WriteFailed(Exception):
    """A disk refused or lost a write: the writer stops (its log says which write)."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read(path: Path, default: str | None = "") -> str | None:
    try:
        return path.read_text()
    except OSError:
        return default


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Writer:
    def __init__(self, disks: list[Disk | BlobDisk], log: Path, control: Path, rate_mbps: float, seconds: float,
                 seed: int, min_write: int = MIN_WRITE, max_write: int = MAX_WRITE,
                 max_writes: int | None = None) -> None:
        self.disks = disks
        self.log_path = log
        self.control = control
        self.rate = rate_mbps * 1e6
        self.seconds = seconds
        self.seed = seed
        self.min_write = min_write
        self.max_write = max_write
        self.max_writes = max_writes  # a count bound besides the time bound (tests that must not depend on speed)
        if not disks:
            raise ValueError("no disks to write to")
        if min_write < ALIGN or max_write < min_write:
            raise ValueError(f"writes must be {ALIGN} bytes or more, and --max-write at least --min-write")
        if max_write > MAX_PUT_PAGE and any(isinstance(d, BlobDisk) for d in disks):
            raise ValueError(f"a page blob takes at most {MAX_PUT_PAGE} bytes in one (atomic) write")
        self.rng = random.Random(seed)
        self.seq = 0  # the last write a disk acknowledged (and the log holds)
        self.stopping = False

    def _log(self, doc: dict) -> None:
        self.log.write(json.dumps(doc, separators=(",", ":")) + "\n")

    def _write_one(self) -> int:
        disk = self.rng.choice(self.disks)
        length = self.rng.randrange(self.min_write // ALIGN, self.max_write // ALIGN + 1) * ALIGN
        length = min(length, disk.size - disk.size % ALIGN)
        offset = self.rng.randrange(0, (disk.size - length) // ALIGN + 1) * ALIGN
        seq = self.seq + 1
        data = data_for(self.seed, seq, length)
        write = {"disk": disk.name, "offset": offset, "length": length, "sha256": hashlib.sha256(data).hexdigest()}
        try:
            disk.write(data, offset)
        except Exception as exc:
            # Refused (it did not happen) or unanswered (it may have): not a logged write, but
            # its line says what may have landed.
            error = _error(exc)
            self._log({"event": "write-failed", "seq": seq, "time": time.time(), **write, "error": error})
            raise WriteFailed(f"write {seq} ({length} bytes at {offset}) to disk {disk.name} failed: {error}") from None
        self.seq = seq
        self._log({"seq": seq, "time": time.time(), **write})
        return length

    def _ack(self, token: str) -> None:
        _atomic_write(self.control / ACK, json.dumps({"seq": self.seq, "token": token, "pid": os.getpid()}))

    def _pause(self) -> None:
        now = time.time()
        self._log({"event": "pause", "seq": self.seq, "time": now})
        self.log.flush()
        token = _read(self.control / REQUEST)
        self._ack(token)
        deadline = time.monotonic() + MAX_PAUSE_S
        while not self.stopping:
            current = _read(self.control / REQUEST, None)
            if current is None:
                break
            if current != token:  # a new pause request while still paused: ack it too
                token = current
                self._ack(token)
            if time.monotonic() > deadline:
                # A freezer that never thaws must not stop the "application" forever.
                self._log({"event": "pause-expired", "seq": self.seq, "time": time.time()})
                (self.control / REQUEST).unlink(missing_ok=True)
                break
            time.sleep(0.002)
        self._log({"event": "resume", "seq": self.seq, "time": time.time()})
        self.log.flush()
        (self.control / ACK).unlink(missing_ok=True)

    def run(self) -> int:
        self.control.mkdir(parents=True, exist_ok=True)
        for name in (ACK, STOPPED):
            (self.control / name).unlink(missing_ok=True)
        try:
            for d in self.disks:
                d.open()
        except BaseException:
            for d in self.disks:
                d.close()
            raise
        _atomic_write(self.control / RUNNING, str(os.getpid()))
        self.log = open(self.log_path, "a", buffering=1 << 16)
        try:
            self._log({"event": "start", "seed": self.seed, "time": time.time(), "rate_mbps": self.rate / 1e6,
                       "disks": {d.name: d.describe() for d in self.disks}})
            end = time.monotonic() + self.seconds
            window_start, window_bytes = time.monotonic(), 0
            while not self.stopping and time.monotonic() < end and self.seq != self.max_writes:
                if (self.control / REQUEST).exists():
                    self._pause()
                    window_start, window_bytes = time.monotonic(), 0
                    continue
                window_bytes += self._write_one()
                if self.rate > 0:
                    ahead = window_start + window_bytes / self.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(min(ahead, 0.05))
            self._log({"event": "stop", "seq": self.seq, "time": time.time()})
        finally:
            self.log.close()
            for d in self.disks:
                d.close()
            _atomic_write(self.control / STOPPED, json.dumps({"seq": self.seq, "time": time.time()}))
            (self.control / RUNNING).unlink(missing_ok=True)
            (self.control / ACK).unlink(missing_ok=True)
        return self.seq


def _writer_pid(control: Path) -> int | None:
    try:
        pid = int((control / RUNNING).read_text())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def pause(control: Path, timeout: float = 30.0) -> str:
    """Ask the writer to pause and wait for its ack; the line it returns is the hook's
    evidence. With no writer running the disks are quiet already."""
    control.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    _atomic_write(control / REQUEST, token)
    deadline = time.monotonic() + timeout
    while True:
        try:
            ack = json.loads((control / ACK).read_text())
            if ack.get("token") == token:
                return f"paused seq={ack['seq']}"
        except (OSError, ValueError):
            pass
        if _writer_pid(control) is None:
            try:
                last = json.loads((control / STOPPED).read_text())["seq"]
            except (OSError, ValueError, KeyError):
                last = 0
            return f"paused seq={last} (no writer running)"
        if time.monotonic() > deadline:
            (control / REQUEST).unlink(missing_ok=True)
            raise TimeoutError(f"the workload writer did not pause within {timeout}s")
        time.sleep(0.002)


def resume(control: Path, timeout: float = 10.0) -> str:
    (control / REQUEST).unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while (control / ACK).exists() and _writer_pid(control) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workload writer did not resume within {timeout}s")
        time.sleep(0.002)
    return "resumed"


def read_log(log_path: Path | str) -> list[dict]:
    with open(log_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _writes(log_path: Path | str, disk_name: str, until_seq: int):
    """(offset, data) of every logged write to `disk_name` with seq <= until_seq, in order,
    each regenerated from the seed and checked against its logged sha256."""
    seed = None
    for entry in read_log(log_path):
        if entry.get("event") == "start":
            seed = entry["seed"]
            continue
        if "event" in entry or entry["seq"] > until_seq or entry["disk"] != disk_name:
            continue
        if seed is None:
            raise ValueError(f"{log_path}: a write comes before the start line")
        data = data_for(seed, entry["seq"], entry["length"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{log_path}: write {entry['seq']} does not regenerate (sha256 differs)")
        yield entry["offset"], data


def replay(log_path: Path | str, disk_name: str, initial: bytes | Path, until_seq: int) -> bytes:
    """The content of disk `disk_name` after every logged write with seq <= until_seq,
    starting from `initial` (the disk's bytes, or a file holding them, before the run)."""
    disk = bytearray(Path(initial).read_bytes() if isinstance(initial, Path) else initial)
    for offset, data in _writes(log_path, disk_name, until_seq):
        disk[offset:offset + len(data)] = data
    return bytes(disk)


def replay_onto(log_path: Path | str, disk_name: str, copy: Path, until_seq: int) -> None:
    """replay() in place on `copy`, a file holding the disk as it was before the run (for
    disks too large to hold in memory)."""
    with open(copy, "r+b") as f:
        for offset, data in _writes(log_path, disk_name, until_seq):
            os.pwrite(f.fileno(), data, offset)


def _disk_arg(text: str) -> Disk:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--disk wants NAME=PATH, got {text!r}")
    p = Path(path)
    return Disk(name, p, p.stat().st_size)


def _azure_disk_arg(text: str) -> BlobDisk:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError("--azure-disk wants NAME=URL or NAME=@FILE")
    if url.startswith("@"):
        try:
            url = Path(url[1:]).read_text().strip()
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"--azure-disk {name}: cannot read {url[1:]}: {exc.strerror}") from None
    return BlobDisk(name, url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.workload", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="write to disks at a rate, logging every write")
    # One list in command-line order: the seeded choice of disk depends on it.
    run.add_argument("--disk", dest="disks", action="append", type=_disk_arg, metavar="NAME=PATH",
                     help="a local disk file")
    run.add_argument("--azure-disk", dest="disks", action="append", type=_azure_disk_arg, metavar="NAME=URL",
                     help="an Azure page blob: its SAS URL, or @FILE holding it")
    run.add_argument("--ca-bundle", type=Path, help="CA bundle to check the blob endpoint's TLS certificate with")
    run.add_argument("--azure-key-env", metavar="VAR",
                     help="the environment variable holding the storage account key, for plain blob URLs")
    run.add_argument("--log", type=Path, required=True)
    run.add_argument("--control", type=Path, required=True)
    run.add_argument("--rate", type=float, default=5.0, help="MB/s (0 = as fast as possible)")
    run.add_argument("--seconds", type=float, default=60.0)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--min-write", type=int, default=MIN_WRITE)
    run.add_argument("--max-write", type=int, default=MAX_WRITE)
    run.add_argument("--max-writes", type=int, default=None, help="stop after this many writes (besides --seconds)")
    p = sub.add_parser("pause", help="pause the writer (the crash-consistency freeze hook)")
    p.add_argument("--control", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    r = sub.add_parser("resume", help="resume the writer (the thaw hook)")
    r.add_argument("--control", type=Path, required=True)
    r.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            if not args.disks:
                parser.error("give at least one --disk or --azure-disk")
            key = None
            if args.azure_key_env:
                key = os.environ.get(args.azure_key_env)
                if not key:
                    parser.error(f"--azure-key-env: ${args.azure_key_env} is not set")
            for d in args.disks:
                if isinstance(d, BlobDisk):
                    d.ca_bundle, d.account_key = args.ca_bundle, key
            writer = Writer(args.disks, args.log, args.control, args.rate, args.seconds, args.seed,
                            args.min_write, args.max_write, max_writes=args.max_writes)

            def _stop(signum, frame):  # noqa: ANN001
                writer.stopping = True

            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
            seq = writer.run()
            print(f"wrote seq={seq}")
        elif args.command == "pause":
            print(pause(args.control, args.timeout), flush=True)
        else:
            print(resume(args.control, args.timeout), flush=True)
    except (TimeoutError, WriteFailed, ValueError) as exc:
        print(f"workload: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a disk that cannot be opened: no traceback, which could quote a SAS URL
        print(f"workload: {_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
