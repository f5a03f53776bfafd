"""A site at run time: the config plus the clients built from it, made once per process.

Prefect task parameters must be serialisable, so tasks receive the site config's path and
call `open_site(path)`, which returns the same handles for the same path within a process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from drbook.config import MachineConfig, SiteConfig, default_site_path, load_site

_lock = threading.Lock()
_cache: dict[str, "Site"] = {}


@dataclass
class Site:
    cfg: SiteConfig
    path: Path
    actor: str = "drbook"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def blob_service(self):
        from drbook.adapters.blobstore import blob_service

        return blob_service(self.cfg)

    @cached_property
    def vault(self):
        """The site's vault. Never created here: reading a mistyped container name must say
        that it does not exist, not make an empty vault (see create_vault)."""
        from drbook.vault import Vault

        return Vault.from_site(self.cfg, actor=self.actor)

    def create_vault(self):
        """The vault, its container created when missing: only for the stages that can start
        a site's life (prepare-azure, discover, push-mobility, enable-replication)."""
        self.vault.ensure()
        return self.vault

    @cached_property
    def azure(self):
        """The recovery site, a RecoverySite (drbook.adapters.recovery_site) over the ARM SDKs."""
        from drbook.adapters.azure import AzureRecoverySite

        return AzureRecoverySite(self.cfg.azure)

    @cached_property
    def encryption_key(self) -> bytes:
        """The 32-byte AES-256 key; a SecretError names the file and field, never the key."""
        from drbook.errors import SecretError
        from drbook.replication.segments import site_key

        try:
            return site_key(self.cfg)
        except SecretError as exc:
            raise SecretError(f"{self.path}: azure.encryption_key: {exc}") from None

    @cached_property
    def process_server(self):
        """The process server this process runs on (drbook.scaleout.worker)."""
        from drbook.scaleout.worker import current_process_server

        return current_process_server(self.cfg)

    def shell_for(self, machine: MachineConfig):
        from drbook.adapters.shell import shell_for

        return shell_for(machine, source_address=self.process_server.address)

    @cached_property
    def engine(self):
        from drbook.replication.cycle import CycleSettings
        from drbook.replication.engine import ReplicationEngine

        ps = self.process_server
        return ReplicationEngine(self.cfg, self.vault, self.blob_service, self.shell_for, self.encryption_key,
                                 settings=CycleSettings.of(ps), holder=f"replication-engine@{ps.name}",
                                 process_server=ps.name)

    def machine(self, name: str) -> MachineConfig:
        return self.cfg.machine(name)

    def machine_of(self, item: str) -> MachineConfig:
        """The machine a protected item lives on now (after a failback to another machine it is
        not the one it was named after); a name the vault does not protect is a machine's."""
        found = self.vault.find_item(item)
        return self.cfg.machine(found.machine if found is not None else item)


def open_site(path: str | Path | None = None) -> Site:
    resolved = Path(path) if path else default_site_path()
    key = str(resolved.resolve())
    with _lock:
        site = _cache.get(key)
        if site is None:
            site = Site(cfg=load_site(resolved), path=resolved)
            _cache[key] = site
        return site


def forget_sites() -> None:
    """Drop cached handles (tests that rewrite a site config)."""
    with _lock:
        _cache.clear()
