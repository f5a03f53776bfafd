"""Two process servers on the lab, one of them lost and back (issue 15).

Two small physical machines of this module's own (their own sshds on 127.0.1.41-42, so no
other test writes them) are protected on a site with two process servers: the lab's ps1
(which also runs the stages) and ps2, a second Prefect worker this module starts
(`drbook-lab process-server start ps2`), polling only its own queue, its SSH connections
leaving from 127.0.2.2. The dispatcher's tick runs every few seconds in this process and
starts each cycle as a run in its machine's process server's queue. The workload writes every
disk all along.

  1. the machines spread over both; each cycle runs on its machine's process server (the
     point says which; the source saw the connection come from that server's address);
  2. ps2's host dies (its worker and every process under it SIGKILLed), with a cycle in hand
     when the timing allows: within the bound its machines' next points come from ps1, an event says so, and
     the runs it left behind are settled;
  3. ps2 comes back: its machines return to it;
and through it all, every point verifies byte for byte against the workload log and no
item ever had two cycles at once.

It kills only its own worker and writes only its own machines: it runs in the parallel phase.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from drbook.site import forget_sites, open_site
from lab.workload import paused_seq
from tests.lab_site import point_problems, start_writer

pytestmark = pytest.mark.lab

MACHINES = ["so01", "so02"]
FAST = {"name": "fast", "crash_frequency_minutes": 0.25, "app_frequency_minutes": 60, "rpo_threshold_minutes": 2}
# A worker busy starting processes on 2 loaded cores can go 10-20 s between two polls of its
# queue: a shorter after_s calls a live process server lost (its machines move and come back).
TAKEOVER = {"after_s": 25, "return_after_s": 5}
DISPATCH_EVERY_S = 3
# Death to the first point on another server: the loss noticed (after_s), a dispatcher tick,
# the other worker's poll, a process started and a cycle run, on 2 cores shared with the rest
# of the test suite. bench/bench_scaleout.py measures it on a quiet machine.
TAKEOVER_BOUND_S = 90
SSH_FROM = "ssh-from"


def _machine_entries(lab: dict, statuses: list[dict], template: dict) -> list[dict]:
    """Site-config entries of the module's machines, shaped like the lab's own physical one,
    with a crash hook that prints the address the source saw the connection come from."""
    out = []
    for m in statuses:
        entry = json.loads(json.dumps(template).replace(template["name"], m["name"]))
        entry.update({k: m[k] for k in ("name", "vm_name", "address", "known_hosts", "agent_dir", "ip")})
        entry["disks"] = [{"name": d["name"], "path": d["path"], "size_bytes": d["size_bytes"]} for d in m["disks"]]
        entry["crash_hooks"] = entry["crash_hooks"] + [f'echo "{SSH_FROM} ${{SSH_CLIENT%% *}}"']
        out.append(entry)
    return out


@pytest.fixture(scope="module")
def own_dir(lab):
    d = Path(lab["lab_dir"]) / "tests" / f"scaleout-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def machines(lab_control, lab):
    from lab.machines import ensure_client_key, ensure_machine, machine_dir, machine_status
    from lab.procs import Managed
    from lab.spec import DiskSpec, MachineSpec

    lab_dir = Path(lab["lab_dir"])
    keys = ensure_client_key(lab_dir / "ssh")
    specs = [MachineSpec(name=n, address=f"127.0.1.{41 + i}", ip=f"10.10.1.{41 + i}", network="app-net",
                         disks=[DiskSpec(name="disk0", size_mib=8)], vmware=False) for i, n in enumerate(MACHINES)]
    try:
        for spec in specs:
            ensure_machine(lab_dir, spec, keys)
        yield [machine_status(lab_dir, spec, keys) for spec in specs]
    finally:
        for spec in specs:
            Managed(f"sshd-{spec.name}", lab_dir / "run").stop()
            shutil.rmtree(machine_dir(lab_dir, spec.name), ignore_errors=True)


@pytest.fixture(scope="module")
def site_path(lab, own_dir, machines, prefect_fast) -> str:
    from tests.conftest import make_site

    path = make_site(lab, own_dir)
    doc = yaml.safe_load(Path(path).read_text())
    template = next(m for m in doc["machines"] if m["name"] == "phys01")
    doc["machines"] = _machine_entries(lab, machines, template)
    doc["policies"] = [{"name": "default"}, FAST]
    doc["process_servers"] = [{"name": "ps1", "address": "127.0.2.1"},
                              {"name": "ps2", "address": "127.0.2.2", "runs_stages": False}]
    doc["takeover"] = TAKEOVER
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
    forget_sites()
    return path


def _polled_since(queue: str, since: dt.datetime) -> bool:
    from drbook.scaleout.queues import read_queues

    q = read_queues().get(queue)
    return bool(q and q.last_polled and q.last_polled >= since)


def start_ps2(lab_control) -> None:
    """Started, and polling its queue (a dispatcher tick before its first poll would call it lost)."""
    since = dt.datetime.now(dt.timezone.utc)
    lab_control.start_process_server("ps2")
    _wait("ps2 polling its queue", lambda: _polled_since("ps2", since), 30, every=0.2)


def _end_live_runs(queue: str | None = None, site_path: str | None = None) -> None:
    """Cancel the live cycle runs of queue ps2 (the lab's ps2 is this module's: whatever an
    earlier session left there would hold its slots) or of this module's site (at its end)."""
    from prefect import get_client
    from prefect.states import Cancelled

    from tests.dispatcher_deployment import cycle_runs

    if site_path:
        runs = cycle_runs(site_path)
    else:
        from prefect.client.schemas.filters import WorkQueueFilter, WorkQueueFilterName

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[queue])),
                                         limit=200)
    with get_client(sync_client=True) as client:
        for r in runs:
            if r.state and r.state.type.value in ("SCHEDULED", "PENDING", "RUNNING"):
                client.set_flow_run_state(r.id, Cancelled(message="test_e2e_scaleout: cleanup"), force=True)


@pytest.fixture(scope="module")
def ps2(lab_control):
    _end_live_runs(queue="ps2")
    start_ps2(lab_control)
    yield lab_control
    lab_control.stop_process_server("ps2")


class Dispatcher(threading.Thread):
    """The dispatcher's tick (flows/continuous.dispatch, under its lease) every DISPATCH_EVERY_S
    in this process: the cycles it starts are real runs in the process servers' queues. The
    deployment that runs it in production is test_e2e_continuous's; here a tick every few
    seconds without a process start per tick keeps the module short."""

    def __init__(self, site_path: str) -> None:
        super().__init__(daemon=True, name="dispatcher")
        self.site_path = site_path
        self.stop = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        from drbook.errors import LeaseHeldError
        from drbook.flows.continuous import dispatch
        from drbook.replication.schedule import DISPATCHER_LOCK

        site = open_site(self.site_path)
        while not self.stop.wait(DISPATCH_EVERY_S):
            try:
                with site.vault.lease(DISPATCHER_LOCK, holder="test_e2e_scaleout"):
                    dispatch(site, tick_s=DISPATCH_EVERY_S)
            except LeaseHeldError:
                continue
            except Exception as exc:  # reported by the last test; the next tick tries again
                self.errors.append(f"{type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def running(lab, site_path, machines, ps2, tmp_path_factory):
    """Protected, written to, and replicated by a dispatcher of the module's own."""
    from drbook.flows.replication import enable_replication_flow

    enable_replication_flow(MACHINES, policy="fast", site_path=site_path)
    tmp = tmp_path_factory.mktemp("scaleout")
    own_lab = {**lab, "machines": machines}
    writers = {n: start_writer(own_lab, n, tmp, rate=2, seed=51 + i, seconds=600) for i, n in enumerate(MACHINES)}
    time.sleep(1)  # a first write before the first freeze
    t0 = dt.datetime.now(dt.timezone.utc)
    dispatcher = Dispatcher(site_path)
    dispatcher.start()
    try:
        yield {"site": open_site(site_path), "writers": writers, "t0": t0, "marks": {}, "dispatcher": dispatcher}
    finally:
        dispatcher.stop.set()
        dispatcher.join(timeout=60)
        for w in writers.values():
            w.stop()
        _end_live_runs(site_path=site_path)


def _assignment(site):
    from drbook.tasks.scaleout import read_assignment

    return read_assignment(site)


def _points_since(site, item: str, since: dt.datetime) -> list:
    return [p for p in site.engine.points.points(item) if p.time >= since]


def _wait(what: str, check, timeout: float, every: float = 1.0, site=None):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s{_state(site) if site else ''}")
        time.sleep(every)


def _state(site) -> str:
    """What the dispatcher and the points say, for a failure's message."""
    placed = _assignment(site)
    servers = {n: (s.status, s.last_polled, s.back_since) for n, s in placed.servers.items()} if placed else None
    units = {k: (p.server, p.home) for k, p in placed.units.items()} if placed else None
    newest = {n: [(p.time.strftime("%H:%M:%S"), p.process_server) for p in site.engine.points.points(n)[-3:]]
              for n in MACHINES}
    return f"\nnow {dt.datetime.now(dt.timezone.utc):%H:%M:%S}; servers {servers}\nunits {units}\nnewest points {newest}"


def _ssh_from(point) -> str | None:
    for line in point.freeze_evidence:
        if SSH_FROM in line:
            return line.rsplit(SSH_FROM, 1)[1].split()[0]  # the hook's output, after its command
    return None


def test_machines_spread_over_two_process_servers(running):
    site, t0 = running["site"], running["t0"]
    _wait("a point of every machine", lambda: all(_points_since(site, n, t0) for n in MACHINES), 150, site=site)
    placed = _assignment(site)
    on = {n: placed.server_of([n]) for n in MACHINES}
    assert sorted(on.values()) == ["ps1", "ps2"], on  # balanced: one each
    address = {"ps1": "127.0.2.1", "ps2": "127.0.2.2"}
    for n in MACHINES:
        point = _points_since(site, n, t0)[-1]
        assert point.process_server == on[n], (n, point.process_server, on[n])
        assert _ssh_from(point) == address[on[n]], (n, point.freeze_evidence)
    running["marks"]["ps2_items"] = sorted(n for n in MACHINES if on[n] == "ps2")


def _live_runs(site_path: str, queue: str) -> list:
    from tests.dispatcher_deployment import cycle_runs

    return [r for r in cycle_runs(site_path) if r.work_queue_name == queue
            and r.state and r.state.type.value in ("SCHEDULED", "PENDING", "RUNNING")]


def test_a_dead_process_server_is_taken_over(running, site_path, ps2):
    site = running["site"]
    mine = running["marks"].get("ps2_items")
    assert mine, "the first test did not run"
    # Die with work in hand: when one of ps2's runs is taken or running (on a loaded machine a
    # cycle can slip between two looks: then it dies between cycles, which must hold too).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(r.state.type.value in ("PENDING", "RUNNING")
                                                  for r in _live_runs(site_path, "ps2")):
        time.sleep(0.2)
    ps2.kill_process_server("ps2")
    killed = dt.datetime.now(dt.timezone.utc)

    def first_points_on_ps1():
        found = {n: next((p for p in _points_since(site, n, killed) if p.process_server == "ps1"), None) for n in mine}
        return found if all(found.values()) else None

    found = _wait("ps2's machines replicated by ps1", first_points_on_ps1, TAKEOVER_BOUND_S + 30, site=site)
    took = {n: (p.time - killed).total_seconds() for n, p in found.items()}
    assert max(took.values()) <= TAKEOVER_BOUND_S, took
    placed = _assignment(site)
    assert placed.servers["ps2"].status == "lost"
    assert {placed.units[n].server for n in mine} == {"ps1"} and {placed.units[n].home for n in mine} == {"ps2"}
    # Nothing of ps2's is left waiting or "running" without a process.
    assert _live_runs(site_path, "ps2") == []
    lost = _events("drbook.process-server.lost", killed)
    assert any(e["payload"]["process_server"] == "ps2" and e["payload"]["site"] == site.cfg.site
               and sorted(m["unit"] for m in e["payload"]["moves"]) == mine for e in lost), lost
    running["marks"]["killed"] = killed


def test_the_process_server_back_takes_its_machines_again(running, site_path, ps2):
    site = running["site"]
    mine = running["marks"].get("ps2_items")
    assert running["marks"].get("killed"), "the takeover test did not run"
    back = dt.datetime.now(dt.timezone.utc)
    start_ps2(ps2)
    _wait("ps2's machines replicated by ps2 again",
          lambda: all(any(p.process_server == "ps2" for p in _points_since(site, n, back)) for n in mine), 150, site=site)
    placed = _assignment(site)
    assert placed.servers["ps2"].status == "online" and {placed.units[n].server for n in mine} == {"ps2"}
    assert _events("drbook.process-server.returned", back)
    # The operator's view and command agree: both online, nothing away, nothing to move.
    listed = json.loads(_drbook(site_path, "process-server", "list", "--json"))
    assert {r["name"]: (r["status"], r["away"]) for r in listed} == {"ps1": ("online", []), "ps2": ("online", [])}
    plan = json.loads(_drbook(site_path, "process-server", "rebalance", "--dry-run", "--json"))
    assert plan["lost"] == [] and len(plan["moves"]) <= 2  # balanced already, up to ties


def test_every_point_verifies_and_no_item_had_two_cycles_at_once(running, site_path):
    from prefect import get_client

    from tests.dispatcher_deployment import cycle_runs

    site, t0, writers = running["site"], running["t0"], running["writers"]
    assert running["dispatcher"].errors == [], running["dispatcher"].errors
    for w in writers.values():
        assert w.proc.poll() is None, f"the workload writer of {w.machine} died"
    checked = 0
    for n in MACHINES:
        for point in _points_since(site, n, t0):  # the initial copy's, before the writer, has no mark
            seq = next((s for s in (paused_seq(x) for x in point.freeze_evidence) if s is not None), None)
            assert seq is not None, f"{n} {point.id}: no pause mark in {point.freeze_evidence}"
            torn, mismatched = point_problems(site, n, point, lambda disk, n=n, seq=seq: writers[n].expected(disk, seq))
            assert (torn, mismatched) == ([], []), f"torn: {torn}; not the disk at its freeze instant: {mismatched}"
            checked += 1
    assert checked >= len(MACHINES) * 3  # every machine: before, during (on ps1) and after (on ps2 again)
    # A run's cycle happens while it is Running (its process started, its flow running), until
    # it ends; a run's start_time is earlier (submitting, a cancel it outran). A run refused by
    # the item's lease (LeaseHeldError: another cycle held it) ran no cycle and touched nothing.
    spans: dict[str, list] = {}
    with get_client(sync_client=True) as client:
        for r in cycle_runs(site_path):
            if r.state and "LeaseHeldError" in (r.state.message or ""):
                continue
            running = [s.timestamp for s in client.read_flow_run_states(r.id) if s.type.value == "RUNNING"]
            if running:
                for item in (r.parameters or {}).get("machines") or []:
                    spans.setdefault(item, []).append((min(running), r.end_time or dt.datetime.now(dt.timezone.utc), str(r.id)))
    for item, runs in spans.items():
        runs.sort()
        overlaps = [(a[2], b[2]) for a, b in zip(runs, runs[1:]) if b[0] < a[1]]
        assert not overlaps, f"{item}: two cycles at once: {overlaps}"


def _events(name: str, since: dt.datetime) -> list[dict]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        r = client._client.post("/events/filter", json={
            "filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}, "limit": 50})
        r.raise_for_status()
    return r.json().get("events", [])


def _drbook(site_path: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "drbook.cli", *args, "--site", site_path],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
