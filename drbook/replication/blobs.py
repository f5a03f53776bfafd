"""Blob operations of replication: replica page blobs (the fixed VHDs and their
snapshots) and the cache container (segments and commit markers). Every call is wrapped
in map_blob_errors, so callers see drbook's errors only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from drbook.adapters.blobstore import delete_blobs, download_into, map_blob_errors, upload_stream
from drbook.errors import NotFoundError
from drbook.replication import vhd

PAGE = 512
MAX_PAGE_WRITE = 4 * 1024 * 1024


def replica_blob_name(item: str, disk: str) -> str:
    return f"replicas/{item}/{disk}.vhd"


def ensure_container(service: BlobServiceClient, name: str) -> None:
    with map_blob_errors(f"create container {name}"):
        try:
            service.get_container_client(name).create_container()
        except ResourceExistsError:
            pass


@dataclass(frozen=True)
class EnsureResult:
    blob: str
    action: str  # "exists", "created", "resized", "footer-rewritten"
    blob_size: int


class Replicas:
    """Replica page blobs in the replicas container."""

    def __init__(self, service: BlobServiceClient, container: str, *, workers: int = 8) -> None:
        self.service = service
        self.container_name = container
        self.container: ContainerClient = service.get_container_client(container)
        self.workers = workers

    def _blob(self, name: str, snapshot: str | None = None):
        return self.container.get_blob_client(name, snapshot=snapshot)

    def size(self, name: str, snapshot: str | None = None) -> int:
        with map_blob_errors(f"read properties of {self.container_name}/{name}"):
            return self._blob(name, snapshot).get_blob_properties().size

    def ensure(self, name: str, disk_size: int) -> EnsureResult:
        """A page blob of the disk's rounded size + 512 with a valid fixed-VHD footer."""
        want = vhd.blob_size(disk_size)
        data_size = vhd.replica_size(disk_size)
        blob = self._blob(name)
        try:
            have = self.size(name)
        except NotFoundError:
            with map_blob_errors(f"create replica {self.container_name}/{name}"):
                blob.create_page_blob(want)
            self._write_footer(name, data_size)
            return EnsureResult(name, "created", want)
        action = "exists"
        if have != want:
            with map_blob_errors(f"resize replica {self.container_name}/{name} to {want}"):
                blob.resize_blob(want)
                old_footer = have - vhd.FOOTER_SIZE
                if old_footer < want:
                    # The old footer now lies in the data area (or its tail padding): zero it.
                    blob.clear_page(offset=old_footer, length=min(vhd.FOOTER_SIZE, want - old_footer))
            self._write_footer(name, data_size)
            return EnsureResult(name, "resized", want)
        try:
            vhd.parse_footer(self.read(name, None, data_size, vhd.FOOTER_SIZE), blob_size=have)
        except vhd.VhdFormatError:
            self._write_footer(name, data_size)
            action = "footer-rewritten"
        return EnsureResult(name, action, want)

    def _write_footer(self, name: str, data_size: int) -> None:
        with map_blob_errors(f"write the VHD footer of {self.container_name}/{name}"):
            self._blob(name).upload_page(vhd.build_footer(data_size), offset=data_size, length=vhd.FOOTER_SIZE)

    def write(self, name: str, writes: Iterable[tuple[int, bytes]], clears: Iterable[tuple[int, int]]) -> int:
        """Page writes (offset, data) and clears (offset, length), 512-aligned, each write
        <= 4 MiB; run concurrently (they never overlap). Returns the bytes written."""
        blob = self._blob(name)

        def put(op: tuple) -> int:
            kind, offset, payload = op
            with map_blob_errors(f"{kind} pages at {offset} of {self.container_name}/{name}"):
                if kind == "write":
                    blob.upload_page(payload, offset=offset, length=len(payload))
                    return len(payload)
                blob.clear_page(offset=offset, length=payload)
                return 0

        ops = [("write", o, d) for o, d in writes] + [("clear", o, n) for o, n in clears]
        if not ops:
            return 0
        if len(ops) == 1:
            return put(ops[0])
        with ThreadPoolExecutor(min(self.workers, len(ops))) as pool:
            return sum(pool.map(put, ops))

    def snapshot(self, name: str, metadata: dict[str, str] | None = None) -> str:
        with map_blob_errors(f"snapshot {self.container_name}/{name}"):
            return self._blob(name).create_snapshot(metadata=metadata)["snapshot"]

    def snapshot_exists(self, name: str, snapshot: str) -> bool:
        try:
            self.size(name, snapshot)
            return True
        except NotFoundError:
            return False

    def delete_snapshot(self, name: str, snapshot: str) -> bool:
        try:
            with map_blob_errors(f"delete snapshot {snapshot} of {self.container_name}/{name}"):
                self._blob(name, snapshot).delete_blob()
            return True
        except NotFoundError:
            return False

    def snapshots(self, name: str) -> list[str]:
        with map_blob_errors(f"list snapshots of {self.container_name}/{name}"):
            return [b.snapshot for b in self.container.list_blobs(name_starts_with=name, include=["snapshots"])
                    if b.name == name and b.snapshot]

    def read(self, name: str, snapshot: str | None, offset: int, length: int) -> bytes:
        with map_blob_errors(f"read {length} bytes at {offset} of {self.container_name}/{name}"):
            return self._blob(name, snapshot).download_blob(offset=offset, length=length).readall()


class Cache:
    """The cache container: cycles' segments, new manifests and commit markers, under
    <item>/<cycle_id>/."""

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self.container_name = container
        self.container: ContainerClient = service.get_container_client(container)

    def put(self, name: str, data: bytes, *, create_only: bool = False) -> None:
        with map_blob_errors(f"write cache blob {self.container_name}/{name}"):
            self.container.get_blob_client(name).upload_blob(data, overwrite=not create_only, max_concurrency=2)

    def get(self, name: str) -> bytes:
        with map_blob_errors(f"read cache blob {self.container_name}/{name}"):
            return self.container.get_blob_client(name).download_blob(max_concurrency=2).readall()

    def put_stream(self, name: str, stream: IO[bytes], length: int) -> None:
        """put for `length` bytes of a stream (a large block map), a piece at a time."""
        with map_blob_errors(f"write cache blob {self.container_name}/{name}"):
            upload_stream(self.container.get_blob_client(name), stream, length)

    def download(self, name: str, out: IO[bytes]) -> int:
        """get into a file (a large block map), a piece at a time; the bytes written."""
        with map_blob_errors(f"read cache blob {self.container_name}/{name}"):
            return download_into(self.container.get_blob_client(name), out)

    def get_json(self, name: str) -> dict | None:
        try:
            return json.loads(self.get(name))
        except NotFoundError:
            return None

    def names(self, prefix: str) -> list[str]:
        with map_blob_errors(f"list cache blobs {self.container_name}/{prefix}*"):
            return sorted(self.container.list_blob_names(name_starts_with=prefix))

    def cycles(self, item: str) -> dict[str, list[str]]:
        """Cycle id -> its blob names, for the leftovers of an item."""
        found: dict[str, list[str]] = {}
        for name in self.names(f"{item}/"):
            parts = name.split("/")
            if len(parts) >= 3:
                found.setdefault(parts[1], []).append(name)
        return found

    def delete(self, names: Iterable[str]) -> int:
        return delete_blobs(self.container, names, f"cache blob {self.container_name}/")
