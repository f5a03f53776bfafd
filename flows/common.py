"""Small helpers every flow uses: the flow run id, running work per machine in threads
with the Prefect context carried along, and artifacts."""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from prefect.runtime import flow_run

T = TypeVar("T")
R = TypeVar("R")


def current_run_id() -> str:
    return str(flow_run.get_id() or "local")


def parallel(fn: Callable[[T], R], items: Iterable[T], max_workers: int = 8) -> list[R]:
    """Run fn over items in threads; each thread gets a copy of the caller's context, so
    Prefect tasks it calls belong to this flow run (and to its open transaction)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, i) for i in items]
        return [f.result() for f in futures]
