"""The circuit breaker per connector instance: opens on failures, shared through the store, lets one trial through."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hubbridge.config.models import CircuitBreaker as CircuitSettings
from hubbridge.config.models import ConnectorInstance
from hubbridge.errors import BackOfficeUnavailable
from hubbridge.store import CaseRow, ConnectorHealthRow, migrate, session_scope, utcnow
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.circuit import CircuitBreaker
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case

from .conftest import Rig


class Clock:
    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'circuit.sqlite'}"
    migrate(url)
    return url


def instance(name: str = "refuse-test") -> ConnectorInstance:
    return ConnectorInstance(name=name, plugin="bartec", endpoint="http://127.0.0.1:9/t/",
                             circuit=CircuitSettings(failure_threshold=3, reset_seconds=30))


def health(url: str, name: str = "refuse-test") -> ConnectorHealthRow:
    with session_scope(url) as s:
        row = s.get(ConnectorHealthRow, name)
        assert row is not None
        s.expunge(row)
        return row


def test_failures_open_the_circuit_for_every_worker(url: str) -> None:
    one, other = CircuitBreaker(url, instance(), Clock()), CircuitBreaker(url, instance(), Clock())
    for _ in range(2):
        one.before_call()
        one.failure("read timeout")
    other.before_call()  # two failures of three: still closed
    one.failure("read timeout")
    with pytest.raises(BackOfficeUnavailable) as info:
        other.before_call()  # another process sees it open through the store
    assert "circuit open" in str(info.value) and 29 <= (info.value.retry_after or 0) <= 30
    row = health(url)
    assert (row.state, row.consecutive_failures, row.failures, row.last_error) == ("open", 3, 3, "read timeout")


def test_after_the_reset_period_one_trial_goes_through(url: str) -> None:
    breakers = [CircuitBreaker(url, instance(), Clock()) for _ in range(3)]
    for _ in range(3):
        breakers[0].failure("HTTP 503")
    with session_scope(url) as s:  # the reset period has passed
        s.execute(update(ConnectorHealthRow).values(opened_until=utcnow() - timedelta(seconds=1)))
    breakers[1].before_call()  # the trial
    with pytest.raises(BackOfficeUnavailable, match="half-open"):
        breakers[2].before_call()  # while the trial is in flight, nobody else goes
    breakers[1].failure("HTTP 503")  # the trial failed: open again at once
    assert health(url).state == "open"
    with session_scope(url) as s:
        s.execute(update(ConnectorHealthRow).values(opened_until=utcnow() - timedelta(seconds=1)))
    breakers[2].before_call()
    breakers[2].success()
    row = health(url)
    assert (row.state, row.consecutive_failures, row.opened_until) == ("closed", 0, None)
    breakers[0].before_call()


def test_successes_on_a_trusted_closed_circuit_are_counted_without_a_write_each(url: str) -> None:
    clock = Clock()
    breaker = CircuitBreaker(url, instance(), clock)
    breaker.before_call()
    breaker.success()  # first write; the closed circuit is now trusted for a second
    for _ in range(9):
        breaker.before_call()
        breaker.success()
    assert health(url).successes == 1
    clock.at += CircuitBreaker.TRUST_SECONDS + 0.01
    breaker.before_call()  # the trust ran out: the row is read again (and still closed), but not written
    breaker.success()
    assert health(url).successes == 1
    clock.at = 1000.0 + CircuitBreaker.WRITE_SECONDS + 0.01  # the first write was at 1000
    breaker.before_call()
    breaker.success()
    assert health(url).successes == 12  # nothing lost: the unsaved ones went with the next write
    for _ in range(4):
        breaker.success()
    breaker.failure("HTTP 500")  # a failure writes at once, with the successes not yet written
    row = health(url)
    assert (row.successes, row.failures, row.consecutive_failures) == (16, 1, 1)
    clock.at += 0.1
    breaker.before_call()  # a failure ends the trust: the store is read again
    breaker.failure("HTTP 500")
    breaker.failure("HTTP 500")
    with pytest.raises(BackOfficeUnavailable):
        breaker.before_call()


def test_an_open_circuit_parks_deliveries_without_calling_or_counting_attempts(rig: Rig) -> None:
    case = next(c for c in generate_cases(30, seed=7, start_serial=910_000) if c["service"].startswith("refuse."))
    ref = accept_case(rig.rt, json.dumps(case)).hub_ref
    name = rig.rt.config.route(case["authority"], case["service"]).connector.name
    with session_scope(rig.url) as s:
        s.add(ConnectorHealthRow(connector=name, state="open", successes=0, failures=5, consecutive_failures=5,
                                 opened_until=utcnow() + timedelta(minutes=5)))
    before = rig.backoffice.store.count_by_hub_ref().get(ref, 0)
    out = deliver_case(rig.rt, ref)
    assert out.kind == "retry" and "circuit open" in out.detail
    with session_scope(rig.url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert row is not None and row.attempts == 0 and row.stage == "received"
    assert rig.backoffice.store.count_by_hub_ref().get(ref, 0) == before == 0
    with session_scope(rig.url) as s:  # the back office is back
        s.execute(update(ConnectorHealthRow).values(opened_until=utcnow() - timedelta(seconds=1)))
    assert deliver_case(rig.rt, ref).kind == "done"
    assert rig.backoffice.store.count_by_hub_ref()[ref] == 1
    assert health(rig.url, name).state == "closed"


@pytest.mark.services
@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_two_workers_first_to_a_back_office_both_record_the_call(pg_url: str, outcome: str) -> None:
    """Both find no health row; the second's insert must not fail its task (after the back office took the case)."""
    import threading

    from sqlalchemy import text

    from hubbridge.store import engine_for

    other_worker = engine_for(pg_url).connect()
    other_worker.execute(text("INSERT INTO connector_health (connector, state, consecutive_failures, successes, "
                              "failures) VALUES ('refuse-test', 'closed', 0, 1, 0)"))  # not committed yet
    breaker = CircuitBreaker(pg_url, instance(), Clock())
    errors: list[BaseException] = []

    def call() -> None:
        try:
            breaker.success() if outcome == "success" else breaker.failure("HTTP 503")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    # this worker found no row and its insert now waits on the other's uncommitted one
    with engine_for(pg_url).connect() as watch:
        for _ in range(100):
            waiting = watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND wait_event_type = 'Lock'")).scalar()
            if waiting:
                break
            worker.join(0.05)
    assert waiting == 1
    other_worker.commit()
    other_worker.close()
    worker.join(10)
    assert errors == []
    row = health(pg_url)
    assert (row.successes, row.failures) == ((2, 0) if outcome == "success" else (1, 1))
