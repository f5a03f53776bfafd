"""An HTTPS WS-Management endpoint with real NTLM authentication, for pywinrm.

NTLM is checked for real: pyspnego's acceptor verifies the NTLMv2 response against the
configured password and the channel binding (the hash of this server's certificate), per
TCP connection as Windows does (a connection stays authenticated; a new one is challenged
again). Message encryption is not offered, as on an HTTPS listener.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import sys
import tempfile
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import spnego
import spnego.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from spnego.channel_bindings import GssChannelBindings

from lab.winrm import wsman
from lab.winrm.host import WindowsHost

# pyspnego's NTLM acceptor reads its user database from the NTLM_USER_FILE environment
# variable (process-wide); responders in one process take turns under this lock.
_NTLM_ENV_LOCK = threading.Lock()
MAX_ENVELOPE_BYTES = 150 * 1024  # the older Windows default (MaxEnvelopeSizekb=150); 2012+ allow 500
RECEIVE_CHUNK = 64 * 1024  # stdout bytes per Receive answer; longer output spans several Receives


def _certificate_hash(cert_pem: bytes) -> bytes:
    """RFC 5929 tls-server-end-point: the certificate hashed with its signature hash (SHA-256 for MD5/SHA-1)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


@dataclass
class _Command:
    command_line: str
    stdin: bytearray = field(default_factory=bytearray)
    stdin_done: bool = False
    answer: object | None = None  # host.Answer once run
    sent_out: int = 0
    sent_err: int = 0


@dataclass
class _Shell:
    user: str
    commands: dict[str, _Command] = field(default_factory=dict)


class _NtlmGate:
    def __init__(self, user: str, password: str, cert_pem: bytes) -> None:
        self.user = user
        fd, name = tempfile.mkstemp(prefix="drbook-winrm-ntlm-")
        with os.fdopen(fd, "w") as f:
            f.write(f":{user}:{password}\n")  # DOMAIN:USER:PASSWORD, no domain
        self.user_file = name
        self.bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + _certificate_hash(cert_pem))

    def _with_store(self, fn):  # noqa: ANN001, ANN202
        with _NTLM_ENV_LOCK:
            before = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = self.user_file
            try:
                return fn()
            finally:
                if before is None:
                    os.environ.pop("NTLM_USER_FILE", None)
                else:
                    os.environ["NTLM_USER_FILE"] = before

    def new_context(self):  # noqa: ANN201
        return self._with_store(
            lambda: spnego.server(
                protocol="ntlm", channel_bindings=self.bindings, options=spnego.NegotiateOptions.use_ntlm
            )
        )

    def step(self, context, token: bytes) -> bytes | None:  # noqa: ANN001
        return self._with_store(lambda: context.step(token))

    def close(self) -> None:
        Path(self.user_file).unlink(missing_ok=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY each answer waits on
        # the client's delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ntlm_context = None
        self.authenticated_user: str | None = None

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # the request line is all it would say; commands are recorded by the host

    def _send(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _challenge(self, token: bytes | None = None, scheme: str = "Negotiate") -> None:
        value = scheme if token is None else f"{scheme} {base64.b64encode(token).decode()}"
        self._send(401, headers=[("WWW-Authenticate", value)])

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.rstrip("/").lower() != "/wsman":
            self._send(404)
            return
        if self.authenticated_user is None and not self._authenticate():
            return
        self._dispatch(body)

    def _authenticate(self) -> bool:
        """One leg of NTLM. True when this request carries the final (valid) AUTHENTICATE."""
        header = self.headers.get("Authorization", "")
        scheme, _, b64 = header.partition(" ")
        if scheme.lower() not in ("negotiate", "ntlm") or not b64:
            self.ntlm_context = None
            self._challenge()
            return False
        try:
            token = base64.b64decode(b64)
        except ValueError:
            self._challenge()
            return False
        gate = self.server.gate
        try:
            if token[8:12] == b"\x01\x00\x00\x00":  # NEGOTIATE_MESSAGE: start over on this connection
                self.ntlm_context = gate.new_context()
                self._challenge(gate.step(self.ntlm_context, token), scheme)
                return False
            if self.ntlm_context is None:
                self._challenge()
                return False
            gate.step(self.ntlm_context, token)
        except spnego.exceptions.SpnegoError:
            # Wrong password, unknown user or bad channel binding: Windows just answers 401.
            self.ntlm_context = None
            self._challenge()
            return False
        principal = self.ntlm_context.client_principal or ""
        self.ntlm_context = None
        with self.server.lock:
            self.server.handshakes += 1
        self.authenticated_user = principal.split("\\")[-1]
        return True

    def _dispatch(self, body: bytes) -> None:
        relates_to = ""
        try:
            if len(body) > self.server.max_envelope:
                raise wsman.WsmanFault(
                    "w:EncodingLimit",
                    f"The WS-Management service cannot process the request because the envelope size "
                    f"{len(body)} exceeds the maximum {self.server.max_envelope}.",
                    2150858817,
                )
            request = wsman.parse_request(body)
            relates_to = request.message_id
            answer_action, answer_body = self.server.handle(request, self.authenticated_user or "")
            self._send(200, wsman.envelope(answer_action, relates_to, answer_body))
        except wsman.WsmanFault as fault:
            self._send(fault.http_status, wsman.fault_envelope(fault, relates_to, self.server.machine_name))
        except Exception as exc:  # a responder bug: answer it as Windows answers an internal error, and say so
            traceback.print_exc()
            fault = wsman.WsmanFault("w:InternalError", f"responder error: {type(exc).__name__}: {exc}", 2150858751, code="s:Receiver")
            self._send(500, wsman.fault_envelope(fault, relates_to, self.server.machine_name))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        # A client that rejects our certificate or drops the connection is not our error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def __init__(self, address, host: WindowsHost, gate: _NtlmGate, max_envelope: int) -> None:  # noqa: ANN001
        super().__init__(address, _Handler)
        self.host = host
        self.gate = gate
        self.max_envelope = max_envelope
        self.machine_name = "WIN-DRBOOK-LAB"
        self.shells: dict[str, _Shell] = {}
        self.handshakes = 0  # completed NTLM authentications (one per TCP connection)
        self.lock = threading.Lock()
        self.endpoint = ""

    def handle(self, request: wsman.Request, user: str) -> tuple[str, str]:
        if request.resource_uri != wsman.CMD_RESOURCE:
            raise wsman.WsmanFault(
                "w:DestinationUnreachable", f"The WS-Management service does not support the resource URI {request.resource_uri!r}.", 2150858770
            )
        action = request.action
        if action == wsman.ACTION_CREATE:
            shell_id = str(uuid.uuid4()).upper()
            with self.lock:
                self.shells[shell_id] = _Shell(user)
            return f"{wsman.TRANSFER}/CreateResponse", wsman.shell_created(self.endpoint, shell_id)
        shell = self._shell(request)
        if action == wsman.ACTION_DELETE:
            with self.lock:
                self.shells.pop(request.shell_id or "", None)
            return f"{wsman.TRANSFER}/DeleteResponse", ""
        if action == wsman.ACTION_COMMAND:
            line = request.body.find("rsp:CommandLine", wsman.NS)
            if line is None or line.find("rsp:Command", wsman.NS) is None:
                raise wsman.WsmanFault("w:InvalidParameter", "The Command element is missing.", 2150858882)
            command = (line.findtext("rsp:Command", "", wsman.NS) or "").strip()
            arguments = [(a.text or "") for a in line.findall("rsp:Arguments", wsman.NS)]
            command_id = str(uuid.uuid4()).upper()
            with self.lock:
                shell.commands[command_id] = _Command(" ".join([command, *arguments]))
            return f"{wsman.SHELL}/CommandResponse", wsman.command_response(command_id)
        if action == wsman.ACTION_SEND:
            for stream in request.body.findall("rsp:Send/rsp:Stream", wsman.NS):
                cmd = self._command(shell, stream.get("CommandId"))
                if cmd.stdin_done:
                    raise wsman.WsmanFault("w:InvalidParameter", "The stdin stream was already closed.", 2150858882)
                cmd.stdin += base64.b64decode(stream.text or "")
                if (stream.get("End") or "").lower() == "true":
                    cmd.stdin_done = True
            return f"{wsman.SHELL}/SendResponse", "<rsp:SendResponse/>"
        if action == wsman.ACTION_RECEIVE:
            desired = request.body.find("rsp:Receive/rsp:DesiredStream", wsman.NS)
            command_id = desired.get("CommandId") if desired is not None else None
            cmd = self._command(shell, command_id)
            if cmd.answer is None:
                cmd.answer = self.host.run(shell.user, request.shell_id or "", command_id or "", cmd.command_line, bytes(cmd.stdin))
            return f"{wsman.SHELL}/ReceiveResponse", self._receive(command_id or "", cmd)
        if action == wsman.ACTION_SIGNAL:
            signal = request.body.find("rsp:Signal", wsman.NS)
            self._command(shell, signal.get("CommandId") if signal is not None else None)
            if signal is not None and (signal.findtext("rsp:Code", "", wsman.NS) or "").strip() == wsman.SIGNAL_TERMINATE:
                with self.lock:
                    shell.commands.pop(signal.get("CommandId"), None)
            return f"{wsman.SHELL}/SignalResponse", "<rsp:SignalResponse/>"
        raise wsman.WsmanFault("a:ActionNotSupported", f"The action {action!r} is not supported by the service.", 2150858776)

    def _shell(self, request: wsman.Request) -> _Shell:
        with self.lock:
            shell = self.shells.get(request.shell_id or "")
        if shell is None:
            raise wsman.WsmanFault(
                "w:InvalidSelectors",
                f"The request for the Windows Remote Shell with ShellId {request.shell_id} failed because the shell "
                "was not found on the server. Possible causes are: the specified ShellId is incorrect or the shell "
                "no longer exists on the server.",
                2150858843,
            )
        return shell

    def _command(self, shell: _Shell, command_id: str | None) -> _Command:
        cmd = shell.commands.get(command_id or "")
        if cmd is None:
            raise wsman.WsmanFault("w:InvalidParameter", f"The command {command_id} is not running in this shell.", 2150858882)
        return cmd

    def _receive(self, command_id: str, cmd: _Command) -> str:
        answer = cmd.answer
        out = answer.stdout[cmd.sent_out : cmd.sent_out + RECEIVE_CHUNK]
        err = answer.stderr[cmd.sent_err : cmd.sent_err + RECEIVE_CHUNK]
        cmd.sent_out += len(out)
        cmd.sent_err += len(err)
        done = cmd.sent_out >= len(answer.stdout) and cmd.sent_err >= len(answer.stderr)
        enc = lambda b: [base64.b64encode(b).decode()] if b else []  # noqa: E731
        return wsman.receive_response(command_id, enc(out), enc(err), done, answer.exit_code)


class WinRmResponder:
    """`WinRmResponder(...).start()` serves https://host:port/wsman until `.stop()`."""

    def __init__(
        self,
        *,
        cert: Path,
        key: Path,
        user: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
        record: Path | None = None,
        windows: WindowsHost | None = None,
        max_envelope: int = MAX_ENVELOPE_BYTES,
    ) -> None:
        self.windows = windows or WindowsHost()
        if record is not None:
            self.windows.record_file = Path(record)
        self._gate = _NtlmGate(user, password, Path(cert).read_bytes())
        self._server = _Server((host, port), self.windows, self._gate, max_envelope)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        # The handshake then runs in the connection's own thread, not in the accept loop.
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.host, self.port = self._server.server_address[:2]
        self._server.endpoint = self.url
        self._thread: threading.Thread | None = None

    @property
    def handshakes(self) -> int:
        return self._server.handshakes

    @property
    def open_shells(self) -> int:
        return len(self._server.shells)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/wsman"

    def start(self) -> "WinRmResponder":
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="winrm-responder", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._gate.close()

    def __enter__(self) -> "WinRmResponder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
