"""The fixed-VHD footer: what Azure managed-disk import accepts, and how to write one."""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass

FOOTER_SIZE = 512
MIB = 1 << 20
COOKIE = b"conectix"
DISK_TYPES = {2: "fixed", 3: "dynamic", 4: "differencing"}
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z


class InvalidVhd(ValueError):
    """The bytes are not a fixed VHD Azure would import; the message says why."""


@dataclass(frozen=True)
class Footer:
    cookie: bytes
    current_size: int
    disk_type: int
    checksum: int
    computed_checksum: int


def checksum(footer: bytes) -> int:
    """Ones' complement of the byte sum of the footer with its checksum field (64..68) zeroed."""
    total = sum(footer[:64]) + sum(footer[68:FOOTER_SIZE])
    return (~total) & 0xFFFFFFFF


def parse_footer(footer: bytes) -> Footer:
    if len(footer) != FOOTER_SIZE:
        raise InvalidVhd(f"the footer must be {FOOTER_SIZE} bytes, got {len(footer)}")
    current_size = struct.unpack(">Q", footer[48:56])[0]
    disk_type, stored = struct.unpack(">II", footer[60:68])
    return Footer(footer[:8], current_size, disk_type, stored, checksum(footer))


def validate(footer: bytes, blob_length: int) -> int:
    """Check the rules Azure applies to an imported VHD; return the disk's size in bytes."""
    f = parse_footer(footer)
    if f.cookie != COOKIE:
        raise InvalidVhd(f"the footer cookie is {f.cookie!r}, expected {COOKIE!r} (not a VHD)")
    if f.disk_type != 2:
        kind = DISK_TYPES.get(f.disk_type, f"unknown type {f.disk_type}")
        raise InvalidVhd(f"the VHD is {kind}; only fixed VHDs (disk type 2) can be imported")
    if f.checksum != f.computed_checksum:
        raise InvalidVhd(f"the footer checksum is 0x{f.checksum:08x}, computed 0x{f.computed_checksum:08x}")
    if f.current_size == 0 or f.current_size % MIB:
        raise InvalidVhd(f"the VHD's virtual size {f.current_size} is not a whole number of MiB")
    if blob_length != f.current_size + FOOTER_SIZE:
        raise InvalidVhd(f"the blob is {blob_length} bytes, but a fixed VHD of virtual size "
                         f"{f.current_size} must be {f.current_size + FOOTER_SIZE} bytes")
    return f.current_size


def _geometry(size: int) -> tuple[int, int, int]:
    """CHS geometry as the VHD specification computes it."""
    sectors = min(size // 512, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    return cth // heads, heads, spt


def make_footer(size: int, *, disk_type: int = 2, cookie: bytes = COOKIE, unique_id: bytes | None = None) -> bytes:
    """A fixed-VHD footer for a disk of `size` bytes (parameters let tests forge bad ones)."""
    cyl, heads, spt = _geometry(size)
    body = bytearray(FOOTER_SIZE)
    body[0:8] = cookie
    struct.pack_into(">II", body, 8, 2, 0x00010000)
    struct.pack_into(">Q", body, 16, 0xFFFFFFFFFFFFFFFF)
    struct.pack_into(">I", body, 24, int(time.time()) - _VHD_EPOCH)
    body[28:32] = b"drbk"
    struct.pack_into(">I", body, 32, 0x00010000)
    body[36:40] = b"Wi2k"
    struct.pack_into(">QQ", body, 40, size, size)
    struct.pack_into(">HBB", body, 56, cyl, heads, spt)
    struct.pack_into(">I", body, 60, disk_type)
    body[68:84] = unique_id or uuid.uuid4().bytes
    struct.pack_into(">I", body, 64, checksum(bytes(body)))
    return bytes(body)
