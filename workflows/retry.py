"""The retry policy in one place: how long to wait (full-jitter backoff), when to give up, and where a wait is kept.

Short waits are Celery countdown retries; anything longer is parked in the store (`next_attempt_at`) and picked
up by beat's reconcile sweep, so no message waits hours unacknowledged in a worker. The steps and the tasks ask
this module; the circuit breaker and the rate limits that also make work wait are in `circuit` and `ratelimit`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError
from tenacity import RetryCallState, wait_random_exponential

from hubbridge.config.models import RetryPolicy

HUB_RETRY = RetryPolicy(max_attempts=100, base_seconds=2.0, max_seconds=600.0)
"""The Hub is never given up on: its updates wait (in order) until it answers."""

QUEUE_RETRY_MAX_SECONDS = 30.0
"""Waits up to this long are Celery countdown retries; longer ones are parked in the store."""

# A store connection dropped under a task (a PostgreSQL restart, a failover) fails that one transaction; every
# step is idempotent, so the task simply runs again shortly rather than waiting for beat's reconcile sweep.
STORE_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": int(QUEUE_RETRY_MAX_SECONDS),
    "retry_jitter": True,
}
"""The Celery task options that retry a task whose store connection dropped."""


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: full-jitter exponential, or what the server asked."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_seconds)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempt, 1)
    wait = wait_random_exponential(multiplier=policy.base_seconds, max=policy.max_seconds)
    return max(float(wait(state)), 0.05)


def hub_backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds before the Hub is tried again after `attempt` failed tries."""
    return backoff(HUB_RETRY, attempt, retry_after)


def exhausted(policy: RetryPolicy, attempts: int) -> bool:
    """Whether `attempts` tries have used up the policy: the work is dead-lettered rather than tried again."""
    return attempts >= policy.max_attempts


def queue_countdown(retry_in: float | None) -> float | None:
    """The Celery countdown for a retry due in `retry_in` seconds, or None when the wait stays parked in the store."""
    if retry_in is not None and retry_in <= QUEUE_RETRY_MAX_SECONDS:
        return retry_in
    return None
