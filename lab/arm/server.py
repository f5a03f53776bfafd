"""The emulator's HTTPS server: ARM's transport rules, then routing to the handlers.

Transport as ARM does it: TLS (the lab CA's server certificate), a bearer token on every
request (401 without one), ``api-version`` on every request (400 without a known one),
``{"error": {"code", "message"}}`` bodies. ``/_lab/*`` are the lab's own control endpoints;
``/mdlab/*`` is the managed-disk blob front (front.py), which follows Storage's rules instead.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from . import apiversions, urls
from .exceptions import ArmError
from .front import Front
from .models.grants import PREFIX as FRONT_PREFIX
from .models import ArmBackend, ArmConfig
from .responses import Request, Response, encode, error_response

log = logging.getLogger("lab.arm")
_BEARER = re.compile(r"^Bearer\s+\S+", re.IGNORECASE)


def dispatch(backend: ArmBackend, method: str, raw_path: str, headers: dict[str, str], body: bytes,
             base_url: str) -> Response:
    split = urlsplit(raw_path)
    path = unquote(split.path)
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    try:
        parsed = json.loads(body) if body.strip() else None
    except ValueError:
        return error_response(ArmError("The request content was invalid and could not be deserialized.",
                                       code="InvalidRequestContent", status=400))
    if path.startswith("/_lab/"):
        handler = urls.LAB_ROUTES.get((method, path.rstrip("/")))
        if handler is None:
            return error_response(ArmError(f"No lab endpoint {method} {path}.", code="NotFound", status=404))
        try:
            return handler(backend, Request(method, path, {}, query, headers, parsed, base_url))
        except ArmError as exc:
            return error_response(exc)

    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    if not _BEARER.match(auth or ""):
        missing = not auth
        exc = ArmError("Authentication failed. The 'Authorization' header is missing." if missing else
                       "Authentication failed. The 'Authorization' header is not a bearer token.",
                       code="AuthenticationFailed" if missing else "InvalidAuthenticationToken", status=401,
                       headers={"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/'
                                                    'common", error="invalid_token", error_description='
                                                    '"The authentication failed because of missing '
                                                    '\'Authorization\' header."'})
        return error_response(exc)
    api_version = next((v for k, v in query.items() if k.lower() == "api-version"), None)
    if not api_version:
        return error_response(ArmError("The api-version query parameter (?api-version=) is required for all "
                                        "requests.", code="MissingApiVersionParameter", status=400))
    route, params, other_method = urls.match(method, path)
    if route is None:
        if other_method:
            return error_response(ArmError(f"The requested resource does not support http method '{method}'.",
                                           code="HttpMethodNotSupported", status=405))
        return error_response(ArmError(f"The resource path '{path}' is not served by the lab's ARM emulator "
                                       "(see lab/arm/README.md for the coverage table).",
                                       code="InvalidResourceType", status=404))
    try:
        apiversions.check(route.family, api_version)
        request = Request(method, path, params, query, headers, parsed, base_url, api_version, route.op_type)
        with backend.store.txn():
            latency, fault = backend.settings.take_fault(route.op_type)
        if latency:
            time.sleep(latency)
        if fault:
            return error_response(fault)
        return route.handler(backend, request)
    except ArmError as exc:
        return error_response(exc)
    except Exception:  # an emulator bug must still answer like ARM, and say so in the log
        log.exception("%s %s failed", method, path)
        return error_response(ArmError("The lab's ARM emulator hit an internal error; see its log.",
                                       code="InternalServerError", status=500))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "drbook-lab-arm/1"
    timeout = 300  # idle keep-alive connections

    def _handle(self) -> None:
        if self.path.startswith(FRONT_PREFIX):  # the managed-disk blob front: SAS, not ARM, rules
            self.server.front.handle(self)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        headers = {k: v for k, v in self.headers.items()}
        resp = dispatch(self.server.backend, self.command, self.path, headers, body, f"https://{host}")
        self.send_response(resp.status)
        request_id = str(uuid.uuid4())
        out = {"x-ms-request-id": request_id,
               "x-ms-correlation-request-id": self.headers.get("x-ms-correlation-request-id") or request_id,
               "Cache-Control": "no-cache", **resp.headers}
        if resp.payload:
            out["Content-Type"] = "application/json; charset=utf-8"
        out["Content-Length"] = str(len(resp.payload))
        for k, v in out.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and resp.payload:
            self.wfile.write(resp.payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s %s", self.address_string(), format % args)


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, ssl_context: ssl.SSLContext, backend: ArmBackend, front: Front) -> None:
        self.ssl_context = ssl_context
        self.backend = backend
        self.front = front
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        """Drop kept-alive connections, so no request reaches a stopped server's backend."""
        with self.connections_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def finish_request(self, request, client_address) -> None:
        # The TLS handshake runs here, in the connection's own thread, not in the accept loop.
        request.settimeout(30)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle/delayed-ACK stalls
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.connections_lock:
            self.connections.add(tls)
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self.connections_lock:
                self.connections.discard(tls)
            try:
                tls.close()
            except OSError:
                pass


class ArmServer:
    """The emulator on a thread (like moto's ThreadedMotoServer): start(), base_url, stop()."""

    def __init__(self, *, cert: str | Path, key: str | Path, subscription_id: str, host: str = "127.0.0.1",
                 port: int = 0, location: str = "westeurope", state_dir: str | Path | None = None,
                 blob_endpoint: str | None = None, blob_account: str | None = None, blob_key: str | None = None,
                 ca_bundle: str | Path | None = None, default_duration: float = 0.05) -> None:
        if state_dir is not None:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.config = ArmConfig(subscription_id=subscription_id, location=location,
                                blob_endpoint=blob_endpoint, blob_account=blob_account, blob_key=blob_key,
                                ca_bundle=str(ca_bundle) if ca_bundle else None,
                                state_dir=Path(state_dir) if state_dir is not None else None,
                                default_duration=default_duration)
        self.host, self.port = host, port
        self.cert, self.key = str(cert), str(key)
        self.backend: ArmBackend | None = None
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> "ArmServer":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        self.backend = ArmBackend(self.config)
        front = Front(self.backend, self.config.ca_bundle)
        self._server = _TLSServer((self.host, self.port), ctx, self.backend, front)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="arm-server",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self.backend:
            self.backend.store.close()

    def __enter__(self) -> "ArmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["ArmServer", "dispatch", "encode"]
