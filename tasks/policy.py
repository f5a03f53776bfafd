"""Retry policies: only what may succeed next time is retried (drbook.errors `retryable`)."""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from drbook.errors import is_retryable


def retry_if_transient(task, task_run, state) -> bool:
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # a result that cannot be read is itself the failure
        exc = err
    return isinstance(exc, BaseException) and is_retryable(exc)


# Azure: throttling (429), 5xx and timeouts are retried with backoff and jitter.
AZURE = dict(
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
# Remote shells: connection refused / timeouts only; never host-key or authentication failures.
REMOTE = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
ONCE = dict(cache_policy=NO_CACHE)
