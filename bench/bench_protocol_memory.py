"""What a source machine can make the process server allocate with one disk frame, and what
a disk's block maps cost the process server's memory.

    .venv/bin/python bench/bench_protocol_memory.py [--claim-gib 1024] [--known-gib 10] [--legit-gib 64]
                                                    [--changed 0.01] [--map-dir DIR] [--tree DIR]
                                                    [--scenarios claim,legit,resync,delta]

Scenarios, each in a fresh process (so its peaks are its own):
  claim   a Receiver whose item's disk is known to be --known-gib gets the 54-byte disk
          frame of a disk that claims --claim-gib (the hostile or broken source)
  legit   the maps of a real --legit-gib disk as the disk frame of a resync makes them (the
          block manifest and the sub-block map of the default layout: 64 KiB blocks, 4 KiB
          sub-blocks, 8-byte sub-hashes)
  resync  a resync's maps end to end: the disk frame, every entry of both maps written (a
          disk full of data), packed for the cache, read back and packed again for the
          vault (apply's record step)
  delta   a delta cycle's maps end to end: the old maps (a disk full of data) read from
          their packed form (the vault), sent to the agent as the request (to a sink), the
          new maps derived from them, --changed of the blocks changed through the Receiver's
          entry writes, the new maps packed for the cache and read back
For each: the outcome, the peak of Python allocations (tracemalloc), the peak growth of the
process's anonymous memory (RssAnon, sampled every 2 ms: the memory the maps take from the
machine), the growth of its peak RSS (getrusage: with file-backed maps this counts the page
cache pages of their files the process touched, which the kernel reclaims), and the
seconds. Maps live in --map-dir (default: the system temp directory). `--tree` imports
drbook from another checkout (e.g. a copy of the code before a change) to compare: its
claim and legit scenarios run on any checkout, resync and delta need drbook.replication.mapfile.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
MIB = 1024 ** 2
SCENARIOS = ("claim", "legit", "resync", "delta")


def _import_tree(tree: str) -> None:
    sys.path.insert(0, tree)


def _anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class AnonPeak:
    """The largest RssAnon seen while running (a sampling thread)."""

    def __init__(self) -> None:
        self.start = self.peak = _anon_kib()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, _anon_kib())

    def __enter__(self) -> "AnonPeak":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _anon_kib())

    @property
    def growth_mib(self) -> float:
        return round((self.peak - self.start) / 1024, 1)


def _disk_cycle(known: int, **kwargs):  # noqa: ANN202 - a drbook.replication.cycle.DiskCycle of whichever tree
    from drbook.models import ProtectedDisk
    from drbook.replication import cycle as cy
    from drbook.replication.protocol import Layout

    layout = Layout(64 * 1024, 4096, 8)
    disk = ProtectedDisk(name="disk0", path="/dev/sda", size_bytes=known)
    kwargs.setdefault("old", None)
    kwargs.setdefault("old_subs", None)
    kwargs.setdefault("force_resync", kwargs["old"] is None)
    return cy, layout, cy.DiskCycle(disk=disk, layout=layout, **kwargs)


def claim(known: int, claimed: int, map_dir: str | None) -> Callable[[], str]:
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


def legit(size: int, map_dir: str | None) -> Callable[[], str]:
    extra = {"map_dir": map_dir} if _has_mapfile() else {}
    cy, layout, d = _disk_cycle(size, **extra)
    d.direct = True

    def run() -> str:
        d.start({"name": "disk0", "size": size, "resync": True})
        blocks = layout.blocks(size)
        return (f"{_held(d)} bytes of maps held for {blocks} blocks = {_held(d) / blocks:.0f} bytes per block"
                + (f"; {_where(d.manifest)}, {_where(d.subs)}" if _has_mapfile() else ""))

    return run


def _fill(m) -> None:  # noqa: ANN001 - a Manifest or SubMap
    """Every entry written, chunk by chunk (what a disk full of data leaves in its maps)."""
    buf = m.hashes
    for c, n in enumerate(buf.chunk_lengths()):
        buf.write(c * buf.chunk, os.urandom(n))  # hashes do not compress


def _round_trip(m, map_dir: str | None):  # noqa: ANN001, ANN202 - packed, then read back like the cache or the vault
    with m.packed(map_dir) as (packed, length):
        back = type(m).read(packed, directory=map_dir)
    return back, length


def resync(size: int, map_dir: str | None) -> Callable[[], str]:
    cy, layout, d = _disk_cycle(size, map_dir=map_dir)
    d.direct = True

    def run() -> str:
        d.start({"name": "disk0", "size": size, "resync": True})
        _fill(d.manifest)
        _fill(d.subs)
        packed = 0
        for m in (d.manifest, d.subs):
            back, n = _round_trip(m, map_dir)  # stage_run's cache put, then _record's cache get
            with back.packed(map_dir) as (_, n2):  # _record's vault put
                packed += n + n2
            assert back.hashes == m.hashes
            back.close()
        d.release_maps()
        return f"maps of {layout.blocks(size)} blocks written whole, packed and read back: {packed} packed bytes moved"

    return run


def delta(size: int, map_dir: str | None, changed: float) -> Callable[[], str]:
    from drbook.replication import protocol as p
    from drbook.replication.manifest import Manifest, SubMap

    layout = _disk_cycle(size)[1]
    old, old_subs = Manifest.zeros(size, layout.block_size, map_dir), SubMap.zeros(size, layout, map_dir)
    _fill(old)
    _fill(old_subs)
    stack = contextlib.ExitStack()  # the vault's copies (made before the measure, open until the process ends)
    streams = [stack.enter_context(m.packed(map_dir)) for m in (old, old_subs)]
    old.close()
    old_subs.close()

    class Sink:
        bytes = 0

        def write(self, data: bytes) -> None:
            Sink.bytes += len(data)

    def run() -> str:
        assert stack  # the copies stay open while this runs
        vault_old = Manifest.read(streams[0][0], directory=map_dir)  # PointStore.manifest
        vault_subs = SubMap.read(streams[1][0], directory=map_dir)
        cy, _, d = _disk_cycle(size, old=vault_old, old_subs=vault_subs, map_dir=map_dir)
        p.write_request(Sink(), {"disks": [d.request_disk()]}, [d.request_maps()])  # the agent's stdin
        d.start({"name": "disk0", "size": size, "resync": False})
        blocks = layout.blocks(size)
        step = max(1, int(1 / changed)) if changed > 0 else blocks + 1
        n = 0
        for i in range(0, blocks, step):  # the Receiver's writes for a block frame
            d.manifest[i] = i.to_bytes(32, "big")
            d.subs[i] = i.to_bytes(layout.sub_width, "big")
            n += 1
        moved = 0
        for m in (d.manifest, d.subs):
            back, length = _round_trip(m, map_dir)  # stage_run's cache put, then _record's cache get
            moved += length
            back.close()
        stored = d.manifest.hashes.stored + d.subs.hashes.stored
        d.release_maps()
        return (f"{n} of {blocks} blocks changed; request {Sink.bytes} bytes sent; new maps stored "
                f"{stored} bytes of their own; {moved} packed bytes moved")

    return run


def _has_mapfile() -> bool:
    """Whether the imported drbook has file-backed maps (an older --tree has not)."""
    return importlib.util.find_spec("drbook.replication.mapfile") is not None


def _held(d) -> int:  # noqa: ANN001
    return len(d.manifest.hashes) + (len(d.subs.hashes) if d.subs is not None else 0)


def _where(m) -> str:  # noqa: ANN001
    buf = m.hashes
    return f"{type(m).__name__} in {'a file' if buf.file_backed else 'memory'}, {buf.stored} bytes stored"


def measure(args: argparse.Namespace) -> dict:
    """One scenario: everything is imported and built first, only the frame (or the maps) is measured."""
    _import_tree(args.tree)
    size = args.legit_gib * GIB
    run = {
        "claim": lambda: claim(args.known_gib * GIB, args.claim_gib * GIB, args.map_dir),
        "legit": lambda: legit(size, args.map_dir),
        "resync": lambda: resync(size, args.map_dir),
        "delta": lambda: delta(size, args.map_dir, args.changed),
    }[args.scenario]()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.perf_counter()
    with AnonPeak() as anon:
        outcome = run()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    return {"scenario": args.scenario, "outcome": outcome, "peak_traced_mib": round(peak / MIB, 3),
            "peak_anon_growth_mib": anon.growth_mib, "peak_rss_growth_mib": round(rss / 1024, 1),
            "seconds": round(seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim-gib", type=int, default=1024, help="the size the hostile disk frame claims")
    parser.add_argument("--known-gib", type=int, default=10, help="the disk's size the process server knows")
    parser.add_argument("--legit-gib", type=int, default=64, help="a real disk's size, for the cost of its maps")
    parser.add_argument("--changed", type=float, default=0.01, help="the share of blocks a delta cycle changes")
    parser.add_argument("--map-dir", default=None, help="where large maps' files go (default: the system temp directory)")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout to import drbook from")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="which scenarios to run, comma-separated")
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(measure(args)))
        return
    print(f"drbook from {args.tree}; known disk {args.known_gib} GiB, claimed {args.claim_gib} GiB, "
          f"legit disk {args.legit_gib} GiB, delta changes {args.changed:.2%} of its blocks")
    for scenario in args.scenarios.split(","):
        argv = [sys.executable, __file__, "--scenario", scenario, "--tree", args.tree, "--claim-gib",
                str(args.claim_gib), "--known-gib", str(args.known_gib), "--legit-gib", str(args.legit_gib),
                "--changed", str(args.changed)] + (["--map-dir", args.map_dir] if args.map_dir else [])
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{scenario:6} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
            continue
        r = json.loads(done.stdout)
        print(f"{scenario:6} peak traced {r['peak_traced_mib']:>9} MiB  peak anon +{r['peak_anon_growth_mib']:>8} MiB  "
              f"peak RSS +{r['peak_rss_growth_mib']:>8} MiB  {r['seconds']:>8} s  {r['outcome'][:220]}")


if __name__ == "__main__":
    main()
