"""python -m lab.arm: run the ARM emulator in the foreground until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from .server import ArmServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.arm", description="The lab's Azure Resource Manager emulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18443)
    p.add_argument("--cert", required=True, help="server certificate (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--state-dir", required=True, help="where state.json lives")
    p.add_argument("--subscription-id", required=True)
    p.add_argument("--location", default="westeurope")
    p.add_argument("--blob-endpoint", help="Azurite blob endpoint, e.g. https://127.0.0.1:10000/devstoreaccount1")
    p.add_argument("--blob-account", help="Azurite account name")
    p.add_argument("--blob-key", help="Azurite account key")
    p.add_argument("--ca-bundle", help="CA bundle to verify Azurite's certificate")
    p.add_argument("--default-duration", type=float, default=0.05,
                   help="seconds a long-running operation takes unless /_lab/operations says otherwise")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    server = ArmServer(host=args.host, port=args.port, cert=args.cert, key=args.key, state_dir=args.state_dir,
                       subscription_id=args.subscription_id, location=args.location,
                       blob_endpoint=args.blob_endpoint, blob_account=args.blob_account, blob_key=args.blob_key,
                       ca_bundle=args.ca_bundle, default_duration=args.default_duration)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    server.start()
    logging.getLogger("lab.arm").info("ARM emulator listening on %s (state in %s)", server.base_url, args.state_dir)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
