"""Microsoft.Resources in the ARM emulator, through azure-mgmt-resource."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.resource.resources.models import ResourceGroup, ResourceGroupPatchable, TagsPatchResource, \
    TagsResource, Tags

from azure.mgmt.compute.models import CreationData, Snapshot

from tests.arm_fixtures import LOCATION, MIB, arm, arm_azurite, arm_certs, arm_server  # noqa: F401


def test_resource_group_lifecycle(arm):
    rgs = arm.resources.resource_groups
    assert not rgs.check_existence("drill")
    created = rgs.create_or_update("drill", ResourceGroup(location="West Europe", tags={"owner": "dr"}))
    assert created.location == LOCATION and created.properties.provisioning_state == "Succeeded"
    assert created.id == f"/subscriptions/{arm.sub}/resourceGroups/drill"
    assert rgs.check_existence("DRILL")
    assert rgs.get("drill").tags == {"owner": "dr"}
    assert rgs.update("drill", ResourceGroupPatchable(tags={"owner": "ops"})).tags == {"owner": "ops"}
    again = rgs.create_or_update("drill", ResourceGroup(location=LOCATION, tags={"a": "1"}))
    assert again.tags == {"a": "1"}
    arm.rg("other")
    assert sorted(g.name for g in rgs.list()) == ["drill", "other"]
    assert [g.name for g in rgs.list(filter="tagName eq 'a' and tagValue eq '1'")] == ["drill"]


def test_resource_group_refusals(arm):
    rgs = arm.resources.resource_groups
    arm.rg("rg")
    with pytest.raises(ResourceExistsError) as exc:
        rgs.create_or_update("rg", ResourceGroup(location="northeurope"))
    assert exc.value.error.code == "InvalidResourceGroupLocation"
    with pytest.raises(HttpResponseError) as exc:
        rgs.create_or_update("rg2", ResourceGroup(location="atlantis"))
    assert exc.value.error.code == "LocationNotAvailableForResourceType"
    with pytest.raises(HttpResponseError) as exc:
        rgs.create_or_update("bad/name?", ResourceGroup(location=LOCATION))
    assert exc.value.status_code in (400, 404)
    with pytest.raises(ResourceNotFoundError) as exc:
        rgs.begin_delete("ghost").result(timeout=20)
    assert exc.value.error.code == "ResourceGroupNotFound"


def test_deleting_a_group_deletes_everything_in_it(arm):
    arm.rg("rg")
    vm = arm.vm("vm1")
    account = arm.storage_account("rg", "drbookrgdel")
    assert _disk_blobs(arm) == []  # an Empty disk has no bytes until something needs them
    data = arm.import_disk("data", arm.upload_vhd("rgdel.vhd", b"\x5a" * MIB), account.id).result(timeout=20)
    arm.compute.snapshots.begin_create_or_update("rg", "snap", Snapshot(
        location=LOCATION, creation_data=CreationData(create_option="Copy", source_resource_id=data.id))) \
        .result(timeout=20)
    assert len(_disk_blobs(arm)) == 2  # the imported disk's bytes and its snapshot's
    arm.rg("keep")
    kept = arm.disk("keep", "survivor")
    # Long enough to be seen Deleting on a loaded machine (the default finishes in a blink)
    arm.control.set_operation("Microsoft.Resources/subscriptions/resourceGroups/delete", duration=3)
    poller = arm.resources.resource_groups.begin_delete("rg")
    assert arm.resources.resource_groups.get("rg").properties.provisioning_state == "Deleting"
    with pytest.raises(ResourceExistsError) as exc:
        arm.disk("rg", "late")
    assert exc.value.error.code == "ResourceGroupBeingDeleted"
    poller.result(timeout=20)
    assert not arm.resources.resource_groups.check_existence("rg")
    assert [r.id for r in arm.resources.resources.list()] == [kept.id]
    with pytest.raises(ResourceNotFoundError):
        arm.compute.virtual_machines.get("rg", vm.name)
    assert _disk_blobs(arm) == []


def _disk_blobs(arm) -> list[str]:
    cc = arm.azurite.client().get_container_client("arm-disks")
    return [b.name for b in cc.list_blobs()] if cc.exists() else []


def test_group_deletion_is_refused_while_others_use_its_resources(arm):
    arm.rg("net")
    subnet = arm.vnet("net").subnets[0]
    arm.rg("app")
    arm.nic(subnet.id, "app", "nic1")
    with pytest.raises(HttpResponseError) as exc:
        arm.resources.resource_groups.begin_delete("net").result(timeout=20)
    assert (exc.value.status_code, exc.value.error.code) == (409, "ResourceGroupDeletionBlocked")
    assert arm.resources.resource_groups.get("net").properties.provisioning_state == "Succeeded"
    assert arm.network.virtual_networks.get("net", "vnet").name == "vnet"


def test_listing_resources_with_tag_filters(arm):
    arm.rg("rg")
    arm.rg("rg2")
    arm.compute.disks.begin_create_or_update("rg", "a", {
        "location": LOCATION, "tags": {"drbook-drill": "d1"},
        "properties": {"creationData": {"createOption": "Empty"}, "diskSizeGB": 1}}).result(timeout=20)
    arm.compute.disks.begin_create_or_update("rg2", "b", {
        "location": LOCATION, "tags": {"drbook-drill": "d1", "x": "y"},
        "properties": {"creationData": {"createOption": "Empty"}, "diskSizeGB": 1}}).result(timeout=20)
    arm.compute.disks.begin_create_or_update("rg", "c", {
        "location": LOCATION, "tags": {"drbook-drill": "d2"},
        "properties": {"creationData": {"createOption": "Empty"}, "diskSizeGB": 1}}).result(timeout=20)
    res = arm.resources.resources
    drill = sorted(r.name for r in res.list(filter="tagName eq 'drbook-drill' and tagValue eq 'd1'"))
    assert drill == ["a", "b"]
    assert sorted(r.name for r in res.list(filter="tagName eq 'DRBOOK-DRILL'")) == ["a", "b", "c"]
    in_rg = sorted(r.name for r in res.list_by_resource_group("rg", filter="tagName eq 'drbook-drill' and "
                                                                          "tagValue eq 'd1'"))
    assert in_rg == ["a"]
    assert sorted(r.name for r in res.list(filter="resourceType eq 'Microsoft.Compute/disks'")) == ["a", "b", "c"]
    assert [r.name for r in res.list(filter="name eq 'c'")] == ["c"]
    item = next(iter(res.list(filter="name eq 'c'")))
    assert item.type == "Microsoft.Compute/disks" and item.tags == {"drbook-drill": "d2"}
    with pytest.raises(HttpResponseError) as exc:
        list(res.list(filter="tagValue eq 'd1'"))
    assert exc.value.error.code == "InvalidFilterInQueryString"


def test_tags_at_scope(arm):
    rg = arm.rg("rg", env="test")
    disk = arm.disk("rg", "d")
    tags = arm.resources.tags
    assert tags.get_at_scope(rg.id).properties.tags == {"env": "test"}
    tags.begin_create_or_update_at_scope(disk.id, TagsResource(properties=Tags(tags={"a": "1", "b": "2"}))) \
        .result(timeout=20)
    assert arm.compute.disks.get("rg", "d").tags == {"a": "1", "b": "2"}
    tags.begin_update_at_scope(disk.id, TagsPatchResource(operation="Merge", properties=Tags(tags={"c": "3"}))) \
        .result(timeout=20)
    tags.begin_update_at_scope(disk.id, TagsPatchResource(operation="Delete", properties=Tags(tags={"a": "1"}))) \
        .result(timeout=20)
    assert arm.compute.disks.get("rg", "d").tags == {"b": "2", "c": "3"}
    tags.begin_delete_at_scope(rg.id).result(timeout=20)
    assert arm.resources.resource_groups.get("rg").tags == {}
