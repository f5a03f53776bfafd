"""One delta cycle of a 4 GiB disk after 1% random 4 KiB writes, against rsync.

    .venv/bin/python bench/bench_delta.py [--size-gib 4] [--skip-azurite] [--skip-rsync] [--keep]

1. The old image (bench_scan.py's, random data) and a new one: a copy with 1% of its 4 KiB
   blocks rewritten at random (distinct, aligned; seeded).
2. Agent side: `agent.py scan` of the new image against the old image's map, through a
   local pipe and through OpenSSH and paramiko (drbook's SshShell) to a throwaway sshd on
   127.0.0.1, at three granularities: 64 KiB blocks with 4 KiB sub-blocks (drbook's
   default), 64 KiB whole blocks, 1 MiB whole blocks.
3. The peer: `rsync -I --inplace --no-whole-file` over the same sshd to a copy of the old
   image (bytes from rsync --stats).
4. The full cycle to Azurite: the engine replicates the old image (initial copy, timed
   too), the new image's changes land on it, one delta cycle runs (agent over SSH, zstd +
   AES-GCM segments to the cache container, page writes, snapshot, point in the vault).

Prints one result line; writes bench/results/delta.json.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import AGENT, GIB, RESULTS, agent_scan, block_map, make_image, write_result  # noqa: E402

from drbook.replication import protocol as p  # noqa: E402

BLOCK4K = 4096
LAYOUTS = {
    "64k+4k-sub": p.Layout(64 * 1024, 4096, 8),
    "64k": p.Layout(64 * 1024, 0, 8),
    "1m": p.Layout(1024 * 1024, 0, 8),
}


def make_new(old: Path, new: Path, fraction: float, seed: int = 7) -> dict:
    """Copy old -> new and rewrite `fraction` of its 4 KiB blocks (distinct, random)."""
    shutil.copyfile(old, new)
    size = old.stat().st_size
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(size // BLOCK4K), int(size // BLOCK4K * fraction)))
    with open(new, "r+b") as f:
        for i in picks:
            f.seek(i * BLOCK4K)
            f.write(os.urandom(BLOCK4K))
    return {
        "writes": len(picks),
        "bytes_changed": len(picks) * BLOCK4K,
        "blocks_64k_touched": len({i * BLOCK4K // (64 * 1024) for i in picks}),
        "blocks_64k_total": size // (64 * 1024),
        "blocks_1m_touched": len({i * BLOCK4K // (1024 * 1024) for i in picks}),
        "blocks_1m_total": size // (1024 * 1024),
        "picks": picks,
    }


def apply_picks(src: Path, dst: Path, picks: list[int]) -> None:
    with open(src, "rb") as s, open(dst, "r+b") as d:
        for i in picks:
            s.seek(i * BLOCK4K)
            d.seek(i * BLOCK4K)
            d.write(s.read(BLOCK4K))


class Sshd:
    """A throwaway sshd on 127.0.0.1 with its own host key, an authorized client key and a
    known_hosts written for it (strict host key checking, no trust on first use)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
        (base / "authorized_keys").write_text((base / "client.pub").read_text())
        host_pub = (base / "host.pub").read_text().split()
        self.known_hosts = base / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.key = base / "client"
        cfg = base / "sshd_config"
        cfg.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {base / 'host'}
PidFile {base / 'sshd.pid'}
AuthorizedKeysFile {base / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stderr=open(base / "sshd.log", "wb"))
        deadline = time.monotonic() + 10
        while subprocess.run(self.ssh_args() + ["true"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"sshd did not come up: {(base / 'sshd.log').read_text()}")
            time.sleep(0.1)

    def ssh_args(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "root@127.0.0.1"]

    def ssh_command(self) -> str:
        return " ".join(self.ssh_args())

    def machine(self, name: str, disks: list | None = None, **kw):  # noqa: ANN201
        from drbook.config import MachineConfig

        return MachineConfig(name=name, address="127.0.0.1", port=self.port, user="root", key_file=self.key,
                             known_hosts=self.known_hosts, agent_dir=str(AGENT.parent), python=sys.executable,
                             disks=disks or [], **kw)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def rsync(sshd: Sshd, new: Path, dest: Path) -> dict:
    e = " ".join(sshd.ssh_args()[:-1])
    started = time.perf_counter()
    out = subprocess.run(["rsync", "-I", "--inplace", "--no-whole-file", "--stats", "-e", e, str(new),
                          f"root@127.0.0.1:{dest}"], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started

    def stat(label: str) -> int:
        m = re.search(rf"{label}: ([\d,]+)", out.stdout)
        return int(m.group(1).replace(",", "")) if m else -1

    return {"seconds": round(seconds, 3), "bytes_sent": stat("Total bytes sent"),
            "bytes_received": stat("Total bytes received"), "literal_data": stat("Literal data"),
            "matched_data": stat("Matched data")}


def azurite_ceiling(service, workers: int) -> dict:  # noqa: ANN001
    """What the sink itself takes: page writes of 4 MiB and of 4 KiB with `workers` threads,
    and the client CPU the SDK spends per request."""
    from concurrent.futures import ThreadPoolExecutor

    container = service.get_container_client(f"ceiling-{uuid.uuid4().hex[:8]}")
    container.create_container()
    try:
        blob = container.get_blob_client("p")
        blob.create_page_blob(1024 ** 3)
        out = {}
        for size, count in ((4 * 1024 * 1024, 48), (4096, 600)):
            data = os.urandom(size)
            wall, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda i: blob.upload_page(data, offset=i * max(size, 1024 * 1024), length=size), range(count)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            out[f"page_writes_{size // 1024}k"] = {"per_s": round(count / wall), "mb_per_s": round(count * size / 1e6 / wall, 1),
                                                  "client_cpu_ms_per_request": round(cpu / count * 1000, 2)}
        return out
    finally:
        container.delete_container()


def full_cycle(sshd: Sshd, old: Path, picks_src: Path, picks: list[int], work: Path, workers: int) -> dict:
    """Initial copy of `old` to a fresh Azurite, then the delta cycle after the writes."""
    from tests.blob_fixtures import ACCOUNT, AZURITE_BLOB, KEY

    from drbook.adapters.blobstore import blob_service_from
    from drbook.adapters.ssh import ssh_shell_for
    from drbook.config import AzureConfig, ContainerNames, DiskConfig, SiteConfig
    from drbook.models import Policy
    from drbook.replication.cycle import CycleSettings
    from drbook.replication.engine import ReplicationEngine
    from drbook.vault import Vault
    from lab.ca import ensure_certs
    from lab.procs import Managed, wait_for_port

    shutil.copyfile(old, work)
    base = Path(tempfile.mkdtemp(prefix="azurite-", dir=RESULTS))
    certs = ensure_certs(base / "certs")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    az = Managed("azurite-bench", base)
    az.start([str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(base / "data"),
              "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--cert", str(certs.server_cert),
              "--key", str(certs.server_key)])
    try:
        wait_for_port(az, "127.0.0.1", port, 30)
        endpoint = f"https://127.0.0.1:{port}/{ACCOUNT}"
        service = blob_service_from(endpoint, ACCOUNT, KEY, certs.ca_cert)
        uid = uuid.uuid4().hex[:8]
        names = ContainerNames(cache=f"cache-{uid}", replicas=f"replicas-{uid}", vault=f"vault-{uid}")
        machine = sshd.machine("bench01", [DiskConfig(name="disk0", path=str(work))],
                               crash_hooks=["true"], crash_thaw_hooks=["true"])
        site = SiteConfig(site="bench", azure=AzureConfig(
            subscription_id="x", resource_group="rg", location="westeurope", storage_account=ACCOUNT,
            blob_endpoint=endpoint, encryption_key="env:UNUSED", containers=names), machines=[machine])
        vault = Vault(service.get_container_client(names.vault))
        vault.ensure()
        marks: list[tuple[str, float]] = []
        engine = ReplicationEngine(site, vault, service, ssh_shell_for, os.urandom(32),
                                   settings=CycleSettings(page_workers=workers),
                                   fault=lambda phase: marks.append((phase, time.perf_counter())))
        engine.ensure_containers()
        started = time.perf_counter()
        engine.enable_replication(machine, Policy())
        initial = time.perf_counter() - started
        initial_stats = engine.last_stats["bench01"]
        apply_picks(picks_src, work, picks)
        marks.clear()
        started = time.perf_counter()
        point = engine.run_cycle("bench01")
        delta = time.perf_counter() - started
        phases, prev = {}, started
        for phase, t in marks:
            phases[phase] = round(t - prev, 3)
            prev = t
        phases["cleanup"] = round(time.perf_counter() - started - sum(phases.values()), 3)
        stats = engine.last_stats["bench01"]
        cached = sum(b.size for b in service.get_container_client(names.cache).list_blobs())
        ceiling = azurite_ceiling(service, workers)
        print(f"  azurite: {ceiling}", flush=True)
        return {
            "azurite_ceiling": ceiling,
            "initial_copy": {"seconds": round(initial, 3), "stream_bytes": initial_stats["stream_bytes"],
                             "mb_per_s": round(work.stat().st_size / 1e6 / initial, 1)},
            "delta_cycle": {"seconds": round(delta, 3), "phases_s": phases, "stream_bytes": stats["stream_bytes"],
                            "data_bytes": stats["disks"]["disk0"]["bytes_sent"],
                            "blocks_changed": stats["disks"]["disk0"]["changed"], "point": point.id,
                            "consistency": point.consistency},
            "cache_left_bytes": cached,
        }
    finally:
        az.stop()
        shutil.rmtree(base, ignore_errors=True)
        work.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=4)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--image", type=Path, default=RESULTS / "bench-4g.img")
    ap.add_argument("--skip-azurite", action="store_true")
    ap.add_argument("--skip-rsync", action="store_true")
    ap.add_argument("--page-workers", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the new image and the rsync copy")
    args = ap.parse_args()
    size = int(args.size_gib * GIB)
    old = args.image.resolve()
    make_image(old, size)
    new, dest, work = old.with_name("bench-new.img"), old.with_name("bench-rsync-dest.img"), old.with_name("bench-work.img")
    change = make_new(old, new, args.fraction)
    picks = change.pop("picks")
    doc: dict = {"image_bytes": size, "change": change, "agent": {}}
    sshd = Sshd(Path(tempfile.mkdtemp(prefix="sshd-", dir=RESULTS)))
    try:
        subprocess.run(f"cat {old} {new} > /dev/null", shell=True, check=True)
        for name, layout in LAYOUTS.items():
            maps = block_map(old, layout)
            for via in ("pipe", "openssh", "paramiko") if name != "1m" else ("pipe",):
                if via == "pipe":
                    r = agent_scan(new, layout, maps)
                elif via == "openssh":
                    r = agent_scan(new, layout, maps, command=f"{sshd.ssh_command()} {sys.executable} {AGENT} scan")
                else:
                    from drbook.adapters.ssh import ssh_shell_for

                    shell = ssh_shell_for(sshd.machine("bench"))
                    try:
                        r = agent_scan(new, layout, maps, shell=shell,
                                       command=f"{sys.executable} {AGENT} scan")
                    finally:
                        shell.close()
                doc["agent"][f"{name}/{via}"] = r
                print(f"  agent {name:11s} via {via:8s}: {r['seconds']:6.2f} s, stream {r['stream_bytes'] / 1e6:8.1f} MB "
                      f"({r['blocks_sent']} blocks)", flush=True)
        if not args.skip_rsync:
            shutil.copyfile(old, dest)
            subprocess.run(f"cat {dest} > /dev/null", shell=True, check=True)
            doc["rsync"] = rsync(sshd, new, dest)
            print(f"  rsync: {doc['rsync']['seconds']:.2f} s, sent {doc['rsync']['bytes_sent'] / 1e6:.1f} MB", flush=True)
        if not args.skip_azurite:
            doc["full_cycle"] = full_cycle(sshd, old, new, picks, work, args.page_workers)
            fc = doc["full_cycle"]
            print(f"  initial copy {fc['initial_copy']['seconds']:.1f} s; delta cycle {fc['delta_cycle']['seconds']:.2f} s "
                  f"{fc['delta_cycle']['phases_s']}", flush=True)
    finally:
        sshd.stop()
        shutil.rmtree(sshd.base, ignore_errors=True)
        if not args.keep:
            for f in (new, dest):
                f.unlink(missing_ok=True)
    out = write_result("delta", doc)
    ours = doc["agent"]["64k+4k-sub/openssh"]
    line = (f"delta {size / GIB:g} GiB, {args.fraction:.0%} random 4 KiB writes ({change['bytes_changed'] / 1e6:.1f} MB changed): "
            f"agent over ssh {ours['seconds']:.2f} s sending {ours['stream_bytes'] / 1e6:.1f} MB")
    if "rsync" in doc:
        r = doc["rsync"]
        line += f"; rsync {r['seconds']:.2f} s sending {r['bytes_sent'] / 1e6:.1f} MB ({r['seconds'] / ours['seconds']:.1f}x)"
    if "full_cycle" in doc:
        fc = doc["full_cycle"]["delta_cycle"]
        line += f"; full cycle to Azurite {fc['seconds']:.2f} s"
        if "rsync" in doc:
            line += f" ({doc['rsync']['seconds'] / fc['seconds']:.1f}x)"
    print(line + f" -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
