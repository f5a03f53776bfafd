#!/usr/bin/env python3
"""drbook agent: reads a machine's disks and sends the blocks that changed; on a master
target (reprotect, failback) it writes the blocks it is sent.

Shipped as this one file to the source machine and run by the process server over SSH
(DESIGN.md section 2). Standard library only, Python >= 3.6. Stateless: the process
server sends the block-hash map of what it already holds; the agent sends every block
whose SHA-256 differs from that map, so a lost cycle can never lose a change.

    agent.py --version
    agent.py self-check --disk PATH [PATH ...]
    agent.py scan                  request on stdin, framed stream on stdout
    agent.py apply                 writes on stdin (master target), reports on stdout

Request (stdin):
    b"DRBK" u8 version=1  u32 header length  header JSON
        {"disks": [{"name", "path", "size"}], "block_size", "sub_block_size",
         "sub_hash_len", "hooks": {"freeze": [{"cmd", "kind"}], "thaw": [...]},
         "hook_timeout", "barrier", "barrier_timeout", "max_freeze", "read_buffer", "threads",
         "bridge_gap", "hashes_only"}
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
                then the data of the sub-blocks in the mask, in order.
                With "hashes_only" the mask is 0 and no data follows (the disk frame
                then says "hashes_only": true; no bridging); zeros are Z frames as usual
    Z zeros     u64 first index, u32 count: blocks now all zero
    S sub-hashes u64 index + sub-block hashes of an unchanged block (only with
                "sub_rebuild": the process server lost its sub-block map)
    P progress  u32 disk index, u64 bytes read
    E disk end  JSON {index, name, changed, zero, bytes_read, bytes_sent, seconds}
    X error     JSON {disk, kind, message}
    T trailer   JSON {ok, resync, freeze, thaw, frozen_at, read_started, read_ended,
                      thaw_started, thawed_early, seconds, version, error}

Apply (stdin), the same frame layout (u8 type, u32 payload length, payload):
    b"DRBA" u8 version=1  u32 header length  header JSON {"disks": [{"name", "path", "size"}]}
    B block     u32 disk index, u64 offset, data            -> written at offset
    Z zeros     u32 disk index, u64 offset, u64 length      -> zeros written there
    E disk end  u32 disk index                              -> fsync, then a report
    T end       empty: the stream is complete (disks not ended yet are ended now)
    Every target is checked before anything is written: it must exist and be a regular
    file or a block device of at least "size" bytes (it is never created, truncated or
    grown). Every write must lie inside [0, size). Writes are positioned, so the same
    stream applied again (also after a cut) leaves the same bytes.
Apply (stdout):
    H hello     JSON {version, python, pid, mode: "apply"}
    D disk      JSON {index, name, path, size, kind, target_size}   once all are checked
    E disk end  JSON {index, name, path, blocks, data_bytes, zero_ranges, zero_bytes,
                      bytes_written, sha256, fsync_seconds, seconds}
                sha256 covers the writes in stream order: per block b"B" u64 offset
                u64 length data, per zero range b"Z" u64 offset u64 length
    X error     JSON {disk, kind, message}
    T trailer   JSON {ok, error, ended, version, seconds, mode: "apply"}
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

AGENT_VERSION = "0.5.0"

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

APPLY_MAGIC = b"DRBA"
APPLY_VERSION = 1
APPLY_BLOCK = struct.Struct(">IQ")  # disk index, offset; the data follows
APPLY_ZERO = struct.Struct(">IQQ")  # disk index, offset, length
APPLY_DISK = struct.Struct(">I")  # disk index
APPLY_MAX_DATA = 16 << 20  # one block frame's data (the process server sends 64 KiB blocks)
APPLY_MAX_HEADER = 1 << 20
ZERO_CHUNK = 1 << 20


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
        self.hashes_only = bool(header.get("hashes_only"))
        self.bridge_gap = 0 if self.hashes_only else max(0, int(header.get("bridge_gap") or 0))
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
        disk = {"index": index, "name": name, "path": path, "size": size, "blocks": blocks, "resync": resync, "reason": reason}
        if self.hashes_only:
            disk["hashes_only"] = True
        self.out.send(json_frame(DISK, disk))
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
            if self.hashes_only:
                meta = BLOCK_HEAD.pack(index, 0) + digest + (subs or b"")
                self.out.send(frame(BLOCK, meta))
                stats["changed"] += 1
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


# -- applying (master target) -------------------------------------------------------------


def encode_apply_header(header):
    """The start of an apply stream: magic, version, header JSON {"disks": [{name, path, size}]}."""
    body = json.dumps(header, sort_keys=True).encode("utf-8")
    return APPLY_MAGIC + struct.pack(">BI", APPLY_VERSION, len(body)) + body


def apply_block_frame(disk, offset, data):
    return frame(BLOCK, APPLY_BLOCK.pack(disk, offset) + bytes(data))


def apply_zero_frame(disk, offset, length):
    return frame(ZERO, APPLY_ZERO.pack(disk, offset, length))


def apply_end_frame(disk):
    return frame(DISK_END, APPLY_DISK.pack(disk))


def apply_done_frame():
    return frame(TRAILER, b"")


# The longest payload each input frame may claim, checked before the payload is read.
APPLY_LIMITS = {BLOCK: APPLY_BLOCK.size + APPLY_MAX_DATA, ZERO: APPLY_ZERO.size, DISK_END: APPLY_DISK.size, TRAILER: 0}


def read_apply_header(stream):
    head = _read_exact(stream, 9)
    if head[:4] != APPLY_MAGIC:
        raise AgentError("request", "not a drbook apply stream (bad magic)")
    version, length = struct.unpack(">BI", head[4:])
    if version != APPLY_VERSION:
        raise AgentError("request", "apply version %d is not supported (want %d)" % (version, APPLY_VERSION))
    if length > APPLY_MAX_HEADER:
        raise AgentError("request", "apply header of %d bytes is longer than %d" % (length, APPLY_MAX_HEADER))
    try:
        header = json.loads(_read_exact(stream, length).decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise AgentError("request", "the apply header is not valid JSON (%s)" % exc)
    disks = header.get("disks") if isinstance(header, dict) else None
    if not isinstance(disks, list) or not disks:
        raise AgentError("request", "the apply header lists no disks")
    for i, spec in enumerate(disks):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("path"), str) \
                or not spec["path"] or not isinstance(spec.get("size"), int) or isinstance(spec["size"], bool) \
                or spec["size"] < 0:
            raise AgentError("request", "apply disk %d needs a name, a path and a size in bytes: %r" % (i, spec))
    return header


def read_apply_frame(stream):
    """(kind, payload) of the next input frame, or None at a clean end between frames."""
    head = stream.read(FRAME.size)
    if not head:
        return None
    try:
        if len(head) < FRAME.size:
            head += _read_exact(stream, FRAME.size - len(head))
        kind, length = FRAME.unpack(head)
        if kind not in APPLY_LIMITS:
            raise AgentError("frame", "unknown apply frame type %#x" % kind)
        if kind == BLOCK and not APPLY_BLOCK.size < length <= APPLY_LIMITS[kind]:
            raise AgentError("frame", "apply block frame claims %d bytes; it holds %d to %d" % (
                length, APPLY_BLOCK.size + 1, APPLY_LIMITS[kind]))
        if kind != BLOCK and length != APPLY_LIMITS[kind]:
            raise AgentError("frame", "apply frame %r claims %d bytes; it holds exactly %d" % (chr(kind), length, APPLY_LIMITS[kind]))
        return kind, _read_exact(stream, length) if length else b""
    except AgentError as exc:
        if exc.kind != "request":
            raise
        raise AgentError("frame", "the stream ended inside a frame (%s)" % exc.message)


class Target(object):
    """One disk of an apply stream: checked and opened for writing, never created or resized."""

    def __init__(self, index, spec):
        self.index = index
        self.name = spec["name"]
        self.path = spec["path"]
        self.size = spec["size"]
        self.fd = None
        self.kind = None
        self.target_size = None
        self.ended = False
        self.started = time.time()
        self.digest = hashlib.sha256()
        self.stats = {"blocks": 0, "data_bytes": 0, "zero_ranges": 0, "zero_bytes": 0}

    def refuse(self, message):
        return AgentError("target", "%s (%s): %s" % (self.name, self.path, message), disk=self.name)

    def open(self):
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise self.refuse("cannot stat: %s" % (exc.strerror or exc))
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise self.refuse("not a regular file or a block device")
        # O_NONBLOCK: should the path become a FIFO between stat and open, open must not hang.
        flags = os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            self.fd = os.open(self.path, flags)
        except OSError as exc:
            raise self.refuse("cannot open for writing: %s" % (exc.strerror or exc))
        try:
            st2 = os.fstat(self.fd)
            if (st2.st_dev, st2.st_ino, stat.S_IFMT(st2.st_mode)) != (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)):
                raise self.refuse("replaced while it was being opened")
            self.kind = "block" if stat.S_ISBLK(st2.st_mode) else "file"
            self.target_size = st2.st_size if self.kind == "file" else os.lseek(self.fd, 0, os.SEEK_END)
            if getattr(os, "O_NONBLOCK", 0):
                os.set_blocking(self.fd, True)
        except OSError as exc:
            self.close()
            raise self.refuse("cannot size: %s" % (exc.strerror or exc))
        except AgentError:
            self.close()
            raise
        if self.target_size < self.size:
            self.close()
            raise self.refuse("%d bytes, smaller than the %d bytes to apply" % (self.target_size, self.size))
        return (st2.st_dev, st2.st_ino)

    def _check(self, offset, length, what):
        if self.ended:
            raise AgentError("frame", "%s for disk %s after its end frame" % (what, self.name), disk=self.name)
        if length <= 0 or offset + length > self.size:
            raise AgentError("range", "%s of %d bytes at offset %d is outside disk %s's [0, %d)" % (
                what, length, offset, self.name, self.size), disk=self.name)

    def _pwrite(self, data, offset):
        view = memoryview(data)
        while len(view):
            try:
                if hasattr(os, "pwrite"):
                    n = os.pwrite(self.fd, view, offset)
                else:  # Windows
                    os.lseek(self.fd, offset, os.SEEK_SET)
                    n = os.write(self.fd, view)
            except OSError as exc:
                raise AgentError("write", "writing %s at offset %d: %s" % (self.name, offset, exc.strerror or exc), disk=self.name)
            if n <= 0:
                raise AgentError("write", "writing %s at offset %d wrote nothing" % (self.name, offset), disk=self.name)
            view = view[n:]
            offset += n

    def write(self, offset, data):
        self._check(offset, len(data), "a block")
        self._pwrite(data, offset)
        self.digest.update(b"B" + U64.pack(offset) + U64.pack(len(data)))
        self.digest.update(data)
        self.stats["blocks"] += 1
        self.stats["data_bytes"] += len(data)

    def zero(self, offset, length, zeros):
        self._check(offset, length, "a zero range")
        pos, end = offset, offset + length
        while pos < end:
            n = min(len(zeros), end - pos)
            self._pwrite(zeros[:n], pos)
            pos += n
        self.digest.update(b"Z" + U64.pack(offset) + U64.pack(length))
        self.stats["zero_ranges"] += 1
        self.stats["zero_bytes"] += length

    def end(self):
        started = time.time()
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise AgentError("write", "fsync of %s failed: %s" % (self.name, exc.strerror or exc), disk=self.name)
        self.ended = True
        report = {"index": self.index, "name": self.name, "path": self.path, "sha256": self.digest.hexdigest(),
                  "bytes_written": self.stats["data_bytes"] + self.stats["zero_bytes"],
                  "fsync_seconds": round(time.time() - started, 4), "seconds": round(time.time() - self.started, 4)}
        report.update(self.stats)
        return report

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def open_targets(header):
    """Every target checked and opened before anything is written; the first refusal closes
    the others and raises."""
    targets, seen = [], {}
    try:
        for index, spec in enumerate(header["disks"]):
            target = Target(index, spec)
            key = target.open()
            targets.append(target)
            if key in seen:
                raise target.refuse("the same target as disk %s" % seen[key])
            seen[key] = target.name
    except BaseException:
        for target in targets:
            target.close()
        raise
    return targets


def apply_stream(stdin, out, targets, trailer):
    """Apply input frames until the end frame; every disk still open is then ended."""
    zeros = memoryview(bytes(ZERO_CHUNK))
    while True:
        item = read_apply_frame(stdin)
        if item is None:
            raise AgentError("frame", "the stream ended before its end frame")
        kind, payload = item
        if kind == TRAILER:
            break
        if kind == BLOCK:
            disk, offset = APPLY_BLOCK.unpack_from(payload)
        elif kind == ZERO:
            disk, offset, length = APPLY_ZERO.unpack(payload)
        else:
            (disk,) = APPLY_DISK.unpack(payload)
        if disk >= len(targets):
            raise AgentError("frame", "apply frame %r names disk %d of %d" % (chr(kind), disk, len(targets)))
        target = targets[disk]
        if kind == BLOCK:
            target.write(offset, memoryview(payload)[APPLY_BLOCK.size:])
        elif kind == ZERO:
            target.zero(offset, length, zeros)
        else:
            end_target(out, target, trailer)
    for target in targets:
        if not target.ended:
            end_target(out, target, trailer)


def end_target(out, target, trailer):
    if target.ended:
        raise AgentError("frame", "a second end frame for disk %s" % target.name, disk=target.name)
    out.send(json_frame(DISK_END, target.end()))
    out.flush()
    trailer["ended"].append(target.name)


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
    except (Exception, Terminated) as exc:  # the trailer must still go out and the thaw must still run
        exit_code = _failed(out, trailer, exc)
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


def apply(stdin, stdout):
    """Master target: write the disks an apply stream names (module docstring)."""
    out = Output(stdout)
    trailer = {"ok": False, "error": None, "ended": [], "version": AGENT_VERSION, "mode": "apply"}
    started = time.time()
    targets = []
    exit_code = 0
    try:
        header = read_apply_header(stdin)
        out.send(json_frame(HELLO, {"version": AGENT_VERSION, "python": sys.version.split()[0], "pid": os.getpid(),
                                    "mode": "apply"}))
        targets = open_targets(header)
        for t in targets:
            out.send(json_frame(DISK, {"index": t.index, "name": t.name, "path": t.path, "size": t.size, "kind": t.kind,
                                       "target_size": t.target_size}))
        out.flush()
        apply_stream(stdin, out, targets, trailer)
        trailer["ok"] = True
    except (Exception, Terminated) as exc:
        exit_code = _failed(out, trailer, exc)
    finally:
        for t in targets:
            t.close()
    trailer["seconds"] = round(time.time() - started, 4)
    if exit_code != 3:
        _send_quietly(out, json_frame(TRAILER, trailer))
    return exit_code


def _failed(out, trailer, exc):
    """The exit code of a command that `exc` ended; its trailer's error, and an error frame."""
    if isinstance(exc, AgentError):
        trailer["error"] = exc.message
        _send_quietly(out, json_frame(ERROR, {"disk": exc.disk, "kind": exc.kind, "message": exc.message}))
        return 2
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return 3
    if isinstance(exc, Terminated):
        trailer["error"] = "terminated (%s)" % exc
        return 4
    trailer["error"] = "%s: %s" % (type(exc).__name__, exc)
    _send_quietly(out, json_frame(ERROR, {"disk": None, "kind": "internal", "message": trailer["error"]}))
    return 5

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
    sub.add_parser("apply", help="write the blocks of an apply stream to target disks (master target)")
    args = parser.parse_args(argv)
    if args.version:
        sys.stdout.write(AGENT_VERSION + "\n")
        return 0
    if args.command == "self-check":
        paths = [p for group in args.disk for p in group]
        sys.stdout.write(json.dumps(self_check(paths), sort_keys=True) + "\n")
        return 0
    if args.command in ("scan", "apply"):
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGHUP, _on_signal)
        stdout = io.open(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False)
        try:
            return (scan if args.command == "scan" else apply)(sys.stdin.buffer, stdout)
        finally:
            try:
                stdout.close()
            except (OSError, ValueError):
                pass
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
