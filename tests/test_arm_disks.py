"""Managed disks and snapshots in the ARM emulator: bytes really copied, VHDs really checked."""

from __future__ import annotations

import json
import os
import ssl
import struct
import threading
import time
import uuid

import azure.mgmt.compute.models as cm
import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient

from tests.arm_fixtures import LOCATION, MIB, arm, arm_azurite, arm_certs, arm_server, start_server  # noqa: F401

GRANT = cm.GrantAccessData(access="Read", duration_in_seconds=3600)


# -- the fixed-VHD footer, written here from Microsoft's "Virtual Hard Disk Image Format
# Specification" (v1.0, 2006): "Hard Disk Footer Format" and the appendix "CHS Calculation" /
# "Checksum Calculation". Deliberately nothing from lab.arm.vhd: these are the truth the
# emulator's footers are checked against, and the footers the tests forge for it.

FOOTER = 512
VHD_EPOCH = 946684800  # "seconds since January 1, 2000 12:00:00 AM in UTC/GMT"


def spec_chs(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) of the spec's appendix, for `size` bytes of data."""
    total_sectors = size // 512
    if total_sectors > 65535 * 16 * 255:
        total_sectors = 65535 * 16 * 255
    if total_sectors >= 65535 * 16 * 63:
        sectors_per_track = 255
        heads = 16
        cylinder_times_heads = total_sectors // sectors_per_track
    else:
        sectors_per_track = 17
        cylinder_times_heads = total_sectors // sectors_per_track
        heads = (cylinder_times_heads + 1023) // 1024
        if heads < 4:
            heads = 4
        if cylinder_times_heads >= heads * 1024 or heads > 16:
            sectors_per_track = 31
            heads = 16
            cylinder_times_heads = total_sectors // sectors_per_track
        if cylinder_times_heads >= heads * 1024:
            sectors_per_track = 63
            heads = 16
            cylinder_times_heads = total_sectors // sectors_per_track
    return cylinder_times_heads // heads, heads, sectors_per_track


def spec_checksum(footer: bytes) -> int:
    """One's complement of the byte sum of the footer, its checksum field (64..67) counted as zero."""
    zeroed = footer[:64] + b"\0\0\0\0" + footer[68:]
    return ~sum(zeroed) & 0xFFFFFFFF


def spec_footer(size: int, *, cookie: bytes = b"conectix", disk_type: int = 2, checksum_delta: int = 0) -> bytes:
    """A fixed-VHD footer for `size` bytes, field by field as the spec lays it out (the keywords
    forge bad ones: another cookie, another disk type, a checksum off by `checksum_delta`)."""
    cyl, heads, spt = spec_chs(size)
    fields = struct.pack(
        ">8sIIQI4sI4sQQHBBII16sB",
        cookie,                        # 0   cookie
        0x00000002,                    # 8   features: the reserved bit, always set
        0x00010000,                    # 12  file format version 1.0
        0xFFFFFFFFFFFFFFFF,            # 16  data offset: none for a fixed disk
        int(time.time()) - VHD_EPOCH,  # 24  time stamp
        b"test",                       # 28  creator application
        0x00010000,                    # 32  creator version
        b"Wi2k",                       # 36  creator host OS
        size,                          # 40  original size
        size,                          # 48  current size
        cyl, heads, spt,               # 56  disk geometry
        disk_type,                     # 60  disk type
        0,                             # 64  checksum (computed below)
        os.urandom(16),                # 68  unique id
        0,                             # 84  saved state
    )
    footer = bytearray(fields + b"\0" * (FOOTER - len(fields)))  # 85..511 reserved, zeroes
    assert len(footer) == FOOTER
    struct.pack_into(">I", footer, 64, (spec_checksum(bytes(footer)) + checksum_delta) & 0xFFFFFFFF)
    return bytes(footer)


def assert_fixed_vhd_footer(footer: bytes, size: int) -> None:
    """`footer` (a VHD's last 512 bytes) is a valid fixed-disk footer for a disk of `size` bytes."""
    assert len(footer) == FOOTER
    assert footer[0:8] == b"conectix"
    (features, version, data_offset, stamp) = struct.unpack_from(">IIQI", footer, 8)
    assert features == 0x00000002, hex(features)
    assert version == 0x00010000, hex(version)
    assert data_offset == 0xFFFFFFFFFFFFFFFF, hex(data_offset)
    assert 0 < stamp <= int(time.time()) - VHD_EPOCH + 60, stamp  # created, and not in the future
    original, current = struct.unpack_from(">QQ", footer, 40)
    assert (original, current) == (size, size)
    assert struct.unpack_from(">HBB", footer, 56) == spec_chs(size)
    assert struct.unpack_from(">I", footer, 60)[0] == 2  # fixed hard disk
    assert struct.unpack_from(">I", footer, 64)[0] == spec_checksum(footer)
    assert footer[84] == 0  # not in a saved state
    assert footer[85:] == b"\0" * 427  # reserved


def upload(emulator, name: str, data: bytes, **kwargs) -> str:
    """`data` as a page blob with a footer built here from the spec (not by the emulator's code)."""
    return emulator.upload_vhd(name, data, spec_footer(len(data)), **kwargs)


@pytest.mark.parametrize("size, chs", [
    (MIB, (30, 4, 17)),                  # 2048 sectors: 17 per track, 120 tracks, at least 4 heads
    (2 * MIB, (60, 4, 17)),
    (200 * MIB, (825, 16, 31)),          # 24094 tracks of 17 need 24 heads > 16: 31 per track
    (1 << 30, (2080, 16, 63)),           # 31 per track still needs >= 16384 tracks: 63 per track
    (2 << 30, (4161, 16, 63)),
    (127 << 30, (65278, 16, 255)),       # >= 65535*16*63 sectors: 255 per track
    (1 << 40, (65535, 16, 255)),         # over 65535*16*255 sectors: clamped
])
def test_spec_chs_worked_examples(size, chs):
    """The appendix's algorithm, worked by hand for each of its branches."""
    assert spec_chs(size) == chs
    c, h, s = chs
    assert c * h * s * 512 <= size  # the CHS size is rounded down, never more than the disk


def test_spec_checksum_worked_example():
    footer = bytearray(FOOTER)
    footer[0:8] = b"conectix"
    footer[64:68] = b"\xff\xff\xff\xff"  # not counted
    # c o n e c t i x = 99+111+110+101+99+116+105+120 = 861 = 0x35d
    assert spec_checksum(bytes(footer)) == 0xFFFFFFFF - 0x35D


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
    assert_fixed_vhd_footer(tail.content[512:], 2 << 30)
    # the footer is the last 512 bytes: the blob is 2 GiB + 512 bytes long
    assert tail.headers["Content-Range"] == f"bytes {(2 << 30) - 512}-{(2 << 30) + 511}/{(2 << 30) + 512}"


@pytest.mark.parametrize("size_gb", [1, 128, 4096])  # CHS: 63 sectors per track, 255, 255 clamped
def test_empty_disk_footer_geometry(arm, size_gb):
    """The emulator writes the footer of an empty disk itself: its geometry in each branch of the spec."""
    arm.rg("rg")
    arm.disk("rg", "blank", size_gb=size_gb)
    size = size_gb << 30
    sas = arm.compute.disks.begin_grant_access("rg", "blank", GRANT).result(timeout=20).access_sas
    tail = fetch(arm, sas, f"{size}-{size + 511}")
    assert tail.headers["Content-Range"] == f"bytes {size}-{size + 511}/{size + 512}"
    assert_fixed_vhd_footer(tail.content, size)


def test_import_copies_the_bytes_and_grant_access_serves_them(arm):
    account = _setup(arm)
    data = os.urandom(2 * MIB)
    source = upload(arm, "app01/disk0.vhd", data)
    assert "?snapshot=" in source
    disk = arm.import_disk("app01-disk0", source, account.id).result(timeout=20)
    assert (disk.disk_size_bytes, disk.disk_size_gb, disk.provisioning_state) == (2 * MIB, 1, "Succeeded")
    assert disk.creation_data.source_uri == source
    # the disk owns a copy: overwriting the source afterwards changes nothing
    upload(arm, "app01/disk0.vhd", b"\xff" * (2 * MIB), snapshot=False)

    access = arm.compute.disks.begin_grant_access("rg", "app01-disk0", GRANT).result(timeout=20)
    assert arm.compute.disks.get("rg", "app01-disk0").disk_state == "ActiveSAS"
    whole = fetch(arm, access.access_sas)
    assert whole.status_code == 200
    assert whole.content[:-512] == data and len(whole.content) == 2 * MIB + 512
    assert_fixed_vhd_footer(whole.content[-512:], 2 * MIB)
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


@pytest.mark.parametrize("case, data, footer, reason", [
    ("cookie", MIB, spec_footer(MIB, cookie=b"notavhd!"), "cookie"),
    ("dynamic", MIB, spec_footer(MIB, disk_type=3), "dynamic"),
    ("checksum", MIB, spec_footer(MIB, checksum_delta=1), "checksum"),
    ("odd-size", MIB + 512, spec_footer(MIB + 512), "whole number of MiB"),
    ("length", MIB, spec_footer(2 * MIB), "must be"),
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
    block = container.upload_blob("block.vhd", b"\0" * MIB + spec_footer(MIB), overwrite=True)
    with pytest.raises(HttpResponseError) as exc:
        arm.import_disk("block", block.url, account.id).result(timeout=20)
    assert exc.value.error.code == "InvalidVhd" and "BlockBlob" in exc.value.error.message
    good = upload(arm, "good.vhd", b"\0" * MIB)
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
    disk = arm.import_disk("src", upload(arm, "src.vhd", data), account.id).result(timeout=20)
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
    restored = fetch(arm, sas).content
    assert restored[:-512] == data
    assert_fixed_vhd_footer(restored[-512:], MIB)
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
    arm.import_disk("grow", upload(arm, "grow.vhd", data), account.id).result(timeout=20)
    grown = arm.compute.disks.begin_update("rg", "grow", cm.DiskUpdate(disk_size_gb=1)).result(timeout=20)
    assert grown.disk_size_bytes == 1 << 30
    sas = arm.compute.disks.begin_grant_access("rg", "grow", GRANT).result(timeout=20).access_sas
    assert fetch(arm, sas, f"0-{MIB - 1}").content == data
    tail = fetch(arm, sas, f"{MIB}-{MIB + 511}").content
    assert tail == b"\0" * 512  # the old footer is gone
    end = fetch(arm, sas, f"{1 << 30}-{(1 << 30) + 1023}")  # asks past the end: only the footer is there
    assert end.status_code == 206 and end.headers["Content-Range"] == f"bytes {1 << 30}-{(1 << 30) + 511}/{(1 << 30) + 512}"
    assert_fixed_vhd_footer(end.content, 1 << 30)


# -- incremental snapshots ------------------------------------------------------------------------


def incremental(arm, name: str, source_id: str, rg: str = "rg", **kwargs):
    return arm.compute.snapshots.begin_create_or_update(rg, name, cm.Snapshot(
        location=LOCATION, incremental=True,
        creation_data=cm.CreationData(create_option="Copy", source_resource_id=source_id, **kwargs)))


def write_disk(arm, disk, offset: int, data: bytes) -> None:
    """What the VM's guest would do: write pages of the disk's blob in the emulator's Azurite."""
    blob = arm.azurite.client().get_blob_client("arm-disks", f"disks/{disk.unique_id}.vhd")
    blob.upload_page(data, offset=offset, length=len(data))


def snapshot_bytes(arm, name: str, rg: str = "rg") -> bytes:
    """A snapshot's bytes through a grant-access (Read) SAS, read with the storage SDK; revoked after."""
    snaps = arm.compute.snapshots
    sas = snaps.begin_grant_access(rg, name, GRANT).result(timeout=20).access_sas
    try:
        return BlobClient.from_blob_url(sas, connection_verify=str(arm.ca)).download_blob().readall()
    finally:
        snaps.begin_revoke_access(rg, name).result(timeout=20)


def running_vm_with_disk(arm, data: bytes):
    """A running VM whose OS disk was imported from `data`; the disk."""
    account = _setup(arm)
    disk = arm.import_disk("app-os", upload(arm, "app-os.vhd", data), account.id).result(timeout=20)
    nic = arm.nic(arm.vnet().subnets[0].id)
    arm.compute.virtual_machines.begin_create_or_update("rg", "app", arm.vm_body(disk.id, [nic.id])).result(timeout=20)
    disk = arm.compute.disks.get("rg", "app-os")
    assert disk.disk_state == "Attached"
    return disk


def test_incremental_snapshot_of_a_running_vms_disk_copies_its_bytes_at_that_instant(arm):
    a, b, c, d = os.urandom(MIB), os.urandom(4096), os.urandom(4096), os.urandom(4096)
    disk = running_vm_with_disk(arm, a)

    s1 = incremental(arm, "app-os-s1", disk.id).result(timeout=20)
    assert (s1.incremental, s1.provisioning_state, s1.disk_size_bytes) == (True, "Succeeded", MIB)
    assert s1.creation_data.create_option == "Copy"
    assert s1.creation_data.source_resource_id == disk.id
    assert s1.creation_data.source_unique_id == disk.unique_id
    assert s1.incremental_snapshot_family_id and s1.unique_id != disk.unique_id
    write_disk(arm, disk, 0, b)  # the guest writes after s1 ...
    s2 = incremental(arm, "app-os-s2", disk.id).result(timeout=20)
    write_disk(arm, disk, 8192, c)  # ... and after s2
    assert s2.incremental_snapshot_family_id == s1.incremental_snapshot_family_id
    full = arm.compute.snapshots.begin_create_or_update("rg", "app-os-full", cm.Snapshot(
        location=LOCATION, creation_data=cm.CreationData(create_option="Copy", source_resource_id=disk.id))) \
        .result(timeout=20)
    assert full.incremental is False and full.incremental_snapshot_family_id is None
    write_disk(arm, disk, 16384, d)  # after the full snapshot too
    assert arm.compute.snapshots.get("rg", "app-os-s2").incremental is True

    one, two, three = snapshot_bytes(arm, "app-os-s1"), snapshot_bytes(arm, "app-os-s2"), \
        snapshot_bytes(arm, "app-os-full")
    assert one[:-512] == a
    assert two[:-512] == b + a[4096:]
    assert three[:-512] == b + a[4096:8192] + c + a[12288:]
    for whole in (one, two, three):
        assert_fixed_vhd_footer(whole[-512:], MIB)
    assert arm.compute.disks.get("rg", "app-os").disk_state == "Attached"
    # a disk restored from a snapshot has bytes of its own too: writing it leaves the snapshot alone
    restored = arm.compute.disks.begin_create_or_update("rg", "restored", cm.Disk(
        location=LOCATION, creation_data=cm.CreationData(create_option="Copy", source_resource_id=s1.id))) \
        .result(timeout=20)
    write_disk(arm, restored, 0, c)
    assert snapshot_bytes(arm, "app-os-s1") == one

    family = arm.control.snapshot_families()[disk.unique_id]
    assert [(s["id"], s["sequence"]) for s in family["snapshots"]] == [(s1.id, 1), (s2.id, 2)]
    assert family["familyId"] == s1.incremental_snapshot_family_id and family["next"] == 3
    # changing a snapshot's kind afterwards is refused
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.snapshots.begin_create_or_update("rg", "app-os-full", cm.Snapshot(
            location=LOCATION, incremental=True,
            creation_data=cm.CreationData(create_option="Copy", source_resource_id=disk.id))).result(timeout=20)
    assert (exc.value.status_code, exc.value.error.code) == (400, "PropertyChangeNotAllowed")


def test_incremental_snapshot_only_of_a_disk(arm):
    account = _setup(arm)
    disk = arm.disk("rg", "d1")
    snap = incremental(arm, "d1-s1", disk.id).result(timeout=20)
    full = arm.compute.snapshots.begin_create_or_update("rg", "d1-full", cm.Snapshot(
        location=LOCATION, creation_data=cm.CreationData(create_option="Copy", source_resource_id=disk.id))) \
        .result(timeout=20)
    for source in (snap, full):
        with pytest.raises(HttpResponseError) as exc:
            incremental(arm, "of-a-snapshot", source.id).result(timeout=20)
        assert (exc.value.status_code, exc.value.error.code) == (400, "InvalidParameter")
        assert "managed disk" in exc.value.error.message
    source = upload(arm, "inc.vhd", b"\0" * MIB)
    with pytest.raises(HttpResponseError) as exc:
        incremental(arm, "imported", None, source_uri=source, storage_account_id=account.id)
    assert (exc.value.status_code, exc.value.error.code) == (400, "InvalidParameter")
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.snapshots.begin_create_or_update("rg", "imported", cm.Snapshot(
            location=LOCATION, incremental=True, creation_data=cm.CreationData(
                create_option="Import", source_uri=source, storage_account_id=account.id))).result(timeout=20)
    assert (exc.value.status_code, exc.value.error.code) == (400, "InvalidParameter")
    assert sorted(s.name for s in arm.compute.snapshots.list_by_resource_group("rg")) == ["d1-full", "d1-s1"]
    # a disk copied from an incremental snapshot is a plain disk
    restored = arm.compute.disks.begin_create_or_update("rg", "d1-restored", cm.Disk(
        location=LOCATION, creation_data=cm.CreationData(create_option="Copy", source_resource_id=snap.id))) \
        .result(timeout=20)
    assert restored.creation_data.source_unique_id == snap.unique_id


def test_incremental_snapshot_limits_per_disk(arm):
    arm.rg("rg")
    d1, d2 = arm.disk("rg", "d1"), arm.disk("rg", "d2")
    assert arm.control.snapshot_limits() == {"maxPerDisk": 500, "maxPerWindow": 7, "windowSeconds": 300}
    # at most N created within the window, per disk
    arm.control.set_snapshot_limits(max_per_window=2)
    incremental(arm, "d1-a", d1.id).result(timeout=20)
    incremental(arm, "d1-b", d1.id).result(timeout=20)
    with pytest.raises(ResourceExistsError) as exc:
        incremental(arm, "d1-c", d1.id).result(timeout=20)
    assert (exc.value.status_code, exc.value.error.code) == (409, "OperationNotAllowed")
    assert "within 300 seconds" in exc.value.error.message
    with pytest.raises(ResourceNotFoundError):
        arm.compute.snapshots.get("rg", "d1-c")
    incremental(arm, "d2-a", d2.id).result(timeout=20)  # another disk: its own count
    arm.compute.snapshots.begin_create_or_update("rg", "d1-full", cm.Snapshot(  # full snapshots: no limit
        location=LOCATION, creation_data=cm.CreationData(create_option="Copy", source_resource_id=d1.id))) \
        .result(timeout=20)
    # deleting a snapshot does not give back a creation inside the window
    arm.compute.snapshots.begin_delete("rg", "d1-b").result(timeout=20)
    with pytest.raises(ResourceExistsError):
        incremental(arm, "d1-c", d1.id).result(timeout=20)
    # the window slides
    arm.control.set_snapshot_limits(window_seconds=1)
    time.sleep(1.1)
    incremental(arm, "d1-c", d1.id).result(timeout=20)

    # at most N at any time: deleting one frees room
    limits = arm.control.set_snapshot_limits(max_per_window=100, max_per_disk=3)
    assert limits == {"maxPerDisk": 3, "maxPerWindow": 100, "windowSeconds": 1}
    incremental(arm, "d1-d", d1.id).result(timeout=20)  # a, c, d
    with pytest.raises(ResourceExistsError) as exc:
        incremental(arm, "d1-e", d1.id).result(timeout=20)
    assert (exc.value.status_code, exc.value.error.code) == (409, "OperationNotAllowed")
    assert "already has 3 incremental snapshots" in exc.value.error.message
    arm.compute.snapshots.begin_delete("rg", "d1-a").result(timeout=20)
    incremental(arm, "d1-e", d1.id).result(timeout=20)
    family = arm.control.snapshot_families()[d1.unique_id]
    assert [(s["id"].rsplit("/", 1)[1], s["sequence"]) for s in family["snapshots"]] == \
        [("d1-c", 3), ("d1-d", 4), ("d1-e", 5)]
    # back to Azure's values; a reset forgets the lowered limits too
    assert arm.control.set_snapshot_limits(clear=True)["maxPerDisk"] == 500
    arm.control.set_snapshot_limits(max_per_disk=1)
    arm.control.reset()
    assert arm.control.snapshot_limits()["maxPerDisk"] == 500 and arm.control.snapshot_families() == {}


def test_concurrent_incremental_snapshots_of_one_disk_respect_the_limit(arm):
    arm.rg("rg")
    disk = arm.disk("rg", "d1")
    arm.control.set_snapshot_limits(max_per_window=3)
    outcomes: dict[str, object] = {}

    def take(name: str) -> None:
        try:
            outcomes[name] = incremental(arm, name, disk.id).result(timeout=30)
        except ResourceExistsError as exc:
            outcomes[name] = exc.error.code

    threads = [threading.Thread(target=take, args=(f"s{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    made = sorted(n for n, o in outcomes.items() if not isinstance(o, str))
    assert len(made) == 3 and sorted(o for o in outcomes.values() if isinstance(o, str)) == ["OperationNotAllowed"] * 3
    family = arm.control.snapshot_families()[disk.unique_id]
    assert sorted(s["id"].rsplit("/", 1)[1] for s in family["snapshots"]) == made
    assert [s["sequence"] for s in family["snapshots"]] == [1, 2, 3]


def test_incremental_snapshots_survive_a_restart(arm, arm_certs, arm_azurite, tmp_path):
    sub = str(uuid.uuid4())
    server = start_server(arm_certs, arm_azurite, tmp_path / "state", sub)
    port = server.port
    data = os.urandom(MIB)
    try:
        a = arm.__class__(server, arm.ca, arm_azurite)
        disk = running_vm_with_disk(a, data)
        s1 = incremental(a, "app-os-s1", disk.id).result(timeout=20)
        write_disk(a, disk, 0, b"\1" * 4096)
        incremental(a, "app-os-s2", disk.id).result(timeout=20)
        a.control.set_snapshot_limits(max_per_window=3)
    finally:
        server.stop()
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["snapshotFamilies"][disk.unique_id]["next"] == 3
    server = start_server(arm_certs, arm_azurite, tmp_path / "state", sub, port=port)
    try:
        a = arm.__class__(server, arm.ca, arm_azurite)
        again = a.compute.snapshots.get("rg", "app-os-s1")
        assert (again.incremental, again.creation_data.source_unique_id) == (True, disk.unique_id)
        assert again.incremental_snapshot_family_id == s1.incremental_snapshot_family_id
        assert snapshot_bytes(a, "app-os-s1")[:-512] == data
        s3 = incremental(a, "app-os-s3", disk.id).result(timeout=20)  # the sequence goes on
        assert s3.incremental_snapshot_family_id == s1.incremental_snapshot_family_id
        family = a.control.snapshot_families()[disk.unique_id]
        assert [s["sequence"] for s in family["snapshots"]] == [1, 2, 3]
        with pytest.raises(ResourceExistsError):  # the limit and the window's creations persisted
            incremental(a, "app-os-s4", disk.id).result(timeout=20)
        assert snapshot_bytes(a, "app-os-s3")[:4096] == b"\1" * 4096
    finally:
        server.stop()
