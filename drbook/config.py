"""The site configuration: where vCenter, Azure and the machines are, as typed models.

A site config is YAML. `load_site()` reads it and turns every problem into a ConfigError
that names the file, the field and what is wrong, never a secret's value:
  - the file itself: unreadable, not UTF-8, not YAML (reported by line and column only, as
    the line may hold a pasted secret), a key given twice in one mapping;
  - each field (the models below): types, ranges, names that become vault keys, blob and
    Azure resource names, names given twice;
  - the site as a whole (`site_problems`): references between sections, and the local
    files it names (key files, known_hosts, CA bundles, `file:` secrets: present, and
    secrets private to their owner). `env:` and `prefect:` secrets are resolved only when
    used (drbook.secrets).
Secrets are references (drbook.secrets), never values.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo

from drbook.errors import ConfigError, SecretError
from drbook.models import Policy
from drbook.secrets import SecretRef, is_secret_field, private_file_problem, resolve_secret, secret_file_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Machine, disk and policy names become vault keys (drbook.vault), blob names
# (replicas/<machine>/<disk>.vhd) and Azure resource names (drbook.failover.build.plan_machine:
# <machine>-vm, at most 64 characters; <machine>-<disk>, a managed disk, at most 80: hence
# 48 characters for a machine and 31 for a disk).
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$")
_NAME_RULE = "letters, digits or '-', starting and ending with a letter or digit"
# Azure virtual network and subnet names.
_AZURE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_AZURE_NAME_RULE = "letters, digits, '_', '.' or '-', starting with a letter or digit and ending with one or '_'"
# Blob container names: lowercase letters, digits and single hyphens.
_CONTAINER = re.compile(r"^[a-z0-9](?:-?[a-z0-9])+$")


def _name(max_len: int, pattern: re.Pattern = _NAME, rule: str = _NAME_RULE) -> AfterValidator:
    def check(v: str) -> str:
        if len(v) > max_len or not pattern.match(v):
            raise ValueError(f"must be 1-{max_len} {rule}")
        return v

    return AfterValidator(check)


MachineName = Annotated[str, _name(48)]
# A Prefect work queue name too.
ProcessServerName = Annotated[str, _name(40)]
DiskName = Annotated[str, _name(31)]
PolicyName = Annotated[str, _name(63)]
# The isolated twin of a vnet is <vnet>-test, at most 64 characters (drbook.failover.prepare).
VnetName = Annotated[str, _name(59, _AZURE_NAME, _AZURE_NAME_RULE)]
SubnetName = Annotated[str, _name(80, _AZURE_NAME, _AZURE_NAME_RULE)]


def _http_url(v: str) -> str:
    if not v.startswith(("https://", "http://")):
        raise ValueError("must be an http(s) URL")
    return v


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def _unique(what: str, names: Iterable[str], *, fold: bool = True) -> None:
    """Refuse a name given twice; with `fold`, compared case-insensitively, as Azure compares
    resource names."""
    seen: set[str] = set()
    dupes: list[str] = []
    for name in names:
        key = name.casefold() if fold else name
        if key in seen and name not in dupes:
            dupes.append(name)
        seen.add(key)
    if dupes:
        how = ", case-insensitively" if fold else ""
        raise ValueError(f"{what} must be unique{how}; repeated: {', '.join(dupes)}")


def _unique_names(what: str) -> AfterValidator:
    """For a list of things with a `name`: refuse a name given twice (the first would win)."""
    def check(items: list) -> list:
        _unique(f"{what} names", (item.name for item in items))
        return items

    return AfterValidator(check)


class VCenterConfig(_Strict):
    url: HttpUrl = Field(description="SDK URL, e.g. https://vcenter.example/sdk")
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

    @field_validator("cache", "replicas", "vault")
    @classmethod
    def _container_name(cls, v: str) -> str:
        if not 3 <= len(v) <= 63 or not _CONTAINER.match(v):
            raise ValueError("a blob container name is 3-63 lowercase letters, digits and single hyphens, "
                             "starting and ending with a letter or digit")
        return v


class AzureConfig(_Strict):
    subscription_id: str
    resource_group: str
    location: str
    arm_base_url: HttpUrl = "https://management.azure.com"
    storage_account: str
    storage_resource_group: str | None = Field(
        None, description="the storage account's resource group (account names are global); default resource_group")
    blob_endpoint: HttpUrl = Field(description="e.g. https://account.blob.core.windows.net")
    storage_key: SecretRef | None = Field(None, description="account key; None = use the Azure credential")
    credential: AzureCredentialConfig = AzureCredentialConfig()
    ca_bundle: Path | None = None
    containers: ContainerNames = ContainerNames()
    encryption_key: SecretRef = Field(description="32-byte key (hex) for AES-256-GCM of cache segments")


class NetworkMapping(_Strict):
    """Source network (a vSphere port group, or a name for physical servers) to an Azure subnet."""

    source_network: str = Field(min_length=1)
    target_vnet: VnetName
    target_subnet: SubnetName
    address_prefix: str = Field(description="the subnet's prefix, e.g. 10.10.1.0/24")
    vnet_address_space: str = Field(description="the vnet's address space, e.g. 10.10.0.0/16")

    @field_validator("address_prefix", "vnet_address_space")
    @classmethod
    def _cidr(cls, v: str) -> str:
        ipaddress.ip_network(v)
        return v

    @model_validator(mode="after")
    def _subnet_in_vnet(self) -> "NetworkMapping":
        subnet, space = ipaddress.ip_network(self.address_prefix), ipaddress.ip_network(self.vnet_address_space)
        if subnet.version != space.version or not subnet.subnet_of(space):  # type: ignore[arg-type]
            raise ValueError(f"address_prefix {subnet} is not inside vnet_address_space {space}")
        return self


class DiskConfig(_Strict):
    name: DiskName
    path: str = Field(min_length=1, description="block device or file on the source machine")
    size_bytes: int | None = Field(None, gt=0)


class MachineConfig(_Strict):
    name: MachineName
    vm_name: str | None = Field(None, description="VM name in vCenter; None for a physical server")
    os: Literal["linux", "windows"] = "linux"
    address: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_file: Path | None = None
    password: SecretRef | None = None
    known_hosts: Path | None = None
    ca_bundle: Path | None = Field(None, description="Windows: CA bundle of the WinRM HTTPS listener's certificate (None = system store)")
    agent_dir: str = "/opt/drbook"
    python: str = "python3"
    network: str | None = Field(None, description="source network, for the network mapping")
    ip: str | None = Field(None, description="the machine's IP in its source network")
    cpus: int | None = Field(None, ge=1)
    memory_mb: int | None = Field(None, ge=1)
    vm_size: str | None = Field(None, description="Azure VM size override")
    disks: Annotated[list[DiskConfig], _unique_names("disk")] = []
    quiesce_hooks: list[str] = Field([], description="app-consistency freeze commands")
    thaw_hooks: list[str] = []
    crash_hooks: list[str] = Field([], description="crash-consistency freeze commands (pause, fsfreeze)")
    crash_thaw_hooks: list[str] = []
    stop_hooks: list[str] = Field([], description="stop the applications before a planned failover's last cycle")
    shutdown_command: str = Field("shutdown -h now", description="clean shutdown of a physical server (planned failover)")

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v



class PolicyConfig(Policy):
    """A replication policy as the site config names it (the vault's Policy, strictly parsed)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: PolicyName = "default"


class CycleConfig(_Strict):
    """Knobs of a replication cycle on a process server (docs/benchmarks.md says why these
    defaults). drbook.replication.cycle.CycleSettings is this plus what the engine derives."""

    # Replica blobs are Azure page blobs: every write is whole 512-byte pages.
    block_size: int = Field(64 * 1024, gt=0, multiple_of=512,
                            description="bytes per hashed block (a change resyncs every disk)")
    sub_block_size: int = Field(4096, ge=0, multiple_of=512,
                                description="bytes per sub-block of a changed block; 0 = whole blocks")
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
    """A process server: a Prefect worker of drbook's pool on its own host, polling its own work
    queue (replication cycles of the machines it serves) and, when `runs_stages`, the pool's
    `default` queue (every other stage). drbook.scaleout assigns machines to process servers."""

    name: ProcessServerName
    work_queue: ProcessServerName | None = Field(None, description="its Prefect work queue; default: its name")
    address: str | None = Field(None, description="the local address its SSH connections to the agents leave from "
                                                  "(its own network segment); default: the system's choice")
    machines: list[MachineName] = Field([], description="machines pinned to this process server; the others are "
                                                       "balanced by disk size and churn")
    max_cycles: int = Field(4, gt=0, le=1000, description="replication cycles it runs at once (its work queue's "
                                                         "concurrency limit): more wait in the queue")
    weight: float = Field(1.0, gt=0, le=1000, description="its share of the machines when balancing (2 = twice the load)")
    runs_stages: bool = Field(True, description="also polls the `default` queue, where every stage other than a "
                                                "scheduled cycle runs")
    cycle: CycleConfig = Field(CycleConfig(), description="replication cycle settings of the cycles it runs")

    @property
    def queue(self) -> str:
        return self.work_queue or self.name

    @field_validator("address")
    @classmethod
    def _an_address(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v

    @model_validator(mode="after")
    def _not_the_stages_queue(self) -> "ProcessServerConfig":
        if self.queue == "default":
            raise ValueError("a process server's work queue cannot be 'default': that queue is the stages' "
                             "(runs_stages: true makes its worker poll it too)")
        return self


class TakeoverConfig(_Strict):
    """When a process server counts as lost (its work queue not polled) and when it takes its
    machines back once it polls again."""

    after_s: float = Field(60, ge=5, le=86_400, description="seconds without a poll before its machines move")
    return_after_s: float = Field(30, ge=0, le=86_400, description="seconds it must poll again before they return")
    automatic_return: bool = Field(True, description="False: machines stay where they were moved until "
                                                     "`drbook rebalance`")


class AlertsConfig(_Strict):
    """Where RPO alerts go: drbook.alerts creates Prefect automations that, on this site's
    drbook.rpo.breached / drbook.rpo.recovered events, POST a JSON notification here."""

    webhook_url: HttpUrl = Field(description="HTTPS (or HTTP) endpoint that receives the alert as a JSON POST")
    token: SecretRef | None = Field(None, description="sent as 'Authorization: Bearer <token>' (a secret reference)")
    events: list[Literal["breached", "recovered"]] = Field(["breached", "recovered"],
                                                          description="which RPO crossings notify")


class SiteConfig(_Strict):
    site: str
    vcenter: VCenterConfig | None = None
    azure: AzureConfig
    network_mapping: list[NetworkMapping] = []
    process_servers: Annotated[list[ProcessServerConfig], _unique_names("process server"),
                               Field(min_length=1)] = [ProcessServerConfig(name="local")]
    takeover: TakeoverConfig = TakeoverConfig()
    machines: Annotated[list[MachineConfig], _unique_names("machine")] = []
    policies: Annotated[list[PolicyConfig], _unique_names("policy")] = [PolicyConfig()]
    alerts: AlertsConfig | None = Field(None, description="RPO alert notifications (drbook.alerts)")
    plans_dir: Path | None = Field(None, description="the recovery plans' folder (plans/*.yaml); relative to this file; "
                                                     "default: plans/ beside it")

    @field_validator("network_mapping")
    @classmethod
    def _one_mapping_per_network(cls, v: list[NetworkMapping]) -> list[NetworkMapping]:
        _unique("source networks", (m.source_network for m in v), fold=False)
        prefixes: dict[tuple[str, str], str] = {}
        for m in v:
            subnet = (m.target_vnet.casefold(), m.target_subnet.casefold())
            if prefixes.setdefault(subnet, m.address_prefix) != m.address_prefix:
                raise ValueError(f"subnet {m.target_vnet}/{m.target_subnet} is given two address prefixes: "
                                 f"{prefixes[subnet]} and {m.address_prefix}")
        return v

    def plans_folder(self, site_file: Path) -> Path:
        folder = self.plans_dir or Path("plans")
        return folder if folder.is_absolute() else Path(site_file).resolve().parent / folder

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


# -- site-wide checks: references between sections, and the local files named -------------


def site_problems(cfg: SiteConfig) -> list[tuple[str, str]]:
    """(field, why) for what the models cannot see field by field. Reads the local files the
    site names (whether they exist; secrets' modes; the encryption key of a `file:` secret)."""
    return [*_reference_problems(cfg), *_file_problems(cfg), *_encryption_key_problems(cfg)]


def _reference_problems(cfg: SiteConfig) -> Iterator[tuple[str, str]]:
    mapped = {m.source_network for m in cfg.network_mapping}
    for i, m in enumerate(cfg.machines):
        if m.network is not None and m.network not in mapped:
            yield (f"machines.{i}.network", f"no network_mapping entry has source_network {m.network!r} "
                                            f"(mapped: {', '.join(sorted(mapped)) or 'none'})")
        yield from ((f"machines.{i}.{field}", why) for field, why in _access_problems(m))
    yield from _process_server_problems(cfg)


def _process_server_problems(cfg: SiteConfig) -> Iterator[tuple[str, str]]:
    known = {m.name for m in cfg.machines}
    pinned: dict[str, str] = {}
    queues: dict[str, str] = {}
    for i, ps in enumerate(cfg.process_servers):
        other = queues.setdefault(ps.queue, ps.name)
        if other != ps.name:
            yield f"process_servers.{i}.work_queue", f"work queue {ps.queue!r} is process server {other!r}'s too"
        for j, name in enumerate(ps.machines):
            where = f"process_servers.{i}.machines.{j}"
            if name not in known:
                yield where, f"no machine named {name!r} in machines"
            elif pinned.setdefault(name, ps.name) != ps.name:
                yield where, f"{name} is pinned to process server {pinned[name]!r} already"
    if not any(ps.runs_stages for ps in cfg.process_servers):
        yield "process_servers", "no process server runs the stages (runs_stages: true on at least one)"


def _access_problems(m: MachineConfig) -> Iterator[tuple[str, str]]:
    """What drbook.adapters.ssh / .winrm would refuse when they first connect."""
    if m.os == "windows":
        if m.password is None:
            yield "password", "a Windows machine is reached over WinRM, which needs a password (a secret reference)"
        return
    if m.known_hosts is None:
        yield "known_hosts", ("a Linux machine is reached over SSH, which needs its host key in a known_hosts file "
                              "(get it out of band, e.g. ssh-keyscan on a trusted network, and check its fingerprint)")
    if m.key_file is None and m.password is None:
        yield "key_file", "a Linux machine needs key_file or password"


def _leaves(model: BaseModel, loc: tuple = ()) -> Iterator[tuple[tuple, FieldInfo, object]]:
    """(location, field, value) of every field of a model and of the models inside it."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, v in items:
            where = (*loc, name) if i is None else (*loc, name, i)
            if isinstance(v, BaseModel):
                yield from _leaves(v, where)
            else:
                yield where, info, v


def _file_problems(cfg: SiteConfig) -> Iterator[tuple[str, str]]:
    for loc, info, value in _leaves(cfg):
        problem = None
        if is_secret_field(info) and isinstance(value, str):
            problem = secret_file_problem(value)
        elif isinstance(value, Path) and loc[-1] == "plans_dir":
            problem = None if value.is_dir() or not value.is_absolute() else f"{value} is not a folder"
        elif isinstance(value, Path):
            problem = private_file_problem(value) if loc[-1] == "key_file" else _file_problem(value)
        if problem:
            yield ".".join(map(str, loc)), problem


def _file_problem(path: Path) -> str | None:
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file"
    return None


def _encryption_key_problems(cfg: SiteConfig) -> Iterator[tuple[str, str]]:
    """A `file:` key is checked now; an `env:` or `prefect:` one when the engine first needs it."""
    from drbook.replication.segments import key_from_hex  # the one checker of the key's form

    ref = cfg.azure.encryption_key
    if ref.startswith("file:") and secret_file_problem(ref) is None:
        try:
            key_from_hex(resolve_secret(ref).get_secret_value())
        except SecretError as exc:
            yield "azure.encryption_key", str(exc)


# -- reading a YAML file --------------------------------------------------------------------


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.again = key, first, again


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping: PyYAML keeps the last one, so a
    second `machines:` would silently drop every machine of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # overriding what `<<:` merged in is what merges are for
            key = self.construct_object(key_node, deep=deep)
            try:
                mark = first.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: SafeLoader refuses it itself
            if mark is not key_node.start_mark:
                raise _DuplicateKey(key, mark, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# Token names ('<block end>') and characters (a tab) are kept; anything longer quoted in a
# YAML error (an alias, anchor or tag) is text of the file, which may be a secret.
_QUOTED = re.compile(r"'([^']*)'")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML is wrong, by line and column: never the line's text (it may be a pasted secret)."""
    if isinstance(exc, _DuplicateKey):
        return (f"duplicate key {exc.key!r} at line {exc.again.line + 1}, column {exc.again.column + 1} "
                f"(first at line {exc.first.line + 1}); YAML would silently keep only the last")
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not valid YAML: a character YAML does not allow at position {exc.position}"
    problem = _redacted(getattr(exc, "problem", None) or "cannot be parsed")
    text = f"not valid YAML{_at(getattr(exc, 'problem_mark', None))}: {problem}"
    if context := getattr(exc, "context", None):
        text += f" ({_redacted(context)}{_at(getattr(exc, 'context_mark', None), 'that starts at')})"
    return text


def _redacted(text: str) -> str:
    return _QUOTED.sub(lambda m: m[0] if len(m[1]) <= 2 or m[1].startswith("<") else "'…'", text)


def _at(mark: yaml.Mark | None, lead: str = "at") -> str:
    return f" {lead} line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def read_yaml(path: Path) -> object:
    """The YAML document in a file; every problem is a ConfigError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None


def format_problems(path: Path, problems: Iterable[tuple[str, str]]) -> str:
    """One line (the CLI's errors are one line): `<file>: <field>: <why>; <field>: <why>`."""
    return f"{path}: " + "; ".join(f"{where}: {' '.join(str(why).split())}" for where, why in problems)


def format_validation_error(path: Path, exc: ValidationError) -> str:
    return format_problems(path, ((".".join(str(p) for p in err["loc"]) or "(top level)", err["msg"])
                                  for err in exc.errors()))


def load_model(path: Path, model: type[BaseModel]) -> BaseModel:
    """Load a YAML file into a model; every problem becomes a ConfigError naming file and field."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: empty (no YAML document in it)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None


def default_site_path() -> Path:
    """$DRBOOK_SITE, else site.yaml in drbook's XDG config directory (~/.config/drbook/)."""
    if env := os.environ.get("DRBOOK_SITE"):
        return Path(env)
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "drbook" / "site.yaml"


def load_site(path: Path | None = None) -> SiteConfig:
    """The site config, refused with a ConfigError naming the file and every wrong field."""
    path = Path(path or default_site_path())
    cfg: SiteConfig = load_model(path, SiteConfig)  # type: ignore[assignment]
    if problems := site_problems(cfg):
        raise ConfigError(format_problems(path, problems))
    return cfg
