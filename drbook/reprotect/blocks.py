"""Pure planning of a reverse cycle: which bytes of a disk move back, and in what reads.

Azure reports changed pages as 512-byte-aligned byte ranges (real Azure: every page written
since the previous snapshot; the lab: every page whose bytes differ). Exactly those ranges
move (joined when the gap between two is small), besides the target's own drift from the
baseline (whole blocks of the failover point's manifest, first cycle) and the ranges a torn
cycle left half-written. Extents are (start, end) byte pairs, end exclusive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from drbook.adapters.recovery_site import PageRange
from drbook.reprotect.model import Extent

MAX_READ = 4 * 1024 * 1024
# Two ranges closer than this are read as one: a request costs more than a few KiB of bytes.
JOIN_GAP = 4096

Span = tuple[int, int]


def of_ranges(ranges: Iterable[PageRange], disk_size: int) -> list[Span]:
    """The diff's ranges within the disk (bytes past `disk_size` are the managed disk's padding
    and footer: never carried back)."""
    out = []
    for r in ranges:
        if r.end < r.start or r.start < 0:
            raise ValueError(f"bad page range {r.start}-{r.end}")
        end = min(r.end + 1, disk_size)
        if r.start < end:
            out.append((r.start, end))
    return out


def of_blocks(blocks: Iterable[int], block_size: int, disk_size: int) -> list[Span]:
    return [(b * block_size, min((b + 1) * block_size, disk_size)) for b in blocks if b * block_size < disk_size]


def of_extents(extents: Iterable[Extent]) -> list[Span]:
    return [(e.start, e.start + e.length) for e in extents]


def to_extents(spans: Iterable[Span]) -> list[Extent]:
    return [Extent(start=a, length=b - a) for a, b in merge(spans)]


def merge(spans: Iterable[Span], gap: int = 0) -> list[Span]:
    """Sorted, overlapping (or closer than `gap`) spans joined."""
    out: list[Span] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def total(spans: Iterable[Span]) -> int:
    return sum(b - a for a, b in merge(spans))


def reads(spans: Iterable[Span], max_read: int = MAX_READ) -> Iterator[Span]:
    """(offset, length) reads covering the spans, none longer than `max_read`."""
    for a, b in merge(spans):
        for offset in range(a, b, max_read):
            yield offset, min(max_read, b - offset)
