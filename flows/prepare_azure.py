"""prepare-azure: the recovery site's resource group, storage, networks and the isolated
test network. Idempotent; `dry_run` only says what it would do."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from drbook.failover import prepare
from drbook.site import open_site
from drbook.tasks.policy import AZURE


@task(name="plan-recovery-site", **AZURE)
def plan_site(site_path: str) -> list[prepare.Step]:
    site = open_site(site_path)
    return prepare.plan(site.cfg, site.azure, site.blob_service)


@task(name="apply-recovery-site", **AZURE)
def apply_site(site_path: str, steps: list[prepare.Step]) -> list[prepare.Step]:
    site = open_site(site_path)
    return prepare.apply(site.cfg, site.azure, site.blob_service, steps)


@flow(name="prepare-azure", log_prints=True)
def prepare_azure_flow(dry_run: bool = False, site_path: str | None = None) -> dict:
    """The recovery site: resource group, storage, production and isolated test networks (idempotent).

    Args:
        dry_run: only say what would be created or updated
        site_path: site config YAML; default $DRBOOK_SITE (deployment runs get it from their job variables)
    """
    site = open_site(site_path)
    sp = str(site.path)
    steps = plan_site(sp)
    changes = [s for s in steps if s.action != "unchanged"]
    if changes and not dry_run:
        apply_site(sp, steps)
        # Read back: what was applied must now be there.
        after = [s for s in plan_site(sp) if s.action != "unchanged"]
        if after:
            raise RuntimeError(f"prepare-azure applied its changes but {len(after)} still differ: {after}")
    create_table_artifact([s.model_dump() for s in steps], key="prepare-azure",
                          description="Would change" if dry_run else "Changes made")
    return {"dry_run": dry_run, "changed": bool(changes), "steps": [s.model_dump() for s in steps]}
