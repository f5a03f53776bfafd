"""The lab spec: which source machines the lab makes, with their disks and networks."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drbook.config import ProcessServerName, load_model

DEFAULT_SPEC = Path(__file__).with_name("spec.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ports(_Strict):
    vcenter: int = 18989
    azurite: int = 10000
    arm: int = 18443
    prefect: int = 14200
    winrm: int = 15986
    webhook: int = 14443  # the alert webhook receiver (lab/webhook.py)
    postgres: int = 15432  # the lab's PostgreSQL, when Prefect runs on it (`drbook-lab up --prefect-db postgresql`)


def _loopback_address(v: str) -> str:
    if not ipaddress.ip_address(v).is_loopback:
        raise ValueError(f"{v} is not a loopback address (the lab binds only 127/8)")
    return v


class ArmSpec(_Strict):
    subscription_id: str = "00000000-0000-4000-8000-000000000001"
    location: str = "westeurope"


class NetworkSpec(_Strict):
    name: str
    prefix: str

    @field_validator("prefix")
    @classmethod
    def _cidr(cls, v: str) -> str:
        ipaddress.ip_network(v)
        return v


class DiskSpec(_Strict):
    name: str
    size_mib: int = Field(ge=1, le=65536)


class MachineSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    address: str
    ip: str
    network: str
    cpus: int = Field(2, ge=1)
    memory_mb: int = Field(2048, ge=256)
    disks: list[DiskSpec] = Field(min_length=1)
    vmware: bool = Field(True, description="a VM in the lab's vCenter; False = a physical server")
    powered_on: bool = Field(True, description="False: `lab up` leaves its VM powered off (a spare, e.g. a failback target)")
    python: bool = Field(True, description="False makes a machine whose shell has no python3")

    @field_validator("address")
    @classmethod
    def _loopback(cls, v: str) -> str:
        return _loopback_address(v)

    @model_validator(mode="after")
    def _power(self) -> "MachineSpec":
        if not self.powered_on and not self.vmware:
            raise ValueError(f"machine {self.name!r}: powered_on: false is for a VM (vmware: true); "
                             "the lab cannot power off a physical server")
        return self


class ProcessServerSpec(_Strict):
    """A process server of the lab: a Prefect worker of drbook's pool on this host, its SSH
    connections leaving from its own loopback address."""

    name: ProcessServerName
    address: str = Field(description="the source address of its SSH connections (a loopback address)")
    health_port: int = Field(ge=1, le=65535, description="its worker's health check, on 127.0.0.1")
    runs_stages: bool = Field(True, description="also polls the pool's `default` queue (every stage but a cycle)")

    @field_validator("address")
    @classmethod
    def _loopback(cls, v: str) -> str:
        return _loopback_address(v)


def _default_process_servers() -> list[ProcessServerSpec]:
    return [ProcessServerSpec(name="ps1", address="127.0.2.1", health_port=14201)]


class LabSpec(_Strict):
    ports: Ports = Ports()
    arm: ArmSpec = ArmSpec()
    networks: list[NetworkSpec]
    machines: list[MachineSpec]
    # The first is the lab's process server (`lab up` starts it); the others start on demand
    # (`drbook-lab process-server start NAME`).
    process_servers: list[ProcessServerSpec] = Field(default_factory=_default_process_servers, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "LabSpec":
        nets = {n.name: ipaddress.ip_network(n.prefix) for n in self.networks}
        seen: set[str] = set()
        for m in self.machines:
            if m.name in seen:
                raise ValueError(f"machine {m.name!r} is defined twice")
            seen.add(m.name)
            if m.network not in nets:
                raise ValueError(f"machine {m.name!r}: network {m.network!r} is not in 'networks'")
            if ipaddress.ip_address(m.ip) not in nets[m.network]:
                raise ValueError(f"machine {m.name!r}: ip {m.ip} is outside {m.network} ({nets[m.network]})")
        addresses = [m.address for m in self.machines]
        if len(set(addresses)) != len(addresses):
            raise ValueError("two machines share one loopback address")
        self._check_process_servers(set(addresses))
        return self

    def _check_process_servers(self, machine_addresses: set[str]) -> None:
        servers = self.process_servers
        if not servers[0].runs_stages:
            raise ValueError(f"process server {servers[0].name!r}: the first one is the lab's (`lab up` starts only it) "
                             "and must run the stages (runs_stages: true)")
        ports = self.ports.model_dump()
        seen: dict[tuple[str, object], str] = {}
        for ps in servers:
            for kind, value in (("name", ps.name), ("address", ps.address), ("health_port", ps.health_port)):
                if (kind, value) in seen:
                    raise ValueError(f"process servers {seen[kind, value]!r} and {ps.name!r} have the same {kind} {value}")
                seen[kind, value] = ps.name
            if ps.address in machine_addresses:
                raise ValueError(f"process server {ps.name!r}: address {ps.address} is a machine's")
            clash = next((name for name, port in ports.items() if port == ps.health_port), None)
            if clash:
                raise ValueError(f"process server {ps.name!r}: health_port {ps.health_port} is ports.{clash}")


def load_spec(path: Path | None = None) -> LabSpec:
    return load_model(path or DEFAULT_SPEC, LabSpec)  # type: ignore[return-value]
