"""Where a disk's block maps live: memory for a small disk, a temporary file for a large one.

A map (drbook.replication.manifest) is `count` entries of `width` bytes, one per block: 160
bytes per 64 KiB block with the default layout, 2.5 GiB for a 1 TiB disk. `MapBuffer` holds
them in a bytearray up to MEMORY_LIMIT bytes, and above it in a shared memory map of a
temporary file in the process server's work directory (the cycle's spool_dir, else the
system temp directory), deleted when it is closed. Its pages are the kernel's page cache,
written back and reclaimed under pressure, not the process's anonymous memory: the memory a
disk's maps take no longer grows with the disk. The file is reserved in full when it is
made (posix_fallocate: on ext4 or xfs, metadata only), so a full file system is an error
here, not a SIGBUS in the middle of a cycle. That directory must be on a real file system:
on a tmpfs the file is memory again.

Entries are "blank" until written: a blank entry reads as the map's `blank` value (the last
entry as `blank_last`; for a manifest, the hash of an all-zero block). The buffer is cut into
chunks of about CHUNK bytes, and a chunk none of whose entries was ever written holds
nothing: making the map of an all-zero 1 TiB disk writes no byte, and a chunk that is blank
again is not stored when a map is loaded. A map can also be `derive`d from another (a delta
cycle's new maps from the old): its chunks read through to the other's until written, so
only the chunks of the blocks that changed are ever copied. Whole-map work (packing,
comparing, copying, sending) goes chunk by chunk (`chunks`), never through one bytes object
of the whole map.

What a file-backed map costs instead: room in the work directory, reserved in full for
each map file (about 0.25 % of the disk's size per map, 160 bytes per 64 KiB block for the
two maps), and page cache.
"""

from __future__ import annotations

import functools
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from drbook.errors import ReplicationError

MIB = 1024 * 1024
# Maps up to this many bytes stay in memory (a disk has up to four at once: the old and the
# new manifest and sub-block map); larger ones are file-backed. DRBOOK_MAP_MEMORY_LIMIT
# overrides it (0: every map in a file, e.g. to run the lab's tests through that path).
MEMORY_LIMIT = int(os.environ.get("DRBOOK_MAP_MEMORY_LIMIT", 8 * MIB))
CHUNK = 1 * MIB


def fits_in_memory(nbytes: int) -> bool:
    return nbytes <= MEMORY_LIMIT


def spooled(directory: str | None = None) -> IO[bytes]:
    """A temporary file for a packed map: in memory up to MEMORY_LIMIT, then on disk in `directory`."""
    return tempfile.SpooledTemporaryFile(max_size=max(1, MEMORY_LIMIT), dir=directory)  # 0 would never roll over


@functools.lru_cache(maxsize=4)
def _pattern(unit: bytes, count: int) -> bytes:
    """`count` blank entries: a whole blank chunk, shared by every map of that entry."""
    return unit * count


def _map_file(nbytes: int, directory: str | None) -> tuple[IO[bytes], mmap.mmap]:
    where = directory or tempfile.gettempdir()
    try:
        st = os.statvfs(where)
        if nbytes > st.f_bavail * st.f_frsize:
            raise OSError(f"only {st.f_bavail * st.f_frsize} bytes are free")
        f = tempfile.TemporaryFile(dir=directory)
        try:
            os.ftruncate(f.fileno(), nbytes)
            os.posix_fallocate(f.fileno(), 0, nbytes)
            return f, mmap.mmap(f.fileno(), nbytes)
        except BaseException:
            f.close()
            raise
    except OSError as exc:
        raise ReplicationError(f"the process server's work directory {where} cannot hold a {nbytes}-byte block map: "
                               f"{exc.strerror or exc}; free space there, or point the site config's "
                               "process_servers[0].cycle.spool_dir at another directory") from None


# What each chunk of a MapBuffer holds (MapBuffer.state).
BASE = 0  # what the chunk of its base map holds (a map derived from another), else blank
STORED = 1  # its own bytes, in the buffer
BLANK = 2  # blank entries only (nothing stored)


class MapBuffer:
    """`count` entries of `width` bytes, blank until written (see the module's docstring).

    A map `derive`d from another (the new maps of a delta cycle, from the old ones) reads
    through to that base map until a chunk of it is written: it costs nothing until then, and
    only the chunks a cycle changes are ever copied. The base must not change meanwhile.

    Indexing and slicing read and write bytes like a bytearray's (`buf[a:b]`, `buf[a:b] =
    data`, no resizing); `bytes(buf)` is the whole map (for small maps and tests)."""

    def __init__(self, count: int, width: int, blanks: Callable[[], tuple[bytes, bytes]], *,
                 directory: str | None = None, base: "MapBuffer | None" = None) -> None:
        """`blanks()` gives (blank, blank_last), the values of a blank entry and of a blank last
        entry; it is called once, when they are first needed (a map loaded whole never needs them)."""
        if count < 0 or width < 0:
            raise ValueError(f"no map has {count} entries of {width} bytes")
        self.count, self.width = count, width
        self._blanks = blanks
        self.nbytes = count * width
        self.per_chunk = max(1, CHUNK // max(1, width))
        self.chunk = self.per_chunk * width
        self.nchunks = -(-self.nbytes // self.chunk) if self.chunk else 0
        if base is not None and (base.count, base.width, base.chunk) != (count, width, self.chunk):
            raise ValueError("a map derives only from a map of its own geometry")
        self.base = base
        self.state = bytearray(self.nchunks)  # BASE, STORED or BLANK per chunk
        self.file = None
        if fits_in_memory(self.nbytes):
            self.buf: bytearray | mmap.mmap = bytearray(self.nbytes)
        else:
            self.file, self.buf = _map_file(self.nbytes, directory)
        self.directory = directory

    @functools.cached_property
    def _blank_values(self) -> tuple[bytes, bytes]:
        blank, last = (bytes(b) for b in self._blanks())
        if len(blank) != self.width or len(last) != self.width:
            raise ValueError(f"the blank entries of a map of {self.width}-byte entries have {len(blank)} and {len(last)} bytes")
        return blank, last

    @property
    def blank(self) -> bytes:
        return self._blank_values[0]

    @property
    def blank_last(self) -> bytes:
        return self._blank_values[1]

    @property
    def file_backed(self) -> bool:
        return self.file is not None

    @property
    def stored(self) -> int:
        """Bytes of the map's own chunks (what a file-backed map has written to its file)."""
        return sum(b - a for c, (a, b) in enumerate(map(self._bounds, range(self.nchunks))) if self.state[c] == STORED)

    def close(self) -> None:
        """Release a file-backed map's file (it is deleted); reading it afterwards fails. A map
        derived from this one must be closed first."""
        if self.file is not None:
            self.buf.close()
            self.file.close()

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        where = "file" if self.file_backed else "memory"
        return (f"MapBuffer({self.count} x {self.width} bytes in {where}, {self.state.count(STORED)}/{self.nchunks} "
                f"chunks stored{', derived' if self.base is not None else ''})")

    def derive(self, directory: str | None = None) -> "MapBuffer":
        """A copy that reads through to this map until written (see the class): made in no
        time, whatever the size. This map must not change while the copy is used."""
        new = MapBuffer(self.count, self.width, self._blanks, base=self,
                        directory=self.directory if directory is None else directory)
        if "_blank_values" in self.__dict__:
            new._blank_values = self._blank_values
        return new

    # -- entries and bytes ---------------------------------------------------------------------

    def _bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min(self.nbytes, (c + 1) * self.chunk)

    def _is_blank(self, c: int) -> bool:
        return self.state[c] == BLANK or (self.state[c] == BASE and self.base is None)

    def _blank_bytes(self, start: int, stop: int) -> bytes:
        """What bytes start..stop-1 read as when blank."""
        if start >= stop:
            return b""
        w = self.width
        first, last = start // w, (stop - 1) // w
        n = last - first + 1
        if last == self.count - 1:
            whole = self.blank * (n - 1) + self.blank_last
        elif n == self.per_chunk:
            whole = _pattern(self.blank, n)
        else:
            whole = self.blank * n
        return whole[start - first * w:stop - first * w]

    def _unstored(self, c: int, start: int, stop: int) -> bytes:
        """Bytes start..stop-1 of chunk `c`, which is not STORED."""
        if self._is_blank(c):
            return self._blank_bytes(start, stop)
        return self.base.read(start, stop)  # type: ignore[union-attr]

    def _store(self, c: int) -> None:
        """Chunk `c` gets its own bytes (from its base, or blank)."""
        a, b = self._bounds(c)
        self.buf[a:b] = self._unstored(c, a, b)
        self.state[c] = STORED

    def _check(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.nbytes:
            raise IndexError(f"bytes {start}..{stop} are outside a {self.nbytes}-byte map")

    def read(self, start: int, stop: int) -> bytes:
        c = start // self.chunk if self.chunk else 0
        if 0 <= start < stop <= min(self.nbytes, (c + 1) * self.chunk):  # within a chunk: an entry, the common case
            return bytes(self.buf[start:stop]) if self.state[c] == STORED else self._unstored(c, start, stop)
        self._check(start, stop)
        if start == stop:
            return b""
        first, last = start // self.chunk, (stop - 1) // self.chunk
        return b"".join(self.read(max(start, a), min(stop, b)) for a, b in map(self._bounds, range(first, last + 1)))

    def write(self, start: int, data: bytes | bytearray | memoryview) -> None:
        stop = start + len(data)
        c = start // self.chunk if self.chunk else 0
        if 0 <= start < stop <= min(self.nbytes, (c + 1) * self.chunk):  # within a chunk: an entry, the common case
            if self.state[c] != STORED:
                self._store(c)
            self.buf[start:stop] = data
            return
        self._check(start, stop)
        if start == stop:
            return
        for c in range(start // self.chunk, (stop - 1) // self.chunk + 1):
            if self.state[c] != STORED:
                self._store(c)
        self.buf[start:stop] = data

    def set_blank(self, first: int, count: int) -> None:
        """Entries first..first+count-1 become blank; a chunk that becomes blank whole is dropped."""
        start, stop = first * self.width, (first + count) * self.width
        self._check(start, stop)
        if start == stop:
            return
        for c in range(start // self.chunk, (stop - 1) // self.chunk + 1):
            a, b = self._bounds(c)
            lo, hi = max(a, start), min(b, stop)
            if (lo, hi) == (a, b):
                self.state[c] = BLANK
            elif not self._is_blank(c):
                if self.state[c] != STORED:
                    self._store(c)
                self.buf[lo:hi] = self._blank_bytes(lo, hi)

    def __getitem__(self, key: int | slice) -> bytes | int:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.nbytes)
            if step != 1:
                raise ValueError("a MapBuffer slice has no step")
            return self.read(start, max(start, stop))
        index = key + self.nbytes if key < 0 else key
        return self.read(index, index + 1)[0]

    def __setitem__(self, key: slice, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(key, slice):
            raise TypeError("a MapBuffer takes slice assignments of bytes")
        start, stop, step = key.indices(self.nbytes)
        if step != 1 or max(start, stop) - start != len(data):
            raise ValueError(f"a slice assignment must replace {max(start, stop) - start} bytes with as many, got {len(data)}")
        self.write(start, data)

    # -- whole map, chunk by chunk -------------------------------------------------------------

    def chunk_lengths(self) -> Iterator[int]:
        return (b - a for a, b in map(self._bounds, range(self.nchunks)))

    def chunk_bytes(self, c: int) -> bytes:
        a, b = self._bounds(c)
        return bytes(self.buf[a:b]) if self.state[c] == STORED else self._unstored(c, a, b)

    def chunks(self) -> Iterator[bytes]:
        """The map's bytes in order, a chunk at a time (about CHUNK bytes each)."""
        for c in range(self.nchunks):
            yield self.chunk_bytes(c)

    def put_chunk(self, c: int, data: bytes | bytearray) -> None:
        """Chunk `c` becomes `data` (its full length); in a file, a blank one is not stored (loading a map)."""
        a, b = self._bounds(c)
        if len(data) != b - a:
            raise ValueError(f"chunk {c} has {b - a} bytes, not {len(data)}")
        if self.file_backed and data == self._blank_bytes(a, b):  # in memory, the bytes are taken anyway
            self.state[c] = BLANK
        else:
            self.buf[a:b] = data
            self.state[c] = STORED

    def load(self, data: bytes | bytearray | memoryview) -> "MapBuffer":
        """Fill the map from `data` (the whole map's bytes, e.g. a small map given whole)."""
        view = memoryview(data)
        if len(view) != self.nbytes:
            raise ValueError(f"a {self.nbytes}-byte map cannot take {len(view)} bytes")
        for c in range(self.nchunks):
            a, b = self._bounds(c)
            self.put_chunk(c, view[a:b].tobytes())
        return self

    def _same_chunk(self, other: "MapBuffer", c: int) -> bool:
        """Chunk `c` is known to be equal in both maps without reading it: blank in both (with
        the same blank entries), or not written since one was derived from the other."""
        mine, theirs = self.state[c], other.state[c]
        if mine == BASE and self.base is other or theirs == BASE and other.base is self:
            return True
        return self._is_blank(c) and other._is_blank(c) and (self.count, self.width) == (other.count, other.width) \
            and self._blank_values == other._blank_values

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MapBuffer):
            if other.nbytes != self.nbytes:
                return False
            return all((other.chunk == self.chunk and self._same_chunk(other, c))
                       or self.chunk_bytes(c) == other.read(*self._bounds(c)) for c in range(self.nchunks))
        if isinstance(other, (bytes, bytearray, memoryview)):
            view = memoryview(other).cast("B")
            if len(view) != self.nbytes:
                return False
            return all(self.chunk_bytes(c) == view[slice(*self._bounds(c))] for c in range(self.nchunks))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - mutable

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks())

    def differing(self, other: "MapBuffer") -> Iterator[int]:
        """Indexes of the entries that differ from `other`'s (same width; up to the shorter map)."""
        if other.width != self.width:
            raise ValueError("maps of different entry widths cannot be compared entry by entry")
        w = self.width
        for c in range(self.nchunks):
            a, b = self._bounds(c)
            b = min(b, other.nbytes)
            if a >= b:
                return
            if other.chunk == self.chunk and self._same_chunk(other, c):
                continue
            mine = self.read(a, b)
            theirs = other.read(a, b)
            if mine == theirs:
                continue
            base = a // w
            for i in range(0, b - a, w):
                if mine[i:i + w] != theirs[i:i + w]:
                    yield base + i // w

    def copy(self, directory: str | None = None) -> "MapBuffer":
        """An independent copy (chunk by chunk), file-backed in `directory` when large."""
        new = MapBuffer(self.count, self.width, self._blanks, directory=self.directory if directory is None else directory)
        if "_blank_values" in self.__dict__:
            new._blank_values = self._blank_values
        for c in range(self.nchunks):
            if self._is_blank(c):
                new.state[c] = BLANK
            else:
                a, b = self._bounds(c)
                new.buf[a:b] = self.buf[a:b] if self.state[c] == STORED else self._unstored(c, a, b)
                new.state[c] = STORED
        return new
