"""Which recovery point a failover or drill uses (pure)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from drbook.errors import InvalidParameters, PreflightError
from drbook.models import RecoveryPoint

LATEST = "latest"  # run a final cycle first when the source answers: lowest RPO
LATEST_PROCESSED = "latest-processed"  # the newest existing point: lowest RTO
LATEST_APP = "latest-app-consistent"
KEYWORDS = (LATEST, LATEST_PROCESSED, LATEST_APP)
POINT_ID_PATTERN = r"^pt-[0-9]{14}-[0-9a-f]{8}$"

# A flow parameter: one of the keywords, or a point id. The Prefect UI draws it as a
# choice between the list and a text box; a run with anything else is refused.
PointKeyword = Literal["latest", "latest-processed", "latest-app-consistent"]
PointChoice = PointKeyword | Annotated[str, Field(pattern=POINT_ID_PATTERN, title="recovery point id")]


def point_choice(value: str) -> str:
    """The flow's point choice from a form value: a keyword, or the id a label starts with."""
    return value.split(" ", 1)[0]


def require_point_choice(choice: str, *, ids_only: bool = False) -> str:
    """A `--point` as a run takes it (a keyword or a point id; `ids_only`: a point id), refused
    before anything runs or is asked of a server."""
    if (not ids_only and choice in KEYWORDS) or re.fullmatch(POINT_ID_PATTERN, choice):
        return choice
    what = "a point id" if ids_only else "latest, latest-processed, latest-app-consistent or a point id"
    raise InvalidParameters(f"--point {choice!r} is not a recovery point: give {what} "
                            "(pt-YYYYMMDDhhmmss-xxxxxxxx; `drbook points MACHINE` lists them)")


def needs_final_cycle(choice: str) -> bool:
    return choice == LATEST


def choose_point(item: str, points: list[RecoveryPoint], choice: str) -> RecoveryPoint:
    """`points` in any order. `latest` means the newest point once the final cycle ran."""
    if not points:
        raise PreflightError(f"{item} has no recovery point yet; replicate it first")
    newest_first = sorted(points, key=lambda p: p.time, reverse=True)
    if choice in (LATEST, LATEST_PROCESSED):
        return newest_first[0]
    if choice == LATEST_APP:
        for p in newest_first:
            if p.consistency == "app":
                return p
        raise PreflightError(f"{item} has no app-consistent recovery point (it has {len(points)} others)")
    for p in points:
        if p.id == choice:
            return p
    raise PreflightError(f"{item} has no recovery point {choice!r}; `drbook points {item}` lists them")


def choose_group_point(points_by_item: dict[str, list[RecoveryPoint]], choice: str) -> dict[str, RecoveryPoint]:
    """One shared point id for every member of a replication group (multi-machine consistency)."""
    ids_per_item = [{p.id for p in pts if p.group} for pts in points_by_item.values()]
    shared = set.intersection(*ids_per_item) if ids_per_item else set()
    if not shared:
        raise PreflightError(f"the machines {', '.join(sorted(points_by_item))} have no shared group recovery point")
    if choice not in KEYWORDS:
        if choice not in shared:
            raise PreflightError(f"{choice!r} is not a recovery point shared by {', '.join(sorted(points_by_item))}")
        chosen_id = choice
    else:
        candidates = []
        for pid in shared:
            members = [next(p for p in pts if p.id == pid) for pts in points_by_item.values()]
            if choice == LATEST_APP and not all(p.consistency == "app" for p in members):
                continue
            candidates.append((min(p.time for p in members), pid))
        if not candidates:
            raise PreflightError("no shared app-consistent recovery point for the group")
        chosen_id = max(candidates)[1]
    return {item: next(p for p in pts if p.id == chosen_id) for item, pts in points_by_item.items()}


class FailoverSteps(BaseModel):
    """What a failover does before it builds anything, from its kind and point choice."""

    stop_applications: bool = Field(description="planned: the last cycle then reads all there will ever be")
    final_cycle: bool = Field(description="a last cycle of the sources before the point is chosen")
    final_cycle_required: bool = Field(description="planned: a source that does not answer stops the failover")
    shut_down_sources: bool = Field(description="planned: the sources are off before Azure runs them (no split brain)")


def failover_steps(planned: bool, choice: str) -> FailoverSteps:
    """Planned: zero data loss: stop writes for good, take the last point, shut the source
    down, and fail over to exactly that point. Unplanned: a final cycle only for `latest`,
    and only if the source still answers."""
    if planned:
        return FailoverSteps(stop_applications=True, final_cycle=True, final_cycle_required=True, shut_down_sources=True)
    return FailoverSteps(stop_applications=False, final_cycle=needs_final_cycle(choice), final_cycle_required=False,
                         shut_down_sources=False)


def require_final_points(machines: list[str], finals: list[RecoveryPoint | None]) -> dict[str, RecoveryPoint]:
    """A planned failover's points: every machine's last cycle, or a refusal naming who did not answer."""
    by_item = {p.item: p for p in finals if p is not None}
    missing = sorted(set(machines) - set(by_item))
    if missing:
        raise PreflightError(f"planned failover needs a last cycle, but {', '.join(missing)} did not answer; "
                             "nothing was changed in Azure (the applications stay stopped; fail over unplanned)")
    return {m: by_item[m] for m in machines}


def rpo_seconds(point_time: dt.datetime, disaster_time: dt.datetime) -> float:
    """What would be lost had the site died at `disaster_time` (a drill's start, a
    failover's approval): the point's age then. A planned failover's point is taken after
    the approval: RPO 0."""
    return max(0.0, (disaster_time - point_time).total_seconds())
