"""Full scan of an unchanged disk image by the agent, beside sha256sum, openssl and cat.

    .venv/bin/python bench/bench_scan.py [--size-gib 4] [--image PATH] [--threads 2] [--delete]

The image (random data, no holes) is made once under bench/results/ and reused by
bench_delta.py. The agent gets the image's full block map, so it reads and hashes every
block and sends nothing: the scan's ceiling. The image is read from the page cache (it is
read once first, by `cat`), as DESIGN.md section 6 measured. Prints one result line and
writes bench/results/scan.json. The helpers here are shared by the other replication
benchmarks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

from drbook.agent import agent as agent_mod  # noqa: E402
from drbook.replication import protocol as p  # noqa: E402
from drbook.replication.local_shell import LocalShell  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOAD_AT_START = os.getloadavg()  # the machine is shared: say how busy it was
AGENT = Path(agent_mod.__file__)
GIB = 1024 ** 3
CHUNK = 64 * 1024 * 1024


def make_image(path: Path, size: int, seed: int = 1) -> None:
    """`size` bytes of keystream (incompressible, no zero blocks), unless already there."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = Cipher(algorithms.AES(hashlib.sha256(f"bench-{seed}".encode()).digest()), modes.CTR(bytes(16))).encryptor()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        zero = bytes(CHUNK)
        while left:
            n = min(CHUNK, left)
            f.write(enc.update(zero[:n]))
            left -= n
    os.replace(tmp, path)


def block_map(path: Path, layout: p.Layout, threads: int = 2) -> tuple[bytes, bytes]:
    """The image's block map (and sub-block map when the layout has sub-blocks)."""
    size = path.stat().st_size
    bs = layout.block_size
    hasher = agent_mod.Hasher(bs, layout.sub_block_size, layout.sub_hash_len)

    def part(start: int) -> tuple[bytes, bytes]:
        with open(path, "rb") as f:
            f.seek(start)
            data = memoryview(f.read(min(CHUNK, size - start)))
        full = b"".join(hashlib.sha256(data[i:i + bs]).digest() for i in range(0, len(data), bs))
        subs = b"".join(hasher.sub_hashes(data[i:i + bs]) for i in range(0, len(data), bs)) if layout.sub_on else b""
        return full, subs

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(part, range(0, size, CHUNK)))
    return b"".join(a for a, _ in parts), b"".join(b for _, b in parts)


def agent_scan(path: Path, layout: p.Layout, maps: tuple[bytes, bytes], *, threads: int = 2,
               command: str | None = None, shell=None, expected_size: int | None = None) -> dict:  # noqa: ANN001
    """Run `agent.py scan` over one disk through a RemoteShell; time it and count the stream."""
    shell = shell or LocalShell()
    header = {"disks": [{"name": "d0", "path": str(path), "size": expected_size or path.stat().st_size}],
              "block_size": layout.block_size, "sub_block_size": layout.sub_block_size if layout.sub_on else 0,
              "sub_hash_len": layout.sub_hash_len, "hooks": {"freeze": [], "thaw": []}, "threads": threads}
    request = p.encode_request(header, [maps])
    started = time.perf_counter()
    proc = shell.open_process(command or f"{sys.executable} {AGENT} scan")
    proc.stdin.write(request)
    proc.stdin.close()
    reader = p.FrameReader(proc.stdout)
    blocks = data = 0
    end = trailer = None
    for kind, payload in reader:
        if kind == p.BLOCK:
            blocks += 1
            data += len(p.parse_block(payload, layout).data)
        elif kind == p.DISK_END:
            end = p.parse_json(kind, payload)
        elif kind == p.TRAILER:
            trailer = p.parse_json(kind, payload)
    seconds = time.perf_counter() - started
    code = proc.wait(60)
    if code != 0 or not trailer or not trailer["ok"]:
        raise RuntimeError(f"agent failed ({code}): {trailer} {proc.stderr_text()[-2000:]}")
    return {"seconds": round(seconds, 3), "blocks_sent": blocks, "data_bytes": data, "stream_bytes": reader.bytes,
            "request_bytes": len(request), "agent_seconds": end["seconds"]}


def timed(cmd: str) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 3)


def machine_info() -> dict:
    return {"cpus": os.cpu_count(), "load_avg_at_start": LOAD_AT_START, "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "agent_version": agent_mod.AGENT_VERSION}


def lab_control():
    """The lab (lab.control.Lab), with this process pointed at its Prefect. Call it before
    anything imports prefect: Prefect reads its settings when first imported."""
    from lab.control import Lab
    from lab.spec import load_spec

    spec = load_spec()
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{spec.ports.prefect}/api"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return Lab(spec)


def write_result(name: str, doc: dict) -> Path:
    """bench/results/<name>.json (the latest) and <name>-<time>.json (kept: the box is shared
    and runs vary with its load)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    when = time.gmtime()
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", when), **doc, "machine": machine_info()}
    text = json.dumps(doc, indent=2) + "\n"
    (RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', when)}.json").write_text(text)
    out = RESULTS / f"{name}.json"
    out.write_text(text)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--image", type=Path, default=RESULTS / "bench-4g.img")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--delete", action="store_true", help="delete the image afterwards")
    args = ap.parse_args()
    size = int(args.size_gib * GIB)
    make_image(args.image, size)
    cat = timed(f"cat {args.image} > /dev/null")  # also warms the page cache
    layout = p.Layout(64 * 1024, 4096, 8)
    maps = (block_map(args.image, layout)[0], b"")
    runs = {}
    for threads in sorted({1, args.threads}):
        best = None
        for _ in range(args.runs):
            r = agent_scan(args.image, layout, maps, threads=threads)
            assert r["blocks_sent"] == 0
            best = r if best is None or r["seconds"] < best["seconds"] else best
        runs[threads] = best
    cat = min(cat, timed(f"cat {args.image} > /dev/null"))
    sha = timed(f"sha256sum {args.image}")
    ossl = timed(f"openssl dgst -sha256 {args.image}")
    gb = size / 1e9
    doc = {
        "image_bytes": size,
        "agent": {f"{t}_threads": {**r, "gb_per_s": round(gb / r["seconds"], 3)} for t, r in runs.items()},
        "cat_dev_null": {"seconds": cat, "gb_per_s": round(gb / cat, 3)},
        "sha256sum": {"seconds": sha, "gb_per_s": round(gb / sha, 3)},
        "openssl_sha256": {"seconds": ossl, "gb_per_s": round(gb / ossl, 3)},
        "goal_gb_per_s": 1.5,
    }
    out = write_result("scan", doc)
    best = runs[args.threads]
    print(f"scan {size / GIB:.1f} GiB unchanged: agent {gb / best['seconds']:.2f} GB/s ({args.threads} threads, "
          f"{best['seconds']:.2f} s; 1 thread {gb / runs[1]['seconds']:.2f} GB/s), sha256sum {gb / sha:.2f} GB/s, "
          f"openssl {gb / ossl:.2f} GB/s, cat {gb / cat:.2f} GB/s -> {out}")
    if args.delete:
        args.image.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
