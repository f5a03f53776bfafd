"""Progress of long work, shown where a person looks: a rich bar in the CLI and a Prefect
progress artifact in the UI. Core code takes a plain `progress(done, total)` callback."""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from typing import Callable, Iterator

# Set by the CLI to a rich Progress; None elsewhere (workers, tests).
cli_progress: contextvars.ContextVar = contextvars.ContextVar("drbook_cli_progress", default=None)


@contextmanager
def tracked(description: str, *, artifact_key: str | None = None, min_interval: float = 0.5) -> Iterator[Callable[[int, int], None]]:
    """Yield a progress(done, total) callback that drives the CLI bar and, inside a flow
    run, a Prefect progress artifact (updated at most every `min_interval` seconds)."""
    bar = cli_progress.get()
    bar_task = bar.add_task(description, total=None) if bar is not None else None
    artifact_id = None
    try:
        from prefect.artifacts import create_progress_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is not None:
            artifact_id = create_progress_artifact(progress=0.0, key=artifact_key, description=description)
    except Exception:  # no API in reach: the CLI bar still works
        artifact_id = None
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(bar_task, completed=done, total=total)
        now = time.monotonic()
        if artifact_id is not None and (now - last[0] >= min_interval or done >= total):
            last[0] = now
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id, progress=100.0 * done / total if total else 100.0)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.update(bar_task, visible=False)
