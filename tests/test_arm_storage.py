"""Microsoft.Storage in the ARM emulator: accounts that lead to the lab's real Azurite."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.storage.models import Sku, StorageAccountCheckNameAvailabilityParameters, \
    StorageAccountCreateParameters, StorageAccountUpdateParameters
from azure.storage.blob import BlobServiceClient

from tests.arm_fixtures import ACCOUNT, LOCATION, arm, arm_azurite, arm_certs, arm_server  # noqa: F401


def test_storage_account_maps_onto_azurite(arm):
    arm.rg("rg")
    accounts = arm.storage.storage_accounts
    poller = accounts.begin_create("rg", "drbookvault", StorageAccountCreateParameters(
        sku=Sku(name="Standard_LRS"), kind="StorageV2", location=LOCATION, tags={"role": "vault"}))
    account = poller.result(timeout=20)
    assert account.provisioning_state == "Succeeded"
    assert account.primary_endpoints.blob == arm.azurite.endpoint + "/"
    got = accounts.get_properties("rg", "drbookvault")
    assert (got.id, got.tags, got.sku.name, got.kind) == (account.id, {"role": "vault"}, "Standard_LRS", "StorageV2")
    assert [a.name for a in accounts.list()] == ["drbookvault"]
    assert [a.name for a in accounts.list_by_resource_group("rg")] == ["drbookvault"]
    keys = accounts.list_keys("rg", "drbookvault").keys_property
    assert [k.key_name for k in keys] == ["key1", "key2"]
    # What ARM hands out reaches real blobs.
    svc = BlobServiceClient(got.primary_endpoints.blob, credential={"account_name": ACCOUNT,
                                                                    "account_key": keys[0].value},
                            connection_verify=str(arm.ca))
    container = svc.get_container_client("arm-storage-test")
    if not container.exists():
        container.create_container()
    container.upload_blob("hello.txt", b"hi", overwrite=True)
    assert container.download_blob("hello.txt").readall() == b"hi"
    updated = accounts.update("rg", "drbookvault", StorageAccountUpdateParameters(tags={"role": "cache"}))
    assert updated.tags == {"role": "cache"}
    accounts.delete("rg", "drbookvault")
    assert list(accounts.list()) == []


def test_storage_account_refusals(arm):
    arm.rg("rg")
    arm.rg("rg2")
    accounts = arm.storage.storage_accounts
    with pytest.raises(HttpResponseError) as exc:
        accounts.begin_create("rg", "Not_Valid", StorageAccountCreateParameters(
            sku=Sku(name="Standard_LRS"), kind="StorageV2", location=LOCATION)).result(timeout=20)
    assert exc.value.error.code == "AccountNameInvalid"
    arm.storage_account("rg", "taken")
    with pytest.raises(ResourceExistsError) as exc:
        arm.storage_account("rg2", "taken")
    assert exc.value.error.code == "StorageAccountAlreadyTaken"
    check = accounts.check_name_availability(StorageAccountCheckNameAvailabilityParameters(name="taken"))
    assert (check.name_available, check.reason) == (False, "AlreadyExists")
    assert accounts.check_name_availability(StorageAccountCheckNameAvailabilityParameters(name="free")) \
        .name_available
