"""The rate and concurrency limits of a connector instance, shared through the store by every worker."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from hubbridge.config.models import ConnectorInstance
from hubbridge.errors import BackOfficeUnavailable
from hubbridge.store import (
    ThrottleRow,
    ThrottleSlotRow,
    session_scope,
)

THROTTLE_WAIT_SECONDS = 1.0
"""A worker sleeps this long at most for a rate-limit permit; a longer wait goes back to the queue."""


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
