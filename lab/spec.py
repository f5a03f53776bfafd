"""The lab spec: which source machines the lab makes, with their disks and networks."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drbook.config import load_model

DEFAULT_SPEC = Path(__file__).with_name("spec.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ports(_Strict):
    vcenter: int = 18989
    azurite: int = 10000
    arm: int = 18443
    prefect: int = 14200
    winrm: int = 15986
    worker: int = 14201  # the process-server worker's health check
    webhook: int = 14443  # the alert webhook receiver (lab/webhook.py)


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
        if not ipaddress.ip_address(v).is_loopback:
            raise ValueError(f"{v} is not a loopback address (the lab binds only 127/8)")
        return v

    @model_validator(mode="after")
    def _power(self) -> "MachineSpec":
        if not self.powered_on and not self.vmware:
            raise ValueError(f"machine {self.name!r}: powered_on: false is for a VM (vmware: true); "
                             "the lab cannot power off a physical server")
        return self


class LabSpec(_Strict):
    ports: Ports = Ports()
    arm: ArmSpec = ArmSpec()
    networks: list[NetworkSpec]
    machines: list[MachineSpec]

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
        return self


def load_spec(path: Path | None = None) -> LabSpec:
    return load_model(path or DEFAULT_SPEC, LabSpec)  # type: ignore[return-value]
