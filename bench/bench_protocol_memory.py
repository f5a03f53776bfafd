"""What a source machine can make the process server allocate with one disk frame, and what
a disk's block maps cost per block.

    .venv/bin/python bench/bench_protocol_memory.py [--claim-gib 1024] [--known-gib 10] [--legit-gib 64]
                                                    [--tree DIR]

Scenarios, each in a fresh process (so its peak RSS is its own):
  claim   a Receiver whose item's disk is known to be --known-gib gets the 54-byte disk
          frame of a disk that claims --claim-gib (the hostile or broken source)
  legit   the maps of a real --legit-gib disk (the block manifest and the sub-block map
          of the default layout: 64 KiB blocks, 4 KiB sub-blocks, 8-byte sub-hashes)
For each: the outcome, the peak of Python allocations (tracemalloc), the growth of the
process's peak RSS (getrusage) and the seconds. `--tree` imports drbook from another
checkout (e.g. a copy of the code before a change) to compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
MIB = 1024 ** 2


def _import_tree(tree: str) -> None:
    sys.path.insert(0, tree)


def _disk_cycle(known: int):  # noqa: ANN202 - a drbook.replication.cycle.DiskCycle of whichever tree
    from drbook.models import ProtectedDisk
    from drbook.replication import cycle as cy
    from drbook.replication.protocol import Layout

    layout = Layout(64 * 1024, 4096, 8)
    disk = ProtectedDisk(name="disk0", path="/dev/sda", size_bytes=known)
    return cy, layout, cy.DiskCycle(disk=disk, layout=layout, old=None, old_subs=None, force_resync=True)


def claim(known: int, claimed: int) -> Callable[[], str]:
    from drbook.errors import DRError
    from drbook.replication import protocol as p

    cy, layout, d = _disk_cycle(known)
    d.direct = True
    receiver = cy.Receiver("db01", [d], layout, cy.SegmentWriter(1 << 20, lambda seq, raw: None))
    frame = p.json_frame(p.DISK, {"name": "disk0", "size": claimed, "resync": True})
    kind, _ = p.FRAME.unpack_from(frame)

    def run() -> str:
        try:
            receiver.handle(kind, frame[p.FRAME.size:])
        except DRError as exc:
            return f"{len(frame)}-byte frame refused ({type(exc).__name__}): {exc}"
        return f"{len(frame)}-byte frame accepted: {_held(d)} bytes of maps held"

    return run


def legit(size: int) -> Callable[[], str]:
    cy, layout, d = _disk_cycle(size)
    d.direct = True

    def run() -> str:
        d.start({"name": "disk0", "size": size, "resync": True})
        blocks = layout.blocks(size)
        return f"{_held(d)} bytes of maps held for {blocks} blocks = {_held(d) / blocks:.0f} bytes per block"

    return run


def _held(d) -> int:  # noqa: ANN001
    return len(d.manifest.hashes) + (len(d.subs.hashes) if d.subs is not None else 0)


def measure(args: argparse.Namespace) -> dict:
    """One scenario: everything is imported and built first, only the frame (or the maps) is measured."""
    _import_tree(args.tree)
    run = claim(args.known_gib * GIB, args.claim_gib * GIB) if args.scenario == "claim" else legit(args.legit_gib * GIB)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    outcome = run()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    return {"scenario": args.scenario, "outcome": outcome, "peak_traced_mib": round(peak / MIB, 3),
            "peak_rss_growth_mib": round(rss / 1024, 1), "seconds": round(seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim-gib", type=int, default=1024, help="the size the hostile disk frame claims")
    parser.add_argument("--known-gib", type=int, default=10, help="the disk's size the process server knows")
    parser.add_argument("--legit-gib", type=int, default=64, help="a real disk's size, for the cost of its maps")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout to import drbook from")
    parser.add_argument("--scenario", choices=["claim", "legit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(measure(args)))
        return
    print(f"drbook from {args.tree}; known disk {args.known_gib} GiB, claimed {args.claim_gib} GiB, "
          f"legit disk {args.legit_gib} GiB")
    for scenario in ("claim", "legit"):
        argv = [sys.executable, __file__, "--scenario", scenario, "--tree", args.tree, "--claim-gib",
                str(args.claim_gib), "--known-gib", str(args.known_gib), "--legit-gib", str(args.legit_gib)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{scenario:6} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        r = json.loads(done.stdout)
        print(f"{scenario:6} peak traced {r['peak_traced_mib']:>9} MiB  peak RSS +{r['peak_rss_growth_mib']:>9} MiB  "
              f"{r['seconds']:>7} s  {r['outcome'][:200]}")


if __name__ == "__main__":
    main()
