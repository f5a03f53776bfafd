"""The site configuration: where vCenter, Azure and the machines are, as typed models.

A site config is YAML. `load_site()` reads it and turns every validation problem into a
ConfigError that names the file, the field and what is wrong. Secrets are references
(drbook.secrets), never values.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drbook.errors import ConfigError
from drbook.models import Policy
from drbook.secrets import SecretRef


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VCenterConfig(_Strict):
    url: str = Field(description="SDK URL, e.g. https://vcenter.example/sdk")
    user: str
    password: SecretRef
    ca_bundle: Path | None = Field(None, description="CA bundle to verify vCenter's certificate")


class AzureCredentialConfig(_Strict):
    """`default` uses azure-identity's DefaultAzureCredential; `static-token` sends a fixed
    bearer token (the lab's ARM emulator accepts any token)."""

    kind: Literal["default", "static-token"] = "default"
    token: SecretRef | None = None

    @model_validator(mode="after")
    def _token_for_static(self) -> "AzureCredentialConfig":
        if self.kind == "static-token" and self.token is None:
            raise ValueError("credential kind 'static-token' needs 'token' (a secret reference)")
        return self


class ContainerNames(_Strict):
    cache: str = "drbook-cache"
    replicas: str = "drbook-replicas"
    vault: str = "drbook-vault"


class AzureConfig(_Strict):
    subscription_id: str
    resource_group: str
    location: str
    arm_base_url: str = "https://management.azure.com"
    storage_account: str
    storage_resource_group: str | None = Field(
        None, description="the storage account's resource group (account names are global); default resource_group")
    blob_endpoint: str = Field(description="e.g. https://account.blob.core.windows.net")
    storage_key: SecretRef | None = Field(None, description="account key; None = use the Azure credential")
    credential: AzureCredentialConfig = AzureCredentialConfig()
    ca_bundle: Path | None = None
    containers: ContainerNames = ContainerNames()
    encryption_key: SecretRef = Field(description="32-byte key (hex) for AES-256-GCM of cache segments")


class NetworkMapping(_Strict):
    """Source network (a vSphere port group, or a name for physical servers) to an Azure subnet."""

    source_network: str
    target_vnet: str
    target_subnet: str
    address_prefix: str = Field(description="the subnet's prefix, e.g. 10.10.1.0/24")
    vnet_address_space: str = Field(description="the vnet's address space, e.g. 10.10.0.0/16")

    @field_validator("address_prefix", "vnet_address_space")
    @classmethod
    def _cidr(cls, v: str) -> str:
        ipaddress.ip_network(v)
        return v


class DiskConfig(_Strict):
    name: str
    path: str = Field(description="block device or file on the source machine")
    size_bytes: int | None = None


class MachineConfig(_Strict):
    name: str
    vm_name: str | None = Field(None, description="VM name in vCenter; None for a physical server")
    os: Literal["linux", "windows"] = "linux"
    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    password: SecretRef | None = None
    known_hosts: Path | None = None
    ca_bundle: Path | None = Field(None, description="Windows: CA bundle of the WinRM HTTPS listener's certificate (None = system store)")
    agent_dir: str = "/opt/drbook"
    python: str = "python3"
    network: str | None = Field(None, description="source network, for the network mapping")
    ip: str | None = Field(None, description="the machine's IP in its source network")
    cpus: int | None = None
    memory_mb: int | None = None
    vm_size: str | None = Field(None, description="Azure VM size override")
    disks: list[DiskConfig] = []
    quiesce_hooks: list[str] = Field([], description="app-consistency freeze commands")
    thaw_hooks: list[str] = []
    crash_hooks: list[str] = Field([], description="crash-consistency freeze commands (pause, fsfreeze)")
    crash_thaw_hooks: list[str] = []
    stop_hooks: list[str] = Field([], description="stop the applications before a planned failover's last cycle")
    shutdown_command: str = Field("shutdown -h now", description="clean shutdown of a physical server (planned failover)")


class PolicyConfig(Policy):
    """A replication policy as the site config names it (the vault's Policy, strictly parsed)."""

    model_config = ConfigDict(extra="forbid")


class CycleConfig(_Strict):
    """Knobs of a replication cycle on a process server (docs/benchmarks.md says why these
    defaults). drbook.replication.cycle.CycleSettings is this plus what the engine derives."""

    block_size: int = Field(64 * 1024, gt=0, description="bytes per hashed block (a change resyncs every disk)")
    sub_block_size: int = Field(4096, ge=0, description="bytes per sub-block of a changed block; 0 = whole blocks")
    sub_hash_len: int = Field(8, gt=0, le=32, description="bytes kept of each sub-block's SHA-256")
    segment_bytes: int = Field(32 * 1024 * 1024, gt=0, description="raw bytes per cache segment")
    upload_workers: int = Field(2, gt=0, description="parallel segment uploads (and direct applies)")
    page_workers: int = Field(8, gt=0, description="parallel page writes to a replica blob")
    read_buffer: int = Field(4 * 1024 * 1024, gt=0, description="the agent's read size")
    agent_threads: int = Field(2, gt=0, description="the agent's hashing threads")
    bridge_gap: int = Field(64 * 1024, ge=0, description="unchanged bytes the agent sends to join two changed "
                                                         "extents into one page write")
    hook_timeout: float = Field(120, gt=0, description="seconds a freeze or thaw hook may take")
    max_freeze: float = Field(900, gt=0, description="seconds a source may stay frozen before the agent thaws it")
    barrier_timeout: float = Field(120, gt=0, description="seconds a group waits for every member to freeze")
    idle_timeout: float = Field(300, gt=0, description="seconds of agent silence before it is killed")
    spool_dir: str | None = Field(None, description="local directory for the running cycle's segments; "
                                                    "None = the system temp directory")


class ProcessServerConfig(_Strict):
    name: str
    work_queue: str = "default"
    cycle: CycleConfig = Field(CycleConfig(), description="replication cycle settings; the engine of every "
                                                          "process takes those of the site's first process server")


class AlertsConfig(_Strict):
    """Where RPO alerts go: drbook.alerts creates Prefect automations that, on this site's
    drbook.rpo.breached / drbook.rpo.recovered events, POST a JSON notification here."""

    webhook_url: str = Field(description="HTTPS (or HTTP) endpoint that receives the alert as a JSON POST")
    token: SecretRef | None = Field(None, description="sent as 'Authorization: Bearer <token>' (a secret reference)")
    events: list[Literal["breached", "recovered"]] = Field(["breached", "recovered"],
                                                          description="which RPO crossings notify")

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return v


class SiteConfig(_Strict):
    site: str
    vcenter: VCenterConfig | None = None
    azure: AzureConfig
    network_mapping: list[NetworkMapping] = []
    process_servers: list[ProcessServerConfig] = [ProcessServerConfig(name="local")]
    machines: list[MachineConfig] = []
    policies: list[PolicyConfig] = [PolicyConfig()]
    alerts: AlertsConfig | None = Field(None, description="RPO alert notifications (drbook.alerts)")

    @model_validator(mode="after")
    def _unique_names(self) -> "SiteConfig":
        names = [m.name for m in self.machines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"machine names must be unique; repeated: {', '.join(dupes)}")
        return self

    def machine(self, name: str) -> MachineConfig:
        for m in self.machines:
            if m.name == name:
                return m
        raise ConfigError(f"no machine named {name!r} in site {self.site!r}; known: {', '.join(m.name for m in self.machines)}")

    def policy(self, name: str = "default") -> PolicyConfig:
        for p in self.policies:
            if p.name == name:
                return p
        raise ConfigError(f"no policy named {name!r}; known: {', '.join(p.name for p in self.policies)}")

    def mapping_for(self, network: str | None) -> NetworkMapping | None:
        return next((m for m in self.network_mapping if m.source_network == network), None)


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_model(path: Path, model: type[BaseModel]) -> BaseModel:
    """Load a YAML file into a model; every problem becomes a ConfigError naming file and field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(Path(path), exc)) from None


def default_site_path() -> Path:
    """$DRBOOK_SITE, else site.yaml in drbook's XDG config directory (~/.config/drbook/)."""
    if env := os.environ.get("DRBOOK_SITE"):
        return Path(env)
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "drbook" / "site.yaml"


def load_site(path: Path | None = None) -> SiteConfig:
    return load_model(path or default_site_path(), SiteConfig)  # type: ignore[return-value]
