"""The retry policy: backoff with full jitter, a circuit breaker and a rate/concurrency limit per connector instance.

Short waits are Celery retries; anything longer is parked in the store (`next_attempt_at`) and
picked up by beat's reconcile sweep, so no message waits hours unacknowledged in a worker. The
breaker and the limits live in the store, so every worker process on every machine agrees.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import ClassVar

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tenacity import RetryCallState, wait_random_exponential

from hubbridge.config.models import ConnectorInstance, RetryPolicy
from hubbridge.errors import BackOfficeUnavailable
from hubbridge.store import (
    ConnectorHealthRow,
    ThrottleRow,
    ThrottleSlotRow,
    session_scope,
    utcnow,
)

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


class Throttled(BackOfficeUnavailable):
    """A connector instance's rate or concurrency limit is reached: nothing was sent, the work waits."""


# Rows already made, per (store, connector[, slots]): creating them is the only step that can race.
_rows_made: set[tuple[str, str, int]] = set()


class Throttle:
    """The requests-a-second and calls-in-flight limits of one connector instance, shared through the store.

    The rate is a GCRA with no burst: a request is allowed once the previous one's interval has
    passed, so any window of T seconds holds at most 1 + rate*T requests whatever the number of
    workers. Each grant is one conditional UPDATE (atomic on SQLite and PostgreSQL alike).
    Concurrency is N slot rows held under a lease, so a killed worker's slot comes back by itself.
    Worker clocks must agree (NTP), as they must for Celery beat.
    """

    def __init__(
        self,
        url: str,
        instance: ConnectorInstance,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        lease_seconds: float | None = None,
    ) -> None:
        self.url = url
        self.instance = instance
        self.name = instance.name
        self.per_second = instance.rate_limit.per_second
        self.concurrency = instance.rate_limit.concurrency
        self.clock = clock
        self.sleep = sleep
        per_call = instance.timeouts.connect + instance.timeouts.read
        # long enough for one connector operation (a few requests), short enough that a killed worker's slot returns
        self.lease_seconds = lease_seconds if lease_seconds is not None else 3 * per_call + 10.0

    @property
    def limited(self) -> bool:
        """Whether any limit is configured (without one, nothing touches the store)."""
        return self.per_second is not None or self.concurrency is not None

    # -- rate ------------------------------------------------------------------------------------
    def pace(self, max_wait: float = 0.0) -> None:
        """Take one request's permit, sleeping up to `max_wait` seconds for it; else raise Throttled."""
        if self.per_second is None:
            return
        interval = 1.0 / self.per_second
        deadline = self.clock() + max_wait
        self._make_rate_row()
        while True:
            now = self.clock()
            with session_scope(self.url) as s:
                granted = s.execute(
                    update(ThrottleRow)
                    .where(ThrottleRow.connector == self.name, ThrottleRow.tat <= now)
                    .values(tat=now + interval)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if granted:
                    return
                tat = s.scalar(select(ThrottleRow.tat).where(ThrottleRow.connector == self.name)) or now
            wait = max(tat - now, 0.0)
            if now + wait > deadline:
                raise Throttled(
                    f"rate limit of {self.per_second:g} requests/s reached",
                    instance=self.name,
                    # jitter spreads the waiting workers so they do not all come back at the same instant
                    retry_after=wait + random.uniform(0.0, 4 * interval),
                    hint="the work waits and is retried; raise rate_limit.per_second if the back office allows",
                )
            self.sleep(wait + random.uniform(0.0, interval / 4))

    def _make_rate_row(self) -> None:
        key = (self.url, self.name, 0)
        if key in _rows_made:
            return
        try:
            with session_scope(self.url) as s:
                if s.get(ThrottleRow, self.name) is None:
                    s.add(ThrottleRow(connector=self.name, tat=0.0))
        except IntegrityError:
            pass  # another worker made it first
        _rows_made.add(key)

    # -- concurrency -----------------------------------------------------------------------------
    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the instance's concurrent-call slots for the block; raise Throttled if none is free."""
        if self.concurrency is None:
            yield
            return
        held = self.take_slot()
        try:
            yield
        finally:
            self.give_slot(*held)

    def take_slot(self) -> tuple[int, str]:
        """Claim a free (or expired) slot; returns (slot, holder) for `give_slot`."""
        assert self.concurrency is not None
        self._make_slot_rows(self.concurrency)
        holder = uuid.uuid4().hex
        now = self.clock()
        start = random.randrange(self.concurrency)  # spread claims so workers do not all try slot 0 first
        with session_scope(self.url) as s:
            for k in range(self.concurrency):
                i = (start + k) % self.concurrency
                got = s.execute(
                    update(ThrottleSlotRow)
                    .where(
                        ThrottleSlotRow.connector == self.name,
                        ThrottleSlotRow.slot == i,
                        ThrottleSlotRow.holder.is_(None) | (ThrottleSlotRow.lease_until < now),
                    )
                    .values(holder=holder, lease_until=now + self.lease_seconds)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if got:
                    return i, holder
        raise Throttled(
            f"all {self.concurrency} concurrent-call slots are in use",
            instance=self.name,
            retry_after=random.uniform(0.25, 1.0),
            hint="the work waits and is retried; raise rate_limit.concurrency if the back office allows",
        )

    def give_slot(self, slot: int, holder: str) -> None:
        with session_scope(self.url) as s:
            s.execute(
                update(ThrottleSlotRow)
                .where(
                    ThrottleSlotRow.connector == self.name,
                    ThrottleSlotRow.slot == slot,
                    ThrottleSlotRow.holder == holder,
                )
                .values(holder=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )

    def _make_slot_rows(self, n: int) -> None:
        key = (self.url, self.name, n)
        if key in _rows_made:
            return
        for i in range(n):
            try:
                with session_scope(self.url) as s:
                    if s.get(ThrottleSlotRow, (self.name, i)) is None:
                        s.add(ThrottleSlotRow(connector=self.name, slot=i))
            except IntegrityError:
                pass  # another worker made it first
        _rows_made.add(key)
