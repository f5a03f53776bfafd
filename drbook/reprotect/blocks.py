"""Pure planning of a reverse cycle: which blocks of a disk move back, and in what reads.

Azure reports changed pages as 512-byte-aligned byte ranges (real Azure: every page written
since the previous snapshot; the lab: every page whose bytes differ). A block moves when any
byte of it is in a range, when the target's own copy drifted from the baseline (first cycle),
or when a torn cycle left it half-written."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from drbook.adapters.recovery_site import PageRange
from drbook.reprotect.model import Range

MAX_READ = 4 * 1024 * 1024


def blocks_of_ranges(ranges: Iterable[PageRange], block_size: int, disk_size: int) -> set[int]:
    """Every block touched by a range, within the disk (bytes past `disk_size` are the managed
    disk's padding and footer: never carried back)."""
    out: set[int] = set()
    for r in ranges:
        if r.end < r.start or r.start < 0:
            raise ValueError(f"bad page range {r.start}-{r.end}")
        end = min(r.end, disk_size - 1)
        if r.start > end:
            continue
        out.update(range(r.start // block_size, end // block_size + 1))
    return out


def changed_bytes(ranges: Iterable[PageRange], disk_size: int) -> int:
    return sum(max(0, min(r.end, disk_size - 1) - r.start + 1) for r in ranges)


def to_ranges(blocks: Iterable[int]) -> list[Range]:
    """Sorted block indexes as runs."""
    out: list[Range] = []
    for b in sorted(set(blocks)):
        if out and out[-1].first + out[-1].count == b:
            out[-1].count += 1
        else:
            out.append(Range(first=b, count=1))
    return out


def from_ranges(ranges: Iterable[Range]) -> set[int]:
    return {b for r in ranges for b in range(r.first, r.first + r.count)}


def reads(blocks: Iterable[int], block_size: int, disk_size: int, max_read: int = MAX_READ) -> Iterator[tuple[int, int]]:
    """(offset, length) reads covering the blocks, consecutive blocks joined up to `max_read`."""
    per_read = max(1, max_read // block_size)
    for run in to_ranges(blocks):
        for first in range(run.first, run.first + run.count, per_read):
            n = min(per_read, run.first + run.count - first)
            offset = first * block_size
            yield offset, min(n * block_size, disk_size - offset)
