"""Per-connector rate and concurrency limits: shared through the store, work waits and is never lost.

The limiter's own rules are checked on a clock the test moves; the sharing across worker processes
on SQLite (the embedded default) and on the real PostgreSQL; and the pipeline against the Bartec
simulator on loopback, which counts the calls it has in flight.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from hubbridge.config.models import ConnectorInstance, RateLimit
from hubbridge.connectors.bartec import BartecSimulator
from hubbridge.connectors.simulator import Request, Response
from hubbridge.errors import BackOfficeUnavailable
from hubbridge.store import (
    CaseRow,
    EventRow,
    SyncCursorRow,
    ThrottleRow,
    ThrottleSlotRow,
    session_scope,
)
from hubbridge.workflows import ratelimit
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import Runtime
from hubbridge.workflows.sync import poll_connector

from .conftest import Rig
from .stack import connectors_yaml, use_config, write_config

INSTANCE = "refuse-bromsgrove"


def instance(per_second: float | None = None, concurrency: int | None = None, name: str = "refuse-test") -> Any:
    return ConnectorInstance(name=name, plugin="bartec", endpoint="http://127.0.0.1:9/t/",
                             rate_limit=RateLimit(per_second=per_second, concurrency=concurrency))


class FakeClock:
    """A clock the test moves; `sleep` moves it too, so waiting is instant and exact."""

    def __init__(self, at: float = 1_000_000.0) -> None:
        self.at = at
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.at += seconds


# -- the limiter's rules --------------------------------------------------------------------------


def test_requests_are_spaced_by_the_rate(sqlite_url: str) -> None:
    clock = FakeClock()
    t = ratelimit.Throttle(sqlite_url, instance(per_second=4), clock=clock, sleep=clock.sleep)
    t.pace()
    with pytest.raises(ratelimit.Throttled) as caught:
        t.pace()
    # nothing was sent: the caller is told how long to wait (at least until the next permit)
    assert caught.value.retry_after is not None and caught.value.retry_after >= 0.25
    assert isinstance(caught.value, BackOfficeUnavailable)
    clock.at += 0.1
    with pytest.raises(ratelimit.Throttled):
        t.pace()
    clock.at += 0.15
    t.pace()
    # a caller willing to wait a little sleeps for its permit instead of going back to the queue
    t.pace(max_wait=1.0)
    assert clock.slept and clock.slept[-1] >= 0.25
    # ten seconds of steady demand get at most 1 + rate * 10 permits
    start, granted = clock.at, 0
    while clock.at < start + 10:
        try:
            t.pace()
            granted += 1
        except ratelimit.Throttled:
            pass
        clock.at += 0.01
    assert 38 <= granted <= 41


def test_concurrency_slots_are_held_released_and_taken_back_when_a_worker_dies(sqlite_url: str) -> None:
    clock = FakeClock()
    t = ratelimit.Throttle(sqlite_url, instance(concurrency=2), clock=clock, lease_seconds=30)
    a = t.take_slot()
    b = t.take_slot()
    assert a[0] != b[0]
    with pytest.raises(ratelimit.Throttled, match="2 concurrent-call slots"):
        t.take_slot()
    t.give_slot(*a)
    clock.at += 20
    c = t.take_slot()
    with pytest.raises(ratelimit.Throttled):
        t.take_slot()
    # b's holder is killed and never gives its slot back: its lease runs out and the slot returns
    clock.at += 15
    d = t.take_slot()
    assert {c[0], d[0]} == {0, 1}
    t.give_slot(*b)  # a late give from the dead holder frees nothing it no longer holds
    with pytest.raises(ratelimit.Throttled):
        t.take_slot()
    t.give_slot(*c)
    t.give_slot(*d)
    # the context manager gives its slot back when the block ends, even when the block fails
    with pytest.raises(RuntimeError), t.slot(), t.slot():
        with pytest.raises(ratelimit.Throttled):
            t.take_slot()
        raise RuntimeError("the back-office call failed")
    t.take_slot()
    t.take_slot()


def test_without_limits_nothing_is_written(sqlite_url: str) -> None:
    t = ratelimit.Throttle(sqlite_url, instance())
    assert not t.limited
    for _ in range(50):
        t.pace()
        with t.slot():
            pass
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(ThrottleRow)) == 0
        assert s.scalar(select(func.count()).select_from(ThrottleSlotRow)) == 0


# -- shared across worker processes --------------------------------------------------------------

RATE = 8.0
SLOTS = 2
PROCS = 4
SECONDS = 2.5


def _hammer(url: str, barrier: Any, out: Any) -> None:
    """One worker process: take permits and slots as fast as it can for a while; report what it saw."""
    t = ratelimit.Throttle(url, instance(per_second=RATE, name="refuse-shared"))
    s = ratelimit.Throttle(url, instance(concurrency=SLOTS, name="refuse-shared"), lease_seconds=60)
    barrier.wait()
    grants, throttled, held = [], 0, []
    end = time.time() + SECONDS
    while time.time() < end:
        try:
            t.pace()
            grants.append(time.time())
        except ratelimit.Throttled:
            throttled += 1
        try:
            slot = s.take_slot()
        except ratelimit.Throttled:
            throttled += 1
            continue
        began = time.time()  # after the grant...
        time.sleep(0.03)
        ended = time.time()  # ...and before the release: inside the held interval
        s.give_slot(*slot)
        held.append((began, ended))
    out.put(json.dumps({"grants": grants, "throttled": throttled, "held": held}))


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _across_processes(url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(PROCS + 1), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(url, barrier, out)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    t0 = time.time()
    results = [json.loads(out.get(timeout=120)) for _ in procs]
    t1 = time.time()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    grants = sorted(g for r in results for g in r["grants"])
    # strict spacing: whatever the number of workers, n grants need (n - 1) intervals between them
    assert 1 <= len(grants) <= 1 + RATE * (t1 - t0)
    assert len({round(g, 6) for g in grants}) == len(grants)
    held = [tuple(h) for r in results for h in r["held"]]
    assert held and _max_overlap(held) <= SLOTS  # type: ignore[arg-type]
    assert sum(r["throttled"] for r in results) > 0, "the workers never met the limits: nothing was tested"


def test_limits_hold_across_processes_on_sqlite(sqlite_url: str) -> None:
    _across_processes(sqlite_url)


@pytest.mark.services
def test_limits_hold_across_processes_on_postgresql(pg_url: str) -> None:
    _across_processes(pg_url)


# -- the pipeline waits, never fails or loses work -----------------------------------------------


class CountingBartec(BartecSimulator):
    """The Bartec simulator, counting how many calls it has in flight at once (per tenant)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self._count_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        with self._count_lock:
            n = self.in_flight[request.tenant] = self.in_flight.get(request.tenant, 0) + 1
            self.most[request.tenant] = max(self.most.get(request.tenant, 0), n)
        try:
            time.sleep(0.02)  # a fragile back office: each call takes a while
            return super().handle(request)
        finally:
            with self._count_lock:
                self.in_flight[request.tenant] -= 1


@pytest.fixture(scope="module")
def counting_sims() -> Iterator[tuple[Any, Any]]:
    from hubbridge.connectors.hub import HubSimulator
    from hubbridge.workflows.simulated import DEMO_SECRETS

    hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    bartec = CountingBartec().start()
    yield hub, bartec
    hub.stop()
    bartec.stop()


def limited_rig(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, url: str,
                limits: dict[str, Any]) -> Rig:
    hub, bartec = sims
    hub.reset()
    bartec.faults.clear()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    with connectors_yaml(cfg) as conns:
        conns["connectors"][INSTANCE]["rate_limit"] = limits
    use_config(monkeypatch, cfg, url)
    return Rig(Runtime(), hub, bartec)


def bromsgrove_cases(n: int, seed: int) -> list[dict[str, Any]]:
    cases = generate_cases(n * 40, seed=seed, services=("refuse.missed-collection",))
    return [c for c in cases if c["authority"] == "bromsgrove"][:n]


def test_a_throttled_delivery_waits_without_counting_an_attempt(
    tmp_path: Path, counting_sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    rig = limited_rig(tmp_path, counting_sims, monkeypatch, sqlite_url, {"per_second": 0.05})
    first, second = (accept_case(rig.rt, json.dumps(c)).hub_ref for c in bromsgrove_cases(2, seed=3))
    assert deliver_case(rig.rt, first).kind == "done"
    out = deliver_case(rig.rt, second)
    assert out.kind == "retry" and out.retry_in is not None and out.retry_in > 1.0
    with session_scope(rig.url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == second))
        assert row is not None
        assert (row.stage, row.attempts, row.unknown_outcome) == ("received", 0, False)
        assert row.next_attempt_at is not None and row.claimed_until is None
        assert "rate limit" in (row.last_error or "")
        # the permit comes due (as if the wait had passed)
        s.execute(update(ThrottleRow).where(ThrottleRow.connector == INSTANCE).values(tat=0.0))
    assert deliver_case(rig.rt, second).kind == "done"
    assert rig.backoffice.store.count_by_hub_ref().get(second) == 1
    rig.rt.close()


def test_a_throttled_poll_leaves_the_cursor_for_the_next_poll(
    tmp_path: Path, counting_sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    rig = limited_rig(tmp_path, counting_sims, monkeypatch, sqlite_url, {"per_second": 0.05})
    assert poll_connector(rig.rt, INSTANCE).kind == "done"
    with session_scope(rig.url) as s:
        cursor = s.get(SyncCursorRow, INSTANCE).cursor  # type: ignore[union-attr]
    assert poll_connector(rig.rt, INSTANCE).kind == "retry"
    with session_scope(rig.url) as s:
        cur = s.get(SyncCursorRow, INSTANCE)
        assert cur is not None and cur.cursor == cursor and cur.lease_until is None
    rig.rt.close()


def test_many_workers_keep_to_one_call_at_a_time_and_deliver_everything_once(
    tmp_path: Path, counting_sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    rig = limited_rig(tmp_path, counting_sims, monkeypatch, sqlite_url, {"per_second": 20, "concurrency": 1})
    refs = [accept_case(rig.rt, json.dumps(c)).hub_ref for c in bromsgrove_cases(12, seed=5)]
    rig.backoffice.most.clear()
    todo = list(refs)
    lock = threading.Lock()
    kinds: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                ref = todo.pop(0)
            out = deliver_case(rig.rt, ref)
            with lock:
                kinds.append(out.kind)
                if out.kind in ("retry", "skipped"):
                    todo.append(ref)  # back in the queue, as a Celery retry would put it
            if out.kind == "retry":
                time.sleep(min(out.retry_in or 0.1, 0.5))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(kinds) <= {"done", "retry", "skipped"}
    assert kinds.count("done") == len(refs)
    jobs = rig.backoffice.store.count_by_hub_ref()
    assert all(jobs.get(ref) == 1 for ref in refs)
    assert rig.backoffice.most.get("bromsgrove") == 1
    with session_scope(rig.url) as s:
        attempts = s.scalars(select(CaseRow.attempts).where(CaseRow.hub_ref.in_(refs))).all()
        waits = s.scalar(select(func.count()).select_from(EventRow).where(EventRow.kind == "deliver.retry"))
    assert set(attempts) == {1}, "a wait for the limit is not a failed attempt"
    assert waits and waits > 0, "the workers never met the limit: nothing was tested"
    rig.rt.close()
