"""The managed-disk blob front: the emulator's own blob URLs, ``/mdlab/<grant id>/abcd?sv=..&sr=b&sig=..``.

Served on the emulator's HTTPS port, as Azure serves managed-disk SAS URLs from its own hosts
rather than from a storage account. Two kinds of URL (models/grants.py):

* a snapshot's Read grant: HEAD, GET (whole or ranged) and Get Page Ranges pass through to the
  Azurite blob snapshot the grant took; Get Page Ranges with ``x-ms-previous-snapshot-url`` (the
  managed-disk diff, which Azurite answers wrongly: Azure/Azurite#812) is answered here from
  the two snapshots' bytes (pagediff.py);
* a guest disk (``POST /_lab/guest-disks``): HEAD, GET, Get Page Ranges, and Put Page (update or
  clear) below the VHD footer, accepted only while the VM is running. The power check and the
  write hold the VM's power lock (models/vms.py), so no write lands after the VM left running.

Bytes are streamed through, not redirected: azure-storage-blob drops a SAS signature from the
URL on a redirect to another host (StorageSensitiveHeaderCleanupPolicy), so a 307 to Azurite
would be refused there. Errors are Storage's: ``<Error><Code/><Message/></Error>`` with
``x-ms-error-code``; a URL that is unknown, revoked, expired or whose VM or disk is gone is 403
``AuthenticationFailed``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit
from xml.sax.saxutils import escape

import urllib3

from .exceptions import ArmError
from .models import ArmBackend
from .models.grants import BLOB, PREFIX, FrontGrant
from .models.vms import power_lock
from .pagediff import AZURITE_VERSION, RETRY, PageDiffer, Snap, UpstreamError, page_list_xml

log = logging.getLogger("lab.arm.front")


class _NoSignature(logging.Filter):
    """urllib3 logs the URL of a request it retries: here an Azurite SAS URL. Its signature must
    not reach the emulator's log (the secrets scan searches it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "sig=" in message:
            record.msg, record.args = re.sub(r"sig=[^&\s'\"]*", "sig=REDACTED", message), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_NoSignature())

PASSED_QUERY = ("comp", "timeout")  # the rest of a front URL's query is its own signature
DROPPED_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                   "content-length", "date", "server", "x-ms-previous-snapshot-url"}
MAX_BODY = 4 * 1024 * 1024  # the largest Put Page
STREAM = 1 << 20
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _range(headers) -> tuple[int, int | None] | None:  # noqa: ANN001 - http.client.HTTPMessage
    """The request's x-ms-range (else Range) as (start, inclusive end or None)."""
    text = headers.get("x-ms-range") or headers.get("Range")
    if not text:
        return None
    m = _RANGE.match(text.strip())
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise ArmError(f"The range '{text}' is not valid.", code="InvalidRange", status=416)
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def _parse(url_path: str) -> tuple[str, dict[str, str]]:
    """The grant id of a front URL's path and its query (names lowercased)."""
    split = urlsplit(url_path)
    gid, _, rest = split.path[len(PREFIX):].partition("/")
    query = {k.lower(): v for k, v in parse_qsl(split.query, keep_blank_values=True)}
    return (gid if rest == BLOB else ""), query


def _forbidden() -> ArmError:
    return ArmError("This request is not authorized to perform this operation using this permission.",
                    code="AuthorizationPermissionMismatch", status=403)


def _not_found(why: str) -> ArmError:
    return ArmError(f"The previous snapshot is not found: {why}", code="PreviousSnapshotNotFound", status=409)


class _Exchange:
    """One request on the handler's connection; once its answer has begun, an error can only cut it short."""

    def __init__(self, h: BaseHTTPRequestHandler) -> None:
        self.h = h
        self.started = False
        self.request_id = str(uuid.uuid4())

    def answer(self, status: int, headers: Iterable[tuple[str, str]], body: bytes | Iterable[bytes] = b"") -> None:
        self.h.send_response(status)
        for k, v in headers:
            self.h.send_header(k, v)
        self.h.end_headers()
        self.started = True
        if self.h.command != "HEAD":
            for chunk in [body] if isinstance(body, bytes) else body:
                self.h.wfile.write(chunk)

    def storage_headers(self, payload: bytes) -> list[tuple[str, str]]:
        return [("Content-Type", "application/xml"), ("Content-Length", str(len(payload))),
                ("x-ms-request-id", self.request_id),
                ("x-ms-version", self.h.headers.get("x-ms-version") or AZURITE_VERSION)]

    def error(self, exc: ArmError) -> None:
        if self.started:
            self.h.close_connection = True
            return
        payload = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{exc.code}</Code><Message>'
                   f"{escape(exc.message)}\nRequestId:{self.request_id}\nTime:{_now()}</Message></Error>").encode()
        self.answer(exc.status, [*self.storage_headers(payload), ("x-ms-error-code", exc.code)], payload)


class Front:
    def __init__(self, backend: ArmBackend, ca_bundle: str | None) -> None:
        self.backend = backend
        self.http = urllib3.PoolManager(maxsize=16, ca_certs=ca_bundle)
        self.differ = PageDiffer(self.http)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        x = _Exchange(h)
        try:
            length = int(h.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                h.close_connection = True
                raise ArmError("The request body is too large.", code="RequestBodyTooLarge", status=413)
            self._serve(x, h.rfile.read(length) if length else b"")
        except ArmError as exc:
            x.error(exc)
        except OSError as exc:  # the client went away mid-answer
            log.debug("%s %s: %s", h.command, h.path.split("?")[0], exc)
            h.close_connection = True
        except Exception:  # an emulator bug still answers like Storage, and says so in the log
            log.exception("%s %s failed", h.command, h.path.split("?")[0])
            x.error(ArmError("The lab's blob front hit an internal error; see the emulator's log.",
                             code="InternalError", status=500))

    def _resolve(self, gid: str, token: str) -> FrontGrant:
        with self.backend.store.txn():
            self.backend.settle()  # a revoke or a power change may be due
            return self.backend.front_grant(gid, token)

    def _serve(self, x: _Exchange, body: bytes) -> None:
        method = x.h.command
        gid, query = _parse(x.h.path)
        grant = self._resolve(gid, query.get("sig", ""))
        if "prevsnapshot" in query:
            raise ArmError("A managed disk's snapshots are compared by URL (x-ms-previous-snapshot-url), not by "
                           "the prevsnapshot parameter.", code="InvalidQueryParameterValue", status=400)
        comp, previous = query.get("comp"), x.h.headers.get("x-ms-previous-snapshot-url")
        if method in ("GET", "HEAD") and comp is None or method == "GET" and comp == "pagelist" and not previous:
            self._proxy(x, grant, query, body)
        elif method == "GET" and comp == "pagelist":
            self._diff(x, grant, previous)
        elif method == "PUT" and comp == "page" and grant.kind == "guest":
            self._guest_write(x, gid, query, body)
        else:
            raise _forbidden()

    # -- pass-through ----------------------------------------------------------------------------
    def _proxy(self, x: _Exchange, grant: FrontGrant, query: dict[str, str], body: bytes) -> None:
        passed = {k: query[k] for k in PASSED_QUERY if k in query}
        url = grant.url + ("&" + urlencode(passed) if passed else "")
        headers = {k: v for k, v in x.h.headers.items() if k.lower() not in DROPPED_HEADERS}
        resp = self.http.request(x.h.command, url, body=body or None, headers=headers, preload_content=False,
                                 decode_content=False, retries=RETRY)
        try:
            out = [(k, v) for k, v in resp.headers.items() if k.lower() not in DROPPED_HEADERS]
            length = resp.headers.get("Content-Length")
            if length is None and x.h.command != "HEAD":
                data = resp.read()  # a small answer sent without a length: keep-alive needs one
                x.answer(resp.status, [*out, ("Content-Length", str(len(data)))], data)
            else:
                x.answer(resp.status, [*out, ("Content-Length", length or "0")], resp.stream(STREAM))
        finally:
            resp.release_conn()

    # -- guest writes --------------------------------------------------------------------------------
    def _guest_write(self, x: _Exchange, gid: str, query: dict[str, str], body: bytes) -> None:
        with power_lock(self._resolve(gid, query.get("sig", "")).vm or ""):
            grant = self._resolve(gid, query.get("sig", ""))  # again, now that the VM's power cannot change
            if grant.refusal:
                raise ArmError(f"Disk '{grant.name}' cannot be written: {grant.refusal}. A guest writes its "
                               "disks only while its VM is running.", code="OperationNotAllowed", status=409)
            span = _range(x.h.headers)
            if span is None or span[1] is None:
                raise ArmError("Put Page needs x-ms-range (or Range) bytes=start-end.",
                               code="MissingRequiredHeader", status=400)
            if span[1] >= grant.size:
                raise ArmError(f"The page range {span[0]}-{span[1]} reaches past disk '{grant.name}' "
                               f"({grant.size} bytes; the VHD footer follows).", code="InvalidPageRange",
                               status=416)
            self._proxy(x, grant, query, body)

    # -- the diff --------------------------------------------------------------------------------------
    def _snap(self, grant: FrontGrant) -> tuple[Snap, urllib3.BaseHTTPResponse]:
        resp = self.http.request("HEAD", grant.url, headers={"x-ms-version": AZURITE_VERSION}, retries=RETRY)
        if resp.status != 200:
            raise UpstreamError(resp.status, "Get Blob Properties")
        return Snap(grant.blob, grant.url, int(resp.headers["Content-Length"])), resp

    def _diff(self, x: _Exchange, cur: FrontGrant, prev_url: str) -> None:
        span = _range(x.h.headers)
        prev_split = urlsplit(prev_url)
        if prev_split.scheme.lower() != "https" or not prev_split.path.startswith(PREFIX) \
                or prev_split.netloc.lower() != (x.h.headers.get("Host") or "").lower():
            raise _not_found("x-ms-previous-snapshot-url is not a snapshot URL of this emulator.")
        gid, query = _parse(prev_url)
        try:
            prev = self._resolve(gid, query.get("sig", ""))
        except ArmError as exc:
            raise _not_found(f"its URL is not valid ({exc.message})") from None
        if cur.kind != "read" or prev.kind != "read" or cur.family is None or prev.family != cur.family:
            raise _not_found(f"'{prev.name}' and '{cur.name}' are not incremental snapshots of one disk.")
        if (prev.sequence or 0) > (cur.sequence or 0):
            raise ArmError(f"The previous snapshot '{prev.name}' is newer than '{cur.name}'.",
                           code="PreviousSnapshotCannotBeNewer", status=400)
        cur_snap, props = self._snap(cur)
        prev_snap, _ = self._snap(prev)
        lo, hi = span if span else (0, None)
        payload = page_list_xml(self.differ.diff(cur_snap, prev_snap, lo, hi))
        x.answer(200, [*x.storage_headers(payload), ("x-ms-blob-content-length", str(cur_snap.length)),
                       ("ETag", props.headers.get("ETag", "")),
                       ("Last-Modified", props.headers.get("Last-Modified", ""))], payload)
