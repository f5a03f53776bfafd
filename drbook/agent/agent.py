#!/usr/bin/env python3
"""drbook agent: reads a machine's disks and sends the blocks that changed.

Shipped as this one file to the source machine and run by the process server over SSH
(DESIGN.md section 2). Standard library only, Python >= 3.6. Stateless: the process
server sends the block-hash map of what it already holds; the agent sends every block
whose SHA-256 differs from that map, so a lost cycle can never lose a change.

    agent.py --version
    agent.py self-check --disk PATH [PATH ...]
    agent.py scan                  request on stdin, framed stream on stdout

Request (stdin):
    b"DRBK" u8 version=1  u32 header length  header JSON
        {"disks": [{"name", "path", "size"}], "block_size", "sub_block_size",
         "sub_hash_len", "hooks": {"freeze": [{"cmd", "kind"}], "thaw": [...]},
         "hook_timeout", "barrier", "barrier_timeout", "max_freeze", "read_buffer", "threads",
         "bridge_gap"}
    then per disk, in header order:
        u64 length + block map: 32-byte SHA-256 per block (empty = no map -> resync)
        u64 length + sub-block map: sub_hash_len bytes per sub-block, block by block
    With barrier: after FROZEN the agent waits for one byte: b"G" go, anything else aborts.

Stream (stdout): frames of  u8 type, u32 payload length, payload.
    H hello     JSON {version, python, pid}
    F frozen    JSON {ok, results, time}   after the freeze hooks (also without barrier)
    D disk      JSON {index, name, path, size, blocks, resync, reason}
    B block     u64 index, u32 sub-block mask, 32-byte SHA-256 of the whole block,
                sub-block hashes of the whole block (when sub-blocks are on),
                then the data of the sub-blocks in the mask, in order
    Z zeros     u64 first index, u32 count: blocks now all zero
    S sub-hashes u64 index + sub-block hashes of an unchanged block (only with
                "sub_rebuild": the process server lost its sub-block map)
    P progress  u32 disk index, u64 bytes read
    E disk end  JSON {index, name, changed, zero, bytes_read, bytes_sent, seconds}
    X error     JSON {disk, kind, message}
    T trailer   JSON {ok, resync, freeze, thaw, frozen_at, read_started, read_ended,
                      thaw_started, thawed_early, seconds, version, error}
"""

import argparse
import collections
import hashlib
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

AGENT_VERSION = "0.4.0"

MAGIC = b"DRBK"
REQUEST_VERSION = 1
FRAME = struct.Struct(">BI")
BLOCK_HEAD = struct.Struct(">QI")
ZEROS = struct.Struct(">QI")
PROGRESS = struct.Struct(">IQ")
U64 = struct.Struct(">Q")
HASH_LEN = 32

HELLO = ord("H")
FROZEN = ord("F")
DISK = ord("D")
BLOCK = ord("B")
ZERO = ord("Z")
SUBS = ord("S")
PROGRESS_FRAME = ord("P")
DISK_END = ord("E")
ERROR = ord("X")
TRAILER = ord("T")

GO = b"G"
ABORT = b"A"

MAX_HOOK_OUTPUT = 4000
PROGRESS_EVERY_S = 0.5


class AgentError(Exception):
    def __init__(self, kind, message, disk=None):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.disk = disk


class Terminated(BaseException):
    """SIGTERM / SIGHUP: unwinds through the finally that thaws."""


def _on_signal(signum, frame):
    raise Terminated("signal %d" % signum)


def _ignore_signals():
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


# -- framing ------------------------------------------------------------------------------


def frame(kind, payload):
    return FRAME.pack(kind, len(payload)) + payload


def json_frame(kind, doc):
    return frame(kind, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def encode_request(header, maps):
    """Build the scan request: `maps` is one (block_map, sub_map) pair of bytes per disk."""
    body = json.dumps(header, sort_keys=True).encode("utf-8")
    parts = [MAGIC, struct.pack(">BI", REQUEST_VERSION, len(body)), body]
    for block_map, sub_map in maps:
        parts.append(U64.pack(len(block_map)))
        parts.append(bytes(block_map))
        parts.append(U64.pack(len(sub_map)))
        parts.append(bytes(sub_map))
    return b"".join(parts)


def _read_exact(stream, n):
    chunks = []
    left = n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise AgentError("request", "the request ended after %d of %d bytes" % (n - left, n))
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_request(stream):
    """Parse a scan request from a binary stream: (header, [(block_map, sub_map)])."""
    head = _read_exact(stream, 9)
    if head[:4] != MAGIC:
        raise AgentError("request", "not a drbook scan request (bad magic)")
    version, length = struct.unpack(">BI", head[4:])
    if version != REQUEST_VERSION:
        raise AgentError("request", "request version %d is not supported (want %d)" % (version, REQUEST_VERSION))
    header = json.loads(_read_exact(stream, length).decode("utf-8"))
    maps = []
    for _ in header.get("disks", []):
        (n,) = U64.unpack(_read_exact(stream, 8))
        block_map = _read_exact(stream, n) if n else b""
        (n,) = U64.unpack(_read_exact(stream, 8))
        sub_map = _read_exact(stream, n) if n else b""
        maps.append((block_map, sub_map))
    return header, maps


class Output(object):
    """Frames to stdout; remembers a broken pipe so the agent stops and thaws."""

    def __init__(self, raw):
        self.raw = raw
        self.lock = threading.Lock()
        self.bytes = 0

    def send(self, *parts):
        with self.lock:
            for part in parts:
                self.raw.write(part)
                self.bytes += len(part)

    def flush(self):
        with self.lock:
            self.raw.flush()


# -- hooks --------------------------------------------------------------------------------


def _clip(data):
    text = data.decode("utf-8", "replace")
    return text if len(text) <= MAX_HOOK_OUTPUT else text[:MAX_HOOK_OUTPUT] + "...[truncated]"


def run_hook(hook, timeout):
    cmd = hook["cmd"] if isinstance(hook, dict) else hook
    kind = hook.get("kind", "") if isinstance(hook, dict) else ""
    started = time.time()
    result = {"cmd": cmd, "kind": kind, "started": started}
    try:
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        result.update(rc=None, out="", err="cannot start: %s" % exc, seconds=0.0)
        return result
    try:
        out, err = proc.communicate(timeout=timeout)
        result.update(rc=proc.returncode, out=_clip(out), err=_clip(err))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        result.update(rc=None, out=_clip(out), err=_clip(err) + "\n[timed out after %ss]" % timeout)
    result["seconds"] = round(time.time() - started, 4)
    return result


class Freezer(object):
    """Runs the freeze hooks, and the thaw hooks exactly once: at the end, on failure, or
    early from a watchdog when a freeze outlives `max_freeze` (then the trailer says so and
    the point cannot be called consistent)."""

    def __init__(self, hooks, timeout, max_freeze):
        self.freeze_hooks = list(hooks.get("freeze") or [])
        self.thaw_hooks = list(hooks.get("thaw") or [])
        self.timeout = timeout
        self.max_freeze = max_freeze
        self.freeze_results = []
        self.thaw_results = []
        self.frozen_at = None
        self.thaw_started = None
        self.thawed_early = False
        self.started = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.watchdog = None

    def freeze(self):
        self.started = True
        for hook in self.freeze_hooks:
            self.freeze_results.append(run_hook(hook, self.timeout))
        self.frozen_at = time.time()
        if self.max_freeze and (self.freeze_hooks or self.thaw_hooks):
            self.watchdog = threading.Thread(target=self._watch, name="freeze-watchdog")
            self.watchdog.daemon = True
            self.watchdog.start()
        return all(r.get("rc") == 0 for r in self.freeze_results)

    def _watch(self):
        if not self.done.wait(self.max_freeze):
            self.thaw(early=True)

    def thaw(self, early=False):
        with self.lock:
            if not self.started or self.thaw_started is not None:
                return
            self.thaw_started = time.time()
            self.thawed_early = early
            self.done.set()
            if not early:
                _ignore_signals()  # a second SIGTERM must not cut the thaw short
            for hook in self.thaw_hooks:
                self.thaw_results.append(run_hook(hook, self.timeout))


# -- reading ------------------------------------------------------------------------------


def open_disk(path):
    try:
        f = io.open(path, "rb", buffering=0)
    except (IOError, OSError) as exc:
        raise AgentError("open", "cannot open %s: %s" % (path, exc.strerror or exc))
    try:
        mode = os.fstat(f.fileno()).st_mode
        size = f.seek(0, 2)
        f.seek(0)
    except (IOError, OSError) as exc:
        f.close()
        raise AgentError("open", "cannot size %s: %s" % (path, exc.strerror or exc))
    kind = "block" if stat.S_ISBLK(mode) else "file" if stat.S_ISREG(mode) else "other"
    try:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return f, size, kind


def read_into(f, view):
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class Hasher(object):
    """Compares one read buffer against the map: returns the blocks that differ."""

    def __init__(self, block_size, sub_block_size, sub_hash_len, sub_rebuild=False):
        self.bs = block_size
        self.sbs = sub_block_size if 0 < sub_block_size < block_size else 0
        self.shl = sub_hash_len if self.sbs else 0
        self.nsub = (block_size + self.sbs - 1) // self.sbs if self.sbs else 1
        self.sub_rebuild = bool(sub_rebuild and self.sbs)
        self.zero_hash = {}

    def zero_digest(self, length):
        digest = self.zero_hash.get(length)
        if digest is None:
            digest = hashlib.sha256(bytes(length)).digest()
            self.zero_hash[length] = digest
        return digest

    def sub_hashes(self, data):
        sbs, shl = self.sbs, self.shl
        return b"".join(hashlib.sha256(data[i:i + sbs]).digest()[:shl] for i in range(0, len(data), sbs)).ljust(self.nsub * shl, b"\0")

    def scan(self, view, start, stop, first_index, block_map, sub_map):
        """Blocks in view[start:stop] (view starts at block `first_index`) that differ from the maps:
        a list of (kind, index, offset in view, length, digest, sub_hashes or None, mask)
        with kind BLOCK, ZERO or SUBS."""
        bs, sha = self.bs, hashlib.sha256
        out = []
        for off in range(start, stop, bs):
            data = view[off:min(off + bs, stop)]
            digest = sha(data).digest()
            index = first_index + off // bs
            length = len(data)
            if block_map is not None and block_map[index * HASH_LEN:(index + 1) * HASH_LEN] == digest:
                if self.sub_rebuild and digest != self.zero_digest(length):
                    out.append((SUBS, index, off, length, digest, self.sub_hashes(data), 0))
                continue
            if digest == self.zero_digest(length):
                out.append((ZERO, index, off, length, digest, None, 0))
                continue
            subs = None
            mask = (1 << self.nsub) - 1
            if self.sbs:
                subs = self.sub_hashes(data)
                if block_map is not None and sub_map is not None:
                    width = self.nsub * self.shl
                    old = sub_map[index * width:(index + 1) * width]
                    mask = 0
                    for i in range(self.nsub):
                        if i * self.sbs >= length:
                            break
                        if subs[i * self.shl:(i + 1) * self.shl] != old[i * self.shl:(i + 1) * self.shl]:
                            mask |= 1 << i
                    if not mask:  # a truncated sub-hash collided: send the whole block
                        mask = (1 << self.nsub) - 1
            else:
                mask = 1
            out.append((BLOCK, index, off, length, digest, subs, mask))
        return out

    def bridge(self, found, view, first_index, block_map, gap):
        """Widen the sent sub-blocks over gaps of at most `gap` bytes of unchanged data
        between two changed extents of this buffer, so that downstream they make one page
        write instead of two (a request costs more than a few KiB; docs/benchmarks.md).
        Bridged blocks that did not change go out as blocks too, with their map digest.
        Only changed and unchanged blocks are bridged over, never a zero or sub-hash entry."""
        if not gap or not self.sbs or block_map is None or not found:
            return found
        nsub, sbs, bs = self.nsub, self.sbs, self.bs
        gap_units = gap // sbs
        entries = dict((e[1], e) for e in found)
        extents = []  # [first unit, end unit), units are sub-blocks counted from first_index
        for kind, index, off, length, digest, subs, mask in found:
            if kind != BLOCK:
                continue
            base = (index - first_index) * nsub
            for i in range(nsub):
                if mask >> i & 1:
                    u = base + i
                    if extents and extents[-1][1] == u:
                        extents[-1][1] = u + 1
                    else:
                        extents.append([u, u + 1])
        fill = []
        for (a1, b1), (a2, b2) in zip(extents, extents[1:]):
            if a2 - b1 > gap_units:
                continue
            between = range(first_index + b1 // nsub, first_index + (a2 - 1) // nsub + 1)
            if all(entries.get(i, (BLOCK,))[0] == BLOCK for i in between):
                fill.append((b1, a2))
        if not fill:
            return found
        masks = {}
        for a, b in fill:
            for u in range(a, b):
                index = first_index + u // nsub
                masks[index] = masks.get(index, 0) | 1 << (u % nsub)
        out = []
        for index in sorted(set(entries) | set(masks)):
            e = entries.get(index)
            if index not in masks:
                out.append(e)
            elif e is not None:
                out.append(e[:6] + (e[6] | masks[index],))
            else:
                off = (index - first_index) * bs
                data = view[off:min(off + bs, len(view))]
                out.append((BLOCK, index, off, len(data), bytes(block_map[index * HASH_LEN:(index + 1) * HASH_LEN]),
                            self.sub_hashes(data), masks[index]))
        return out


class Scanner(object):
    def __init__(self, header, out):
        self.out = out
        self.block_size = int(header.get("block_size") or 65536)
        if self.block_size <= 0 or self.block_size % 512:
            raise AgentError("request", "block_size must be a positive multiple of 512")
        self.hasher = Hasher(self.block_size, int(header.get("sub_block_size") or 0), int(header.get("sub_hash_len") or 8),
                             bool(header.get("sub_rebuild")))
        buf = int(header.get("read_buffer") or (4 << 20))
        self.read_buffer = max(self.block_size, buf - buf % self.block_size)
        self.threads = max(1, int(header.get("threads") or 2))
        self.bridge_gap = max(0, int(header.get("bridge_gap") or 0))
        self.pool = ThreadPoolExecutor(self.threads)

    def close(self):
        self.pool.shutdown(wait=True)

    def scan_disk(self, index, spec, block_map, sub_map):
        name, path = spec["name"], spec["path"]
        started = time.time()
        f, size, _kind = open_disk(path)
        f.close()
        bs = self.block_size
        blocks = (size + bs - 1) // bs
        expected = spec.get("size")
        reason = None
        if not block_map:
            reason = "no block map (new disk or lost map)"
        elif expected is not None and int(expected) != size:
            reason = "disk size changed from %d to %d bytes" % (int(expected), size)
        elif len(block_map) != blocks * HASH_LEN:
            reason = "block map has %d entries, the disk has %d blocks" % (len(block_map) // HASH_LEN, blocks)
        resync = reason is not None
        if resync:
            block_map = sub_map = None
        elif sub_map is not None and len(sub_map) != blocks * self.hasher.nsub * self.hasher.shl:
            sub_map = None
        self.out.send(json_frame(DISK, {"index": index, "name": name, "path": path, "size": size,
                                        "blocks": blocks, "resync": resync, "reason": reason}))
        counts = self._read(index, name, path, size, block_map, sub_map)
        counts.update(index=index, name=name, seconds=round(time.time() - started, 4))
        self.out.send(json_frame(DISK_END, counts))
        return resync

    def _read(self, index, name, path, size, block_map, sub_map):
        """Chunks of read_buffer bytes go to the hashing threads, each of which reads its
        chunk through a file handle of its own and hashes it: the copy out of the page
        cache then runs on every core instead of on this one (measured in
        docs/benchmarks.md). Results are emitted in disk order."""
        chunk = self.read_buffer
        local = threading.local()
        handles = []
        lock = threading.Lock()

        def handle():
            f = getattr(local, "f", None)
            if f is None:
                f = open_disk(path)[0]
                local.f = f
                with lock:
                    handles.append(f)
            return f

        def work(pos, buf):
            want = min(chunk, size - pos)
            view = memoryview(buf)[:want]
            try:
                f = handle()
                f.seek(pos)
                got = read_into(f, view)
            except (IOError, OSError) as exc:
                raise AgentError("read", "reading %s at offset %d: %s" % (name, pos, exc.strerror or exc), disk=name)
            if got != want:
                raise AgentError("read", "%s ended at %d bytes, expected %d (did it shrink?)" % (name, pos + got, size), disk=name)
            first = pos // self.block_size
            found = self.hasher.scan(view, 0, want, first, block_map, sub_map)
            return view, buf, self.hasher.bridge(found, view, first, block_map, self.bridge_gap)

        spare = [bytearray(chunk) for _ in range(self.threads + 1)]
        in_flight = collections.deque()
        pos = 0
        stats = {"changed": 0, "zero": 0, "bytes_read": 0, "bytes_sent": 0}
        zrun = [None, 0]
        last_progress = time.time()
        try:
            while pos < size or in_flight:
                while pos < size and spare:
                    in_flight.append(self.pool.submit(work, pos, spare.pop()))
                    pos = min(size, pos + chunk)
                view, buf, found = in_flight.popleft().result()
                stats["bytes_read"] += len(view)
                self._emit(view, found, stats, zrun)
                spare.append(buf)
                now = time.time()
                if now - last_progress >= PROGRESS_EVERY_S:
                    last_progress = now
                    self.out.send(frame(PROGRESS_FRAME, PROGRESS.pack(index, stats["bytes_read"])))
        finally:
            for fut in in_flight:
                fut.cancel()
            for fut in in_flight:
                try:
                    fut.result()
                except BaseException:  # noqa - the first error is already on its way up
                    pass
            for f in handles:
                f.close()
        self._flush_zeros(zrun)
        return stats

    def _flush_zeros(self, zrun):
        if zrun[0] is not None and zrun[1]:
            self.out.send(frame(ZERO, ZEROS.pack(zrun[0], zrun[1])))
        zrun[0], zrun[1] = None, 0

    def _emit(self, view, found, stats, zrun):
        h = self.hasher
        for kind, index, off, length, digest, subs, mask in found:
            if kind == SUBS:
                self.out.send(frame(SUBS, U64.pack(index) + subs))
                continue
            if kind == ZERO:
                if zrun[0] is not None and zrun[0] + zrun[1] == index:
                    zrun[1] += 1
                else:
                    self._flush_zeros(zrun)
                    zrun[0], zrun[1] = index, 1
                stats["zero"] += 1
                continue
            data = view[off:off + length]
            if h.sbs and mask != (1 << h.nsub) - 1:
                parts = [data[i * h.sbs:(i + 1) * h.sbs] for i in range(h.nsub) if mask >> i & 1]
            else:
                parts = [data]
            size = sum(len(p) for p in parts)
            meta = BLOCK_HEAD.pack(index, mask) + digest + (subs or b"")
            self.out.send(FRAME.pack(BLOCK, len(meta) + size), meta, *parts)
            stats["changed"] += 1
            stats["bytes_sent"] += size


# -- commands -----------------------------------------------------------------------------


def scan(stdin, stdout):
    out = Output(stdout)
    trailer = {"ok": False, "resync": [], "freeze": [], "thaw": [], "version": AGENT_VERSION, "error": None}
    started = time.time()
    freezer = None
    scanner = None
    exit_code = 0
    try:
        header, maps = read_request(stdin)
        out.send(json_frame(HELLO, {"version": AGENT_VERSION, "python": sys.version.split()[0], "pid": os.getpid()}))
        freezer = Freezer(header.get("hooks") or {}, float(header.get("hook_timeout") or 120), float(header.get("max_freeze") or 0))
        scanner = Scanner(header, out)
        freeze_ok = freezer.freeze()
        out.send(json_frame(FROZEN, {"ok": freeze_ok, "results": freezer.freeze_results, "time": freezer.frozen_at}))
        out.flush()
        if header.get("barrier"):
            go = _wait_go(stdin, float(header.get("barrier_timeout") or 300))
            if go != GO:
                raise AgentError("barrier", "no go from the process server (%r); the freeze is released" % (go,))
        trailer["read_started"] = time.time()
        for index, spec in enumerate(header.get("disks", [])):
            block_map, sub_map = maps[index]
            if scanner.scan_disk(index, spec, block_map, sub_map or None):
                trailer["resync"].append(spec["name"])
        trailer["read_ended"] = time.time()
        trailer["ok"] = True
    except AgentError as exc:
        trailer["error"] = exc.message
        _send_quietly(out, json_frame(ERROR, {"disk": exc.disk, "kind": exc.kind, "message": exc.message}))
        exit_code = 2
    except (BrokenPipeError, ConnectionResetError):
        exit_code = 3
    except Terminated as exc:
        trailer["error"] = "terminated (%s)" % exc
        exit_code = 4
    except Exception as exc:  # the trailer must still go out and the thaw must still run
        trailer["error"] = "%s: %s" % (type(exc).__name__, exc)
        _send_quietly(out, json_frame(ERROR, {"disk": None, "kind": "internal", "message": trailer["error"]}))
        exit_code = 5
    finally:
        if freezer is not None:
            freezer.thaw()
        if scanner is not None:
            scanner.close()
    if freezer is not None:
        trailer.update(freeze=freezer.freeze_results, thaw=freezer.thaw_results, frozen_at=freezer.frozen_at,
                       thaw_started=freezer.thaw_started, thawed_early=freezer.thawed_early)
        if freezer.thawed_early:
            trailer["ok"] = False
            trailer["error"] = trailer["error"] or "the freeze outlived max_freeze and was released early"
    trailer["seconds"] = round(time.time() - started, 4)
    if exit_code != 3:
        _send_quietly(out, json_frame(TRAILER, trailer))
    return exit_code or (0 if trailer["ok"] else 2)


def _send_quietly(out, data):
    try:
        out.send(data)
        out.flush()
    except (OSError, ValueError):
        pass


def _wait_go(stdin, timeout):
    result = []

    def read():
        try:
            result.append(stdin.read(1))
        except (OSError, ValueError):
            result.append(b"")

    reader = threading.Thread(target=read, name="barrier")
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return result[0] if result else b""


def self_check(paths):
    disks = []
    for path in paths:
        entry = {"path": path, "readable": False, "size": None, "kind": None, "error": None}
        try:
            f, size, kind = open_disk(path)
            try:
                f.read(min(size, 512))
            finally:
                f.close()
            entry.update(readable=True, size=size, kind=kind)
        except AgentError as exc:
            entry["error"] = exc.message
        except (IOError, OSError) as exc:
            entry["error"] = "cannot read %s: %s" % (path, exc.strerror or exc)
        disks.append(entry)
    return {
        "version": AGENT_VERSION,
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "ok": all(d["readable"] for d in disks),
        "disks": disks,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="agent.py", description="drbook replication agent")
    parser.add_argument("--version", action="store_true", help="print the agent version")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("self-check", help="can the agent read these disks?")
    check.add_argument("--disk", action="append", nargs="+", default=[], metavar="PATH")
    sub.add_parser("scan", help="scan disks against a block map (request on stdin)")
    args = parser.parse_args(argv)
    if args.version:
        sys.stdout.write(AGENT_VERSION + "\n")
        return 0
    if args.command == "self-check":
        paths = [p for group in args.disk for p in group]
        sys.stdout.write(json.dumps(self_check(paths), sort_keys=True) + "\n")
        return 0
    if args.command == "scan":
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGHUP, _on_signal)
        stdout = io.open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False)
        try:
            return scan(sys.stdin.buffer, stdout)
        finally:
            try:
                stdout.close()
            except (OSError, ValueError):
                pass
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
