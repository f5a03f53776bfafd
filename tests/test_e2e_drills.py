"""Scheduled drills on the lab: the drill a weekly schedule starts (no parameters but the
site) brings db01 up in the isolated network, verifies it byte for byte, reports and cleans
up — also when verification fails, and then the run fails after the cleanup. A second drill
of a machine whose drill is still up is refused before anything is touched.

"Nothing left" is asked of Azure itself: no resource tagged with the run or the site, and
no drill resource group.
"""

from __future__ import annotations

import time
import uuid

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from drbook.errors import PreflightError, VerificationError
from drbook.failover.build import resources_of_run, resources_of_site
from drbook.failover.drills import require_no_live_drill
from drbook.flows.drill import drill_cleanup_flow, drill_flow, scheduled_drill_flow
from drbook.flows.prepare_azure import prepare_azure_flow
from drbook.flows.replication import enable_replication_flow
from drbook.models import DrillRecord, ItemState
from drbook.replication.manifest import HASH_LEN, Manifest
from drbook.vault import DRILLS_PREFIX, drill_key
from tests.lab_site import sdk, site  # noqa: F401  (fixtures)

pytestmark = pytest.mark.lab


def _artifact_keys(run_id: str) -> set[str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key for a in found if a.key}


def _assert_nothing_left(site, sdk, run_id: str, drill_id: str) -> None:
    assert resources_of_run(site.azure, run_id) == []
    assert resources_of_site(site.azure, site.cfg.site) == [], "nothing of this site is left in Azure"
    assert sdk.resource.resource_groups.check_existence(f"drbook-{drill_id}") is False


def _drills(site) -> list[DrillRecord]:
    return site.vault.list(DRILLS_PREFIX, DrillRecord)


def test_protect_db01(site, site_path):
    prepare_azure_flow(site_path=site_path)
    enable_replication_flow(["db01"], site_path=site_path)
    assert site.vault.item("db01").state == ItemState.PROTECTED
    assert site.engine.points.points("db01"), "the initial copy ends in a recovery point"


def test_the_scheduled_drill_verifies_reports_and_leaves_nothing(site, sdk, site_path):
    started = time.monotonic()
    state = scheduled_drill_flow(site_path=site_path, return_state=True)  # as the schedule starts it
    elapsed = time.monotonic() - started
    assert state.is_completed(), state.message
    result = state.result()
    run_id = str(state.state_details.flow_run_id)
    [row] = result["results"]
    assert row["machine"] == "db01" and row["verified"] and row["bytes_verified"] > 0
    assert row["ip"] == "10.10.2.13", "drilled in the isolated network with the machine's IP"
    drill_id = result["drill_id"]
    key = drill_id.lower()
    assert {key, f"{key}-table", f"{key}-outcome"} <= _artifact_keys(run_id)
    _assert_nothing_left(site, sdk, run_id, drill_id)
    record = site.vault.get(drill_key(drill_id), DrillRecord)
    assert record.status == "cleaned-up" and record.report["cleanup"]["left"] == []
    print(f"scheduled drill of db01, cleanup included: {elapsed:.1f} s")


def test_a_run_of_the_weekly_drill_deployment_does_the_same_on_the_worker(site, sdk, site_path):
    """As the weekly schedule starts it, on the process-server worker; only the site differs
    (the deployment's default site is the lab's demo site, not this module's own)."""
    from prefect.deployments import run_deployment

    started = time.monotonic()
    run = run_deployment("scheduled-drill/weekly-drill", parameters={"site_path": site_path}, timeout=300,
                         poll_interval=1)
    elapsed = time.monotonic() - started
    assert run.state is not None and run.state.is_completed(), f"{run.name}: {run.state}"
    run_id = str(run.id)
    [record] = [r for r in _drills(site) if r.report.get("flow_run_id") == run_id]
    assert record.status == "cleaned-up" and record.report["results"][0]["verified"]
    key = record.drill_id.lower()
    assert {key, f"{key}-table", f"{key}-outcome"} <= _artifact_keys(run_id)
    _assert_nothing_left(site, sdk, run_id, record.drill_id)
    print(f"weekly-drill deployment run on the worker, from start to completed: {elapsed:.1f} s")


def test_a_scheduled_drill_that_does_not_verify_fails_loudly_after_cleaning_up(site, sdk, site_path):
    """The newest point's manifest and its replica disagree (as bit rot in the replica would
    make them): the disks imported from it cannot verify."""
    newest = max(site.engine.points.points("db01"), key=lambda p: p.time)
    disk = newest.disks[0].disk
    good = site.engine.points.manifest("db01", newest.id, disk)
    bad = Manifest(good.disk_size, good.block_size, bytes(good.hashes))
    bad.hashes[:HASH_LEN] = bytes(b ^ 0xFF for b in bad.hashes[:HASH_LEN])
    site.engine.points.put_manifest("db01", newest.id, disk, bad)
    try:
        state = scheduled_drill_flow(site_path=site_path, return_state=True)
    finally:
        site.engine.points.put_manifest("db01", newest.id, disk, good)
    assert state.is_failed()
    with pytest.raises(VerificationError) as err:
        state.result()
    assert f"db01: the disks in Azure do not match the recovery point: {disk}: 1 blocks differ (first [0])" in str(err.value)
    run_id = str(state.state_details.flow_run_id)
    [record] = [r for r in _drills(site) if r.report.get("flow_run_id") == run_id]
    assert record.status == "failed" and "do not match" in record.report["error"]
    assert record.report["cleanup"]["left"] == []
    assert f"{record.drill_id.lower()}-outcome" in _artifact_keys(run_id)
    _assert_nothing_left(site, sdk, run_id, record.drill_id)


def test_a_second_drill_of_a_machine_whose_drill_is_up_is_refused_before_anything(site, sdk, site_path):
    first = drill_flow(["db01"], site_path=site_path)  # a person's drill: it stays up for inspection
    try:
        made = {r.id for r in resources_of_site(site.azure, site.cfg.site)}
        assert made, "the first drill is up"
        records = len(_drills(site))
        for second in (lambda: drill_flow(["db01"], site_path=site_path),
                       lambda: scheduled_drill_flow(site_path=site_path)):
            with pytest.raises(PreflightError) as err:
                second()
            msg = str(err.value)
            assert f"drill {first['drill_id']} of db01 (flow run {first['flow_run_id']}" in msg
            assert "is still up" in msg and f"`drbook test-failover-cleanup {first['drill_id']}`" in msg
        assert {r.id for r in resources_of_site(site.azure, site.cfg.site)} == made, "nothing imported or created"
        assert len(_drills(site)) == records, "no drill record written"
    finally:
        drill_cleanup_flow(first["drill_id"], site_path=site_path)
    _assert_nothing_left(site, sdk, first["flow_run_id"], first["drill_id"])


def test_a_drill_whose_run_crashed_blocks_until_its_cleanup(site, site_path):
    """The process died mid-drill: the record stays `running`. The refusal names it and the
    way out; the cleanup it names closes it."""
    crashed = DrillRecord(drill_id=f"drill-crashed-{uuid.uuid4().hex[:8]}", items=["db01"],
                          resource_group="drbook-drill-crashed", report={"flow_run_id": str(uuid.uuid4())})
    site.vault.put(drill_key(crashed.drill_id), crashed)
    with pytest.raises(PreflightError, match="its run crashed and left the record running") as err:
        scheduled_drill_flow(site_path=site_path)
    assert f"`drbook test-failover-cleanup {crashed.drill_id}`" in str(err.value)
    drill_cleanup_flow(crashed.drill_id, site_path=site_path)
    assert site.vault.get(drill_key(crashed.drill_id), DrillRecord).status == "cleaned-up"
    require_no_live_drill(_drills(site), ["db01"])  # nothing blocks a drill any more
