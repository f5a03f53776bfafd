"""Recovery plans at scale: a plan of N machines in 5 groups, drilled and failed over on the lab.

    drbook-lab up     # first: the bench needs the lab's Azurite, ARM emulator and Prefect server
    .venv/bin/python bench/bench_plans.py [--sizes 10,50,100] [--disk-mib 1] [--with-default-op-time]
                                          [--protect-workers 8] [--log-level WARNING] [--keep]

For each N in --sizes, on a site of its own (unique site name, resource group and containers,
like tests/conftest.make_site; its own plans folder, all under a work dir in bench/results/):
N machines bm001..bmN, each with one disk file of --disk-mib MiB (seeded random bytes), the
lab's first network mapping, 1 vCPU and 1 GiB. prepare-azure, then every machine protected
with one ReplicationEngine whose agent runs through the local shell (no SSH; the disk files
are read on this host), in a thread pool. Then a plan `bench` of 5 groups (N/5 machines each,
no scripts, waits or manual steps: what is left is orchestration) and, with the emulator's
operation time set to 0 (every long-running operation is due the moment it starts, and ends
at the client's first poll, 10 ms later):

  drill            plan-test-failover of the plan, timed from the call to its return; the plan
                   run's record (vault plan-runs/<run id>) gives each group's span (its first
                   step's start to its last step's end), the gaps between groups, the time
                   before the first group and after the last, and the slowest machine's RTO.
                   Every machine must have succeeded and been verified (bytes_verified > 0).
  drill cleanup    test-failover-cleanup of the drill, timed on its own; nothing tagged with
                   the run may be left (resources_of_run == []).
  failover         plan-failover (latest-processed, unplanned: the sources are not touched),
                   run in a thread; its approval is answered as soon as the run is paused, and
                   the time counts from the answer to the flow's return. Every machine must be
                   failed over (vault state failed-over) and verified.
  failover cleanup not drbook's: the bench deletes what the failover made (by its run tag,
                   in parallel) and rolls the items back to protected (drbook.failover.
                   outcome.roll_back), so the next pass or size starts clean.

With --with-default-op-time the drill and failover are repeated at the emulator's default
operation time (0.05 s) for context: the difference to the first pass is the share of the
emulator's own operation time.

What is measured: drbook's orchestration of a plan (Prefect flow and task runs against the
lab's Prefect server, vault reads and writes in Azurite, ARM requests and their polling,
blob copies and the byte-for-byte verification of each small disk, the report). What is not:
the protection (initial copies; reported apart as `protect s`), prepare-azure, the wait for
the approval (a person's time; reported apart as `to pause s`, the failover's work before
its pause), and the bench's own cleanup of the failover.

Flows run in this process against the lab's Prefect server (PREFECT_API_URL from the lab),
with heartbeats off (as the tests and `drbook ... --local` run them). --log-level is the
Prefect logging level of this process: WARNING (the default, as the tests) also keeps the
runs' INFO logs from being sent to the API; INFO sends them, as a worker's run does.

The ARM emulator's operation time is a setting of the whole emulator (`POST /_lab/operations`
for "*"): while the bench runs, anyone else's runs on the lab get it too. It is set back to
what it was in a `finally` (ArmLabControl.clear_faults would not do that: it clears faults only).

Prints a table (N, protect s, drill s, drill cleanup s, failover s after the approval, s per
machine), how the times grow from the smallest to the largest N, and whether the 100-machine
drill and failover are under the 60 s goal; writes bench/results/bench_plans-<time>.json
(and bench_plans.json, the latest). Exit 0, 1 when a check failed, 2 when the lab is not up.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import datetime as dt
import ipaddress
import itertools
import os
import shutil
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

GROUPS = 5
GOAL_S = 60.0
PLAN = "bench"
MIB = 1024 * 1024
NEEDED_SERVICES = ("azurite", "arm", "prefect")  # the flows run in this process: no worker needed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="A recovery plan of N machines in 5 groups: drill and failover on the lab.")
    ap.add_argument("--sizes", default="10,50,100", help="machines per plan, comma-separated (5-100 each)")
    ap.add_argument("--disk-mib", type=int, default=1, help="each machine's one disk, MiB (whole MiB: a VHD's rule)")
    ap.add_argument("--with-default-op-time", action="store_true",
                    help="repeat the drill and failover at the emulator's default operation time (0.05 s)")
    ap.add_argument("--protect-workers", type=int, default=8, help="machines protected at once")
    ap.add_argument("--log-level", default="WARNING", help="Prefect logging level of this process")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a failover may take to pause, and to end")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work dir, and each site's resource group and containers")
    args = ap.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes: whole numbers, comma-separated; got {args.sizes!r}")
    if not args.sizes or any(n < GROUPS or n > 100 for n in args.sizes):
        ap.error(f"--sizes: each between {GROUPS} (one machine per group) and 100 (a plan's limit)")
    if args.disk_mib < 1:
        ap.error("--disk-mib: at least 1")
    if args.protect_workers < 1:
        ap.error("--protect-workers: at least 1")
    return args


# -- the lab ------------------------------------------------------------------------------------

def lab_or_exit():  # noqa: ANN201 - lab.control.Lab
    from lab.control import Lab

    lab = Lab()
    services = lab.services()
    down = [s for s in NEEDED_SERVICES if not services.get(s)]
    if down or not (lab.dir / "site.yaml").exists():
        print(f"bench_plans: the lab is not up ({', '.join(down) or 'no site config'} not running): "
              f"run `drbook-lab up` first", file=sys.stderr)
        raise SystemExit(2)
    if others := [s for s, up in services.items() if not up]:
        print(f"note: lab services not running (not needed here): {', '.join(others)}", file=sys.stderr)
    return lab


class OperationTime:
    """The ARM emulator's time for every long-running operation ("*"), set for a block and put
    back as it was (another entry for "*", or none: the emulator's default)."""

    def __init__(self, ctl) -> None:  # noqa: ANN001 - lab.arm.control.ArmLabControl
        self.ctl = ctl
        state = ctl._call("GET", "operations") or {}
        self.default = state.get("defaultDuration")
        self.table = state.get("operations", {})
        self.before = self.table.get("*")

    @contextlib.contextmanager
    def set(self, duration: float | None):
        """duration None: the emulator's default."""
        try:
            self.ctl.set_operation("*", clear=True)
            if duration is not None:
                self.ctl.set_operation("*", duration=duration)
            yield
        finally:
            self.restore()

    def restore(self) -> None:
        self.ctl.set_operation("*", clear=True)
        b = self.before
        if b:
            err = b.get("error") or {}
            self.ctl.set_operation("*", duration=b.get("duration"), outcome=b.get("outcome"),
                                   error_code=err.get("code"), error_message=err.get("message"))


# -- a site of N machines -------------------------------------------------------------------------

def make_site(lab_status: dict, base: Path, n: int, disk_mib: int) -> Path:
    """The lab's site config with names of its own, its own plans folder, N machines with one
    small disk file each (the agent reads them on this host), and the plan."""
    import yaml

    from bench_scan import make_image

    tag = uuid.uuid4().hex[:6]
    folder = base / f"n{n:03d}-{tag}"
    (folder / "plans").mkdir(parents=True)
    (folder / "disks").mkdir()
    doc = yaml.safe_load(Path(lab_status["site_config"]).read_text())
    template = doc["machines"][0]  # key_file and known_hosts: a Linux machine needs them; never used here
    mapping = doc["network_mapping"][0]
    hosts = list(ipaddress.ip_network(mapping["address_prefix"]).hosts())
    doc["site"] = f"bench-{tag}"
    doc["azure"]["resource_group"] = f"drbook-bench-{tag}"
    doc["azure"]["containers"] = {"cache": f"b{tag}-cache", "replicas": f"b{tag}-replicas", "vault": f"b{tag}-vault"}
    doc["plans_dir"] = str(folder / "plans")
    doc.pop("alerts", None)
    machines = []
    for i in range(1, n + 1):
        disk = folder / "disks" / f"bm{i:03d}-disk0.img"
        make_image(disk, disk_mib * MIB, seed=i)
        machines.append({
            "name": f"bm{i:03d}", "os": "linux", "address": "127.0.0.1", "user": template.get("user", "root"),
            "key_file": template["key_file"], "known_hosts": template["known_hosts"],
            "agent_dir": str(ROOT / "drbook" / "agent"), "python": sys.executable,
            "network": mapping["source_network"], "ip": str(hosts[9 + i]) if 9 + i < len(hosts) - 1 else None,
            "cpus": 1, "memory_mb": 1024,
            "disks": [{"name": "disk0", "path": str(disk), "size_bytes": disk_mib * MIB}],
        })
    doc["machines"] = machines
    path = folder / f"site-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    names = [m["name"] for m in machines]
    size, extra = divmod(n, GROUPS)
    groups, start = [], 0
    for k in range(GROUPS):
        count = size + (1 if k < extra else 0)
        groups.append({"name": f"group{k + 1}", "machines": names[start:start + count]})
        start += count
    (folder / "plans" / f"{PLAN}.yaml").write_text(yaml.safe_dump(
        {"name": PLAN, "description": f"bench_plans: {n} machines in {GROUPS} groups", "groups": groups},
        sort_keys=False))
    return path


def protect(site, workers: int) -> float:  # noqa: ANN001 - drbook.site.Site
    """Every machine's initial copy, the agent through the local shell; seconds taken."""
    from drbook.replication.engine import ReplicationEngine
    from drbook.replication.local_shell import LocalShell

    site.create_vault()
    engine = ReplicationEngine(site.cfg, site.vault, site.blob_service, lambda m: LocalShell(), site.encryption_key)
    engine.ensure_containers()
    policy = site.cfg.policy("default")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="protect") as pool:
        items = list(pool.map(lambda m: engine.enable_replication(m, policy), site.cfg.machines))
    seconds = time.perf_counter() - t0
    bad = [i.name for i in items if i.state.value != "protected"]
    if bad:
        raise RuntimeError(f"not protected after enable: {', '.join(bad)}")
    return seconds


# -- reading a plan run -----------------------------------------------------------------------------

def _s(a: dt.datetime, b: dt.datetime) -> float:
    return round((b - a).total_seconds(), 3)


def breakdown(record, began: dt.datetime, ended: dt.datetime) -> dict:  # noqa: ANN001 - PlanRunRecord
    """Where the run's time went, from its record: before the first group, each group's span
    (and the gap before it), after the last group; the slowest machine."""
    groups, prev_end = [], None
    for name, steps in itertools.groupby(record.steps, key=lambda s: s.group):
        steps = list(steps)
        first = min(s.started for s in steps)
        last = max(s.finished or ended for s in steps)
        durations = [_s(s.started, s.finished) for s in steps if s.kind == "recover" and s.finished]
        groups.append({"group": name, "machines": len(durations), "span_s": _s(first, last),
                       "gap_before_s": _s(prev_end, first) if prev_end else None,
                       "slowest_machine_s": max(durations, default=None),
                       "mean_machine_s": round(sum(durations) / len(durations), 3) if durations else None})
        prev_end = last
    steps = record.steps
    rtos = [m.rto_seconds for m in record.machines if m.rto_seconds is not None]
    return {
        "before_groups_s": _s(began, min(s.started for s in steps)) if steps else None,
        "groups_s": round(sum(g["span_s"] for g in groups), 3),
        "gaps_s": round(sum(g["gap_before_s"] or 0 for g in groups), 3),
        "after_groups_s": _s(max(s.finished or ended for s in steps), ended) if steps else None,
        "groups": groups,
        "slowest_rto_s": round(max(rtos), 3) if rtos else None,
        "record_bytes": len(record.model_dump_json()),
        "record_steps": len(steps),
    }


def machine_checks(record, what: str) -> list[str]:  # noqa: ANN001
    problems = []
    for m in record.machines:
        if m.status != "succeeded" or not m.verified or m.bytes_verified <= 0:
            problems.append(f"{what}: {m.machine} {m.status}, verified={m.verified}, "
                            f"bytes_verified={m.bytes_verified} {m.error}".strip())
    return problems


# -- drill ------------------------------------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process and its waited-for children used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(k) for k in kids.read_text().split()] if kids.exists() else []
    return [pid] + [p for c in children for p in _tree(c)]


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds used so far by this process (drbook and the Prefect client) and by the lab's
    ARM emulator, Azurite and Prefect server (each with its children): where a run's time went."""
    from lab.paths import lab_dir

    run = lab_dir() / "run"
    out = {"bench (drbook + Prefect client)": _cpu_of(os.getpid())}
    for name, label in (("arm", "ARM emulator"), ("azurite", "Azurite"), ("prefect", "Prefect server")):
        try:
            out[label] = sum(_cpu_of(p) for p in _tree(int((run / f"{name}.pid").read_text().split()[0])))
        except (OSError, ValueError):
            out[label] = float("nan")
    return out


def cpu_used(before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before[k], 1) for k, v in cpu_snapshot().items()}


def run_drill(site, n: int) -> dict:  # noqa: ANN001
    from drbook.failover.build import resources_of_run
    from drbook.flows.drill import drill_cleanup_flow
    from drbook.flows.plan import plan_drill_flow
    from drbook.models import utcnow
    from drbook.plans.record import PlanRunRecord
    from drbook.vault import plan_run_key

    sp = str(site.path)
    began, t0, cpu0 = utcnow(), time.perf_counter(), cpu_snapshot()
    result = plan_drill_flow(PLAN, site_path=sp)
    wall = time.perf_counter() - t0
    cpu = cpu_used(cpu0)
    ended = utcnow()
    record = site.vault.get(plan_run_key(result["run_id"]), PlanRunRecord)
    checks = machine_checks(record, "drill")
    if result["status"] != "succeeded":
        checks.append(f"drill: status {result['status']}: {result['why']}")
    out = {"run_id": result["run_id"], "drill_id": result["drill_id"], "status": result["status"],
           "seconds": round(wall, 3), "per_machine_s": round(wall / n, 3), "cpu_s": cpu,
           "bytes_verified": sum(m.bytes_verified for m in record.machines), **breakdown(record, began, ended)}
    t0 = time.perf_counter()
    cleanup = drill_cleanup_flow(result["drill_id"], site_path=sp)
    out["cleanup_s"] = round(time.perf_counter() - t0, 3)
    out["cleanup_deleted"] = len(cleanup["deleted"])
    left = resources_of_run(site.azure, result["run_id"])
    if cleanup["left"] or left:
        checks.append(f"drill cleanup left {len(left)} resources: {', '.join(r.id for r in left[:5])}")
    out["checks"] = checks
    return out


# -- failover ---------------------------------------------------------------------------------------

def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:  # noqa: ANN001
    """Run a flow in a thread with this thread's context (its Prefect settings); the outcome
    and the moment it ended land in the dict."""
    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # reported by the caller
            out["error"] = exc
        finally:
            out["ended"] = time.perf_counter()

    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(target,), name="bench-plan-failover", daemon=True)
    thread.start()
    return thread, out


def paused_run(site_path: str, thread: threading.Thread, out: dict, timeout: float) -> str:
    from drbook.approvals import waiting_approvals

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in waiting_approvals():
            if row["flow"] == "plan-failover" and row["site_path"] == site_path:
                return row["run_id"]
        if not thread.is_alive():
            raise RuntimeError(f"the failover ended before its approval: {out.get('error') or out.get('result')}")
        time.sleep(0.2)
    raise TimeoutError(f"no paused plan-failover of {site_path} within {timeout:g} s")


def sweep_failover(site, run_id: str, workers: int = 8) -> int:  # noqa: ANN001
    """What the failover made, deleted VMs first, each kind in parallel; its items back to
    protected (rollback-failover: no point was deleted)."""
    from drbook.failover import outcome
    from drbook.failover.build import deletion_order, resources_of_run
    from drbook.models import ItemState

    deleted = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="sweep") as pool:
        for _kind, batch in itertools.groupby(deletion_order(resources_of_run(site.azure, run_id)),
                                              key=lambda r: r.type.lower()):
            deleted += sum(pool.map(lambda r: bool(site.azure.delete_resource(r.type, r.resource_group, r.name)),
                                    list(batch)))
        over = [m.name for m in site.cfg.machines if site.vault.item(m.name).state == ItemState.FAILED_OVER]
        list(pool.map(lambda m: outcome.roll_back(site.vault, m, run_id), over))
    return deleted


def run_failover(site, n: int, timeout: float) -> dict:  # noqa: ANN001
    from drbook.approvals import answer
    from drbook.failover.build import resources_of_run
    from drbook.flows.plan import plan_failover_flow
    from drbook.models import ItemState, utcnow
    from drbook.plans.record import PlanRunRecord
    from drbook.vault import plan_run_key

    sp = str(site.path)
    t0 = time.perf_counter()
    thread, out = in_thread(plan_failover_flow, PLAN, point="latest-processed", planned=False,
                            approval_timeout=600, site_path=sp)
    run_id = paused_run(sp, thread, out, timeout)
    to_pause = time.perf_counter() - t0
    answered, ta, cpu0 = utcnow(), time.perf_counter(), cpu_snapshot()
    answer(run_id, approve=True, approver="bench-plans", comment="bench_plans.py")
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"the failover {run_id} did not end within {timeout:g} s of its approval")
    if "error" in out:
        raise RuntimeError(f"the failover {run_id} failed: {type(out['error']).__name__}: {out['error']}") from out["error"]
    wall = out["ended"] - ta
    cpu = cpu_used(cpu0)
    ended = answered + dt.timedelta(seconds=wall)
    result = out["result"]
    record = site.vault.get(plan_run_key(run_id), PlanRunRecord)
    checks = machine_checks(record, "failover")
    if result["status"] != "succeeded":
        checks.append(f"failover: status {result['status']}: {result['why']}")
    states = {m.name: site.vault.item(m.name).state for m in site.cfg.machines}
    not_over = sorted(m for m, s in states.items() if s != ItemState.FAILED_OVER)
    if not_over:
        checks.append(f"failover: not failed over: {', '.join(not_over[:10])}{' …' if len(not_over) > 10 else ''}")
    res = {"run_id": run_id, "status": result["status"], "to_pause_s": round(to_pause, 3),
           "seconds": round(wall, 3), "per_machine_s": round(wall / n, 3), "cpu_s": cpu,
           # the answer until the run's record opens: Prefect's pause poll (1 s), the approval's
           # audit entries and the failover record
           "answer_to_record_s": _s(answered, record.started),
           "bytes_verified": sum(m.bytes_verified for m in record.machines), **breakdown(record, answered, ended)}
    t0 = time.perf_counter()
    res["cleanup_deleted"] = sweep_failover(site, run_id)
    res["cleanup_s"] = round(time.perf_counter() - t0, 3)
    if left := resources_of_run(site.azure, run_id):
        checks.append(f"failover cleanup left {len(left)} resources")
    res["checks"] = checks
    return res


# -- one size ---------------------------------------------------------------------------------------

def run_size(args, lab_status: dict, base: Path, n: int, op_time: OperationTime) -> dict:  # noqa: ANN001
    from drbook.flows.prepare_azure import prepare_azure_flow
    from drbook.site import open_site

    path = make_site(lab_status, base, n, args.disk_mib)
    site = open_site(path)
    doc: dict = {"machines": n, "site": site.cfg.site, "site_path": str(path), "passes": []}
    print(f"\n== {n} machines: site {site.cfg.site} ({path})", flush=True)
    try:
        t0 = time.perf_counter()
        prepare_azure_flow(site_path=str(path))
        doc["prepare_azure_s"] = round(time.perf_counter() - t0, 3)
        doc["protect_s"] = round(protect(site, args.protect_workers), 3)
        print(f"   prepare-azure {doc['prepare_azure_s']:.1f} s; protected {n} machines in {doc['protect_s']:.1f} s "
              f"({args.protect_workers} at once)", flush=True)
        passes = [("0", 0.0)] + ([("default", None)] if args.with_default_op_time else [])
        for label, duration in passes:
            with op_time.set(duration):
                p: dict = {"op_time": label, "op_duration_s": duration if duration is not None else op_time.default}
                doc["passes"].append(p)
                p["drill"] = run_drill(site, n)
                d = p["drill"]
                print(f"   [op {label}] drill {d['seconds']:.1f} s (groups {d['groups_s']:.1f}, before "
                      f"{d['before_groups_s']:.1f}, after {d['after_groups_s']:.1f}, slowest RTO {d['slowest_rto_s']}); "
                      f"cleanup {d['cleanup_s']:.1f} s", flush=True)
                p["failover"] = run_failover(site, n, args.timeout)
                f = p["failover"]
                print(f"   [op {label}] failover {f['seconds']:.1f} s after the approval (to pause {f['to_pause_s']:.1f}, "
                      f"answer->record {f['answer_to_record_s']:.1f}, groups {f['groups_s']:.1f}, after "
                      f"{f['after_groups_s']:.1f}); bench cleanup {f['cleanup_s']:.1f} s", flush=True)
                for what, r in (("drill", d), ("failover", f)):
                    print(f"   [op {label}] {what} CPU s: " + ", ".join(f"{k} {v}" for k, v in r["cpu_s"].items()),
                          flush=True)
                for c in d["checks"] + f["checks"]:
                    print(f"   CHECK FAILED: {c}", flush=True)
    finally:
        if not args.keep:
            doc["teardown"] = teardown(site)
    return doc


def teardown(site) -> dict:  # noqa: ANN001
    """The site's resource group (its networks, anything a failed run left) and containers."""
    from drbook.failover.build import delete_resource_group, resources_of_site
    from drbook.failover.prepare import imports_container

    out: dict = {}
    try:
        delete_resource_group(site.azure, site.cfg.azure.resource_group)
        left = resources_of_site(site.azure, site.cfg.site)
        out["left"] = [r.id for r in left]
        c = site.cfg.azure.containers
        for name in (c.cache, c.replicas, c.vault, imports_container(site.cfg)):
            with contextlib.suppress(Exception):
                site.blob_service.delete_container(name)
    except Exception as exc:  # reported, not fatal: the figures are in
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# -- the report -------------------------------------------------------------------------------------

def fit(points: list[tuple[int, float]]) -> dict | None:
    """Least squares t = fixed + per_machine * N."""
    if len(points) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return {"fixed_s": round(my - slope * mx, 3), "per_machine_s": round(slope, 4)}


def summarise(runs: list[dict]) -> dict:
    rows = [(r, p) for r in runs for p in r.get("passes", []) if "failover" in p and "drill" in p]
    print(f"\n{'N':>4} {'op':>7} {'protect s':>10} {'drill s':>8} {'drill cleanup s':>16} {'failover s':>11} "
          f"{'drill s/N':>10} {'failover s/N':>13} {'to pause s':>11}")
    for r, p in rows:
        d, f = p["drill"], p["failover"]
        print(f"{r['machines']:>4} {p['op_time']:>7} {r['protect_s']:>10.1f} {d['seconds']:>8.1f} {d['cleanup_s']:>16.1f} "
              f"{f['seconds']:>11.1f} {d['per_machine_s']:>10.3f} {f['per_machine_s']:>13.3f} {f['to_pause_s']:>11.1f}")
    out: dict = {"goal_s": GOAL_S}
    for label in ("0", "default"):
        mine = [(r["machines"], p) for r, p in rows if p["op_time"] == label]
        if len(mine) < 1:
            continue
        growth: dict = {}
        for what in ("drill", "failover"):
            pts = [(n, p[what]["seconds"]) for n, p in mine]
            (n0, t0), (n1, t1) = pts[0], pts[-1]
            growth[what] = {"from_n": n0, "to_n": n1, "from_s": t0, "to_s": t1,
                            "ratio": round(t1 / t0, 2) if t0 else None, "machines_ratio": round(n1 / n0, 2),
                            "fit": fit(pts)}
            if n1 > n0:
                g = growth[what]
                print(f"[op {label}] {what}: {t0:.1f} s at {n0} -> {t1:.1f} s at {n1} machines: x{g['ratio']} "
                      f"for x{g['machines_ratio']} machines" + (f"; fit {g['fit']['fixed_s']:.1f} s + "
                                                                  f"{g['fit']['per_machine_s']:.3f} s/machine"
                                                                  if g["fit"] else ""))
        out[f"growth_op_{label}"] = growth
        if label == "0":
            n_max, p = mine[-1]
            met = {w: p[w]["seconds"] < GOAL_S for w in ("drill", "failover")}
            out["goal"] = {"machines": n_max, **{f"{w}_s": p[w]["seconds"] for w in met},
                           **{f"{w}_under_goal": ok for w, ok in met.items()}}
            for w, ok in met.items():
                print(f"goal: the {n_max}-machine {w} took {p[w]['seconds']:.1f} s: "
                      f"{'under' if ok else 'NOT under'} {GOAL_S:g} s"
                      + ("" if n_max == 100 else " (100 machines not run: --sizes)"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["PREFECT_LOGGING_LEVEL"] = args.log_level.upper()
    lab = lab_or_exit()
    # Before prefect is imported (it reads its settings then), and again as a temporary setting
    # as lab/demo.py does; the failover's thread runs with a copy of this context.
    os.environ["PREFECT_API_URL"] = lab.prefect_api_url
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from bench_scan import RESULTS, write_result
    from lab.arm.control import ArmLabControl

    status = lab.status()
    ctl = ArmLabControl(status["arm"]["base_url"], status["ca_bundle"])
    ctl.health()
    op_time = OperationTime(ctl)
    others = {k: v for k, v in op_time.table.items() if k != "*"}
    if others:
        print(f"note: the emulator has operation settings of other types, which win over '*': {others}", file=sys.stderr)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = RESULTS / f"bench_plans-{stamp}-work"
    base.mkdir(parents=True, exist_ok=True)
    doc: dict = {"sizes": args.sizes, "groups": GROUPS, "disk_mib": args.disk_mib,
                 "protect_workers": args.protect_workers, "log_level": args.log_level.upper(),
                 "emulator": {"default_duration_s": op_time.default, "operations_before": op_time.table},
                 "runs": []}
    failed = False
    print(f"bench_plans: sizes {args.sizes}, {GROUPS} groups, {args.disk_mib} MiB disks; work dir {base}", flush=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: lab.prefect_api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            for n in args.sizes:
                try:
                    doc["runs"].append(run_size(args, status, base, n, op_time))
                except Exception as exc:
                    traceback.print_exc()
                    doc["runs"].append({"machines": n, "error": f"{type(exc).__name__}: {exc}"})
                    failed = True
                    break
    finally:
        op_time.restore()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    doc["summary"] = summarise([r for r in doc["runs"] if "error" not in r])
    checks = [c for r in doc["runs"] for p in r.get("passes", []) for w in ("drill", "failover") for c in p.get(w, {}).get("checks", [])]
    doc["checks_failed"] = checks
    out = write_result("bench_plans", doc)
    print(f"\nbench_plans: {'OK' if not (failed or checks) else 'FAILED'} -> {out}"
          + (f" (work dir kept: {base})" if args.keep else ""))
    return 1 if failed or checks else 0


if __name__ == "__main__":
    sys.exit(main())
