"""Discover, push the agent and protect, end to end on the lab through the flows."""

from __future__ import annotations

import pytest

from drbook.site import open_site
from drbook.flows.discover import discover_flow
from drbook.flows.push_mobility import push_mobility_flow
from lab.spec import load_spec

pytestmark = [pytest.mark.lab, pytest.mark.serial]  # workload writers on app01, app02; pushes the agent to every machine


def test_discovery_finds_the_lab_vms_with_disks_and_ips(site_path):
    result = discover_flow(site_path=site_path)
    vms = {v["name"]: v for v in result["inventory"]["vms"]}
    for m in load_spec().machines:
        if not m.vmware:  # the lab's physical server: no VM
            assert m.name not in vms
            continue
        vm = vms[m.name]
        assert vm["num_cpu"] == m.cpus and vm["memory_mb"] == m.memory_mb
        assert [d["capacity_bytes"] for d in vm["disks"]] == [d.size_mib * 2**20 for d in m.disks]
        assert m.ip in vm["ip_addresses"] or not m.powered_on  # a spare left off reports no guest IP
        assert [n["network"] for n in vm["nics"]] == [m.network]
    again = discover_flow(site_path=site_path)
    assert again["changes"] == {"new": [], "removed": [], "changed": []}
    stored = open_site(site_path).vault.get_bytes("inventory/latest.json")
    assert b"db01" in stored


def test_push_installs_the_agent_on_every_lab_machine_and_is_idempotent(site_path):
    names = [m.name for m in load_spec().machines]
    first = push_mobility_flow(names, site_path=site_path)
    assert all(r.get("error") is None for r in first), first
    assert {r["action"] for r in first} <= {"installed", "upgraded", "unchanged"}
    second = push_mobility_flow(names, site_path=site_path)
    assert {r["action"] for r in second} == {"unchanged"}
    vault = open_site(site_path).vault
    for r in second:
        assert vault.item(r["machine"]).agent_version == r["version"]


def _snapshot_bytes(site, disk) -> bytes:
    blob = site.blob_service.get_blob_client(disk.container, disk.blob, snapshot=disk.snapshot)
    return blob.download_blob(offset=0, length=disk.size_bytes).readall()


def test_points_taken_over_ssh_with_the_workload_running_hold_their_freeze_instant(lab, site_path, tmp_path):
    from drbook.flows.replication import enable_replication_flow, replicate_flow
    from lab.workload import paused_seq
    from tests.lab_site import start_writer

    site = open_site(site_path)
    enable_replication_flow(["app01", "app02"], group="app", site_path=site_path)
    writers = {m: start_writer(lab, m, tmp_path, rate=3, seed=21 + i) for i, m in enumerate(("app01", "app02"))}
    try:
        for _ in range(2):
            replicate_flow(["app01", "app02"], site_path=site_path)
    finally:
        for w in writers.values():
            w.stop()
    by_item = {m: sorted(site.engine.points.points(m), key=lambda p: p.time)[-2:] for m in writers}
    assert [p.id for p in by_item["app01"]] == [p.id for p in by_item["app02"]], "group members share point ids"
    for machine, points in by_item.items():
        for point in points:
            seq = next(s for s in (paused_seq(x) for x in point.freeze_evidence) if s is not None)
            assert point.consistency == "crash"
            for disk in point.disks:
                assert _snapshot_bytes(site, disk) == writers[machine].expected(disk.disk, seq), \
                    f"{machine} {point.id} {disk.disk} is not the disk at its freeze instant"
    # The group's freeze was one barrier: every member paused before any resumed.
    from lab.workload import read_log

    for pid in (p.id for p in by_item["app01"]):
        pauses, resumes = [], []
        for machine, w in writers.items():
            point = next(p for p in by_item[machine] if p.id == pid)
            seq = next(s for s in (paused_seq(x) for x in point.freeze_evidence) if s is not None)
            events = read_log(w.log)
            pause = next(e for e in events if e.get("event") == "pause" and e["seq"] == seq)
            resume = next(e for e in events if e.get("event") == "resume" and e["time"] >= pause["time"])
            pauses.append(pause["time"])
            resumes.append(resume["time"])
        assert max(pauses) < min(resumes)
