"""The Azure VM size a machine gets: the smallest offered size that fits (pure)."""

from __future__ import annotations

from drbook.adapters.recovery_site import VmSize
from drbook.errors import PreflightError

# Families in order of preference for a recovered server: general purpose first.
_FAMILY_ORDER = ("Standard_D", "Standard_B", "Standard_E")


def _family_rank(name: str) -> int:
    for i, prefix in enumerate(_FAMILY_ORDER):
        if name.startswith(prefix):
            return i
    return len(_FAMILY_ORDER)


def choose_size(machine: str, cpus: int, memory_mb: int, offered: list[VmSize], override: str | None = None) -> str:
    names = {s.name for s in offered}
    if override:
        if override not in names:
            raise PreflightError(f"{machine}: size override {override!r} is not offered in this location")
        return override
    fitting = [s for s in offered if s.cores >= cpus and s.memory_mb >= memory_mb]
    if not fitting:
        raise PreflightError(f"{machine}: no offered VM size has {cpus} vCPUs and {memory_mb} MB of memory")
    best = min(fitting, key=lambda s: (s.cores, s.memory_mb, _family_rank(s.name), s.name))
    return best.name
