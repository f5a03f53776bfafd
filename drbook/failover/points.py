"""Which recovery point a failover or drill uses (pure)."""

from __future__ import annotations

from drbook.errors import PreflightError
from drbook.models import RecoveryPoint

LATEST = "latest"  # run a final cycle first when the source answers: lowest RPO
LATEST_PROCESSED = "latest-processed"  # the newest existing point: lowest RTO
LATEST_APP = "latest-app-consistent"
KEYWORDS = (LATEST, LATEST_PROCESSED, LATEST_APP)


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
