"""Azure regions the emulator accepts (names as ARM normalises them)."""

from __future__ import annotations

from ..exceptions import ArmError

REGIONS = (
    "westeurope", "northeurope", "uksouth", "ukwest", "francecentral", "germanywestcentral",
    "swedencentral", "switzerlandnorth", "norwayeast", "italynorth", "polandcentral", "spaincentral",
    "eastus", "eastus2", "centralus", "northcentralus", "southcentralus", "westcentralus", "westus",
    "westus2", "westus3", "canadacentral", "canadaeast", "brazilsouth", "australiaeast",
    "australiasoutheast", "japaneast", "japanwest", "koreacentral", "southeastasia", "eastasia",
    "centralindia", "southindia", "uaenorth", "southafricanorth", "qatarcentral", "israelcentral",
)


def normalize(location: str | None) -> str:
    return (location or "").replace(" ", "").lower()


def check(location: str | None, resource_type: str) -> str:
    loc = normalize(location)
    if not loc:
        raise ArmError(f"The 'location' property is required for resource type '{resource_type}'.",
                       code="LocationRequired", status=400)
    if loc not in REGIONS:
        raise ArmError(f"The provided location '{location}' is not available for resource type "
                       f"'{resource_type}'. List of available regions for the resource type is "
                       f"'{','.join(REGIONS)}'.", code="LocationNotAvailableForResourceType", status=400)
    return loc
