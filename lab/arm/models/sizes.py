"""VM sizes offered in every lab region (figures as Azure publishes them), and their listing."""

from __future__ import annotations

from typing import Any

from . import regions
from .base import Base

# name, cores, memoryInMB, maxDataDiskCount, resourceDiskSizeInMB, max NICs
SIZES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("Standard_B1s", 1, 1024, 2, 4096, 2),
    ("Standard_B1ms", 1, 2048, 2, 4096, 2),
    ("Standard_B2s", 2, 4096, 4, 8192, 3),
    ("Standard_B2ms", 2, 8192, 4, 16384, 3),
    ("Standard_B4ms", 4, 16384, 8, 32768, 4),
    ("Standard_B8ms", 8, 32768, 16, 65536, 4),
    ("Standard_D2s_v3", 2, 8192, 4, 16384, 2),
    ("Standard_D4s_v3", 4, 16384, 8, 32768, 2),
    ("Standard_D8s_v3", 8, 32768, 16, 65536, 4),
    ("Standard_D16s_v3", 16, 65536, 32, 131072, 8),
    ("Standard_D2s_v5", 2, 8192, 4, 0, 2),
    ("Standard_D4s_v5", 4, 16384, 8, 0, 2),
    ("Standard_D8s_v5", 8, 32768, 16, 0, 4),
    ("Standard_E2s_v3", 2, 16384, 4, 32768, 2),
    ("Standard_E4s_v3", 4, 32768, 8, 65536, 2),
    ("Standard_E8s_v3", 8, 65536, 16, 131072, 4),
    ("Standard_F2s_v2", 2, 4096, 4, 16384, 2),
    ("Standard_F4s_v2", 4, 8192, 8, 32768, 2),
)

BY_NAME = {s[0].lower(): s for s in SIZES}


def listing() -> list[dict[str, Any]]:
    return [{"name": n, "numberOfCores": c, "osDiskSizeInMB": 1047552, "resourceDiskSizeInMB": r,
             "memoryInMB": m, "maxDataDiskCount": d} for n, c, m, d, r, _ in SIZES]


def find(name: str | None) -> tuple[str, int, int, int, int, int] | None:
    return BY_NAME.get((name or "").lower())


class SizesBackend(Base):
    def vm_sizes(self, sub: str, location: str) -> list[dict[str, Any]]:
        self.check_sub(sub)
        regions.check(location, "locations/vmSizes")
        return listing()
