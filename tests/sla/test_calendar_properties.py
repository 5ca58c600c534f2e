"""Properties of business-time arithmetic the issue names, checked with hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from hubbridge.case import HubStatus
from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.sla.calendar import BusinessCalendar
from hubbridge.sla.engine import SlaEngine
from tests.sla.conftest import fresh_engine

ENGINE = SlaEngine.from_config(SHIPPED_CONFIG_DIR)
CALENDARS = [ENGINE.calendar(n) for n in ("office", "depot", "highways")]
MINUTE = timedelta(minutes=1)

# instants to the minute over 2025-2028: every DST change, Easter, Christmas and closure in range
instants = st.integers(min_value=0, max_value=4 * 366 * 24 * 60).map(
    lambda m: datetime(2025, 1, 1, tzinfo=UTC) + m * MINUTE)
durations = st.integers(min_value=1, max_value=400 * 60).map(lambda m: m * MINUTE)  # up to 400 business hours
calendars = st.sampled_from(CALENDARS)


def within_business_hours(cal: BusinessCalendar, t: datetime) -> bool:
    """Open at `t`, or `t` is a closing time (the last instant of an opening interval)."""
    return cal.is_open(t) or cal.is_open(t - MINUTE)


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, amount=durations)
def test_due_time_lies_within_business_hours(cal: BusinessCalendar, start: datetime, amount: timedelta) -> None:
    assert within_business_hours(cal, cal.add(start, amount))


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, a=durations, b=durations)
def test_adding_a_then_b_equals_adding_a_plus_b(cal: BusinessCalendar, start: datetime, a: timedelta,
                                                b: timedelta) -> None:
    assert cal.add(cal.add(start, a), b) == cal.add(start, a + b)


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, amount=durations)
def test_between_inverts_add(cal: BusinessCalendar, start: datetime, amount: timedelta) -> None:
    assert cal.between(start, cal.add(start, amount)) == amount


@settings(max_examples=200, deadline=None)
@given(cal=calendars, start=instants, a=durations, b=durations)
def test_add_is_monotonic(cal: BusinessCalendar, start: datetime, a: timedelta, b: timedelta) -> None:
    lo, hi = sorted((a, b))
    assert cal.add(start, lo) <= cal.add(start, hi)
    assert cal.add(start, hi) > start


@settings(max_examples=300, deadline=None)
@given(cal=calendars, start=instants, target=durations, offset=st.integers(min_value=0, max_value=60 * 24 * 60),
       length=st.integers(min_value=1, max_value=5 * 24 * 60))
def test_pause_outside_business_hours_changes_nothing(cal: BusinessCalendar, start: datetime, target: timedelta,
                                                      offset: int, length: int) -> None:
    # pause at any closed instant before the due time, for any span that stays closed (up to the next
    # opening): the paused span holds no business time, so the due time must not move
    due = cal.add(start, target)
    pause_at = start + offset * MINUTE
    assume(pause_at < due and not cal.is_open(pause_at))
    resume_at = min(pause_at + length * MINUTE, cal.next_open(pause_at))
    assert cal.between(pause_at, resume_at) == timedelta(0)
    spent = cal.between(start, pause_at)
    assert cal.add(resume_at, target - spent) == due


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=instants, hours_before_pause=st.integers(min_value=0, max_value=20))
def test_engine_pause_over_a_closed_span_keeps_due(tmp_path_factory, start: datetime,
                                                   hours_before_pause: int) -> None:
    """The same property end to end: a clock paused and resumed while the office is shut."""
    cal = ENGINE.calendar("office")
    engine = fresh_engine(f"sqlite:///{tmp_path_factory.mktemp('p') / 's.sqlite'}")
    with Session(engine) as s:
        ENGINE.start(s, "WH-2026-000001", "refuse.bulky-waste", "bromsgrove", "normal", start)
        resolve = next(c for c in ENGINE.clocks_of(s, "WH-2026-000001") if c.clock == "resolve")
        due = resolve.due_at
        # a closed instant: the first closing time after some business hours have run
        pause_at = cal.add(start, timedelta(hours=hours_before_pause + 1))
        while cal.is_open(pause_at):
            pause_at += timedelta(minutes=30)
        resume_at = cal.next_open(pause_at)
        ENGINE.on_status(s, "WH-2026-000001", HubStatus.AWAITING_CUSTOMER, pause_at)
        ENGINE.on_status(s, "WH-2026-000001", HubStatus.IN_PROGRESS, resume_at)
        assert resolve.state == "running"
        assert resolve.due_at == due
    engine.dispose()
