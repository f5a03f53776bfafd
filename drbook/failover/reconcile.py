"""What counts as an orphan (pure): the runs whose Azure resources nobody will clean up.

Every resource a drill or failover makes is tagged with its site and its Prefect flow run
(drbook.failover.build TAG_SITE / TAG_RUN). A run's resources are kept while its flow run
is live (running, paused, pending, scheduled) or when it completed (a drill awaiting
cleanup, a failed-over production VM). Any other state, or no flow run by that id at all,
means the run crashed or failed after making them: they are orphans.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from drbook.adapters.recovery_site import TaggedResource
from drbook.failover.build import TAG_RUN

# Prefect state type names (prefect.client.schemas.objects.StateType values).
KEEP_STATES = frozenset({"RUNNING", "PAUSED", "PENDING", "SCHEDULED", "COMPLETED"})


class OrphanRun(BaseModel):
    run_id: str
    state: str | None  # None: Prefect has no state for this id (no such flow run)
    resources: list[str]  # ids of what the run left
    reason: str


def resources_by_run(tagged: list[TaggedResource]) -> dict[str, list[TaggedResource]]:
    """Run id -> its resources; a resource without a run tag belongs to no run and is left alone."""
    runs: dict[str, list[TaggedResource]] = {}
    for r in tagged:
        run_id = r.tags.get(TAG_RUN)
        if run_id:
            runs.setdefault(run_id, []).append(r)
    return runs


def decide_orphans(runs: Mapping[str, list[TaggedResource]], states: Mapping[str, str | None]) -> list[OrphanRun]:
    """The runs whose resources should go, by run id; `states` holds each run's Prefect state type."""
    orphans = []
    for run_id in sorted(runs):
        state = states.get(run_id)
        if state in KEEP_STATES:
            continue
        reason = "Prefect knows no state for this run" if state is None else f"its flow run is {state.lower()}"
        orphans.append(OrphanRun(run_id=run_id, state=state, resources=[r.id for r in runs[run_id]], reason=reason))
    return orphans
