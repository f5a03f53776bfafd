"""The lab's alert receiver: a small HTTPS server that appends every POST it gets to a JSON
lines file, so a test can see an RPO alert arrive (drbook.alerts sends them through the
Prefect server's automations).

    python -m lab.webhook --host 127.0.0.1 --port 14443 --cert C --key K --record FILE

Each line: {"time": <ISO UTC>, "path": ..., "headers": {...}, "body": <the JSON posted, or
the text when it is not JSON>}. GET /health answers 200.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_KEPT_HEADERS = ("content-type", "authorization", "user-agent")
_MAX_BODY = 1 << 20


def read_record(path: Path) -> list[dict]:
    """Every request the receiver recorded, oldest first."""
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


class WebhookReceiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, cert: Path, key: Path, record: Path) -> None:
        super().__init__((host, port), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.record = Path(record)
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host}:{port}/alerts"

    def append(self, entry: dict) -> None:
        with self.lock, open(self.record, "a") as f:
            f.write(json.dumps(entry) + "\n")


class _Handler(BaseHTTPRequestHandler):
    server: WebhookReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = min(int(self.headers.get("Content-Length") or 0), _MAX_BODY)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        self.server.append({
            "time": dt.datetime.now(dt.timezone.utc).isoformat(),
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() in _KEPT_HEADERS},
            "body": body,
        })
        self._answer(200, b'{"ok": true}')

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200 if self.path == "/health" else 404, b'{"ok": true}')

    def _answer(self, code: int, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt: str, *args) -> None:  # one line per request in the service's log
        print(f"{self.address_string()} {fmt % args}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.webhook", description="the lab's alert webhook receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=14443)
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    parser.add_argument("--record", type=Path, required=True, help="append every POST here (JSON lines)")
    args = parser.parse_args(argv)
    server = WebhookReceiver(args.host, args.port, args.cert, args.key, args.record)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"alert webhook receiver on {server.url}, recording to {args.record}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
