"""Cache segments: a batch of a cycle's changed blocks, compressed then encrypted.

A segment's plaintext is agent frames (a disk frame, then block and zero frames), so the
apply step reads segments with the same parser as the live stream. On the wire and in
the cache container it is zstd-compressed, then sealed with AES-256-GCM under a random
96-bit nonce and the segment's identity (item, cycle, sequence) as associated data: a
segment cannot be altered, nor moved to another cycle or position, without the
decryption failing.
"""

from __future__ import annotations

import os
import struct

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from drbook.config import SiteConfig
from drbook.errors import ReplicationError, SecretError
from drbook.secrets import resolve_secret

SEGMENT_MAGIC = b"DRSG"
SEGMENT_VERSION = 1
NONCE_LEN = 12
_HEAD = struct.Struct(">4sB")
ZSTD_LEVEL = 1  # about 1.2 GB/s on incompressible data here; higher levels cost the cycle time
# What a segment may decompress to when the caller does not know its raw size (the commit
# marker does): far above cycle.segment_bytes (32 MiB by default) plus one block frame.
MAX_SEGMENT = 1024 ** 3
_CHUNK = 4 * 1024 * 1024


class SegmentError(ReplicationError):
    """A segment failed authentication or does not decode (tampered, corrupt, wrong key)."""


def key_from_hex(text: str) -> bytes:
    """The 32-byte AES-256 key from its hex form; never echoes the value."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise SecretError("the segment encryption key is not hex") from None
    if len(key) != 32:
        raise SecretError(f"the segment encryption key must be 32 bytes (64 hex digits), got {len(key)} bytes")
    return key


def site_key(site: SiteConfig) -> bytes:
    return key_from_hex(resolve_secret(site.azure.encryption_key).get_secret_value())


def associated_data(item: str, cycle_id: str, seq: int) -> bytes:
    return f"drbook-segment/v{SEGMENT_VERSION}/{item}/{cycle_id}/{seq}".encode()


def seal(raw: bytes | memoryview, key: bytes, item: str, cycle_id: str, seq: int) -> bytes:
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    nonce = os.urandom(NONCE_LEN)
    return _HEAD.pack(SEGMENT_MAGIC, SEGMENT_VERSION) + nonce + AESGCM(key).encrypt(nonce, packed, associated_data(item, cycle_id, seq))


def decompress(packed: bytes | memoryview, limit: int) -> bytearray:
    """One zstd frame, decompressed to at most `limit` bytes: a frame that would grow past
    it (a bomb, or a header that claims more) raises ZstdError once it has, never taking
    more memory than `limit` and one chunk; the frame header's content size is not trusted."""
    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(packed) as reader:
        while chunk := reader.read(min(_CHUNK, limit + 1 - len(out))):
            out += chunk
            if len(out) > limit:
                raise zstandard.ZstdError(f"it decompresses to more than {limit} bytes")
    return out


def open_segment(blob: bytes, key: bytes, item: str, cycle_id: str, seq: int, *, raw_bytes: int | None = None) -> bytes:
    """The plaintext of a sealed segment; `raw_bytes` (from the commit marker) is its size,
    else it may be at most MAX_SEGMENT."""
    where = f"segment {seq} of cycle {cycle_id} ({item})"
    if len(blob) < _HEAD.size + NONCE_LEN + 16:
        raise SegmentError(f"{where} is truncated ({len(blob)} bytes)")
    magic, version = _HEAD.unpack_from(blob)
    if magic != SEGMENT_MAGIC or version != SEGMENT_VERSION:
        raise SegmentError(f"{where} is not a drbook segment (v{SEGMENT_VERSION})")
    nonce = blob[_HEAD.size:_HEAD.size + NONCE_LEN]
    try:
        packed = AESGCM(key).decrypt(nonce, blob[_HEAD.size + NONCE_LEN:], associated_data(item, cycle_id, seq))
    except InvalidTag:
        raise SegmentError(f"{where} failed authentication: tampered, corrupt, or sealed with another key") from None
    try:
        raw = decompress(packed, MAX_SEGMENT if raw_bytes is None else raw_bytes)
    except zstandard.ZstdError as exc:
        raise SegmentError(f"{where} does not decompress: {exc}") from None
    if raw_bytes is not None and len(raw) != raw_bytes:
        raise SegmentError(f"{where} decompresses to {len(raw)} bytes, its commit marker says {raw_bytes}")
    return bytes(raw)
