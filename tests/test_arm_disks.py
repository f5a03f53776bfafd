"""Managed disks and snapshots in the ARM emulator: bytes really copied, VHDs really checked."""

from __future__ import annotations

import os
import ssl
import struct

import azure.mgmt.compute.models as cm
import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from lab.arm import vhd
from tests.arm_fixtures import LOCATION, MIB, arm, arm_azurite, arm_certs, arm_server  # noqa: F401

GRANT = cm.GrantAccessData(access="Read", duration_in_seconds=3600)


def fetch(arm, url: str, range_: str | None = None) -> httpx.Response:
    headers = {"Range": f"bytes={range_}"} if range_ else {}
    return httpx.get(url, verify=ssl.create_default_context(cafile=str(arm.ca)), headers=headers, timeout=30)


def _setup(arm):
    arm.rg("rg")
    return arm.storage_account("rg", "drbookreplicas")


def test_empty_disk(arm):
    arm.rg("rg")
    disk = arm.disk("rg", "blank", size_gb=2)
    assert (disk.provisioning_state, disk.disk_state) == ("Succeeded", "Unattached")
    assert (disk.disk_size_gb, disk.disk_size_bytes) == (2, 2 << 30)
    assert disk.creation_data.create_option == "Empty" and disk.unique_id
    assert [d.name for d in arm.compute.disks.list_by_resource_group("rg")] == ["blank"]
    assert [d.name for d in arm.compute.disks.list()] == ["blank"]
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.disks.begin_create_or_update("rg", "nosize", cm.Disk(
            location=LOCATION, creation_data=cm.CreationData(create_option="Empty"))).result(timeout=20)
    assert exc.value.error.code == "InvalidParameter"
    # its bytes, exported, are zeros followed by a fixed-VHD footer, as Azure exports them
    sas = arm.compute.disks.begin_grant_access("rg", "blank", GRANT).result(timeout=20).access_sas
    tail = fetch(arm, sas, f"{(2 << 30) - 512}-{(2 << 30) + 511}")
    assert tail.status_code == 206
    assert tail.content[:512] == b"\0" * 512
    assert vhd.validate(tail.content[512:], (2 << 30) + 512) == 2 << 30


def test_import_copies_the_bytes_and_grant_access_serves_them(arm):
    account = _setup(arm)
    data = os.urandom(2 * MIB)
    source = arm.upload_vhd("app01/disk0.vhd", data)
    assert "?snapshot=" in source
    disk = arm.import_disk("app01-disk0", source, account.id).result(timeout=20)
    assert (disk.disk_size_bytes, disk.disk_size_gb, disk.provisioning_state) == (2 * MIB, 1, "Succeeded")
    assert disk.creation_data.source_uri == source
    # the disk owns a copy: overwriting the source afterwards changes nothing
    arm.upload_vhd("app01/disk0.vhd", b"\xff" * (2 * MIB), snapshot=False)

    access = arm.compute.disks.begin_grant_access("rg", "app01-disk0", GRANT).result(timeout=20)
    assert arm.compute.disks.get("rg", "app01-disk0").disk_state == "ActiveSAS"
    whole = fetch(arm, access.access_sas)
    assert whole.status_code == 200
    assert whole.content[:-512] == data
    assert vhd.validate(whole.content[-512:], len(whole.content)) == 2 * MIB
    part = fetch(arm, access.access_sas, "1048576-1052671")
    assert part.status_code == 206 and part.content == data[MIB: MIB + 4096]

    with pytest.raises(ResourceExistsError) as exc:
        arm.compute.disks.begin_delete("rg", "app01-disk0").result(timeout=20)
    assert exc.value.error.code == "OperationNotAllowed"
    with pytest.raises(ResourceExistsError):
        arm.compute.disks.begin_grant_access("rg", "app01-disk0", GRANT).result(timeout=20)
    arm.compute.disks.begin_revoke_access("rg", "app01-disk0").result(timeout=20)
    assert arm.compute.disks.get("rg", "app01-disk0").disk_state == "Unattached"
    assert fetch(arm, access.access_sas).status_code in (403, 404)
    arm.compute.disks.begin_delete("rg", "app01-disk0").result(timeout=20)
    with pytest.raises(ResourceNotFoundError):
        arm.compute.disks.get("rg", "app01-disk0")


def _footer(size: int, **overrides) -> bytes:
    footer = bytearray(vhd.make_footer(size))
    if "cookie" in overrides:
        footer[0:8] = overrides["cookie"]
    if "disk_type" in overrides:
        struct.pack_into(">I", footer, 60, overrides["disk_type"])
    if overrides.get("fix_checksum", True):
        struct.pack_into(">I", footer, 64, vhd.checksum(bytes(footer)))
    else:
        struct.pack_into(">I", footer, 64, (vhd.checksum(bytes(footer)) + 1) & 0xFFFFFFFF)
    return bytes(footer)


@pytest.mark.parametrize("case, data, footer, reason", [
    ("cookie", MIB, _footer(MIB, cookie=b"notavhd!"), "cookie"),
    ("dynamic", MIB, _footer(MIB, disk_type=3), "dynamic"),
    ("checksum", MIB, _footer(MIB, fix_checksum=False), "checksum"),
    ("odd-size", MIB + 512, _footer(MIB + 512), "whole number of MiB"),
    ("length", MIB, _footer(2 * MIB), "must be"),
])
def test_import_refuses_what_is_not_a_fixed_vhd(arm, case, data, footer, reason):
    account = _setup(arm)
    source = arm.upload_vhd(f"bad/{case}.vhd", b"\1" * data, footer)
    with pytest.raises(HttpResponseError) as exc:
        arm.import_disk(f"bad-{case}", source, account.id).result(timeout=20)
    assert (exc.value.status_code, exc.value.error.code) == (400, "InvalidVhd")
    assert reason in exc.value.error.message
    with pytest.raises(ResourceNotFoundError):
        arm.compute.disks.get("rg", f"bad-{case}")


def test_import_refuses_bad_sources(arm):
    account = _setup(arm)
    container = arm.azurite.client().get_container_client("replicas")
    if not container.exists():
        container.create_container()
    block = container.upload_blob("block.vhd", b"\0" * MIB + vhd.make_footer(MIB), overwrite=True)
    with pytest.raises(HttpResponseError) as exc:
        arm.import_disk("block", block.url, account.id).result(timeout=20)
    assert exc.value.error.code == "InvalidVhd" and "BlockBlob" in exc.value.error.message
    good = arm.upload_vhd("good.vhd", b"\0" * MIB)
    with pytest.raises(HttpResponseError) as exc:
        arm.import_disk("elsewhere", "https://example.invalid/acct/c/x.vhd", account.id).result(timeout=20)
    assert exc.value.error.code == "InvalidParameter"
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.disks.begin_create_or_update("rg", "noacct", cm.Disk(
            location=LOCATION, creation_data=cm.CreationData(create_option="Import", source_uri=good))).result(20)
    assert exc.value.error.code == "InvalidParameter" and "storageAccountId" in exc.value.error.message
    with pytest.raises(HttpResponseError) as exc:
        arm.import_disk("ghost", good.split("?")[0].replace("good.vhd", "ghost.vhd"), account.id).result(timeout=20)
    assert exc.value.error.code == "InvalidParameter"


def test_snapshot_then_copy(arm):
    account = _setup(arm)
    data = os.urandom(MIB)
    disk = arm.import_disk("src", arm.upload_vhd("src.vhd", data), account.id).result(timeout=20)
    snaps = arm.compute.snapshots
    snap = snaps.begin_create_or_update("rg", "src-snap", cm.Snapshot(location=LOCATION, creation_data=cm.CreationData(
        create_option="Copy", source_resource_id=disk.id))).result(timeout=20)
    assert (snap.provisioning_state, snap.disk_size_bytes) == ("Succeeded", MIB)
    assert snap.creation_data.source_unique_id == disk.unique_id
    assert [s.name for s in snaps.list_by_resource_group("rg")] == ["src-snap"]
    arm.compute.disks.begin_delete("rg", "src").result(timeout=20)  # the snapshot keeps its own bytes
    copy = arm.compute.disks.begin_create_or_update("rg", "restored", cm.Disk(
        location=LOCATION, creation_data=cm.CreationData(create_option="Copy", source_resource_id=snap.id))) \
        .result(timeout=20)
    assert copy.os_type == "Linux" and copy.disk_size_bytes == MIB
    sas = arm.compute.disks.begin_grant_access("rg", "restored", GRANT).result(timeout=20).access_sas
    assert fetch(arm, sas).content[:-512] == data
    snap_sas = snaps.begin_grant_access("rg", "src-snap", GRANT).result(timeout=20).access_sas
    assert fetch(arm, snap_sas, "0-4095").content == data[:4096]
    snaps.begin_revoke_access("rg", "src-snap").result(timeout=20)
    with pytest.raises(ResourceNotFoundError) as exc:
        arm.compute.disks.begin_create_or_update("rg", "x", cm.Disk(location=LOCATION, creation_data=cm.CreationData(
            create_option="Copy", source_resource_id=snap.id + "-gone"))).result(timeout=20)
    assert exc.value.error.code == "NotFound"
    arm.rg("far", location="northeurope")
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.disks.begin_create_or_update("far", "x", cm.Disk(
            location="northeurope", creation_data=cm.CreationData(create_option="Copy", source_resource_id=snap.id))) \
            .result(timeout=20)
    assert exc.value.error.code == "InvalidParameter"


def test_growing_a_disk_moves_its_footer(arm):
    account = _setup(arm)
    data = os.urandom(MIB)
    arm.import_disk("grow", arm.upload_vhd("grow.vhd", data), account.id).result(timeout=20)
    grown = arm.compute.disks.begin_update("rg", "grow", cm.DiskUpdate(disk_size_gb=1)).result(timeout=20)
    assert grown.disk_size_bytes == 1 << 30
    sas = arm.compute.disks.begin_grant_access("rg", "grow", GRANT).result(timeout=20).access_sas
    assert fetch(arm, sas, f"0-{MIB - 1}").content == data
    tail = fetch(arm, sas, f"{MIB}-{MIB + 511}").content
    assert tail == b"\0" * 512  # the old footer is gone
    footer = fetch(arm, sas, f"{1 << 30}-{(1 << 30) + 511}").content
    assert vhd.validate(footer, (1 << 30) + 512) == 1 << 30
