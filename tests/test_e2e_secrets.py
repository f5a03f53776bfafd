"""No secret is written anywhere (issue 14): after the lifecycle ran on the lab, every log,
report, artifact, vault document, the Prefect database and the results Prefect stored are
searched for every secret the lab has, in every encoding it could take (tests/secrets_scan.py
says which, what is searched and what is left out, and why).

The suite already runs the whole lifecycle (test_e2e_failover, test_e2e_drills and the
others), so this module runs last (tests/conftest.py LAST_MODULES; `serial`, so in the last
phase of tests/run.sh) and only scans. Run alone, it first runs a lifecycle of one machine
itself: protect, a replication cycle on the process server, a drill and its cleanup, an
approved failover and its commit. DRBOOK_SECRETS_SCAN_LIFECYCLE=1 runs that in any case.
"""

from __future__ import annotations

import os

import pytest

from tests import secrets_scan
from tests.lab_site import run_in_thread, wait_for_paused_run

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # runs after every other test of its session

MACHINE = "db01"
# What an empty or broken scan would leave at zero.
REQUIRED = (secrets_scan.LAB_FILES, secrets_scan.LOGS, secrets_scan.REPORTS, secrets_scan.PYTEST_FILES,
            secrets_scan.PREFECT_ROWS, secrets_scan.PREFECT_DB_FILES, secrets_scan.PREFECT_RESULTS,
            secrets_scan.BLOBS, secrets_scan.VAULT_DOCS, secrets_scan.BLOB_METADATA)


def _minimal_lifecycle(site_path: str) -> None:
    """As the other e2e tests run it, on one machine of this module's own site."""
    from prefect.deployments import run_deployment

    from drbook.approvals import answer
    from drbook.flows.drill import drill_cleanup_flow, drill_flow
    from drbook.flows.failover import commit_flow, failover_flow
    from drbook.flows.prepare_azure import prepare_azure_flow
    from drbook.flows.replication import enable_replication_flow

    prepare_azure_flow(site_path=site_path)
    enable_replication_flow([MACHINE], site_path=site_path)
    # A cycle on the process server: its run stores its result where the worker's runs do.
    run = run_deployment("replicate-cycle/replicate", parameters={"machines": [MACHINE], "site_path": site_path},
                         timeout=300, poll_interval=1)
    assert run.state is not None and run.state.is_completed(), f"{run.name}: {run.state}"

    drill = drill_flow([MACHINE], site_path=site_path)
    assert drill["results"][0]["verified"]
    assert drill_cleanup_flow(drill["drill_id"], site_path=site_path)["left"] == []

    thread, out = run_in_thread(failover_flow, [MACHINE], point="latest-processed", approval_timeout=120,
                                site_path=site_path)
    try:
        run_id = wait_for_paused_run([MACHINE], site_path)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the flow: {out.get('error')!r}") from None
    answer(run_id, approve=True, approver="tester", comment="secrets scan lifecycle")
    thread.join(300)
    assert "result" in out, f"failover failed: {out.get('error')!r}"
    assert out["result"]["results"][0]["verified"]
    commit_flow([MACHINE], site_path=site_path)


@pytest.mark.timeout(600)  # its own lifecycle, when run alone, takes about 5 min
def test_no_secret_is_written_anywhere_after_a_lifecycle(lab, site_path, tmp_path_factory):
    from drbook.config import load_site

    seen = secrets_scan.lifecycle_seen(lab)
    if not seen.complete or os.environ.get("DRBOOK_SECRETS_SCAN_LIFECYCLE"):
        print(f"running a lifecycle of {MACHINE} first (the lab had: {seen})")
        _minimal_lifecycle(site_path)
        seen = secrets_scan.lifecycle_seen(lab)
        assert seen.complete, f"a lifecycle ran, yet the lab does not show one: {seen}"

    secrets = secrets_scan.secret_values(lab, load_site(lab["site_config"]))
    assert not secrets.unresolved, f"secrets the scan could not read: {secrets.unresolved}"
    assert len(secrets) >= 10, f"too few secrets to search for ({len(secrets)}): is the lab's secrets directory empty?"

    scanner = secrets_scan.scan_lab(lab, secrets, tmp_path_factory.getbasetemp())
    coverage = scanner.coverage
    print(f"{len(secrets)} secret values; lifecycle seen: {seen}")
    print(coverage.summary())
    if secrets.ignored:
        print("ignored (too short): " + "; ".join(secrets.ignored))

    assert not scanner.hits, (f"{len(scanner.hits)} places hold a secret (where: which secret):\n"
                              + "\n".join(sorted(map(str, scanner.hits))))
    empty = [kind for kind in REQUIRED if coverage.counts[kind] == 0]
    assert not empty, f"the scan searched no {', no '.join(empty)}: it would have found nothing there either"
