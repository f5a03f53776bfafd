"""A real Azurite (blob service only) for the session, over HTTPS with the lab CA.

Use it from a test module with `from tests.blob_fixtures import azurite, azurite_blob`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from azure.storage.blob import BlobServiceClient

from drbook.adapters.blobstore import blob_service_from
from lab.ca import ensure_certs
from lab.paths import REPO_ROOT
from lab.procs import Managed, wait_for_port

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite); not a secret.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BLOB = REPO_ROOT / "lab" / "node_modules" / ".bin" / "azurite-blob"


@dataclass(frozen=True)
class AzuriteInfo:
    blob_endpoint: str
    account: str
    key: str
    ca_bundle: Path

    def client(self, **kwargs) -> BlobServiceClient:
        return blob_service_from(self.blob_endpoint, self.account, self.key, self.ca_bundle, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteInfo]:
    base = tmp_path_factory.mktemp("azurite")
    certs = ensure_certs(base / "certs")
    port = _free_port()
    proc = Managed("azurite-blob", base)
    proc.start([
        str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(base / "data"), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
        "--cert", str(certs.server_cert), "--key", str(certs.server_key),
    ])
    try:
        wait_for_port(proc, "127.0.0.1", port, timeout=30)
        yield AzuriteInfo(f"https://127.0.0.1:{port}/{ACCOUNT}", ACCOUNT, KEY, certs.ca_cert)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def azurite_blob(azurite: AzuriteInfo) -> BlobServiceClient:
    return azurite.client()
