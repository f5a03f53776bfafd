"""`python -m lab.winrm --host 127.0.0.1 --port 15986 --cert C --key K --record FILE --user U --password-file F`"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from lab.winrm.host import WindowsHost
from lab.winrm.responder import WinRmResponder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.winrm", description="the lab's WS-Management responder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=15986)
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    parser.add_argument("--record", type=Path, help="append every command it is asked to run here (JSONL)")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True, help="a file holding the password")
    parser.add_argument("--python-version", default="3.11.9", help="what a preflight finds ('' = no Python)")
    parser.add_argument("--free-kb", type=int, default=50 * 1024 * 1024)
    args = parser.parse_args(argv)

    password = args.password_file.read_text().strip()
    windows = WindowsHost(python_version=args.python_version or None, free_kb=args.free_kb)
    responder = WinRmResponder(
        cert=args.cert, key=args.key, user=args.user, password=password,
        host=args.host, port=args.port, record=args.record, windows=windows,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"WS-Management responder on {responder.url} (user {args.user})", flush=True)
    try:
        responder.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        responder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
