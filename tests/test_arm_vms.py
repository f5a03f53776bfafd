"""Virtual machines in the ARM emulator, through azure-mgmt-compute and its pollers."""

from __future__ import annotations

import azure.mgmt.compute.models as cm
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from tests.arm_fixtures import LOCATION, arm, arm_azurite, arm_certs, arm_server  # noqa: F401


def _power(arm, name: str, rg: str = "rg") -> str:
    codes = [s.code for s in arm.compute.virtual_machines.instance_view(rg, name).statuses]
    return next(c for c in codes if c.startswith("PowerState/"))


def test_vm_lifecycle(arm):
    arm.rg("rg")
    subnet = arm.vnet("rg").subnets[0]
    os_disk = arm.disk("rg", "app01-os", 4)
    data = [arm.disk("rg", f"app01-data{i}", 1, os_type=None) for i in range(2)]
    nic = arm.nic(subnet.id, "rg", "app01-nic", ip="10.0.1.20")
    body = arm.vm_body(os_disk.id, [nic.id], tuple(d.id for d in data), size="Standard_D2s_v3",
                       tags={"drbook-plan": "p1"},
                       diagnostics_profile=cm.DiagnosticsProfile(boot_diagnostics=cm.BootDiagnostics(enabled=True)))
    vm = arm.compute.virtual_machines.begin_create_or_update("rg", "app01", body).result(timeout=20)
    assert vm.provisioning_state == "Succeeded" and vm.vm_id
    assert vm.hardware_profile.vm_size == "Standard_D2s_v3"
    assert vm.storage_profile.os_disk.managed_disk.id == os_disk.id
    assert [d.lun for d in vm.storage_profile.data_disks] == [0, 1]
    assert vm.diagnostics_profile.boot_diagnostics.enabled is True
    assert vm.tags == {"drbook-plan": "p1"}
    for disk in (os_disk, *data):
        got = arm.compute.disks.get("rg", disk.name)
        assert (got.managed_by, got.disk_state) == (vm.id, "Attached")
    attached_nic = arm.network.network_interfaces.get("rg", "app01-nic")
    assert attached_nic.virtual_machine.id == vm.id and attached_nic.mac_address
    assert attached_nic.ip_configurations[0].private_ip_address == "10.0.1.20"

    view = arm.compute.virtual_machines.instance_view("rg", "app01")
    assert [s.code for s in view.statuses] == ["ProvisioningState/succeeded", "PowerState/running"]
    expanded = arm.compute.virtual_machines.get("rg", "app01", expand="instanceView")
    assert expanded.instance_view.statuses[1].display_status == "VM running"
    assert [v.name for v in arm.compute.virtual_machines.list("rg")] == ["app01"]
    assert [v.name for v in arm.compute.virtual_machines.list_all()] == ["app01"]

    vms = arm.compute.virtual_machines
    vms.begin_power_off("rg", "app01").result(timeout=20)
    assert _power(arm, "app01") == "PowerState/stopped"
    vms.begin_deallocate("rg", "app01").result(timeout=20)
    assert _power(arm, "app01") == "PowerState/deallocated"
    assert arm.compute.disks.get("rg", "app01-os").disk_state == "Reserved"
    with pytest.raises(ResourceExistsError) as exc:
        vms.begin_restart("rg", "app01").result(timeout=20)
    assert exc.value.error.code == "OperationNotAllowed"
    vms.begin_start("rg", "app01").result(timeout=20)
    assert _power(arm, "app01") == "PowerState/running"
    vms.begin_restart("rg", "app01").result(timeout=20)
    assert _power(arm, "app01") == "PowerState/running"

    updated = vms.begin_update("rg", "app01", cm.VirtualMachineUpdate(tags={"drbook-plan": "p2"})).result(timeout=20)
    assert updated.tags == {"drbook-plan": "p2"} and updated.storage_profile.os_disk.managed_disk.id == os_disk.id

    vms.begin_delete("rg", "app01").result(timeout=20)
    with pytest.raises(ResourceNotFoundError):
        vms.get("rg", "app01")
    for disk in (os_disk, *data):
        got = arm.compute.disks.get("rg", disk.name)
        assert (got.managed_by, got.disk_state) == (None, "Unattached")
    assert arm.network.network_interfaces.get("rg", "app01-nic").virtual_machine is None


def test_attached_things_cannot_be_deleted_or_shared(arm):
    arm.rg("rg")
    vm = arm.vm("vm1")
    subnet_id = arm.network.network_interfaces.get("rg", "vm1-nic").ip_configurations[0].subnet.id
    with pytest.raises(ResourceExistsError) as exc:
        arm.compute.disks.begin_delete("rg", "vm1-os").result(timeout=20)
    assert exc.value.error.code == "OperationNotAllowed" and vm.name in exc.value.error.message
    with pytest.raises(HttpResponseError) as exc:
        arm.network.network_interfaces.begin_delete("rg", "vm1-nic").result(timeout=20)
    assert exc.value.error.code == "NicInUse"
    with pytest.raises(ResourceExistsError) as exc:
        arm.compute.disks.begin_grant_access("rg", "vm1-os", cm.GrantAccessData(
            access="Read", duration_in_seconds=600)).result(timeout=20)
    assert exc.value.error.code == "OperationNotAllowed"
    # a second VM may not take the first one's disk or NIC
    other_nic = arm.nic(subnet_id, "rg", "vm2-nic")
    other_disk = arm.disk("rg", "vm2-os")
    with pytest.raises(ResourceExistsError) as exc:
        arm.compute.virtual_machines.begin_create_or_update(
            "rg", "vm2", arm.vm_body(vm.storage_profile.os_disk.managed_disk.id, [other_nic.id])).result(timeout=20)
    assert exc.value.error.code == "ConflictingUserInput"
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.virtual_machines.begin_create_or_update(
            "rg", "vm2", arm.vm_body(other_disk.id, [vm.network_profile.network_interfaces[0].id])).result(timeout=20)
    assert exc.value.error.code == "NicInUse"
    # nothing of vm2 was left behind by the refusals
    assert arm.compute.disks.get("rg", "vm2-os").disk_state == "Unattached"
    with pytest.raises(ResourceNotFoundError):
        arm.compute.virtual_machines.get("rg", "vm2")


def test_disk_with_active_sas_cannot_be_attached(arm):
    arm.rg("rg")
    subnet = arm.vnet("rg").subnets[0]
    disk = arm.disk("rg", "exported")
    arm.compute.disks.begin_grant_access("rg", "exported", cm.GrantAccessData(
        access="Read", duration_in_seconds=600)).result(timeout=20)
    nic = arm.nic(subnet.id, "rg", "n")
    with pytest.raises(ResourceExistsError) as exc:
        arm.compute.virtual_machines.begin_create_or_update("rg", "vm", arm.vm_body(disk.id, [nic.id])) \
            .result(timeout=20)
    assert exc.value.error.code == "OperationNotAllowed" and "ActiveSAS" in exc.value.error.message


def _data_disk(arm, i: int, lun: int) -> cm.DataDisk:
    disk = arm.disk("rg", f"d{i}", os_type=None)
    return cm.DataDisk(lun=lun, create_option="Attach", managed_disk=cm.ManagedDiskParameters(id=disk.id))


@pytest.mark.parametrize("case", ["size", "disk-location", "nic-location", "data-disks", "missing-disk",
                                  "duplicate-lun", "os-profile", "no-nic"])
def test_vm_refusals(arm, case):
    arm.rg("rg")
    subnet = arm.vnet("rg").subnets[0]
    os_disk = arm.disk("rg", "os")
    nic = arm.nic(subnet.id, "rg", "nic")
    body = arm.vm_body(os_disk.id, [nic.id])
    expected = ("InvalidParameter", 400)
    if case == "size":
        body.hardware_profile.vm_size = "Standard_Imaginary_v9"
    elif case == "disk-location":
        arm.rg("far", location="northeurope")
        body.storage_profile.os_disk.managed_disk.id = arm.disk("far", "os", location="northeurope").id
    elif case == "nic-location":
        arm.rg("far", location="northeurope")
        far_subnet = arm.vnet("far", location="northeurope").subnets[0]
        body.network_profile.network_interfaces[0].id = arm.nic(far_subnet.id, "far", "n", location="northeurope").id
    elif case == "data-disks":
        body.hardware_profile.vm_size = "Standard_B1s"  # two data disks at most
        body.storage_profile.data_disks = [_data_disk(arm, i, i) for i in range(3)]
        expected = ("OperationNotAllowed", 409)
    elif case == "missing-disk":
        body.storage_profile.os_disk.managed_disk.id = os_disk.id + "-gone"
        expected = ("NotFound", 404)
    elif case == "duplicate-lun":
        body.storage_profile.data_disks = [_data_disk(arm, i, 0) for i in range(2)]
    elif case == "os-profile":
        body.os_profile = cm.OSProfile(computer_name="x", admin_username="azureuser")
    elif case == "no-nic":
        body.network_profile.network_interfaces = []
    with pytest.raises(HttpResponseError) as exc:
        arm.compute.virtual_machines.begin_create_or_update("rg", "vm", body).result(timeout=20)
    assert (exc.value.error.code, exc.value.status_code) == expected
    if case == "size":
        assert "Standard_B2s" in exc.value.error.message and exc.value.error.target == "vmSize"
    assert arm.compute.disks.get("rg", "os").managed_by is None
    assert arm.network.network_interfaces.get("rg", "nic").virtual_machine is None


def test_vm_sizes_per_location(arm):
    sizes = {s.name: s for s in arm.compute.virtual_machine_sizes.list(LOCATION)}
    for name in ("Standard_B1s", "Standard_B2s", "Standard_B2ms", "Standard_B4ms", "Standard_D2s_v3",
                 "Standard_D4s_v3", "Standard_D8s_v3", "Standard_D16s_v3", "Standard_E2s_v3", "Standard_E4s_v3",
                 "Standard_E8s_v3"):
        assert name in sizes
    d4 = sizes["Standard_D4s_v3"]
    assert (d4.number_of_cores, d4.memory_in_mb, d4.max_data_disk_count) == (4, 16384, 8)
    with pytest.raises(HttpResponseError) as exc:
        list(arm.compute.virtual_machine_sizes.list("atlantis"))
    assert exc.value.error.code == "LocationNotAvailableForResourceType"


def test_run_command(arm):
    arm.rg("rg")
    arm.vm("web")
    vms = arm.compute.virtual_machines
    result = vms.begin_run_command("rg", "web", cm.RunCommandInput(
        command_id="RunShellScript", script=["systemctl is-active nginx"])).result(timeout=20)
    assert result.value[0].code == "ProvisioningState/succeeded"
    assert result.value[0].message.startswith("Enable succeeded")
    arm.control.set_run_command_output("active\n", code="ProvisioningState/succeeded")
    assert vms.begin_run_command("rg", "web", cm.RunCommandInput(command_id="RunShellScript", script=["x"])) \
        .result(timeout=20).value[0].message == "active\n"
    with pytest.raises(HttpResponseError) as exc:
        vms.begin_run_command("rg", "web", cm.RunCommandInput(command_id="RunPowerShellScript", script=["dir"])) \
            .result(timeout=20)
    assert exc.value.error.code == "InvalidParameter"
    vms.begin_deallocate("rg", "web").result(timeout=20)
    with pytest.raises(ResourceExistsError) as exc:
        vms.begin_run_command("rg", "web", cm.RunCommandInput(command_id="RunShellScript", script=["x"])) \
            .result(timeout=20)
    assert exc.value.error.code == "OperationNotAllowed"
    assert [c["script"] for c in arm.control.run_commands()] == [["systemctl is-active nginx"], ["x"]]


def test_delete_option_delete_removes_disks_and_nics(arm):
    arm.rg("rg")
    subnet = arm.vnet("rg").subnets[0]
    disk = arm.disk("rg", "os")
    nic = arm.nic(subnet.id, "rg", "nic")
    body = arm.vm_body(disk.id, [nic.id])
    body.storage_profile.os_disk.delete_option = "Delete"
    body.network_profile.network_interfaces[0].delete_option = "Delete"
    arm.compute.virtual_machines.begin_create_or_update("rg", "vm", body).result(timeout=20)
    arm.compute.virtual_machines.begin_delete("rg", "vm").result(timeout=20)
    assert list(arm.resources.resources.list_by_resource_group("rg")) != []
    assert [r.name for r in arm.resources.resources.list_by_resource_group("rg")] == ["vnet"]


def test_failed_vm_creation_leaves_a_failed_vm(arm):
    arm.rg("rg")
    arm.control.inject_fault("Microsoft.Compute/virtualMachines/write", fail_provisioning=1,
                             error_code="OSProvisioningTimedOut", error_message="the guest did not report ready")
    with pytest.raises(HttpResponseError) as exc:
        arm.vm("vm")
    assert exc.value.error.code == "OSProvisioningTimedOut"
    vm = arm.compute.virtual_machines.get("rg", "vm", expand="instanceView")
    assert vm.provisioning_state == "Failed"
    assert vm.instance_view.statuses[0].code == "ProvisioningState/failed/OSProvisioningTimedOut"
    arm.compute.virtual_machines.begin_delete("rg", "vm").result(timeout=20)
    assert arm.compute.disks.get("rg", "vm-os").disk_state == "Unattached"
