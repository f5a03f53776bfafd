"""What a backend's change answers, in ARM's terms rather than HTTP's.

responses.py turns these into status codes and headers: which status a created resource gets
(201, or 202 for disks and storage accounts) and which long-running-operation headers go with
an operation (Azure-AsyncOperation, Location, Retry-After) is the wire's business, not the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Operation = dict[str, Any]
"""A long-running operation as kept in ``store.operations`` (see base.py); it finishes later."""


@dataclass(frozen=True)
class Written:
    """A PUT or PATCH that went through: the resource as it now stands and whether it is new."""

    resource: dict[str, Any]
    created: bool
    operation: Operation | None = None  # None: the change is complete already


@dataclass(frozen=True)
class Deletion:
    """A DELETE. ARM treats deleting what is not there as a success, so that is no error."""

    existed: bool
    operation: Operation | None = None  # None: gone already (or nothing to delete)
