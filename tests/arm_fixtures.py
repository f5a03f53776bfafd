"""The ARM emulator in-process (ArmServer) backed by its own Azurite, and the real SDK clients.

Use from a test module: ``from tests.arm_fixtures import arm, arm_server, arm_azurite  # noqa: F401``.
Every test gets a freshly reset emulator (`arm`), so tests do not see each other's resources.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.mgmt.compute.models as cm
import azure.mgmt.network.models as nm
import pytest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import ResourceGroup
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters
from azure.storage.blob import BlobServiceClient

from lab.arm import vhd
from lab.arm.control import ArmLabControl
from lab.arm.credential import StaticTokenCredential
from lab.arm.server import ArmServer
from lab.ca import ensure_certs
from lab.paths import REPO_ROOT
from lab.procs import Managed, wait_for_port

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite); not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LOCATION = "westeurope"
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class AzuriteBlob:
    endpoint: str
    ca_bundle: Path

    def client(self) -> BlobServiceClient:
        return BlobServiceClient(self.endpoint, credential={"account_name": ACCOUNT, "account_key": KEY},
                                 connection_verify=str(self.ca_bundle))


# Each test module imports these fixtures, which gives every module its own session-scoped
# definition; the services themselves are shared through the pytest config, one per run.
_KEY = pytest.StashKey[dict]()


def _shared(request: pytest.FixtureRequest, name: str, make):
    cache = request.config.stash.setdefault(_KEY, {})
    if name not in cache:
        value, stop = make()
        cache[name] = value
        if stop:
            request.config.add_cleanup(stop)
    return cache[name]


@pytest.fixture(scope="session")
def arm_certs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return _shared(request, "certs", lambda: (ensure_certs(tmp_path_factory.mktemp("arm-certs")), None))


@pytest.fixture(scope="session")
def arm_azurite(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, arm_certs) -> AzuriteBlob:
    def make():
        base = tmp_path_factory.mktemp("arm-azurite")
        port = free_port()
        proc = Managed("azurite-blob", base)
        proc.start([str(REPO_ROOT / "lab" / "node_modules" / ".bin" / "azurite-blob"), "--blobHost", "127.0.0.1",
                    "--blobPort", str(port), "--location", str(base / "data"), "--skipApiVersionCheck",
                    "--disableTelemetry", "--loose", "--cert", str(arm_certs.server_cert),
                    "--key", str(arm_certs.server_key)])
        try:
            wait_for_port(proc, "127.0.0.1", port, timeout=30)
        except BaseException:
            proc.stop()
            raise
        return AzuriteBlob(f"https://127.0.0.1:{port}/{ACCOUNT}", arm_certs.ca_cert), proc.stop

    return _shared(request, "azurite", make)


def start_server(certs, azurite: AzuriteBlob, state_dir: Path, sub: str, port: int = 0) -> ArmServer:
    return ArmServer(cert=certs.server_cert, key=certs.server_key, subscription_id=sub, location=LOCATION,
                     port=port, state_dir=state_dir, blob_endpoint=azurite.endpoint, blob_account=ACCOUNT,
                     blob_key=KEY, ca_bundle=certs.ca_cert).start()


@pytest.fixture(scope="session")
def arm_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, arm_certs,
               arm_azurite) -> ArmServer:
    def make():
        server = start_server(arm_certs, arm_azurite, tmp_path_factory.mktemp("arm-state"), str(uuid.uuid4()))
        return server, server.stop

    return _shared(request, "server", make)


class Arm:
    """The SDK clients against the emulator, plus builders for the resources most tests need."""

    def __init__(self, server: ArmServer, ca: Path, azurite: AzuriteBlob, **client_kwargs: Any) -> None:
        self.server = server
        self.base_url = server.base_url
        self.sub = server.config.subscription_id
        self.ca = ca
        self.azurite = azurite
        self.credential = StaticTokenCredential()
        kw = {"base_url": self.base_url, "connection_verify": str(ca), **client_kwargs}
        self.resources = ResourceManagementClient(self.credential, self.sub, **kw)
        self.network = NetworkManagementClient(self.credential, self.sub, **kw)
        self.compute = ComputeManagementClient(self.credential, self.sub, **kw)
        self.storage = StorageManagementClient(self.credential, self.sub, **kw)
        self.control = ArmLabControl(self.base_url, ca)

    def clients(self, **client_kwargs: Any) -> "Arm":
        return Arm(self.server, self.ca, self.azurite, **client_kwargs)

    # -- builders ---------------------------------------------------------------------------
    def rg(self, name: str = "rg", location: str = LOCATION, **tags: str):
        return self.resources.resource_groups.create_or_update(name, ResourceGroup(location=location, tags=tags))

    def vnet(self, rg: str = "rg", name: str = "vnet", space: str = "10.0.0.0/16",
             subnets: dict[str, str] | None = None, location: str = LOCATION):
        subnets = subnets if subnets is not None else {"default": "10.0.1.0/24"}
        return self.network.virtual_networks.begin_create_or_update(rg, name, nm.VirtualNetwork(
            location=location, address_space=nm.AddressSpace(address_prefixes=[space]),
            subnets=[nm.Subnet(name=n, address_prefix=p) for n, p in subnets.items()])).result(timeout=20)

    def nic(self, subnet_id: str, rg: str = "rg", name: str = "nic", ip: str | None = None,
            location: str = LOCATION):
        cfg = nm.NetworkInterfaceIPConfiguration(name="ipconfig1", subnet=nm.Subnet(id=subnet_id),
                                                 private_ip_allocation_method="Static" if ip else "Dynamic",
                                                 private_ip_address=ip)
        return self.network.network_interfaces.begin_create_or_update(
            rg, name, nm.NetworkInterface(location=location, ip_configurations=[cfg])).result(timeout=20)

    def disk(self, rg: str = "rg", name: str = "disk", size_gb: int = 1, location: str = LOCATION,
             os_type: str | None = "Linux"):
        return self.compute.disks.begin_create_or_update(rg, name, cm.Disk(
            location=location, os_type=os_type, disk_size_gb=size_gb,
            creation_data=cm.CreationData(create_option="Empty"))).result(timeout=20)

    def vm_body(self, os_disk_id: str, nic_ids: list[str], data_disk_ids: tuple[str, ...] = (),
                size: str = "Standard_B2s", location: str = LOCATION, **props: Any) -> cm.VirtualMachine:
        nics = [cm.NetworkInterfaceReference(id=n, primary=(i == 0) if len(nic_ids) > 1 else None)
                for i, n in enumerate(nic_ids)]
        return cm.VirtualMachine(
            location=location, hardware_profile=cm.HardwareProfile(vm_size=size),
            storage_profile=cm.StorageProfile(
                os_disk=cm.OSDisk(create_option="Attach", os_type="Linux",
                                  managed_disk=cm.ManagedDiskParameters(id=os_disk_id)),
                data_disks=[cm.DataDisk(lun=i, create_option="Attach", managed_disk=cm.ManagedDiskParameters(id=d))
                            for i, d in enumerate(data_disk_ids)]),
            network_profile=cm.NetworkProfile(network_interfaces=nics), **props)

    def vm(self, name: str = "vm", rg: str = "rg", subnet_id: str | None = None, **props: Any):
        """A VM with a fresh OS disk and NIC (and a VNet when no subnet is given)."""
        if subnet_id is None:
            subnet_id = self.vnet(rg).subnets[0].id
        disk = self.disk(rg, f"{name}-os")
        nic = self.nic(subnet_id, rg, f"{name}-nic")
        return self.compute.virtual_machines.begin_create_or_update(
            rg, name, self.vm_body(disk.id, [nic.id], **props)).result(timeout=20)

    def storage_account(self, rg: str = "rg", name: str = "drbookstore"):
        return self.storage.storage_accounts.begin_create(rg, name, StorageAccountCreateParameters(
            sku=Sku(name="Standard_LRS"), kind="StorageV2", location=LOCATION)).result(timeout=20)

    # -- VHDs in Azurite ----------------------------------------------------------------------
    def upload_vhd(self, name: str, data: bytes, footer: bytes | None = None, *, container: str = "replicas",
                   snapshot: bool = True) -> str:
        """A page blob holding `data` + footer (a valid fixed-VHD footer unless given); its URL."""
        svc = self.azurite.client()
        cc = svc.get_container_client(container)
        if not cc.exists():
            cc.create_container()
        footer = footer if footer is not None else vhd.make_footer(len(data))
        length = len(data) + len(footer)
        blob = cc.get_blob_client(name)
        blob.create_page_blob(length + (-length % 512))
        payload = data + footer
        for off in range(0, len(payload), 4 * MIB):
            chunk = payload[off: off + 4 * MIB]
            chunk += b"\0" * (-len(chunk) % 512)
            blob.upload_page(chunk, offset=off, length=len(chunk))
        if snapshot:
            snap = blob.create_snapshot()["snapshot"]
            return f"{blob.url}?snapshot={snap}"
        return blob.url

    def import_disk(self, name: str, source_uri: str, account_id: str, rg: str = "rg"):
        return self.compute.disks.begin_create_or_update(rg, name, cm.Disk(
            location=LOCATION, os_type="Linux", creation_data=cm.CreationData(
                create_option="Import", source_uri=source_uri, storage_account_id=account_id)))


@pytest.fixture
def arm(arm_server: ArmServer, arm_certs, arm_azurite) -> Arm:
    ArmLabControl(arm_server.base_url, arm_certs.ca_cert).reset()
    return Arm(arm_server, arm_certs.ca_cert, arm_azurite)
