"""The fixed-VHD footer (Microsoft's "Virtual Hard Disk Image Format Specification").

A replica disk is the raw disk bytes, rounded up to a multiple of 1 MiB (what Azure's
managed-disk import requires), followed by this 512-byte footer: exactly a fixed VHD.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from dataclasses import dataclass

from drbook.errors import VerificationError

FOOTER_SIZE = 512
MIB = 1024 * 1024
COOKIE = b"conectix"
FEATURES = 0x00000002  # the "reserved" bit the spec says must always be set
FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
DISK_TYPE_FIXED = 2
CREATOR_APP = b"drbk"
CREATOR_VERSION = 0x00010000
CREATOR_HOST_OS = b"Wi2k"
VHD_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)

# cookie, features, version, data offset, timestamp, creator app, creator version,
# creator host os, original size, current size, cylinders, heads, sectors/track,
# disk type, checksum, unique id, saved state; then 427 reserved zero bytes.
_LAYOUT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
_CHECKSUM_OFFSET = 64
assert _LAYOUT.size == 85


class VhdFormatError(VerificationError):
    """A blob is not a fixed VHD Azure would accept."""


def replica_size(disk_size: int) -> int:
    """The VHD's data size: the disk's size rounded UP to a multiple of 1 MiB."""
    if disk_size <= 0:
        raise ValueError(f"disk size must be positive, got {disk_size}")
    return -(-disk_size // MIB) * MIB


def blob_size(disk_size: int) -> int:
    """The page blob's size: the rounded data plus the footer."""
    return replica_size(disk_size) + FOOTER_SIZE


def geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for `size` bytes, per the VHD spec's algorithm."""
    total = size // 512
    if total > 65535 * 16 * 255:
        total = 65535 * 16 * 255
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def checksum(footer: bytes) -> int:
    """Ones' complement of the sum of the footer's bytes, the checksum field counted as zero."""
    data = bytearray(footer[:FOOTER_SIZE])
    data[_CHECKSUM_OFFSET:_CHECKSUM_OFFSET + 4] = b"\0\0\0\0"
    return ~sum(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Footer:
    current_size: int
    original_size: int
    timestamp: int
    unique_id: uuid.UUID
    geometry: tuple[int, int, int]
    creator_app: bytes


def build_footer(size: int, *, unique_id: uuid.UUID | None = None, when: dt.datetime | None = None) -> bytes:
    """The footer of a fixed VHD whose data is `size` bytes (a multiple of 1 MiB)."""
    if size <= 0 or size % MIB:
        raise ValueError(f"a fixed VHD for Azure must be a positive multiple of 1 MiB, got {size}")
    when = when or dt.datetime.now(dt.timezone.utc)
    stamp = max(0, int((when - VHD_EPOCH).total_seconds()))
    cyl, heads, spt = geometry(size)
    uid = unique_id or uuid.uuid4()
    head = _LAYOUT.pack(
        COOKIE, FEATURES, FORMAT_VERSION, FIXED_DATA_OFFSET, stamp, CREATOR_APP, CREATOR_VERSION,
        CREATOR_HOST_OS, size, size, cyl, heads, spt, DISK_TYPE_FIXED, 0, uid.bytes, 0,
    )
    footer = bytearray(head.ljust(FOOTER_SIZE, b"\0"))
    struct.pack_into(">I", footer, _CHECKSUM_OFFSET, checksum(footer))
    return bytes(footer)


def parse_footer(footer: bytes, *, blob_size: int | None = None) -> Footer:
    """Check a footer the way Azure's import does; VhdFormatError lists every problem."""
    if len(footer) != FOOTER_SIZE:
        raise VhdFormatError(f"a VHD footer is {FOOTER_SIZE} bytes, got {len(footer)}")
    (cookie, features, version, data_offset, stamp, app, _cver, _host, original, current,
     cyl, heads, spt, disk_type, stored_sum, uid, _saved) = _LAYOUT.unpack_from(footer)
    problems = []
    if cookie != COOKIE:
        problems.append(f"cookie is {cookie!r}, not {COOKIE!r}")
    if not features & FEATURES:
        problems.append(f"features {features:#010x} lack the reserved bit 0x2")
    if version != FORMAT_VERSION:
        problems.append(f"format version {version:#010x}, not {FORMAT_VERSION:#010x}")
    if data_offset != FIXED_DATA_OFFSET:
        problems.append(f"data offset {data_offset:#x} (a fixed disk has {FIXED_DATA_OFFSET:#x})")
    if disk_type != DISK_TYPE_FIXED:
        problems.append(f"disk type {disk_type} (fixed is {DISK_TYPE_FIXED}; Azure takes only fixed VHDs)")
    if stored_sum != checksum(footer):
        problems.append(f"checksum {stored_sum:#010x} does not match the footer ({checksum(footer):#010x})")
    if current <= 0 or current % MIB:
        problems.append(f"current size {current} is not a positive multiple of 1 MiB")
    elif (cyl, heads, spt) != geometry(current):
        problems.append(f"geometry {cyl}/{heads}/{spt} does not match the size (want {'/'.join(map(str, geometry(current)))})")
    if blob_size is not None and blob_size != current + FOOTER_SIZE:
        problems.append(f"blob is {blob_size} bytes, the footer says {current} + {FOOTER_SIZE}")
    if problems:
        raise VhdFormatError("not a valid fixed VHD: " + "; ".join(problems))
    return Footer(current, original, stamp, uuid.UUID(bytes=uid), (cyl, heads, spt), app)
