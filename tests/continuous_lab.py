"""The lab of the continuous-replication tests (test_e2e_continuous, test_e2e_rpo_alert):
a site of each module's own with a fast policy (a crash point every 15 s, RPO threshold
45 s) protecting app02 through an sshd of the module's own (a second sshd of app02's machine
on the module's OWN_PORT), so a test can stop that sshd without taking the shared lab's
app02 away from other test sessions; and a dispatcher deployment of the module's own, on a
10 s interval, on the lab's worker, which starts cycles as runs of replicate-cycle/replicate.
The two modules run on different test workers at once: every name here is per module.
Registered as a plugin by tests/conftest.py."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from drbook.site import forget_sites, open_site
from lab.machines import host_key_line

ITEM = "app02"
FAST = {"name": "fast", "crash_frequency_minutes": 0.25, "app_frequency_minutes": 60, "rpo_threshold_minutes": 0.75}
DISPATCH_EVERY_S = 10


class OwnSshd:
    """A second sshd of the lab machine's, on a port of the module's own: stopping it fails
    only that module's cycles."""

    def __init__(self, lab_dir: Path, machine: dict, tmp: Path, port: int) -> None:
        self.port = port
        mdir = lab_dir / "machines" / ITEM
        text = (mdir / "sshd_config").read_text()
        lines = []
        for line in text.splitlines():
            if line.startswith("ListenAddress "):
                line = f"ListenAddress {machine['address']}:{port}"
            elif line.startswith("PidFile "):
                line = f"PidFile {tmp / 'sshd.pid'}"
            lines.append(line)
        self.config = tmp / "sshd_config"
        self.config.write_text("\n".join(lines) + "\n")
        self.address = machine["address"]
        pub = (mdir / "ssh_host_ed25519_key.pub").read_text().strip()
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text(host_key_line(f"[{self.address}]:{port}", pub) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from lab.procs import port_in_use

        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_in_use(self.address, self.port):
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
def sshd(lab, own_dir, request):
    """The module's own sshd of app02, on the module's OWN_PORT (modules run in parallel)."""
    machine = next(m for m in lab["machines"] if m["name"] == ITEM)
    (own_dir / "sshd").mkdir()
    own = OwnSshd(Path(lab["lab_dir"]), machine, own_dir / "sshd", request.module.OWN_PORT)
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
    m["port"] = sshd.port
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
