"""A circuit breaker per connector instance, kept in the store so every worker process on every machine agrees."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, TypeVar

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from hubbridge.config.models import ConnectorInstance
from hubbridge.errors import (
    BackOfficeUnavailable,
    ConnectorError,
    OutcomeUnknown,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from hubbridge.store import (
    ConnectorHealthRow,
    session_scope,
    utcnow,
)

if TYPE_CHECKING:
    from hubbridge.workflows.ratelimit import Throttle

T = TypeVar("T")


class CircuitBreaker:
    """Closed, open or half-open per connector instance, kept in the store so every worker agrees.

    A circuit seen closed with no failures is trusted in this process for `TRUST_SECONDS`, and its
    successes are counted in memory and written with the next write, at most every `WRITE_SECONDS`:
    otherwise every successful call would write the instance's one row, a hot row under many workers.
    A process that fails a call stops trusting at once; one that keeps succeeding learns of other
    processes' opened circuit within `TRUST_SECONDS`, which is why the trust is short. Only the
    counters (and `last_success_at`) lag, by up to `WRITE_SECONDS`.
    """

    TRUST_SECONDS = 5.0  # at 1 s, 17 instances x 2 processes still read and wrote the row ~2 times a case
    WRITE_SECONDS = 60.0  # writing every 5 s as well made every trust window a read and a write: half of them go
    _trusted_until: ClassVar[dict[tuple[str, str], float]] = {}
    _unsaved: ClassVar[dict[tuple[str, str], int]] = {}
    _written_at: ClassVar[dict[tuple[str, str], float]] = {}

    def __init__(self, url: str, instance: ConnectorInstance, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.instance = instance
        self._clock = clock
        self._key = (url, instance.name)

    def _trusted(self) -> bool:
        return self._trusted_until.get(self._key, float("-inf")) > self._clock()

    def _trust(self) -> None:
        self._trusted_until[self._key] = self._clock() + self.TRUST_SECONDS

    def before_call(self) -> None:
        """Raise BackOfficeUnavailable while the circuit is open; let one trial through once it is due."""
        if self._trusted():
            return
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.get(ConnectorHealthRow, self.instance.name)
            if row is None or row.state == "closed":
                if row is not None and not row.consecutive_failures:
                    self._trust()
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
        if self._trusted() and self._clock() - self._written_at.get(self._key, float("-inf")) < self.WRITE_SECONDS:
            self._unsaved[self._key] = self._unsaved.get(self._key, 0) + 1
            return
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.get(ConnectorHealthRow, self.instance.name) or self._first_row(s)
            row.state = "closed"
            row.consecutive_failures = 0
            row.opened_until = None
            row.successes = (row.successes or 0) + 1 + self._unsaved.pop(self._key, 0)
            row.last_success_at = now
        self._trust()
        self._written_at[self._key] = self._clock()

    def _first_row(self, s: Session) -> ConnectorHealthRow:
        """Make the instance's row, closed; if another process made it since this one looked, take theirs.

        Two workers' first calls to a back office can both find no row: a plain insert then fails the second
        worker's task after its back office has already taken the case.
        """
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        s.execute(
            insert(ConnectorHealthRow)
            .values(connector=self.instance.name, successes=0, failures=0, consecutive_failures=0, state="closed")
            .on_conflict_do_nothing(index_elements=[ConnectorHealthRow.connector])
        )
        return s.scalars(
            select(ConnectorHealthRow).where(ConnectorHealthRow.connector == self.instance.name).with_for_update()
        ).one()

    def failure(self, error: str) -> None:
        self._trusted_until.pop(self._key, None)
        now = utcnow()
        with session_scope(self.url) as s:
            row = s.scalar(
                select(ConnectorHealthRow).where(ConnectorHealthRow.connector == self.instance.name).with_for_update()
            ) or self._first_row(s)
            row.successes = (row.successes or 0) + self._unsaved.pop(self._key, 0)
            row.failures = (row.failures or 0) + 1
            row.consecutive_failures = (row.consecutive_failures or 0) + 1
            row.last_failure_at = now
            row.last_error = error[:2000]
            if row.state == "half_open" or row.consecutive_failures >= self.instance.circuit.failure_threshold:
                row.state = "open"
                row.opened_until = now + timedelta(seconds=self.instance.circuit.reset_seconds)


@dataclass(frozen=True)
class CallFailed:
    """A back-office call that raised, as the step that made it must act on it: try again later (counting the
    attempt or not; `unknown` when it may have reached the back office) or give up with `reason`."""

    exc: ConnectorError
    retry: bool
    count_attempt: bool = True
    unknown: bool = False
    reason: str = ""


def call_back_office(breaker: CircuitBreaker, throttle: Throttle,
                     calls: Callable[[Callable[[], None]], T]) -> T | CallFailed:
    """Run `calls` behind the instance's circuit breaker, in one of its concurrency slots; `calls` is given
    `pace`, to call before each request. What a failure means for the breaker is decided here, once, for every
    step that calls a back office (a delivery, a follow-up)."""
    from hubbridge.workflows.ratelimit import THROTTLE_WAIT_SECONDS

    try:
        breaker.before_call()
        with throttle.slot():
            result = calls(lambda: throttle.pace(THROTTLE_WAIT_SECONDS))
        breaker.success()
    except BackOfficeUnavailable as exc:  # the circuit is open, or the call was refused before it was sent
        return CallFailed(exc, retry=True, count_attempt=False)
    except UnknownOutcomeError as exc:
        breaker.failure(str(exc))
        return CallFailed(exc, retry=True, unknown=True)
    except TransientError as exc:
        breaker.failure(str(exc))
        return CallFailed(exc, retry=True)
    except OutcomeUnknown as exc:
        # never send again after this: an operator checks the candidates in the back office first
        breaker.success()
        return CallFailed(exc, retry=False, reason="outcome unknown")
    except (PermanentError, ConnectorError) as exc:
        breaker.success()  # the back office answered: it is up
        return CallFailed(exc, retry=False, reason="refused")
    return result
