"""One reverse (reprotect) cycle of a 1 GiB disk after 1% random 4 KiB guest writes in Azure,
beside a full copy of the disk and beside rsync of the same change.

    drbook-lab up     # first: the bench needs the lab's Azurite and ARM emulator
    .venv/bin/python bench/bench_reprotect.py [--disk-mib 1024] [--fraction 0.01] [--block-sizes 65536]
                                              [--writers 8] [--seed 20261204] [--keep]

On a site of its own (unique site name, resource group and containers, like bench_plans.py;
everything under a work dir in bench/results/):

  setup        a disk of --disk-mib MiB of seeded random bytes (AES-CTR keystream, as
               bench_scan.make_image: incompressible, no zero region), uploaded as a fixed VHD
               page blob (4 MiB Put Pages + the footer) to a container of the run, imported as a
               managed disk (createOption Import) in the run's resource group; per block size an
               incremental snapshot S0 of it (the failover's baseline, as take_baseline takes it);
               a VNet, a NIC and a VM with the disk as its OS disk, running. The master target of
               each block size is a local file holding the initial bytes: the old on-premises disk.
  guest writes --fraction of the disk's 4 KiB blocks (1%: 2,621 of a GiB), distinct, aligned,
               seeded random offsets and random bytes, written by --writers threads with Put Page
               through the VM's guest-disk URL (/_lab/guest-disks), while the VM runs. The same
               writes on a local copy give the expected bytes (NEW).
  reverse      per --block-sizes (the reverse disk's block size: since the cycle moves the diff's
               ranges, not whole blocks, it changes nothing here; 65536 is drbook's default),
               drbook.reprotect.cycle.run_cycle on a ReprotectRecord whose disk has baseline S0
               (baseline_is_point false): the incremental snapshot, the page diff against S0, the
               changed ranges read through the snapshot's SAS (plain ranged GETs on one pooled
               session) and written by the agent (apply mode, through drbook's LocalShell: no SSH)
               into the target file. Timed from the call to its return; the target must then
               equal NEW (SHA-256).
  full copy    the cycle's snapshot granted again and read whole (the disk's bytes, not the
               footer) through its SAS with BlobClient.download_blob(max_concurrency=4: the
               cycle's READ_WORKERS) into a file, which must equal NEW.
  rsync        `rsync -I --inplace --no-whole-file --stats NEW OLD`, OLD a fresh copy of the
               initial bytes; its Literal data, Total bytes sent and time; OLD must then equal NEW.
               Both files are local: for a local copy rsync defaults to --whole-file (no delta),
               --no-whole-file forces the delta algorithm (a sender and a receiver process over a
               pipe, blocks of ~sqrt(size), 32 KiB for 1 GiB); -I so the size+mtime quick check
               cannot skip the file.

What is measured: for the cycle, what its ReverseCycle records (bytes changed = the diff's
bytes inside the disk, ranges, bytes moved = data sent to the master target, zero bytes) plus,
through a timing wrapper around the RecoverySite, the time in snapshotting, granting, the page
diff and the reads (calls, bytes, thread-seconds), the bytes of the apply stream on the agent's
stdin, and the CPU seconds used by this process (with the agent, its child), the ARM emulator
and Azurite. "Bytes moved" for the goal is the data sent plus the zero ranges' bytes (none here:
the data is random). What is not: the setup (upload, import, VM), the guest writes (reported
apart), and any network: here the emulator's blob front, Azurite and
the agent are all on this host, so bytes are nearly free and per-request costs dominate; against
Azure the reads (Azure to the on-premises process server) cross a WAN, the apply stream a LAN.

Prints a table; writes bench/results/bench_reprotect-<time>.json and bench_reprotect.json (the
latest). Exit 0 when, at the first block size, bytes moved <= 2 x bytes changed and every target
verified; 1 otherwise; 2 when the lab is not up. Whatever happens, the run's resource group
(VM, NIC, VNet, disk, snapshots), its containers and the work dir are removed (--keep: kept).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MIB = 1024 * 1024
PAGE4K = 4096
UPLOAD_PUT = 4 * MIB  # Put Page's largest write
NEEDED_SERVICES = ("azurite", "arm")
GOAL_RATIO = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="A reverse cycle of a disk after random 4 KiB guest writes in Azure, "
                                             "beside a full copy and rsync.")
    ap.add_argument("--disk-mib", type=int, default=1024, help="the disk's size in MiB (default 1 GiB)")
    ap.add_argument("--fraction", type=float, default=0.01, help="share of the disk's 4 KiB blocks the guest rewrites")
    ap.add_argument("--block-sizes", default="65536",
                    help="reverse-cycle block sizes, comma-separated; the goal is judged on the first")
    ap.add_argument("--writers", type=int, default=8, help="threads writing the guest's Put Pages")
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--vm-size", default="Standard_D2s_v3")
    ap.add_argument("--keep", action="store_true", help="keep the work dir, the resource group and the containers")
    args = ap.parse_args(argv)
    try:
        args.block_sizes = [int(s) for s in args.block_sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--block-sizes: whole numbers, comma-separated; got {args.block_sizes!r}")
    if not args.block_sizes or any(b < 512 or b % 512 or (args.disk_mib * MIB) % b for b in args.block_sizes):
        ap.error("--block-sizes: multiples of 512 that divide the disk")
    if len(set(args.block_sizes)) != len(args.block_sizes):
        ap.error("--block-sizes: each once")
    if args.disk_mib < 1 or not 0 < args.fraction <= 1 or args.writers < 1:
        ap.error("--disk-mib >= 1, 0 < --fraction <= 1, --writers >= 1")
    return args


def lab_or_exit():  # noqa: ANN201 - lab.control.Lab
    from lab.control import Lab

    lab = Lab()
    services = lab.services()
    down = [s for s in NEEDED_SERVICES if not services.get(s)]
    if down or not (lab.dir / "site.yaml").exists():
        print(f"bench_reprotect: the lab is not up ({', '.join(down) or 'no site config'} not running): "
              f"run `drbook-lab up` first", file=sys.stderr)
        raise SystemExit(2)
    return lab


# -- instruments -----------------------------------------------------------------------------------

class Calls:
    """Per method: calls, seconds summed over threads, first start and last end, bytes returned."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, dict] = {}

    def add(self, name: str, start: float, end: float, nbytes: int = 0) -> None:
        with self.lock:
            r = self.rows.setdefault(name, {"calls": 0, "seconds": 0.0, "first": start, "last": end, "bytes": 0})
            r["calls"] += 1
            r["seconds"] += end - start
            r["first"] = min(r["first"], start)
            r["last"] = max(r["last"], end)
            r["bytes"] += nbytes

    def take(self) -> dict:
        with self.lock:
            rows, self.rows = self.rows, {}
        return {k: {"calls": v["calls"], "thread_s": round(v["seconds"], 3), "span_s": round(v["last"] - v["first"], 3),
                    "mean_ms": round(1000 * v["seconds"] / v["calls"], 2), **({"bytes": v["bytes"]} if v["bytes"] else {})}
                for k, v in rows.items()}


TIMED = {"create_incremental_snapshot", "grant_snapshot_access", "revoke_snapshot_access", "page_diff", "read_range",
         "delete_resource", "list_tagged"}


class TimedAzure:
    """The RecoverySite with the calls a cycle makes timed (everything else passed through)."""

    def __init__(self, inner, calls: Calls) -> None:  # noqa: ANN001
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str):  # noqa: ANN204
        attr = getattr(self._inner, name)
        if name not in TIMED or not callable(attr):
            return attr

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            out = None
            try:
                out = attr(*args, **kwargs)
                return out
            finally:
                self._calls.add(name, t0, time.perf_counter(), len(out) if isinstance(out, bytes) else 0)
        return timed


class CountingStdin:
    def __init__(self, raw, counter: list[int]) -> None:  # noqa: ANN001
        self._raw = raw
        self._counter = counter

    def write(self, data) -> int:  # noqa: ANN001
        self._counter[0] += len(data)
        return self._raw.write(data)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._raw, name)


def bench_site_class():  # noqa: ANN201
    """drbook's Site with the master target's agent run on this host (LocalShell), the bytes
    written to its stdin counted."""
    from drbook.replication.local_shell import LocalShell
    from drbook.site import Site

    class CountingShell(LocalShell):
        def __init__(self, counter: list[int]) -> None:
            super().__init__()
            self.counter = counter

        def open_process(self, command: str):  # noqa: ANN201
            proc = super().open_process(command)
            proc.stdin = CountingStdin(proc.stdin, self.counter)
            return proc

    class BenchSite(Site):
        stdin_bytes: list[int]

        def shell_for(self, machine):  # noqa: ANN001, ANN201
            return CountingShell(self.stdin_bytes)

    return BenchSite


# -- files -----------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MIB):
            h.update(chunk)
    return h.hexdigest()


def copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())




# -- the site and Azure ----------------------------------------------------------------------------

def make_site(lab_status: dict, work: Path, tag: str, disk_size: int):  # noqa: ANN201 - BenchSite
    import yaml

    from drbook.config import load_site

    doc = yaml.safe_load(Path(lab_status["site_config"]).read_text())
    template = doc["machines"][0]
    mapping = doc["network_mapping"][0]
    doc["site"] = f"bench-rp-{tag}"
    doc["azure"]["resource_group"] = f"drbook-bench-rp-{tag}"
    doc["azure"]["containers"] = {"cache": f"rp{tag}-cache", "replicas": f"rp{tag}-replicas", "vault": f"rp{tag}-vault"}
    doc["plans_dir"] = str(work / "plans")
    doc.pop("alerts", None)
    doc["machines"] = [{
        "name": "rp-target", "os": "linux", "address": "127.0.0.1", "user": template.get("user", "root"),
        "key_file": template["key_file"], "known_hosts": template["known_hosts"],  # never used: LocalShell
        "agent_dir": str(ROOT / "drbook" / "agent"), "python": sys.executable, "network": mapping["source_network"],
        "cpus": 1, "memory_mb": 1024,
        "disks": [{"name": "disk0", "path": str(work / "target.img"), "size_bytes": disk_size}],
    }]
    (work / "plans").mkdir(parents=True, exist_ok=True)
    path = work / f"site-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    site = bench_site_class()(cfg=load_site(path), path=path)
    site.stdin_bytes = [0]
    return site


def upload_vhd(site, container: str, blob_name: str, image: Path, workers: int = 8) -> str:  # noqa: ANN001
    """The image as a fixed VHD page blob (data in 4 MiB Put Pages, then the footer); its URL."""
    from drbook.replication import vhd

    size = image.stat().st_size
    service = site.blob_service
    with contextlib.suppress(Exception):
        service.create_container(container)
    blob = service.get_blob_client(container, blob_name)
    blob.create_page_blob(vhd.blob_size(size))

    def put(offset: int) -> None:
        with open(image, "rb") as f:
            f.seek(offset)
            data = f.read(UPLOAD_PUT)
        blob.upload_page(data, offset=offset, length=len(data))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(0, size, UPLOAD_PUT)))
    blob.upload_page(vhd.build_footer(vhd.replica_size(size)), offset=vhd.replica_size(size), length=vhd.FOOTER_SIZE)
    return blob.url


def build_azure(site, image: Path, labels: list[str], item_of: dict[str, str], tags: dict[str, str],  # noqa: ANN001
                vm_size: str) -> dict:
    """Resource group, disk (imported), S0 per label, VNet, NIC, running VM."""
    from drbook.adapters import recovery_site as rs
    from drbook.reprotect.model import BASELINE_PURPOSE, ITEM_TAG, PURPOSE_TAG

    az, cfg = site.azure, site.cfg
    rg, loc = cfg.azure.resource_group, cfg.azure.location
    out: dict = {"resource_group": rg}
    t0 = time.perf_counter()
    az.ensure_resource_group(rg, loc, tags)
    src_container = f"{cfg.azure.containers.replicas}-src"
    out["src_container"] = src_container
    url = upload_vhd(site, src_container, "disk0.vhd", image)
    out["upload_s"] = round(time.perf_counter() - t0, 3)
    t1 = time.perf_counter()
    account = (f"/subscriptions/{cfg.azure.subscription_id}/resourceGroups/"
               f"{cfg.azure.storage_resource_group or rg}/providers/Microsoft.Storage/storageAccounts/{cfg.azure.storage_account}")
    disk_name = "rp-vm-disk0"
    disk_id = az.import_disk(rs.DiskImport(resource_group=rg, name=disk_name, location=loc, tags=tags, source_uri=url,
                                           storage_account_id=account, os_type="Linux"))
    out["import_s"] = round(time.perf_counter() - t1, 3)
    with contextlib.suppress(Exception):  # the import copied its bytes: the source is not needed
        site.blob_service.delete_container(src_container)
    out.update(disk_name=disk_name, disk_id=disk_id, s0={})
    for label in labels:  # before the VM boots, as the failover takes S0
        name = f"{disk_name}-s0-{label}"
        az.create_incremental_snapshot(rg, name, disk_id, loc,
                                       {**tags, PURPOSE_TAG: BASELINE_PURPOSE, ITEM_TAG: item_of[label]})
        out["s0"][label] = name
    subnet = "default"
    az.create_or_update_virtual_network(rg, rs.VirtualNetworkState(
        name="rp-vnet", address_space=["10.199.0.0/16"], subnets=[rs.SubnetState(name=subnet, address_prefix="10.199.1.0/24")]),
        loc, tags)
    subnet_id = (f"/subscriptions/{cfg.azure.subscription_id}/resourceGroups/{rg}/providers/Microsoft.Network/"
                 f"virtualNetworks/rp-vnet/subnets/{subnet}")
    nic = az.create_nic(rs.NicSpec(resource_group=rg, name="rp-vm-nic0", location=loc, tags=tags, subnet_id=subnet_id))
    vm_id = az.create_vm(rs.VmSpec(resource_group=rg, name="rp-vm", location=loc, tags=tags, size=vm_size,
                                   os_disk=rs.AttachedDisk(name=disk_name, id=disk_id), nic_id=nic.id,
                                   boot_diagnostics=False))
    if az.power_state(rg, "rp-vm") != "running":
        az.start_vm(rg, "rp-vm")
    out.update(vm_name="rp-vm", vm_id=vm_id, setup_s=round(time.perf_counter() - t0, 3))
    return out


# -- the guest's writes ----------------------------------------------------------------------------

def guest_writes(ctl, vm_id: str, ca: str, image: Path, new: Path, fraction: float, seed: int,  # noqa: ANN001
                 writers: int) -> dict:
    """Distinct random 4 KiB blocks rewritten with random bytes through the guest-disk URL; the
    same writes on `new` (a copy of `image`)."""
    from lab.workload import BlobDisk

    [disk] = ctl.guest_disks(vm_id)
    size = image.stat().st_size
    rng = random.Random(seed)
    count = int(size // PAGE4K * fraction)
    offsets = sorted(o * PAGE4K for o in rng.sample(range(size // PAGE4K), count))
    data = {o: rng.randbytes(PAGE4K) for o in offsets}
    copy_file(image, new)
    with open(new, "rb+") as f:
        for o in offsets:
            os.pwrite(f.fileno(), data[o], o)
        os.fsync(f.fileno())
    local = threading.local()
    opened: list = []
    lock = threading.Lock()

    def put(o: int) -> None:
        d = getattr(local, "disk", None)
        if d is None:
            d = local.disk = BlobDisk(name=disk["name"], url=disk["url"], ca_bundle=Path(ca))
            d.open()
            with lock:
                opened.append(d)
        d.write(data[o], o)

    order = offsets[:]
    rng.shuffle(order)
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(put, order))
    finally:
        for d in opened:
            d.close()
    seconds = time.perf_counter() - t0
    return {"writes": count, "bytes": count * PAGE4K, "seconds": round(seconds, 3),
            "writes_per_s": round(count / seconds, 1), "writers": writers, "guest_disk_size": disk["size"]}, offsets


# -- the reverse cycle -----------------------------------------------------------------------------

def cpu_labels(cpu: dict) -> dict:
    """bench_plans' CPU accounting, named for this bench (the agent is a waited-for child)."""
    return {("bench (drbook + agent)" if k.startswith("bench") else k): v for k, v in cpu.items()}


def reverse_cycle(site, calls: Calls, azure_info: dict, label: str, item: str, block_size: int, image: Path,  # noqa: ANN001
                  work: Path, expected_sha: str, cpu_snapshot, cpu_used) -> dict:  # noqa: ANN001
    from drbook.reprotect.cycle import run_cycle
    from drbook.reprotect.model import ReprotectRecord, ReverseDisk, reprotect_key

    cfg = site.cfg
    size = image.stat().st_size
    target = work / f"target-{label}.img"
    copy_file(image, target)
    record = ReprotectRecord(
        item=item, machine="rp-source", target="rp-target", target_kind="physical", failover_run_id=f"bench-{item}",
        point_id="bench-point", resource_group=cfg.azure.resource_group, vm_name=azure_info["vm_name"],
        location=cfg.azure.location,
        disks=[ReverseDisk(disk="disk0", managed_disk=azure_info["disk_name"], resource_group=cfg.azure.resource_group,
                           disk_id=azure_info["disk_id"], target_path=str(target), size=size, block_size=block_size,
                           baseline=azure_info["s0"][label], baseline_is_point=False)])
    site.vault.put(reprotect_key(item), record)
    calls.take()
    site.stdin_bytes[0] = 0
    cpu0 = cpu_snapshot()
    t0 = time.perf_counter()
    record = run_cycle(site, record)
    wall = time.perf_counter() - t0
    cpu = cpu_labels(cpu_used(cpu0))
    phases = calls.take()
    cycle = record.last_cycle()
    got = sha256_file(target)
    target.unlink()
    moved = cycle.bytes_moved + cycle.zero_bytes
    read = phases.get("read_range", {})
    return {
        "label": label, "item": item, "block_size": block_size, "seconds": round(wall, 3), "cycle_seconds": cycle.seconds,
        "ranges": cycle.ranges, "bytes_changed": cycle.bytes_changed, "bytes_moved_data": cycle.bytes_moved,
        "zero_bytes": cycle.zero_bytes, "bytes_moved": moved,
        "ratio": round(moved / cycle.bytes_changed, 3) if cycle.bytes_changed else None,
        "bytes_read_from_azure": read.get("bytes", 0), "reads": read.get("calls", 0),
        "apply_stream_bytes": site.stdin_bytes[0], "verified": got == expected_sha, "target_sha256": got,
        "snapshot": record.disks[0].baseline, "phases": phases, "cpu_s": cpu,
    }


# -- the peers -------------------------------------------------------------------------------------

def full_copy(site, snapshot: str, size: int, out: Path, expected_sha: str, workers: int, cpu_snapshot,  # noqa: ANN001
              cpu_used) -> dict:
    from azure.storage.blob import BlobClient

    from drbook.reprotect.cycle import SAS_SECONDS

    az, rg = site.azure, site.cfg.azure.resource_group
    ca = str(site.cfg.azure.ca_bundle) if site.cfg.azure.ca_bundle else True
    t0 = time.perf_counter()
    sas = az.grant_snapshot_access(rg, snapshot, SAS_SECONDS)
    grant_s = time.perf_counter() - t0
    try:
        cpu0 = cpu_snapshot()
        t1 = time.perf_counter()
        with BlobClient.from_blob_url(sas, connection_verify=ca) as blob, open(out, "wb") as f:
            got = blob.download_blob(offset=0, length=size, max_concurrency=workers).readinto(f)
            f.flush()
            os.fsync(f.fileno())
        read_s = time.perf_counter() - t1
        cpu = cpu_labels(cpu_used(cpu0))
    finally:
        az.revoke_snapshot_access(rg, snapshot)
    sha = sha256_file(out)
    out.unlink()
    return {"bytes": got, "seconds": round(read_s, 3), "grant_s": round(grant_s, 3), "workers": workers,
            "mb_per_s": round(got / read_s / 1e6, 1), "verified": sha == expected_sha and got == size, "cpu_s": cpu}


def rsync(new: Path, image: Path, old: Path, expected_sha: str, cpu_snapshot, cpu_used) -> dict:  # noqa: ANN001
    copy_file(image, old)
    cmd = ["rsync", "-I", "--inplace", "--no-whole-file", "--stats", str(new), str(old)]
    cpu0 = cpu_snapshot()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    cpu = cpu_labels(cpu_used(cpu0))

    def stat(label: str) -> int:
        m = re.search(rf"{label}: ([\d,.]+)", done.stdout)
        return int(m.group(1).replace(",", "").replace(".", "")) if m else -1

    sha = sha256_file(old)
    old.unlink()
    version = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"command": " ".join(cmd[:-2] + ["NEW", "OLD"]), "version": version, "seconds": round(seconds, 3),
            "literal_data": stat("Literal data"), "matched_data": stat("Matched data"),
            "bytes_sent": stat("Total bytes sent"), "bytes_received": stat("Total bytes received"),
            "verified": sha == expected_sha, "cpu_s": cpu}


# -- the report ------------------------------------------------------------------------------------

def mb(n: int | None) -> str:
    return "-" if n is None or n < 0 else f"{n / 1e6:,.1f} MB"


def report(doc: dict) -> None:
    changed = doc["bytes_changed_by_guest"]
    print(f"\n{'':44} {'changed':>11} {'moved':>11} {'x changed':>10} {'seconds':>8}  verified")
    for c in doc["cycles"]:
        print(f"{'reverse cycle, ' + str(c['block_size'] // 1024) + ' KiB blocks':44} {mb(c['bytes_changed']):>11} "
              f"{mb(c['bytes_moved']):>11} {c['ratio']:>10.2f} {c['seconds']:>8.1f}  {c['verified']}")
    if f := doc.get("full_copy"):
        print(f"{'full copy through the SAS (' + str(f['workers']) + ' readers)':44} {mb(changed):>11} {mb(f['bytes']):>11} "
              f"{f['bytes'] / changed:>10.2f} {f['seconds']:>8.1f}  {f['verified']}")
    if r := doc.get("rsync"):
        print(f"{'rsync --inplace --no-whole-file: literal':44} {mb(changed):>11} {mb(r['literal_data']):>11} "
              f"{r['literal_data'] / changed:>10.2f} {r['seconds']:>8.1f}  {r['verified']}")
        print(f"{'rsync: total bytes sent':44} {'':>11} {mb(r['bytes_sent']):>11} {r['bytes_sent'] / changed:>10.2f}")
    for c in doc["cycles"]:
        ph = c["phases"]
        parts = [f"{k} {v['calls']}x {v['thread_s']:.2f} s" + (f" (thread-s; {v['span_s']:.1f} s wall)" if v["thread_s"] > v["span_s"] + 0.01 else "")
                 for k, v in ph.items()]
        print(f"  {c['block_size'] // 1024} KiB cycle: {c['ranges']} ranges, {c['reads']} reads, "
              f"{mb(c['bytes_read_from_azure'])} read, apply stream {mb(c['apply_stream_bytes'])}; " + "; ".join(parts))
        print("    CPU s: " + ", ".join(f"{k} {v}" for k, v in c["cpu_s"].items()))


def cleanup(site, info: dict, keep: bool) -> dict:  # noqa: ANN001
    out: dict = {}
    if keep:
        return {"kept": True}
    try:
        rg = site.cfg.azure.resource_group
        site.azure.delete_resource_group(rg)
        out["resource_group_left"] = site.azure.resource_group_exists(rg)
    except Exception as exc:  # reported, not fatal: the figures are in
        out["error"] = f"{type(exc).__name__}: {exc}"
    c = site.cfg.azure.containers
    for name in (c.vault, info.get("src_container") or f"{c.replicas}-src"):
        with contextlib.suppress(Exception):
            site.blob_service.delete_container(name)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lab = lab_or_exit()
    from bench_plans import cpu_snapshot, cpu_used
    from bench_scan import RESULTS, make_image, write_result
    from lab.arm.control import ArmLabControl

    status = lab.status()
    ctl = ArmLabControl(status["arm"]["base_url"], status["ca_bundle"])
    ctl.health()
    tag = uuid.uuid4().hex[:6]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = RESULTS / f"bench_reprotect-{stamp}-work"
    work.mkdir(parents=True, exist_ok=True)
    size = args.disk_mib * MIB
    labels = [f"{b // 1024}k" if b % 1024 == 0 else f"{b}b" for b in args.block_sizes]
    items = {label: f"rp-{tag}-{label}" for label in labels}
    doc: dict = {"disk_bytes": size, "fraction": args.fraction, "block_sizes": args.block_sizes, "seed": args.seed,
                 "writers": args.writers, "disk_content": "seeded AES-CTR keystream (random, no zero region)",
                 "cycles": []}
    print(f"bench_reprotect: {size / MIB:g} MiB disk, {args.fraction:.0%} random 4 KiB guest writes, block sizes "
          f"{args.block_sizes}; work dir {work}", flush=True)
    site = make_site(status, work, tag, size)
    doc["site"] = site.cfg.site
    calls = Calls()
    real_azure = site.azure
    site.__dict__["azure"] = TimedAzure(real_azure, calls)
    tags = {"drbook-site": site.cfg.site, "drbook-bench": "reprotect"}
    info: dict = {}
    failed: list[str] = []
    try:
        site.create_vault()
        image, new = work / "initial.img", work / "new.img"
        t0 = time.perf_counter()
        make_image(image, size, seed=args.seed)
        doc["image_s"] = round(time.perf_counter() - t0, 3)
        info = build_azure(site, image, labels, items, tags, args.vm_size)
        doc["azure_setup"] = {k: v for k, v in info.items() if k.endswith("_s") or k in ("resource_group", "s0")}
        print(f"   setup: upload {info['upload_s']:.1f} s, import {info['import_s']:.1f} s, "
              f"all Azure {info['setup_s']:.1f} s", flush=True)
        doc["guest"], offsets = guest_writes(ctl, info["vm_id"], status["ca_bundle"], image, new, args.fraction, args.seed,
                                    args.writers)
        g = doc["guest"]
        doc["bytes_changed_by_guest"] = g["bytes"]
        print(f"   guest: {g['writes']} writes of 4 KiB ({mb(g['bytes'])}) in {g['seconds']:.1f} s "
              f"({g['writes_per_s']:.0f}/s, {g['writers']} writers)", flush=True)
        expected = sha256_file(new)
        doc["expected_sha256"] = expected
        for label, bs in zip(labels, args.block_sizes):
            c = reverse_cycle(site, calls, info, label, items[label], bs, image, work, expected, cpu_snapshot, cpu_used)
            doc["cycles"].append(c)
            print(f"   reverse cycle {label}: {c['ranges']} ranges, changed {mb(c['bytes_changed'])}, moved "
                  f"{mb(c['bytes_moved'])} (x{c['ratio']}), {c['seconds']:.1f} s, verified {c['verified']}", flush=True)
            if not c["verified"]:
                failed.append(f"the {label} target does not equal the expected bytes")
        last = doc["cycles"][-1]["snapshot"]
        doc["full_copy"] = full_copy(site, last, size, work / "full.img", expected, 4, cpu_snapshot, cpu_used)
        print(f"   full copy: {mb(doc['full_copy']['bytes'])} in {doc['full_copy']['seconds']:.1f} s", flush=True)
        doc["rsync"] = rsync(new, image, work / "old.img", expected, cpu_snapshot, cpu_used)
        r = doc["rsync"]
        print(f"   rsync: literal {mb(r['literal_data'])}, sent {mb(r['bytes_sent'])} in {r['seconds']:.1f} s", flush=True)
        for what in ("full_copy", "rsync"):
            if not doc[what]["verified"]:
                failed.append(f"the {what} result does not equal the expected bytes")
    except Exception as exc:
        traceback.print_exc()
        failed.append(f"{type(exc).__name__}: {exc}")
    finally:
        site.__dict__["azure"] = real_azure
        doc["cleanup"] = cleanup(site, info, args.keep)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if doc["cycles"]:
        report(doc)
        first = doc["cycles"][0]
        met = first["verified"] and first["bytes_moved"] <= GOAL_RATIO * first["bytes_changed"]
        doc["goal"] = {"block_size": first["block_size"], "bytes_changed": first["bytes_changed"],
                       "bytes_moved": first["bytes_moved"], "ratio": first["ratio"], "met": met}
        print(f"goal (bytes moved <= {GOAL_RATIO:g}x bytes changed, {first['block_size'] // 1024} KiB blocks): "
              f"x{first['ratio']}: {'met' if met else 'NOT met'}")
        if not met:
            failed.append(f"goal not met at {first['block_size']} bytes a block: x{first['ratio']}")
    else:
        failed.append("no cycle ran")
    doc["failed"] = failed
    out = write_result("bench_reprotect", doc)
    print(f"\nbench_reprotect: {'OK' if not failed else 'FAILED: ' + '; '.join(failed)} -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
