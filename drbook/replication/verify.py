"""Verifying a disk against its recovery point's manifest, like `borg check`: every block's
SHA-256, the fixed-VHD footer, and the zero padding up to the next MiB.

`check_against_manifest` reads through any byte-range reader, so the same check runs on a
replica's blob snapshot (`verify_point`) and on a managed disk read back through a
grant-access SAS (drbook.failover.build.verify_disk).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel

from drbook.errors import DRError
from drbook.replication import vhd
from drbook.replication.blobs import Replicas
from drbook.replication.manifest import Manifest
from drbook.replication.store import PointStore
from drbook.vault import manifest_key

ReadRange = Callable[[int, int], bytes]
"""read(offset, length) -> exactly `length` bytes of the blob from `offset`."""

READ_CHUNK = 4 * 1024 * 1024
READ_WORKERS = 4


class ManifestCheck(BaseModel):
    """What reading a disk back found, compared with its manifest."""

    blocks: int = 0
    bytes_verified: int = 0
    bad_blocks: list[int] = []
    footer_ok: bool = False
    footer_error: str | None = None
    tail_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.bad_blocks and self.footer_ok and self.tail_ok


def check_against_manifest(read: ReadRange, blob_size: int, manifest: Manifest, *,
                           progress: Callable[[int], None] | None = None, exact_size: bool = True,
                           workers: int = READ_WORKERS) -> ManifestCheck:
    """Check a fixed VHD of `blob_size` bytes, read through `read`, against `manifest`.

    `exact_size`: the VHD's data must be exactly the disk rounded up to 1 MiB (a replica);
    otherwise it may be larger (a managed disk may have been grown after its import).
    `progress(n)` is called, one call at a time, after each `n` bytes of blocks are hashed.
    """
    check = ManifestCheck(blocks=manifest.blocks)
    disk_size, bs = manifest.disk_size, manifest.block_size
    data_size = blob_size - vhd.FOOTER_SIZE
    want = vhd.replica_size(disk_size)
    try:
        vhd.parse_footer(read(data_size, vhd.FOOTER_SIZE), blob_size=blob_size)
        check.footer_ok = data_size == want if exact_size else data_size >= want
        if not check.footer_ok:
            check.footer_error = (f"VHD data size {data_size} is not the disk's {disk_size} rounded to 1 MiB"
                                  + ("" if exact_size else " or more"))
    except vhd.VhdFormatError as exc:
        check.footer_error = str(exc)
    if data_size < disk_size:
        check.footer_error = check.footer_error or f"the blob's {data_size} data bytes cannot hold the {disk_size}-byte disk"
        return check

    chunk = max(bs, READ_CHUNK - READ_CHUNK % bs)
    lock = threading.Lock()

    def bad_blocks_of(start: int) -> list[int]:
        n = min(chunk, disk_size - start)
        data = memoryview(read(start, n))
        bad = [(start + i) // bs for i in range(0, n, bs)
               if hashlib.sha256(data[i:i + bs]).digest() != manifest[(start + i) // bs]]
        with lock:
            check.bytes_verified += n
            if progress:
                progress(n)
        return bad

    with ThreadPoolExecutor(workers) as pool:
        for bad in pool.map(bad_blocks_of, range(0, disk_size, chunk)):
            check.bad_blocks.extend(bad)
    pad = want - disk_size
    if pad:
        check.tail_ok = read(disk_size, pad).count(0) == pad
    return check


class DiskVerify(ManifestCheck):
    disk: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return super().ok and self.error is None


class VerifyReport(BaseModel):
    item: str
    point_id: str
    ok: bool
    disks: list[DiskVerify]
    bytes_read: int
    seconds: float

    def summary(self) -> str:
        if self.ok:
            return f"{self.item} {self.point_id}: every block of {len(self.disks)} disk(s) matches its manifest; VHD footers valid"
        bad = [f"{d.disk}: {len(d.bad_blocks)} bad block(s) {d.bad_blocks[:8]}" if d.bad_blocks else
               f"{d.disk}: {d.error or d.footer_error or 'tail not zero'}" for d in self.disks if not d.ok]
        return f"{self.item} {self.point_id}: MISMATCH: " + "; ".join(bad)


def verify_point(points: PointStore, blob_service, item: str, point_id: str, *,  # noqa: ANN001 - BlobServiceClient
                 page_workers: int, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Re-read every disk of a point's snapshots and check them against their manifests."""
    started = time.monotonic()
    point = points.get(item, point_id)
    total = sum(d.size_bytes for d in point.disks)
    done = [0]

    def report(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    reports = []
    for d in point.disks:
        manifest = points.manifest(item, point_id, d.disk)
        if manifest is None:
            reports.append(DiskVerify(disk=d.disk, error=f"manifest {d.manifest_key or manifest_key(item, point_id, d.disk)} is missing"))
            continue
        replicas = Replicas(blob_service, d.container, workers=page_workers)
        try:
            check = check_against_manifest(lambda offset, length, d=d, r=replicas: r.read(d.blob, d.snapshot, offset, length),
                                           replicas.size(d.blob, d.snapshot), manifest, progress=report)
            reports.append(DiskVerify(disk=d.disk, **check.model_dump()))
        except DRError as exc:
            reports.append(DiskVerify(disk=d.disk, blocks=manifest.blocks, error=str(exc)))
    return VerifyReport(item=item, point_id=point_id, ok=bool(reports) and all(r.ok for r in reports), disks=reports,
                        bytes_read=done[0], seconds=round(time.monotonic() - started, 3))
