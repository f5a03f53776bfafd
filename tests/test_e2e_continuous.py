"""Continuous replication and the RPO alert, on the lab, with no command typed.

The module's site has a fast policy (a crash point every 15 s, RPO threshold 60 s) and
protects app02 through an sshd of the module's own (a second sshd of app02's machine on
another port), so the test can stop that sshd without taking the shared lab's app02 away
from other test sessions. A deployment of the dispatcher of the module's own, on a 10 s
interval, runs on the lab's worker and starts cycles as runs of replicate-cycle/replicate.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from drbook.errors import LeaseHeldError
from drbook.site import forget_sites, open_site
from lab.machines import host_key_line
from lab.webhook import read_record
from tests.lab_site import start_writer

pytestmark = pytest.mark.lab  # the only module of the parallel phase that writes a lab machine (app02)

ITEM = "app02"
OWN_PORT = 2202
FAST = {"name": "fast", "crash_frequency_minutes": 0.25, "app_frequency_minutes": 60, "rpo_threshold_minutes": 1.0}
DISPATCH_EVERY_S = 10


class OwnSshd:
    """A second sshd of the lab machine's, on OWN_PORT: stopping it fails only our cycles."""

    def __init__(self, lab_dir: Path, machine: dict, tmp: Path) -> None:
        mdir = lab_dir / "machines" / ITEM
        text = (mdir / "sshd_config").read_text()
        lines = []
        for line in text.splitlines():
            if line.startswith("ListenAddress "):
                line = f"ListenAddress {machine['address']}:{OWN_PORT}"
            elif line.startswith("PidFile "):
                line = f"PidFile {tmp / 'sshd.pid'}"
            lines.append(line)
        self.config = tmp / "sshd_config"
        self.config.write_text("\n".join(lines) + "\n")
        self.address = machine["address"]
        pub = (mdir / "ssh_host_ed25519_key.pub").read_text().strip()
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text(host_key_line(f"[{self.address}]:{OWN_PORT}", pub) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from lab.procs import port_in_use

        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_in_use(self.address, OWN_PORT):
            assert self.proc.poll() is None and time.monotonic() < deadline, "the module's own sshd did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def own_dir(lab):
    """Files the worker's runs read (site config, known_hosts) live under the lab's directory:
    pytest removes old basetemp directories when other sessions start, mid-run."""
    d = Path(lab["lab_dir"]) / "tests" / f"continuous-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(lab, own_dir):
    machine = next(m for m in lab["machines"] if m["name"] == ITEM)
    (own_dir / "sshd").mkdir()
    own = OwnSshd(Path(lab["lab_dir"]), machine, own_dir / "sshd")
    own.start()
    yield own
    own.stop()


@pytest.fixture(scope="module")
def fast_site(lab, own_dir, sshd, prefect_fast) -> str:
    """The module's site: the fast policy, app02 through the module's own sshd."""
    from tests.conftest import make_site

    site_path = make_site(lab, own_dir)
    doc = yaml.safe_load(Path(site_path).read_text())
    doc["policies"] = [{"name": "default"}, FAST]
    m = next(m for m in doc["machines"] if m["name"] == ITEM)
    m["port"] = OWN_PORT
    m["known_hosts"] = str(sshd.known_hosts)
    Path(site_path).write_text(yaml.safe_dump(doc, sort_keys=False))
    forget_sites()
    return site_path


@pytest.fixture(scope="module")
def protected(fast_site):
    from drbook.flows.replication import enable_replication_flow

    enable_replication_flow([ITEM], policy="fast", site_path=fast_site)
    return open_site(fast_site)


@pytest.fixture(scope="module")
def dispatcher(protected, fast_site):
    """A dispatcher deployment of this module's own (its site, a 10 s interval) on the lab's
    worker. `lab up` registers the deployments, so their absence is a failure, not a skip."""
    from tests.dispatcher_deployment import NoDeployments, dispatcher_deployment

    try:
        with dispatcher_deployment(fast_site, DISPATCH_EVERY_S) as dep_id:
            yield dep_id
    except NoDeployments as exc:
        pytest.fail(f"the lab has no deployments (lab up registers them): {exc}")


def test_a_second_cycle_of_a_busy_item_fails_at_once_and_touches_nothing(protected, fast_site):
    from drbook.flows.replication import replicate_flow

    site = protected
    before = site.vault.item(ITEM)
    with site.vault.lease(f"item-{ITEM}", holder="a running cycle (test)"):
        t0 = time.monotonic()
        with pytest.raises(LeaseHeldError, match="held by a running cycle"):
            replicate_flow([ITEM], site_path=fast_site)
        assert time.monotonic() - t0 < 10  # not retried: LeaseHeldError is not transient
    assert site.vault.item(ITEM).last_point_id == before.last_point_id


def test_the_dispatcher_decides_and_starts_the_due_cycles(protected):
    from drbook.flows.continuous import dispatch

    site = protected
    started = []
    fake = lambda cycle, sp: started.append((cycle, sp)) or {"run_id": "r1", "name": "fake-run"}  # noqa: E731
    time.sleep(max(0.0, 15 - (dt.datetime.now(dt.timezone.utc) - site.vault.item(ITEM).last_point_time).total_seconds()))
    rows = {r["item"]: r for r in dispatch(site, start=fake)}
    assert rows[ITEM]["status"] == "due" and rows[ITEM]["run"] == "fake-run"
    assert [(c.members, c.want, sp) for c, sp in started] == [([ITEM], "crash", str(site.path))]
    # A held lease (a live cycle) makes it busy: nothing is started.
    started.clear()
    with site.vault.lease(f"item-{ITEM}", holder="a live cycle (test)"):
        rows = {r["item"]: r for r in dispatch(site, start=fake)}
    assert rows[ITEM]["status"] == "busy" and "a live cycle (test)" in rows[ITEM]["why"] and started == []


def test_points_arrive_at_the_policys_frequency_with_no_command_typed(lab, protected, fast_site, dispatcher, tmp_path_factory):
    site = protected
    writer = start_writer(lab, ITEM, tmp_path_factory.mktemp("continuous"), rate=2, seed=41, seconds=300)
    try:
        t0 = dt.datetime.now(dt.timezone.utc)
        deadline = time.monotonic() + 150
        while True:  # three scheduled points, or 150 s: whichever comes first
            points = sorted((p for p in site.engine.points.points(ITEM) if p.time >= t0), key=lambda p: p.time)
            if len(points) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        writer.stop()
    times = [t0] + [p.time for p in points]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert len(points) >= 3, f"only {len(points)} scheduled points in 150 s (gaps {gaps})"
    # Policy 15 s, dispatcher every 10 s; each cycle is a run the worker starts as a process
    # (6-20 s on 2 busy cores while the other test worker runs). This proves cycles keep coming
    # with no command typed and never stall; the RPO goal (never above twice the frequency) is
    # measured on a quiet lab by bench/bench_continuous.py (docs/benchmarks.md).
    assert max(gaps) <= 4 * 15 + DISPATCH_EVERY_S + 20, gaps
    from tests.dispatcher_deployment import cycle_runs

    runs = [r for r in cycle_runs(fast_site) if r.start_time]
    spans = sorted((r.start_time, r.end_time or dt.datetime.now(dt.timezone.utc)) for r in runs)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), \
        f"two cycles of {ITEM} overlapped: {spans}"
    failed = [r.name for r in runs if r.state and r.state.type.value == "FAILED"]
    assert not failed, f"cycle runs failed (stacked on a held lease?): {failed}"


def _alerts(record: Path, site: str, event: str) -> list[dict]:
    out = []
    for entry in read_record(record):
        body = entry.get("body") or {}
        if isinstance(body, dict) and body.get("site") == site:
            inner = json.loads(body.get("body") or "{}")
            if inner.get("event") == event and inner.get("item") == ITEM:
                out.append({**inner, "received": entry["time"], "subject": body.get("subject")})
    return out


def _monitor_until(fast_site: str, record: Path, site: str, event: str, timeout: float) -> list[dict]:
    from drbook.flows.rpo_monitor import rpo_monitor_flow

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rpo_monitor_flow(site_path=fast_site)
        found = _alerts(record, site, event)
        if found:
            return found
        time.sleep(3)
    raise AssertionError(f"no {event} alert for {ITEM} of {site} reached the webhook within {timeout:.0f}s")


def test_the_rpo_alert_reaches_the_webhook_when_sshd_stops_and_the_recovery_after(
        lab, protected, fast_site, sshd, dispatcher):
    from drbook.alerts import ensure_alerts

    site = protected
    record = Path(lab["webhook"]["record"])
    name = site.cfg.site
    assert site.cfg.alerts is not None and site.cfg.alerts.webhook_url == lab["webhook"]["url"]
    made = ensure_alerts(site.cfg)
    assert ensure_alerts(site.cfg) == made  # idempotent
    try:
        sshd.stop()
        breached = _monitor_until(fast_site, record, name, "drbook.rpo.breached", timeout=150)
        assert breached[0]["payload"]["lag_seconds"] > 60 and f"RPO breached on {ITEM}" in breached[0]["subject"]
        assert site.vault.item(ITEM).rpo_breached
        sshd.start()
        recovered = _monitor_until(fast_site, record, name, "drbook.rpo.recovered", timeout=150)
        assert recovered[0]["payload"]["lag_seconds"] <= 60
        assert not site.vault.item(ITEM).rpo_breached
        # one alert per crossing: the monitor ran many times, the automation fired once each way
        assert len(_alerts(record, name, "drbook.rpo.breached")) == 1
    finally:
        if sshd.proc is None or sshd.proc.poll() is not None:
            sshd.start()
        ensure_alerts(site.cfg.model_copy(update={"alerts": None}))
