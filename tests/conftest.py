"""One lab per test session: the real services start once (or are reused when already up)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

from lab.spec import load_spec

_SPEC = load_spec()

pytest_plugins = ["tests.continuous_lab"]  # fixtures of the two continuous-replication modules


# Fixtures that start or reach a real service: the shared lab, or an Azurite, sshd, ARM
# emulator, WinRM responder or vCenter simulator of a test's own. A test that uses any of
# them (directly or through another fixture) is marked `lab`, so `pytest -m "not lab"` runs
# every unit test with no service at all.
SERVICE_FIXTURES = {
    "lab_control", "lab", "site_path", "vc", "conn",
    "azurite", "azurite_blob", "arm_azurite", "arm_server", "arm",
    "ssh_lab", "responder",
}


# Modules that run after every other test of their session: the secrets scan (issue 14)
# searches what all the others wrote.
LAST_MODULES = {"test_e2e_secrets.py"}
# The slowest modules of `make test`'s parallel phase, slowest pair first: started first on
# the two workers (tests/run.sh passes --no-loadscope-reorder, so xdist hands modules out in
# this order instead of by number of tests), they end together instead of one of them
# keeping a worker busy while the other is idle. The continuous pair runs at once (they
# share their long lab waits).
SLOW_FIRST = ["test_e2e_continuous.py", "test_e2e_rpo_alert.py", "test_e2e_scaleout.py", "test_e2e_crash.py", "test_browser.py",
              "test_e2e_cli.py", "test_e2e_drills.py", "test_approval_form.py", "test_deployments.py",
              "test_replication_engine.py", "test_lab.py", "test_packaging.py", "test_vault.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
    items.sort(key=lambda item: item.path.name in LAST_MODULES)  # stable: the others keep their order
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOW_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


def pytest_configure(config: pytest.Config) -> None:
    # Flows in tests talk to the lab's real Prefect server.
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_SPEC.ports.prefect}/api"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def lab_control():
    from lab.control import Lab

    lab = Lab(_SPEC)
    already = lab.services()
    if not all(already.values()):  # up already (tests/run.sh brings it up once for every worker)
        lab.up()
    from tests.dispatcher_deployment import lab_schedules_paused

    with lab_schedules_paused():
        yield lab
    if not os.environ.get("DRBOOK_KEEP_LAB") and not all(already.values()):
        lab.down()


@pytest.fixture(scope="session")
def lab(lab_control) -> dict:
    """The lab's status dict (see `drbook-lab status --json`)."""
    return lab_control.status()


@pytest.fixture(scope="session")
def prefect_fast():
    """Sync flow runs pay ~1 s joining the heartbeat thread; switch it off (DESIGN.md §6)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def make_site(lab: dict, directory: Path) -> str:
    """The lab's site config with names of its own (vault, containers, resource group), so
    tests never meet the demo's state or each other's."""
    from drbook.site import forget_sites

    tag = uuid.uuid4().hex[:6]
    doc = yaml.safe_load(Path(lab["site_config"]).read_text())
    doc["site"] = f"test-{tag}"
    doc["azure"]["resource_group"] = f"drbook-test-{tag}"
    doc["azure"]["containers"] = {"cache": f"t{tag}-cache", "replicas": f"t{tag}-replicas", "vault": f"t{tag}-vault"}
    path = directory / f"site-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    forget_sites()
    return str(path)


@pytest.fixture(scope="module")
def site_path(lab, tmp_path_factory, prefect_fast) -> str:
    """A site of this test module's own on the lab."""
    return make_site(lab, tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def vc(tmp_path_factory):
    """A vCenter simulator of the module's own (its tests power VMs off, add and remove
    them), with the lab's VMs in it."""
    from lab.vcenter import populate, simulator

    with simulator(tmp_path_factory.mktemp("vcsim")) as sim:
        populate(sim.url, sim.user, sim.password, str(sim.ca_bundle), _SPEC)
        yield sim


@pytest.fixture
def conn(vc):
    with vc.connect() as c:
        yield c
