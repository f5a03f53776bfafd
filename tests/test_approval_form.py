"""The failover's approval: the summary an approver reads, the form (a choice of points, a
required approver) and what an answer means — plain data, no service; then, on the lab, that
`drbook approve` refuses a point the run does not offer and the run stays paused."""

from __future__ import annotations

import datetime as dt
import getpass

import pytest
from prefect._internal.pydantic.v2_schema import create_v2_schema
from pydantic import ValidationError

from drbook.config import NetworkMapping, SiteConfig
from drbook.errors import DRError, PreflightError
from drbook.failover import approval as ap
from drbook.failover.recovery import plan_recovery
from drbook.failover.sizing import VmSize
from drbook.models import PointDisk, ProtectedItem, RecoveryPoint

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)
SIZES = [VmSize(name="Standard_B2s", cores=2, memory_mb=4096), VmSize(name="Standard_D4s_v3", cores=4, memory_mb=16384)]
MAPS = [NetworkMapping(source_network="app-net", target_vnet="prod", target_subnet="app", address_prefix="10.10.1.0/24",
                       vnet_address_space="10.10.0.0/16"),
        NetworkMapping(source_network="db-net", target_vnet="prod", target_subnet="db", address_prefix="10.10.2.0/24",
                       vnet_address_space="10.10.0.0/16")]


def _site() -> SiteConfig:
    return SiteConfig.model_validate({
        "site": "t",
        "azure": {"subscription_id": "sub-1", "resource_group": "dr-rg", "location": "westeurope",
                  "storage_account": "acct", "blob_endpoint": "https://x", "encryption_key": "env:K"},
        "network_mapping": [m.model_dump() for m in MAPS],
        "machines": [{"name": "db01", "address": "a", "network": "db-net", "ip": "10.10.2.13", "cpus": 2, "memory_mb": 4096},
                     {"name": "app01", "address": "b", "network": "app-net", "ip": "10.10.1.11", "cpus": 2, "memory_mb": 4096},
                     {"name": "app02", "address": "c", "network": "app-net", "ip": "10.10.1.12", "cpus": 2, "memory_mb": 4096}],
    })


def _pt(item: str, pid: str, minutes_ago: int, consistency: str = "crash", group: str | None = None) -> RecoveryPoint:
    return RecoveryPoint(id=pid, item=item, time=NOW - dt.timedelta(minutes=minutes_ago), consistency=consistency,
                         group=group, disks=[PointDisk(disk="disk0", container="r", blob=f"{item}/disk0.vhd",
                                                       snapshot="s", size_bytes=192 << 20)])


P_OLD = "pt-20261121113000-00000001"
P_APP = "pt-20261121114500-00000002"
P_NEW = "pt-20261121115500-00000003"
DB01 = [_pt("db01", P_NEW, 5), _pt("db01", P_APP, 15, "app"), _pt("db01", P_OLD, 30)]


def _summary(items, points, choice, planned=False):
    cfg = _site()
    chosen = ap.preview_points(cfg, items, points, choice, planned)
    plans = plan_recovery(cfg, [i for i in items if i.name in chosen], chosen, run_id="run-1", purpose="failover",
                          resource_group="dr-rg", sizes=SIZES, taken=set())
    options = ap.point_options(items, points, choice)
    return ap.approval_summary(cfg=cfg, run_id="run-1", items=items, planned=planned, choice=choice, chosen=chosen,
                               plans=plans, options=options, now=NOW)


def test_the_summary_says_what_will_happen_for_an_unplanned_failover_to_a_chosen_point():
    text = _summary([ProtectedItem(name="db01", machine="db01")], {"db01": DB01}, P_APP)
    assert "unplanned failover of db01" in text
    assert "**not shut down**" in text
    assert f"| db01 | `{P_APP}` | 2026-11-21 11:45:00Z | 15 min | app |" in text, "time, age = RPO, consistency"
    assert "Resource group **`dr-rg`**" in text
    assert "source network `db-net` → vnet **`prod`** / subnet `db`" in text
    assert "| db01 | `db01-vm` (Standard_B2s) | `db01-disk0` (192.0 MiB) | `db01-nic0` | 10.10.2.13" in text
    assert "1 VM(s), 1 managed disk(s), 1 NIC(s)" in text
    assert "drbook approve run-1" in text and "Open menu" in text and "Resume" in text
    assert "final replication cycle" not in text


def test_the_summary_of_latest_says_a_final_cycle_runs_first_and_shows_the_fallback_point():
    text = _summary([ProtectedItem(name="db01", machine="db01")], {"db01": DB01}, "latest")
    assert "a **final replication cycle runs first**" in text
    assert f"| db01 | `{P_NEW}` | 2026-11-21 11:55:00Z | 5 min | crash |" in text


def test_a_planned_failover_says_the_sources_will_be_shut_down_even_with_no_point_yet():
    items = [ProtectedItem(name="db01", machine="db01")]
    text = _summary(items, {"db01": []}, "latest", planned=True)
    assert "**source machines are shut down**" in text
    assert "| db01 | (the final cycle's) |" in text
    assert "from the final cycle's point" in text


def test_a_choice_that_cannot_be_met_is_refused_before_anyone_is_asked():
    items = [ProtectedItem(name="db01", machine="db01")]
    with pytest.raises(PreflightError, match="no app-consistent"):
        ap.preview_points(_site(), items, {"db01": [_pt("db01", P_NEW, 5)]}, "latest-app-consistent", False)


def test_a_group_is_offered_only_the_points_all_its_members_share():
    items = [ProtectedItem(name=m, machine=m, group="app") for m in ("app01", "app02")]
    shared = "pt-20261121115000-0000000a"
    points = {"app01": [_pt("app01", shared, 10, "app", "app"), _pt("app01", P_OLD, 30, "app", "app")],
              "app02": [_pt("app02", shared, 10, "crash", "app"), _pt("app02", P_NEW, 5)]}
    options = ap.point_options(items, points, "latest")
    assert [o.value for o in options] == ["latest", "latest-processed", "latest-app-consistent",
                                          f"{shared} (2026-11-21 11:50:00Z, crash)"]


def test_the_form_offers_the_keywords_and_the_points_newest_first_capped_with_the_requested_one_kept():
    items = [ProtectedItem(name="db01", machine="db01")]
    options = ap.point_options(items, {"db01": DB01}, P_OLD, limit=1)
    assert [ap.point_choice(o.value) for o in options] == ["latest", "latest-processed", "latest-app-consistent",
                                                           P_NEW, P_OLD]


def test_the_form_is_a_select_of_points_with_a_required_approver_and_approve_off():
    options = ap.point_options([ProtectedItem(name="db01", machine="db01")], {"db01": DB01}, P_APP)
    form = ap.approval_form(options, P_APP, "the summary")
    schema = create_v2_schema(form.__name__, model_base=form)  # what pause_flow_run stores and the UI draws
    props = schema["properties"]
    assert schema["required"] == ["approver"]
    assert props["approve"]["default"] is False and props["approve"]["type"] == "boolean"
    assert props["point"]["enum"] == [o.value for o in options]
    assert props["point"]["default"] == f"{P_APP} (2026-11-21 11:45:00Z, app)"
    assert form._description == "the summary"
    with pytest.raises(ValidationError):
        form(approve=True, approver="  ", point="latest")
    with pytest.raises(ValidationError):
        form(approve=True, approver="ann", point="pt-20990101000000-ffffffff")
    ok = form(approve=True, approver="ann", point=props["point"]["default"])
    assert ap.decide(ok, "latest").point == P_APP


def test_what_an_answer_means():
    form = ap.approval_form(ap.point_options([], {}, "latest"), "latest", "")
    yes = ap.decide(form(approve=True, approver="ann", comment="go"), "latest-processed")
    assert (yes.approved, yes.status, yes.approver, yes.point, yes.audit_action) == (
        True, "running", "ann", "latest", "failover-approved")
    no = ap.decide(form(approver="bob", comment="not today"), "latest")
    assert (no.approved, no.status, no.audit_action, no.why) == (False, "rejected", "failover-rejected", "rejected by bob")
    none = ap.decide(None, "latest")
    assert (none.approved, none.approver, none.audit_action, none.why) == (
        False, None, "failover-approval-timed-out", "nobody approved in time")


def test_drbook_approve_point_names_a_choice_by_id_keyword_or_label_else_is_refused():
    values = [o.value for o in ap.point_options([ProtectedItem(name="db01", machine="db01")], {"db01": DB01}, "latest")]
    assert ap.require_point_value(values, P_APP) == f"{P_APP} (2026-11-21 11:45:00Z, app)"
    assert ap.require_point_value(values, "latest-processed") == "latest-processed"
    with pytest.raises(DRError, match="not a recovery point this run offers; choose one of: latest, "):
        ap.require_point_value(values, "pt-20990101000000-ffffffff")


# -- on the lab ------------------------------------------------------------------------------------
def test_drbook_approve_with_a_point_that_is_not_a_choice_is_refused_and_the_run_stays_paused(site_path):
    from drbook.approvals import answer, waiting_approvals
    from drbook.flows.failover import failover_flow
    from drbook.flows.prepare_azure import prepare_azure_flow
    from drbook.flows.replication import enable_replication_flow
    from drbook.models import FailoverRecord
    from drbook.site import open_site
    from drbook.vault import failover_key
    from prefect.flow_runs import resume_flow_run
    from tests.lab_site import run_in_thread, wait_for_paused_run

    prepare_azure_flow(site_path=site_path)
    enable_replication_flow(["db01"], site_path=site_path)
    thread, out = run_in_thread(failover_flow, ["db01"], point="latest-processed", approval_timeout=120,
                                site_path=site_path)
    run_id = wait_for_paused_run(["db01"], site_path)
    try:
        with pytest.raises(DRError, match="not a recovery point this run offers"):
            answer(run_id, approve=True, approver="tester", point="pt-20990101000000-ffffffff")
        with pytest.raises(RuntimeError, match="Cannot resume"):  # the server checks the form too
            resume_flow_run(run_id, run_input={"approve": True, "approver": "tester", "point": "free text"})
        with pytest.raises(RuntimeError, match="Cannot resume"):
            resume_flow_run(run_id, run_input={"approve": True, "approver": "", "point": "latest"})
        assert any(w["run_id"] == run_id for w in waiting_approvals()), "the run stays paused"
        assert thread.is_alive()
    finally:
        answer(run_id, approve=False, comment="test done")  # approver: the OS user
        thread.join(60)
    assert "error" in out
    site = open_site(site_path)
    record = site.vault.get(failover_key(run_id), FailoverRecord)
    assert record.status == "rejected" and record.approver == getpass.getuser() and record.comment == "test done"
    entries = [e for e in site.vault.audit_log("db01") if e.flow_run_id == run_id]
    assert [(e.action, e.actor) for e in entries] == [("failover-rejected", getpass.getuser())]
