"""discover: the vCenter inventory (one PropertyCollector retrieval) plus the site's
physical servers, stored in the vault with what changed since last time."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from drbook.discovery import Inventory, InventoryDiff, discover, inventory_json, save_inventory, with_site
from drbook.site import open_site
from drbook.tasks.policy import REMOTE


@task(name="read-vcenter-inventory", **REMOTE)
def read_inventory(site_path: str) -> Inventory:
    site = open_site(site_path)
    if site.cfg.vcenter is None:
        return with_site(Inventory(), site.cfg)
    from drbook.adapters.vsphere import from_site

    with from_site(site.cfg) as conn:
        return discover(conn, site.cfg)


@task(name="store-inventory", **REMOTE)
def store_inventory(site_path: str, inventory: Inventory) -> InventoryDiff:
    return save_inventory(open_site(site_path).create_vault(), inventory)


@flow(name="discover", log_prints=True)
def discover_flow(site_path: str | None = None) -> dict:
    """Inventory of vCenter and the site's physical servers, with what changed since last time.

    Args:
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    inventory = read_inventory(sp)
    changes = store_inventory(sp, inventory)
    data = inventory_json(inventory)
    create_table_artifact(
        [{"name": v["name"], "power": v.get("power_state"), "cpus": v.get("num_cpu"), "memory_mb": v.get("memory_mb"),
          "disks": len(v.get("disks", [])), "ips": ", ".join(v.get("ip_addresses", []))} for v in data.get("vms", [])],
        key="inventory", description="vCenter inventory",
    )
    create_markdown_artifact(f"```\n{changes.model_dump_json(indent=2)}\n```", key="inventory-changes",
                             description="what changed since the last discovery")
    return {"inventory": data, "changes": changes.model_dump(mode="json")}
