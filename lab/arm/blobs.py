"""Managed-disk bytes, kept as page blobs in a hidden container of the lab's Azurite.

Each disk and snapshot owns one blob (``disks/<uniqueId>.vhd``, ``snapshots/<uniqueId>.vhd``)
holding the VHD as Azure exports it: the disk's bytes followed by a fixed-VHD footer.
Grant access makes a blob snapshot and signs a read SAS for it; revoke deletes that snapshot,
so a revoked URL stops working as it does in Azure. (A snapshot's Read grant hands out a URL of
the emulator's blob front instead, front.py, which reads through this SAS.)
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlparse

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from . import vhd
from .exceptions import ArmError, InvalidParameter

CONTAINER = "arm-disks"
PAGE_WRITE_MAX = 4 * 1024 * 1024


def _scrub(url: str) -> str:
    """A URL fit for an error message: no SAS signature."""
    p = urlparse(url)
    snap = parse_qs(p.query).get("snapshot")
    return f"{p.scheme}://{p.netloc}{p.path}" + (f"?snapshot={snap[0]}" if snap else "")


@dataclass(frozen=True)
class Source:
    container: str
    blob: str
    snapshot: str | None
    length: int
    disk_size: int

    def url(self, endpoint: str) -> str:
        u = f"{endpoint}/{quote(self.container)}/{quote(self.blob)}"
        return u + (f"?snapshot={quote(self.snapshot)}" if self.snapshot else "")


class DiskBlobs:
    def __init__(self, endpoint: str | None, account: str | None, key: str | None, ca_bundle: str | None) -> None:
        self.endpoint = (endpoint or "").rstrip("/")
        self.account = account or ""
        self.key = key or ""
        self.ca_bundle = ca_bundle
        self._client: BlobServiceClient | None = None
        self._lock = threading.Lock()
        self._container_ready = False

    @property
    def configured(self) -> bool:
        return bool(self.endpoint and self.account and self.key)

    def _service(self) -> BlobServiceClient:
        if not self.configured:
            raise ArmError("The lab's ARM emulator was started without a blob endpoint; disk bytes "
                           "need --blob-endpoint, --blob-account and --blob-key.", code="InternalServerError",
                           status=500)
        with self._lock:
            if self._client is None:
                kwargs = {"connection_verify": self.ca_bundle} if self.ca_bundle else {}
                self._client = BlobServiceClient(
                    self.endpoint, credential={"account_name": self.account, "account_key": self.key}, **kwargs)
            if not self._container_ready:
                try:
                    self._client.create_container(CONTAINER)
                except ResourceExistsError:
                    pass
                self._container_ready = True
            return self._client

    def _blob(self, name: str, snapshot: str | None = None, container: str = CONTAINER):
        return self._service().get_blob_client(container, name, snapshot=snapshot)

    # -- import ------------------------------------------------------------------------------
    def inspect_source(self, uri: str) -> Source:
        """Locate an import source in the lab account and check that it is a fixed VHD."""
        p = urlparse(uri or "")
        ours = urlparse(self.endpoint + "/")
        prefix = ours.path.rstrip("/") + "/"
        if p.scheme.lower() != "https" or p.netloc.lower() != ours.netloc.lower() or not p.path.startswith(prefix):
            raise InvalidParameter(f"The sourceUri '{_scrub(uri)}' is not a blob of the lab's storage account "
                                   f"({self.endpoint}).", target="sourceUri")
        container, _, blob = p.path[len(prefix):].partition("/")
        if not container or not blob:
            raise InvalidParameter(f"The sourceUri '{_scrub(uri)}' does not name a blob.", target="sourceUri")
        snapshot = (parse_qs(p.query).get("snapshot") or [None])[0]
        client = self._blob(unquote(blob), snapshot, container=unquote(container))
        try:
            props = client.get_blob_properties()
        except ResourceNotFoundError:
            raise InvalidParameter(f"The source blob '{_scrub(uri)}' does not exist.", code="InvalidParameter",
                                   target="sourceUri") from None
        blob_type = str(getattr(props.blob_type, "value", props.blob_type))
        if blob_type.lower() != "pageblob":
            raise ArmError(f"The blob '{_scrub(uri)}' is a {blob_type}; a disk can only be imported from a "
                           "page blob holding a fixed VHD.", code="InvalidVhd", status=400)
        if props.size < vhd.FOOTER_SIZE:
            raise ArmError(f"The blob '{_scrub(uri)}' is {props.size} bytes, too small to hold a VHD footer.",
                           code="InvalidVhd", status=400)
        footer = client.download_blob(offset=props.size - vhd.FOOTER_SIZE, length=vhd.FOOTER_SIZE).readall()
        try:
            size = vhd.validate(footer, props.size)
        except vhd.InvalidVhd as exc:
            raise ArmError(f"The blob '{_scrub(uri)}' is not a fixed VHD Azure can import: {exc}.",
                           code="InvalidVhd", status=400) from None
        return Source(unquote(container), unquote(blob), snapshot, props.size, size)

    def copy_in(self, name: str, source: Source) -> None:
        self._copy(name, source.url(self.endpoint))

    def copy_blob(self, name: str, source_name: str) -> None:
        self._copy(name, f"{self.endpoint}/{CONTAINER}/{quote(source_name)}")

    def _copy(self, name: str, url: str) -> None:
        dst = self._blob(name)
        self._await_copy(dst, url)
        # Azurite's in-memory copy shares the source's list of page ranges with the new blob, so a
        # later page write to either shows in both (a disk written after its snapshot would change
        # the snapshot). A blob snapshot gets its own list: copy the new blob over itself from one,
        # then drop it, and the new blob's list is its own.
        snapshot = dst.create_snapshot()["snapshot"]
        try:
            self._await_copy(dst, f"{dst.url}?snapshot={quote(snapshot)}")
        finally:
            self._blob(name, snapshot).delete_blob()

    def _await_copy(self, dst, url: str) -> None:
        dst.start_copy_from_url(url)
        deadline = time.monotonic() + 600
        while True:
            copy = dst.get_blob_properties().copy
            if copy.status in (None, "success"):
                return
            if copy.status in ("failed", "aborted") or time.monotonic() > deadline:
                raise ArmError(f"Copying the disk bytes failed ({copy.status}).", code="InternalOperationError",
                               status=500)
            time.sleep(0.05)

    # -- empty disks -------------------------------------------------------------------------
    def create_empty(self, name: str, size: int) -> None:
        client = self._blob(name)
        client.create_page_blob(size + vhd.FOOTER_SIZE)
        client.upload_page(vhd.make_footer(size), offset=size, length=vhd.FOOTER_SIZE)

    def resize(self, name: str, old_size: int, new_size: int) -> None:
        """Grow a disk: move the footer to the new end (the old one becomes zeros)."""
        client = self._blob(name)
        client.resize_blob(new_size + vhd.FOOTER_SIZE)
        client.clear_page(offset=old_size, length=vhd.FOOTER_SIZE)
        client.upload_page(vhd.make_footer(new_size), offset=new_size, length=vhd.FOOTER_SIZE)

    # -- access ------------------------------------------------------------------------------
    def grant(self, name: str, access: str, seconds: int) -> tuple[str, str | None]:
        """A SAS URL for the disk's bytes, and the blob snapshot it reads (None for write access)."""
        client = self._blob(name)
        expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=max(int(seconds), 60))
        if access.lower() == "read":
            snapshot = client.create_snapshot()["snapshot"]
            sas = generate_blob_sas(self.account, CONTAINER, name, snapshot=snapshot, account_key=self.key,
                                    permission=BlobSasPermissions(read=True), expiry=expiry, protocol="https")
            return f"{client.url}?snapshot={quote(snapshot)}&{sas}", snapshot
        sas = generate_blob_sas(self.account, CONTAINER, name, account_key=self.key,
                                permission=BlobSasPermissions(read=True, write=True), expiry=expiry,
                                protocol="https")
        return f"{client.url}?{sas}", None

    def sas_url(self, name: str, seconds: int = 3600) -> str:
        """A read/write SAS URL for a blob's current bytes (the front passes guest I/O through it)."""
        expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
        sas = generate_blob_sas(self.account, CONTAINER, name, account_key=self.key,
                                permission=BlobSasPermissions(read=True, write=True), expiry=expiry, protocol="https")
        return f"{self.endpoint}/{CONTAINER}/{quote(name)}?{sas}"

    def revoke(self, name: str, snapshot: str | None) -> None:
        if snapshot:
            try:
                self._blob(name, snapshot).delete_blob()
            except ResourceNotFoundError:
                pass

    def delete(self, name: str) -> None:
        try:
            self._blob(name).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            pass

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._blob(name).download_blob(offset=offset, length=length).readall()

    def clear(self) -> None:
        if not self.configured:
            return
        container = self._service().get_container_client(CONTAINER)
        for item in container.list_blobs():
            try:
                container.delete_blob(item.name, delete_snapshots="include")
            except ResourceNotFoundError:
                pass
