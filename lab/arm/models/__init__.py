"""The emulator's backends: every resource type, keyed by subscription and resource group.

Nothing here sees HTTP; responses.py calls these methods under the store's lock. A read answers
the resource (or a list of them); a change answers what happened (outcomes.py), and responses.py
picks the status code and the long-running-operation headers.
"""

from __future__ import annotations

from typing import Any

from ..blobs import DiskBlobs
from ..settings import LabSettings
from ..store import Store
from .base import ArmConfig
from .disks import DisksBackend
from .grants import GrantsBackend
from .network import NetworkBackend
from .resources import ResourcesBackend
from .sizes import SizesBackend
from .storage import StorageBackend
from .vms import VirtualMachinesBackend

__all__ = ["ArmBackend", "ArmConfig"]


class ArmBackend(VirtualMachinesBackend, DisksBackend, GrantsBackend, SizesBackend, NetworkBackend,
                 StorageBackend, ResourcesBackend):
    def __init__(self, config: ArmConfig, store: Store | None = None) -> None:
        store = store or Store(config.state_dir)
        blobs = DiskBlobs(config.blob_endpoint, config.blob_account, config.blob_key, config.ca_bundle)
        super().__init__(store, config, blobs, LabSettings(store, config.default_duration))

    def references(self, record: dict[str, Any]) -> list[str]:
        return self.network_references(record) + self.vm_references(record)

    def release(self, record: dict[str, Any], deleting_group: bool = False) -> None:
        """Undo what a resource holds on others, just before it disappears."""
        kind = record["body"]["type"]
        if kind == "Microsoft.Compute/virtualMachines":
            self.vm_release(record)
        elif kind in ("Microsoft.Compute/disks", "Microsoft.Compute/snapshots"):
            self.disk_release(record)
        self.network_release(record)
        self.drop_grants(record["body"]["id"])

    def reset(self) -> None:
        self.store.reset()
        if self.blobs.configured:
            self.blobs.clear()
