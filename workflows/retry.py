"""The retry policy: exponential backoff with full jitter, and a circuit breaker per connector instance.

Short waits are Celery retries; anything longer is parked in the store (`next_attempt_at`) and
picked up by beat's reconcile sweep, so no message waits hours unacknowledged in a worker.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from tenacity import RetryCallState, wait_random_exponential

from hubbridge.config.models import ConnectorInstance, RetryPolicy
from hubbridge.errors import BackOfficeUnavailable
from hubbridge.workflows.store import ConnectorHealthRow, session_scope, utcnow

HUB_RETRY = RetryPolicy(max_attempts=100, base_seconds=2.0, max_seconds=600.0)
"""The Hub is never given up on: its updates wait (in order) until it answers."""

QUEUE_RETRY_MAX_SECONDS = 30.0
"""Waits up to this long are Celery countdown retries; longer ones are parked in the store."""


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: full-jitter exponential, or what the server asked."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_seconds)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempt, 1)
    wait = wait_random_exponential(multiplier=policy.base_seconds, max=policy.max_seconds)
    return max(float(wait(state)), 0.05)


class CircuitBreaker:
    """Closed, open or half-open per connector instance, kept in the store so every worker agrees."""

    def __init__(self, url: str, instance: ConnectorInstance) -> None:
        self.url = url
        self.instance = instance

    def before_call(self) -> None:
        """Raise BackOfficeUnavailable while the circuit is open; let one trial through once it is due."""
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.get(ConnectorHealthRow, self.instance.name)
            if row is None or row.state == "closed":
                return
            if row.state == "open" and row.opened_until and row.opened_until > now:
                raise BackOfficeUnavailable(
                    f"circuit open until {row.opened_until:%H:%M:%S} after {row.consecutive_failures} failures",
                    instance=self.instance.name,
                    retry_after=(row.opened_until - now).total_seconds(),
                    hint="work waits in the queue and resumes when the back office answers again",
                )
            if row.state == "open":
                row.state = "half_open"
                # the half-open trial holds the circuit for one reset period
                row.opened_until = now + timedelta(seconds=self.instance.circuit.reset_seconds)
            elif row.state == "half_open" and row.opened_until and row.opened_until > now:
                raise BackOfficeUnavailable(
                    "circuit half-open: a trial call is in flight",
                    instance=self.instance.name,
                    retry_after=(row.opened_until - now).total_seconds(),
                )

    def success(self) -> None:
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.get(ConnectorHealthRow, self.instance.name)
            if row is None:
                row = ConnectorHealthRow(
                    connector=self.instance.name, successes=0, failures=0, consecutive_failures=0, state="closed"
                )
                s.add(row)
            row.state = "closed"
            row.consecutive_failures = 0
            row.opened_until = None
            row.successes = (row.successes or 0) + 1
            row.last_success_at = now

    def failure(self, error: str) -> None:
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.scalar(
                select(ConnectorHealthRow).where(ConnectorHealthRow.connector == self.instance.name).with_for_update()
            )
            if row is None:
                row = ConnectorHealthRow(
                    connector=self.instance.name, successes=0, failures=0, consecutive_failures=0, state="closed"
                )
                s.add(row)
            row.failures = (row.failures or 0) + 1
            row.consecutive_failures = (row.consecutive_failures or 0) + 1
            row.last_failure_at = now
            row.last_error = error[:2000]
            if row.state == "half_open" or row.consecutive_failures >= self.instance.circuit.failure_threshold:
                row.state = "open"
                row.opened_until = now + timedelta(seconds=self.instance.circuit.reset_seconds)
