"""The vault: drbook's DR state as JSON documents in an Azure blob container (DESIGN.md §3).

It lives in Azure so that a site that burns down does not take its DR state along. Every
read-modify-write runs under the blob's ETag (`update`), so two writers never lose each
other's change; exclusive operations hold a blob lease (`lease`); every state change of a
protected item is checked by drbook.state before anything is written, and is followed by
an append-only audit entry. Key layout: see drbook.models.

The same code runs against a real storage account and the lab's Azurite.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import logging
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator, Literal, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobLeaseClient, ContainerClient, ContentSettings
from pydantic import BaseModel, ValidationError

from drbook import state as statemachine
from drbook.adapters.blobstore import blob_service, delete_blobs, download_into, map_blob_errors, upload_stream
from drbook.config import SiteConfig
from drbook.errors import ConflictError, DRError, LeaseHeldError, NotFoundError, VaultError
from drbook.models import AuditEntry, ItemState, ProtectedItem, utcnow

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("drbook.vault")

_JSON = ContentSettings(content_type="application/json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOCK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
LEASE_WORKERS = 16  # locks taken or given back at once by Vault.leases
_LIST_WORKERS = 8


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key or ".." in key.split("/"):
        raise ValueError(f"invalid vault key {key!r}")
    return key


# -- keys: the one place that knows the vault's layout (the table in drbook.models) -------

ITEMS_PREFIX = "items/"
GROUPS_PREFIX = "groups/"
AUDIT_PREFIX = "audit/"
DRILLS_PREFIX = "drills/"


def item_key(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid protected item name {name!r} (letters, digits, '.', '_', '-')")
    return f"{ITEMS_PREFIX}{name}.json"


def points_prefix(item: str) -> str:
    return f"points/{item}/"


def point_key(item: str, point_id: str) -> str:
    return f"{points_prefix(item)}{point_id}.json"


def manifests_prefix(item: str, point_id: str) -> str:
    return f"manifests/{item}/{point_id}/"


def manifest_key(item: str, point_id: str, disk: str) -> str:
    return f"{manifests_prefix(item, point_id)}{disk}.bin"


def submap_key(item: str, point_id: str, disk: str) -> str:
    return f"{manifests_prefix(item, point_id)}{disk}.sub"


def group_key(name: str) -> str:
    return _check_key(f"{GROUPS_PREFIX}{name}.json")


def inventory_key(which: Literal["latest", "previous"]) -> str:
    return f"inventory/{which}.json"


def drill_key(drill_id: str) -> str:
    return _check_key(f"{DRILLS_PREFIX}{drill_id}.json")


def failover_key(run_id: str) -> str:
    return _check_key(f"failovers/{run_id}.json")


def plan_run_key(run_id: str) -> str:
    return _check_key(f"plan-runs/{run_id}.json")


def audit_key(time: dt.datetime, unique: str) -> str:
    """Keys sort by time (in UTC; a naive time is taken as UTC); `unique` keeps two entries
    of the same microsecond apart."""
    t = time if time.tzinfo else time.replace(tzinfo=dt.timezone.utc)
    t = t.astimezone(dt.timezone.utc)
    return f"{AUDIT_PREFIX}{t:%Y-%m-%d}/{t:%H%M%S.%f}Z-{unique}.json"


def lock_key(name: str) -> str:
    return f"locks/{name}"


@dataclass
class Lease:
    """A held exclusive lock (`Vault.lease`). `renewals` counts successful renewals; `lost`
    says why the lease was lost while the body ran (then exclusivity is no longer assured)."""

    name: str
    key: str
    holder: str
    lease_id: str
    since: dt.datetime
    duration_s: int
    renewals: int = 0
    lost: str | None = None

    def check(self) -> None:
        """Call before a step that must not run without the lock: raises if the lease was lost."""
        if self.lost:
            raise VaultError(f"lock {self.name!r} was lost while {self.holder} held it: {self.lost}")


class Vault:
    def __init__(self, container: ContainerClient, *, actor: str = "drbook") -> None:
        self.container = container
        self.actor = actor

    @classmethod
    def from_site(cls, site: SiteConfig, *, actor: str = "drbook") -> "Vault":
        return cls(blob_service(site).get_container_client(site.azure.containers.vault), actor=actor)

    @property
    def name(self) -> str:
        return self.container.container_name

    def _what(self, key: str) -> str:
        return f"vault {self.name}/{key}"

    def _missing(self, err: NotFoundError, key: str) -> NotFoundError:
        if _container_missing(err):
            new = NotFoundError(f"vault container {self.name!r} does not exist: prepare-azure (or discover, push-mobility, "
                                f"enable-replication) creates it; check azure.containers.vault in the site config")
        else:
            new = NotFoundError(f"no vault document {key!r} in container {self.name!r}")
        new.code = getattr(err, "code", None)  # type: ignore[attr-defined]
        return new

    # -- documents -------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the container if it is missing."""
        with map_blob_errors(f"create vault container {self.name}"):
            try:
                self.container.create_container()
            except ResourceExistsError:
                pass

    def get_with_etag(self, key: str, model: type[M]) -> tuple[M, str]:
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"read {self._what(key)}"):
                downloader = blob.download_blob()
                data = downloader.readall()
                etag = downloader.properties.etag
        except NotFoundError as err:
            raise self._missing(err, key) from None
        try:
            return model.model_validate_json(data), etag
        except ValidationError as exc:
            raise VaultError(
                f"vault document {key!r} is not a valid {model.__name__}: {exc.error_count()} error(s), "
                f"first: {'.'.join(map(str, exc.errors()[0]['loc']))}: {exc.errors()[0]['msg']}"
            ) from None

    def get(self, key: str, model: type[M]) -> M:
        return self.get_with_etag(key, model)[0]

    def find(self, key: str, model: type[M]) -> M | None:
        try:
            return self.get(key, model)
        except NotFoundError as err:
            if _container_missing(err):
                raise
            return None

    def put(self, key: str, doc: BaseModel, *, etag: str | None = None, create_only: bool = False) -> str:
        """Write `doc`; return the new ETag. With `etag`, only if the blob still has it; with
        `create_only`, only if there is no blob yet; otherwise ConflictError. Without either it
        replaces whatever is there (for documents with a single writer, e.g. inventory)."""
        if etag is not None and create_only:
            raise ValueError("put: give either etag or create_only, not both")
        kwargs: dict = {"overwrite": not create_only}
        if etag is not None:
            kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"write {self._what(key)}"):
                result = blob.upload_blob(doc.model_dump_json().encode(), content_settings=_JSON, **kwargs)
        except ConflictError:
            if create_only:
                raise ConflictError(f"vault document {key!r} already exists") from None
            raise ConflictError(f"vault document {key!r} changed since it was read (ETag {etag})") from None
        except NotFoundError as err:
            raise self._missing(err, key) from None
        return result["etag"]

    def update(self, key: str, model: type[M], fn: Callable[[M], M | None], *, attempts: int = 5) -> M:
        """Read-modify-write under the ETag. `fn` gets a fresh copy each attempt (it may be
        applied more than once) and returns the new document, or None after changing it in
        place. On a conflict the document is re-read and `fn` re-applied."""
        for attempt in range(1, attempts + 1):
            doc, etag = self.get_with_etag(key, model)
            new = fn(doc)
            new = doc if new is None else new
            try:
                self.put(key, new, etag=etag)
                return new
            except ConflictError:
                if attempt == attempts:
                    break
                # Jitter: writers that collided should not collide again in lockstep.
                time.sleep(random.uniform(0, 0.02 * attempt))
        raise ConflictError(
            f"vault document {key!r} kept changing under {attempts} attempts to update it; "
            "another writer is busy with it, try again"
        )

    def delete(self, key: str, *, missing_ok: bool = True) -> None:
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"delete {self._what(key)}"):
                blob.delete_blob()
        except NotFoundError as err:
            if not missing_ok or _container_missing(err):
                raise self._missing(err, key) from None

    def keys(self, prefix: str) -> list[str]:
        try:
            with map_blob_errors(f"list {self._what(prefix + '*')}"):
                return sorted(self.container.list_blob_names(name_starts_with=prefix))
        except NotFoundError as err:
            raise self._missing(err, prefix) from None

    def list(self, prefix: str, model: type[M]) -> builtins.list[M]:
        """Every document under `prefix`, in key order (one deleted meanwhile is skipped)."""
        keys = self.keys(prefix)
        if len(keys) <= 2:
            docs = [self.find(k, model) for k in keys]
        else:
            with ThreadPoolExecutor(min(_LIST_WORKERS, len(keys))) as pool:
                docs = builtins.list(pool.map(lambda k: self.find(k, model), keys))
        return [d for d in docs if d is not None]

    def put_bytes(self, key: str, data: bytes) -> None:
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"write {self._what(key)}"):
                blob.upload_blob(data, overwrite=True)
        except NotFoundError as err:
            raise self._missing(err, key) from None

    def get_bytes(self, key: str) -> bytes:
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"read {self._what(key)}"):
                return blob.download_blob().readall()
        except NotFoundError as err:
            raise self._missing(err, key) from None

    def put_stream(self, key: str, stream: IO[bytes], length: int) -> None:
        """put_bytes for `length` bytes of a stream (a large block map), a piece at a time."""
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"write {self._what(key)}"):
                upload_stream(blob, stream, length)
        except NotFoundError as err:
            raise self._missing(err, key) from None

    def download(self, key: str, out: IO[bytes]) -> int:
        """get_bytes into a file (a large block map), a piece at a time; the bytes written."""
        blob = self.container.get_blob_client(_check_key(key))
        try:
            with map_blob_errors(f"read {self._what(key)}"):
                return download_into(blob, out)
        except NotFoundError as err:
            raise self._missing(err, key) from None

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under `prefix`; return how many were deleted."""
        if not prefix.strip("/"):
            raise ValueError("delete_prefix: refusing an empty prefix (it would empty the vault)")
        return delete_blobs(self.container, self.keys(prefix), f"vault {self.name} blob")

    # -- exclusive operations ----------------------------------------------------------------

    @contextlib.contextmanager
    def lease(
        self, name: str, *, holder: str, duration_s: int = 15, renew_every: float | None = None
    ) -> Iterator[Lease]:
        """Hold the lock `locks/<name>` while the body runs: a blob lease of `duration_s`
        (15-60 s, Azure's range), renewed every duration/3 (or `renew_every`) from a daemon
        thread, released at the end, also on error. A crashed holder's lease expires by itself
        within `duration_s`. Raises LeaseHeldError naming the holder when someone has it."""
        if not _LOCK_NAME.match(name) or ".." in name:
            raise ValueError(f"invalid lock name {name!r}")
        if not 15 <= duration_s <= 60:
            raise ValueError(f"lease duration must be 15-60 s (Azure's range), got {duration_s}")
        key = lock_key(name)
        blob = self.container.get_blob_client(key)
        try:
            client = self._acquire(name, key, duration_s)
        except NotFoundError as err:
            if _container_missing(err):
                raise self._missing(err, key) from None
            # First use of this lock: create its blob (a racing creator is fine), then acquire.
            with contextlib.suppress(ConflictError, LeaseHeldError), map_blob_errors(f"create lock {self._what(key)}"):
                blob.upload_blob(b"", overwrite=False)
            client = self._acquire(name, key, duration_s)
        lease = Lease(name=name, key=key, holder=holder, lease_id=client.id, since=utcnow(), duration_s=duration_s)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(client, lease, stop, renew_every or duration_s / 3),
            name=f"drbook-lease-{name}", daemon=True,
        )
        try:
            with map_blob_errors(f"record the holder of {self._what(key)}"):
                blob.set_blob_metadata(
                    {"holder": _ascii(holder), "since": lease.since.isoformat()}, lease=client
                )
            renewer.start()
            yield lease
        finally:
            stop.set()
            if renewer.is_alive():
                renewer.join(timeout=duration_s)
            self._release(blob, client, lease)

    @contextlib.contextmanager
    def leases(self, names: Iterable[str], *, holder: str, duration_s: int = 15) -> Iterator[builtins.list[Lease]]:
        """Several locks held together (a plan's hundred machines): taken in parallel, released
        together. When one is held by someone else, the ones taken are given back and its
        LeaseHeldError is raised."""
        from concurrent.futures import ThreadPoolExecutor

        names = sorted(set(names))
        held: builtins.list[tuple[contextlib.AbstractContextManager, Lease]] = []

        def take(name: str) -> tuple[contextlib.AbstractContextManager, Lease]:
            cm = self.lease(name, holder=holder, duration_s=duration_s)
            return cm, cm.__enter__()

        def give_back(cm: contextlib.AbstractContextManager) -> None:
            cm.__exit__(None, None, None)

        with ThreadPoolExecutor(max_workers=max(1, min(LEASE_WORKERS, len(names)))) as pool:
            error: BaseException | None = None
            for future in [pool.submit(take, n) for n in names]:
                try:
                    held.append(future.result())
                except BaseException as exc:  # the first refusal is the one raised
                    error = error or exc
            if error is not None:
                list(pool.map(lambda h: give_back(h[0]), held))
                raise error
        try:
            yield [lease for _, lease in held]
        finally:
            with ThreadPoolExecutor(max_workers=max(1, min(LEASE_WORKERS, len(held)))) as pool:
                list(pool.map(lambda h: give_back(h[0]), held))

    def _acquire(self, name: str, key: str, duration_s: int) -> BlobLeaseClient:
        try:
            with map_blob_errors(f"acquire lock {self._what(key)}"):
                return self.container.get_blob_client(key).acquire_lease(lease_duration=duration_s)
        except LeaseHeldError:
            raise self._held(name, key) from None

    def _held(self, name: str, key: str) -> LeaseHeldError:
        holder = since = None
        with contextlib.suppress(DRError), map_blob_errors(f"read lock {self._what(key)}"):
            meta = self.container.get_blob_client(key).get_blob_properties().metadata or {}
            holder, since = meta.get("holder"), meta.get("since")
        who = f"held by {holder}" + (f" since {since}" if since else "") if holder else "held (holder not recorded)"
        return LeaseHeldError(f"lock {name!r} ({self.name}/{key}) is {who}; another operation is running on it")

    def _renew(self, client: BlobLeaseClient, lease: Lease, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            try:
                with map_blob_errors(f"renew lock {self._what(lease.key)}"):
                    client.renew()
                lease.renewals += 1
            except DRError as exc:
                if exc.retryable:
                    # Renewing at duration/3 leaves room for a missed tick or two.
                    log.warning("renewing lock %s failed, will retry: %s", lease.name, exc)
                    continue
                lease.lost = str(exc)
                log.error("lock %s lost: %s", lease.name, exc)
                return

    def _release(self, blob, client: BlobLeaseClient, lease: Lease) -> None:
        if lease.lost:
            return
        try:
            with map_blob_errors(f"release lock {self._what(lease.key)}"):
                blob.set_blob_metadata({}, lease=client)
                client.release()
        except DRError as exc:
            # It expires by itself within duration_s; the body's own outcome matters more.
            log.warning("releasing lock %s failed (it expires within %ss): %s", lease.name, lease.duration_s, exc)

    # -- audit -----------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        """Append an entry: a new create-only blob, so history is never rewritten."""
        self.put(audit_key(entry.time, uuid.uuid4().hex), entry, create_only=True)

    def audit_log(self, item: str | None = None) -> builtins.list[AuditEntry]:
        entries = self.list(AUDIT_PREFIX, AuditEntry)
        if item is not None:
            entries = [e for e in entries if e.item == item]
        return sorted(entries, key=lambda e: e.time)

    # -- protected items ---------------------------------------------------------------------

    def item(self, name: str) -> ProtectedItem:
        found = self.find_item(name)
        if found is None:
            raise self._no_item(name)
        return found

    def _no_item(self, name: str) -> NotFoundError:
        known = [k[len(ITEMS_PREFIX):-len(".json")] for k in self.keys(ITEMS_PREFIX) if k.endswith(".json")]
        return NotFoundError(f"no protected item {name!r} (known: {', '.join(known) or 'none'})")

    def find_item(self, name: str) -> ProtectedItem | None:
        return self.find(item_key(name), ProtectedItem)

    def items(self) -> builtins.list[ProtectedItem]:
        return self.list(ITEMS_PREFIX, ProtectedItem)

    def upsert_item(self, name: str, create: Callable[[], ProtectedItem],
                    change: Callable[[ProtectedItem], ProtectedItem | None]) -> ProtectedItem:
        """Create the item when it is missing, else apply `change` under the ETag (as
        `update`). A create that loses a race to another writer changes what that writer made."""
        if self.find_item(name) is None:
            item = create()
            try:
                self.put(item_key(name), item, create_only=True)
                return item
            except ConflictError:
                pass
        return self.update(item_key(name), ProtectedItem, change)

    def save_item(self, item: ProtectedItem) -> None:
        """Register a new protected item. Saving again is allowed while it is still unprotected
        (registration is idempotent); once replication began, changes go through `update` /
        `transition`, and this raises ConflictError."""
        key = item_key(item.name)
        try:
            self.put(key, item, create_only=True)
            return
        except ConflictError:
            pass
        current, etag = self.get_with_etag(key, ProtectedItem)
        if current.state != ItemState.UNPROTECTED or item.state != ItemState.UNPROTECTED:
            raise ConflictError(
                f"protected item {item.name!r} already exists (state {current.state.value}); "
                "change it with Vault.update or Vault.transition"
            )
        self.put(key, item.model_copy(update={"created": current.created, "updated": utcnow()}), etag=etag)

    def transition(
        self,
        name: str,
        to: ItemState,
        *,
        flow_run_id: str | None = None,
        reason: str = "",
        mutate: Callable[[ProtectedItem], None] | None = None,
    ) -> ProtectedItem:
        """Move an item to `to` under its ETag. The move is checked by drbook.state on the
        freshly read document before anything is written; `mutate` runs on that copy (it may
        run again after a conflict); then one audit entry records the move."""
        to = ItemState(to)
        moved: dict[str, ItemState] = {}

        def apply(item: ProtectedItem) -> ProtectedItem:
            statemachine.check_transition(item.name, item.state, to)
            moved["from"] = item.state
            if mutate is not None:
                mutate(item)
            item.state = to
            item.updated = utcnow()
            return item

        try:
            updated = self.update(item_key(name), ProtectedItem, apply)
        except NotFoundError as err:
            if _container_missing(err):
                raise
            raise self._no_item(name) from None
        frm = moved["from"]
        entry = AuditEntry(
            actor=self.actor,
            item=name,
            action=statemachine.move(frm, to).action,
            from_state=frm,
            to_state=to,
            flow_run_id=flow_run_id,
            detail={"reason": reason} if reason else {},
        )
        try:
            self.audit(entry)
        except DRError as exc:
            # The move is written; retrying the transition would now be refused, so say so.
            raise VaultError(
                f"{name} moved from {frm.value} to {to.value}, but its audit entry could not be written: {exc}",
                retryable=False,
            ) from None
        return updated


def _container_missing(err: DRError) -> bool:
    return getattr(err, "code", None) == "ContainerNotFound"


def _ascii(text: str) -> str:
    """Blob metadata travels in HTTP headers: ASCII only."""
    return text.encode("ascii", "backslashreplace").decode()[:256]
