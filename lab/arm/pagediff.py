"""The page-range diff of two snapshots, computed from their bytes (Azurite cannot answer it).

Azure reports every page written between two incremental snapshots; the lab has no write
journal, so it compares the snapshots' bytes: chunk by chunk (both unallocated in Azurite:
equal; equal digests: equal), then 64 KiB blocks, then 512-byte pages inside the chunks that
differ. A changed range whose current bytes are all zeros is a ClearRange, else a PageRange.
This is a subset of Azure's answer (a page rewritten with the same bytes is not reported),
which consumers must accept anyway: Azure's ranges are any 512-aligned ranges.

Snapshots never change, so each chunk's digest is cached per snapshot blob (bounded, in
memory): a snapshot is read once however many diffs it takes part in.
"""

from __future__ import annotations

import hashlib
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import urllib3

PAGE = 512
BLOCK = 64 * 1024
CHUNK = 4 * 1024 * 1024
CACHED_DIGESTS = 1 << 16  # 256 GiB of snapshot bytes at 4 MiB a chunk
CACHED_RANGE_LISTS = 256
AZURITE_VERSION = "2021-12-02"
# Azurite (Node) drops idle kept-alive connections after a few seconds: a request that meets one
# is sent again. Every request the front makes is idempotent (reads, Put Page of the same bytes).
RETRY = urllib3.Retry(total=2, redirect=False, raise_on_status=False)
ZERO_PAGE = bytes(PAGE)


@dataclass(frozen=True)
class Snap:
    key: str  # what identifies its bytes for the cache: the snapshot's blob name
    url: str  # an Azurite SAS URL that reads them
    length: int  # bytes of the blob (disk + VHD footer)


@dataclass(frozen=True)
class Change:
    start: int
    end: int  # inclusive
    clear: bool


class UpstreamError(Exception):
    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"Azurite answered {status} to {what}")
        self.status = status


def _overlaps(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether any inclusive (s, e) in sorted `ranges` meets [start, end)."""
    return any(s < end and e >= start for s, e in ranges)


def _pages(a: bytes, b: bytes, base: int) -> Iterator[tuple[int, bool]]:
    """(offset, current page all zeros) of every 512-byte page where `a` (current) differs from `b`."""
    for blk in range(0, len(a), BLOCK):
        if a[blk:blk + BLOCK] == b[blk:blk + BLOCK]:
            continue
        for off in range(blk, min(blk + BLOCK, len(a)), PAGE):
            page = a[off:off + PAGE]
            if page != b[off:off + PAGE]:
                yield base + off, page == ZERO_PAGE[:len(page)]


def merge(pages: Iterator[tuple[int, bool]]) -> list[Change]:
    out: list[Change] = []
    for off, clear in pages:
        last = out[-1] if out else None
        if last and last.end + 1 == off and last.clear == clear:
            out[-1] = Change(last.start, off + PAGE - 1, clear)
        else:
            out.append(Change(off, off + PAGE - 1, clear))
    return out


def clip(changes: list[Change], lo: int, hi: int) -> list[Change]:
    return [Change(max(c.start, lo), min(c.end, hi), c.clear) for c in changes if c.end >= lo and c.start <= hi]


def page_list_xml(changes: list[Change]) -> bytes:
    parts = ['<?xml version="1.0" encoding="utf-8"?><PageList>']
    for c in changes:
        tag = "ClearRange" if c.clear else "PageRange"
        parts.append(f"<{tag}><Start>{c.start}</Start><End>{c.end}</End></{tag}>")
    parts.append("</PageList>")
    return "".join(parts).encode()


class PageDiffer:
    def __init__(self, http: urllib3.PoolManager) -> None:
        self.http = http
        self._lock = threading.Lock()
        self._digests: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._ranges: OrderedDict[str, list[tuple[int, int]]] = OrderedDict()

    # -- Azurite reads -----------------------------------------------------------------------
    def _get(self, url: str, headers: dict[str, str], what: str) -> bytes:
        resp = self.http.request("GET", url, headers={"x-ms-version": AZURITE_VERSION, **headers}, retries=RETRY)
        if resp.status not in (200, 206):
            raise UpstreamError(resp.status, what)
        return resp.data

    def _read(self, snap: Snap, start: int, length: int) -> bytes:
        """`length` bytes at `start`, zeros past the snapshot's end (a disk grown since)."""
        have = max(0, min(length, snap.length - start))
        data = self._get(snap.url, {"Range": f"bytes={start}-{start + have - 1}"}, "a ranged read") if have else b""
        return data + bytes(length - len(data))

    def _allocated(self, snap: Snap) -> list[tuple[int, int]]:
        with self._lock:
            if snap.key in self._ranges:
                self._ranges.move_to_end(snap.key)
                return self._ranges[snap.key]
        root = ET.fromstring(self._get(snap.url + "&comp=pagelist", {}, "Get Page Ranges"))
        ranges = sorted((int(r.findtext("Start")), int(r.findtext("End"))) for r in root.iter("PageRange"))
        with self._lock:
            self._ranges[snap.key] = ranges
            while len(self._ranges) > CACHED_RANGE_LISTS:
                self._ranges.popitem(last=False)
        return ranges

    def _cached(self, snap: Snap, chunk: tuple[int, int]) -> bytes | None:
        with self._lock:
            digest = self._digests.get((snap.key, *chunk))
            if digest is not None:
                self._digests.move_to_end((snap.key, *chunk))
            return digest

    def _remember(self, snap: Snap, chunk: tuple[int, int], data: bytes) -> bytes:
        digest = hashlib.blake2b(data, digest_size=20).digest()
        with self._lock:
            self._digests[(snap.key, *chunk)] = digest
            while len(self._digests) > CACHED_DIGESTS:
                self._digests.popitem(last=False)
        return digest

    # -- the diff ------------------------------------------------------------------------------
    def diff(self, cur: Snap, prev: Snap, lo: int = 0, hi: int | None = None) -> list[Change]:
        """The pages of `cur` whose bytes differ from `prev`'s, within [lo, hi] (inclusive)."""
        hi = cur.length - 1 if hi is None else min(hi, cur.length - 1)
        if cur.key == prev.key or hi < lo:
            return []
        return clip(merge(self._changed_pages(cur, prev, lo, hi)), lo, hi)

    def _changed_pages(self, cur: Snap, prev: Snap, lo: int, hi: int) -> Iterator[tuple[int, bool]]:
        cur_alloc, prev_alloc = self._allocated(cur), self._allocated(prev)
        for index in range(lo // CHUNK, hi // CHUNK + 1):
            start = index * CHUNK
            length = min(CHUNK, cur.length - start)
            if not _overlaps(cur_alloc, start, start + length) and not _overlaps(prev_alloc, start, start + length):
                continue  # never written in either: zeros in both
            key = (index, length)  # a chunk of the other snapshot is padded to this one's length
            a = b = None
            da, db = self._cached(cur, key), self._cached(prev, key)
            if da is None:
                a = self._read(cur, start, length)
                da = self._remember(cur, key, a)
            if db is None:
                b = self._read(prev, start, length)
                db = self._remember(prev, key, b)
            if da != db:
                yield from _pages(a if a is not None else self._read(cur, start, length),
                                  b if b is not None else self._read(prev, start, length), start)
