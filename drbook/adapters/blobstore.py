"""Azure Blob Storage: the client factory and the one table that turns azure-core's
exceptions into drbook's. Everyone who talks to Blob (vault, replication, recovery
points) builds clients here and wraps calls in `map_blob_errors()`.

The same code serves a real storage account and the lab's Azurite: only the endpoint,
the key and the CA bundle differ.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import re
import ssl
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import urlsplit

from azure.core import MatchConditions

from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ExponentialRetry

from drbook.config import AzureConfig, SiteConfig
from drbook.errors import BlobStoreError, ConflictError, DRError, LeaseHeldError, NotFoundError, VaultError
from drbook.secrets import resolve_secret

# Azure's own retry starts at 15 s and triples; a DR run would rather fail fast here and
# let the task's retry policy (which sees `retryable`) decide.
DEFAULT_RETRY = dict(initial_backoff=1, increment_base=2, retry_total=3, random_jitter_range=1)
_RETRY_KEYS = ("initial_backoff", "increment_base", "retry_total", "random_jitter_range",
               "retry_connect", "retry_read", "retry_status")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Someone else holds the lease (or a write hit a leased blob without its id).
LEASE_HELD_CODES = frozenset({
    "LeaseAlreadyPresent",
    "LeaseIdMissing",
    "LeaseIsBreakingAndCannotBeAcquired",
    "LeaseIdMismatchWithLeaseOperation",
    "LeaseIdMismatchWithBlobOperation",
})
# Our lease is gone: expired and broken, or released elsewhere.
LEASE_LOST_CODES = frozenset({
    "LeaseLost",
    "LeaseNotPresentWithLeaseOperation",
    "LeaseNotPresentWithBlobOperation",
    "LeaseIsBrokenAndCannotBeRenewed",
    "LeaseIsBreakingAndCannotBeChanged",
    "LeaseAlreadyBroken",
})


class _StaticToken:
    """A fixed bearer token (the lab's emulators accept any); azure-core's TokenCredential shape."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, 2**31 - 1)


def azure_credential(azure: AzureConfig) -> Any:
    """The token credential the site config names (used when no storage key is set)."""
    if azure.credential.kind == "static-token":
        assert azure.credential.token is not None  # the config model enforces it
        return _StaticToken(resolve_secret(azure.credential.token).get_secret_value())
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def blob_service_from(
    endpoint: str,
    account: str,
    key: str | None = None,
    ca_bundle: Path | str | None = None,
    *,
    credential: Any = None,
    **client_kwargs: Any,
) -> BlobServiceClient:
    """A BlobServiceClient for `endpoint` (https://account.blob.core.windows.net, or the lab's
    https://127.0.0.1:10000/devstoreaccount1), with the account key or a token credential."""
    if urlsplit(endpoint).scheme != "https":
        # Shared keys and tokens must never cross the wire in clear.
        raise BlobStoreError(f"blob endpoint {endpoint} is not https")
    if key is not None:
        credential = AzureNamedKeyCredential(account, key)
    if credential is None:
        raise BlobStoreError(f"no credential for blob endpoint {endpoint}: give a storage key or a token credential")
    if "retry_policy" not in client_kwargs:
        retry = {**DEFAULT_RETRY, **{k: client_kwargs.pop(k) for k in _RETRY_KEYS if k in client_kwargs}}
        client_kwargs["retry_policy"] = ExponentialRetry(**retry)
    if ca_bundle is not None:
        client_kwargs.setdefault("connection_verify", str(ca_bundle))
    client_kwargs.setdefault("transport", _transport(client_kwargs.get("connection_verify", True)))
    return BlobServiceClient(endpoint.rstrip("/"), credential=credential, **client_kwargs)


def _transport(verify: bool | str) -> Any:
    """One HTTP session with a pool as wide as the page writers, which does not re-read proxy
    settings from the environment on every request (profiled: a per-request cost)."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=True, connection_verify=verify)


def blob_service(site: SiteConfig, **client_kwargs: Any) -> BlobServiceClient:
    """The site's storage account: the key from `azure.storage_key`, else the Azure credential."""
    azure = site.azure
    key = resolve_secret(azure.storage_key).get_secret_value() if azure.storage_key else None
    return blob_service_from(
        azure.blob_endpoint,
        azure.storage_account,
        key,
        azure.ca_bundle,
        credential=None if key else azure_credential(azure),
        **client_kwargs,
    )


_REDACTIONS = [
    (re.compile(r"(?i)\b(sig|signature)=[^&\s'\"<>]+"), r"\1=REDACTED"),
    (re.compile(r"(?i)(AccountKey|SharedAccessSignature)=[^;\s'\"]+"), r"\1=REDACTED"),
    (re.compile(r"(?i)(SharedKey(?:Lite)?\s+[^:\s]+:)[^\s'\",]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1REDACTED"),
]


def redact(text: str) -> str:
    """Remove SAS signatures, account keys and tokens from text bound for a message or log."""
    for pattern, repl in _REDACTIONS:
        text = pattern.sub(repl, text)
    return text


def error_code(exc: BaseException) -> str | None:
    """The storage error code (BlobNotFound, ConditionNotMet, LeaseAlreadyPresent ...), if any."""
    code = getattr(exc, "error_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        code = response.headers.get("x-ms-error-code") if response is not None else None
    return getattr(code, "value", code)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return redact(str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__)


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        cur = getattr(cur, "inner_exception", None) or cur.__cause__ or cur.__context__
    return False


def _with_code(err: DRError, code: str | None, status: int | None) -> DRError:
    err.code = code  # type: ignore[attr-defined]
    err.status = status  # type: ignore[attr-defined]
    return err


def translate(exc: AzureError, what: str) -> DRError:
    """The drbook error for an azure-core exception raised while doing `what`."""
    code = error_code(exc)
    status = getattr(exc, "status_code", None)
    detail = _first_line(exc)
    tag = ", ".join(str(x) for x in (code, f"HTTP {status}" if status else None) if x)
    msg = f"{what}: {detail}" + (f" ({tag})" if tag else "")
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return _with_code(NotFoundError(msg), code, status)
    if code in LEASE_HELD_CODES:
        return _with_code(LeaseHeldError(msg), code, status)
    if code in LEASE_LOST_CODES:
        return _with_code(VaultError(f"{what}: the lease is no longer held ({code})"), code, status)
    if isinstance(exc, (ResourceModifiedError, ResourceExistsError)) or status == 412:
        return _with_code(ConflictError(msg), code, status)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return _with_code(BlobStoreError(f"{msg}; check the storage key or the identity's role", retryable=False), code, status)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        if _tls_failure(exc):
            return _with_code(
                BlobStoreError(f"{what}: the blob endpoint's TLS certificate is not trusted (set azure.ca_bundle)", retryable=False),
                code, status,
            )
        return _with_code(BlobStoreError(f"{what}: blob service unreachable: {detail}", retryable=True), code, status)
    if isinstance(exc, HttpResponseError) and (status in RETRYABLE_STATUS or (status or 0) >= 500):
        return _with_code(BlobStoreError(msg, retryable=True), code, status)
    return _with_code(BlobStoreError(msg, retryable=False), code, status)


@contextlib.contextmanager
def map_blob_errors(what: str = "blob storage") -> Iterator[None]:
    """Translate azure-core exceptions raised in the body into drbook errors naming `what`."""
    try:
        yield
    except AzureError as exc:
        raise translate(exc, what) from None


def delete_blobs(container: Any, names: Any, what: str) -> int:
    """Delete the named blobs of a container; ones already gone are fine. Returns how many went."""
    deleted = 0
    for name in names:
        try:
            with map_blob_errors(f"delete {what} {name}"):
                container.get_blob_client(name).delete_blob()
            deleted += 1
        except NotFoundError:
            pass
    return deleted


# A large blob (a disk's block map) goes up and comes down in pieces of this size, a few at a
# time: the memory it takes is bounded, whatever the blob's size.
STREAM_PIECE = 4 * 1024 * 1024
STREAM_WORKERS = 2


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n) or b""
    while len(data) < n and (more := stream.read(n - len(data))):
        data += more
    if len(data) != n:
        raise ValueError(f"the stream ended {n - len(data)} bytes early")
    return data


def upload_stream(blob: Any, stream: IO[bytes], length: int, *, piece: int | None = None,
                  workers: int = STREAM_WORKERS) -> None:
    """Put `length` bytes of `stream` as the block blob `blob` (replacing it): one put when they
    fit a piece, else staged blocks of a piece each (at most `workers` in flight) committed
    together, so a partial upload never shows. Azure errors pass through (wrap the call in
    map_blob_errors)."""
    piece = piece or STREAM_PIECE
    if length <= piece:
        blob.upload_blob(_read_exact(stream, length), length=length, overwrite=True)
        return
    ids: list[BlobBlock] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="blob-upload") as pool:
        pending: collections.deque[Future] = collections.deque()
        for i, offset in enumerate(range(0, length, piece)):
            data = _read_exact(stream, min(piece, length - offset))
            block_id = base64.b64encode(f"drbook-{i:010d}".encode()).decode()  # ids of one length, as Azure asks
            ids.append(BlobBlock(block_id=block_id))
            pending.append(pool.submit(blob.stage_block, block_id, data, length=len(data)))
            while len(pending) >= workers:
                pending.popleft().result()
        for fut in pending:
            fut.result()
    blob.commit_block_list(ids)


def download_into(blob: Any, out: IO[bytes], *, piece: int | None = None) -> int:
    """Write the blob's bytes to `out`, a piece at a time (each read only while the blob keeps
    its ETag, so a blob replaced meanwhile is a ConflictError, not a mix); the bytes written."""
    piece = piece or STREAM_PIECE
    props = blob.get_blob_properties()
    size, etag = props.size, props.etag
    for offset in range(0, size, piece):
        n = min(piece, size - offset)
        data = blob.download_blob(offset=offset, length=n, etag=etag,
                                  match_condition=MatchConditions.IfNotModified).readall()
        if len(data) != n:
            raise BlobStoreError(f"read {n} bytes at {offset} of blob {blob.blob_name}: got {len(data)}", retryable=True)
        out.write(data)
    return size
