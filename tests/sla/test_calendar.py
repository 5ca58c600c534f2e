"""Worked examples of business-time arithmetic: weekends, bank holidays, closure days, DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest

from hubbridge.errors import HubbridgeError
from hubbridge.sla.calendar import LONDON, BusinessCalendar, parse_hours
from hubbridge.sla.engine import SlaEngine

H = timedelta(hours=1)
NINE_TO_FIVE = {d: [(time(9), time(17))] for d in range(5)}


def local(*args: int) -> datetime:
    """A Europe/London wall-clock time."""
    return datetime(*args, tzinfo=LONDON)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def office() -> BusinessCalendar:
    """Monday to Friday 09:00-17:00, England & Wales bank holidays, no closure days."""
    return BusinessCalendar("office", NINE_TO_FIVE)


@pytest.fixture(scope="module")
def shipped(sla: SlaEngine) -> BusinessCalendar:
    """The shipped office calendar: as above plus the Christmas shutdown closure days."""
    return sla.calendar("office")


# ------------------------------------------------------------------ ordinary weeks


def test_within_one_day(office: BusinessCalendar) -> None:
    assert office.add(local(2026, 3, 3, 10, 0), 3 * H) == local(2026, 3, 3, 13, 0)


def test_friday_afternoon_runs_into_monday(office: BusinessCalendar) -> None:
    # Fri 16:00 + 2 working hours = 1 h on Friday + 1 h on Monday
    assert office.add(local(2026, 3, 6, 16, 0), 2 * H) == local(2026, 3, 9, 10, 0)


def test_start_at_weekend_counts_from_monday_opening(office: BusinessCalendar) -> None:
    assert office.add(local(2026, 3, 7, 11, 30), 90 * timedelta(minutes=1)) == local(2026, 3, 9, 10, 30)


def test_start_before_opening_and_after_closing(office: BusinessCalendar) -> None:
    assert office.add(local(2026, 3, 3, 6, 0), 1 * H) == local(2026, 3, 3, 10, 0)
    assert office.add(local(2026, 3, 3, 19, 0), 1 * H) == local(2026, 3, 4, 10, 0)


def test_exact_day_lands_on_closing_time(office: BusinessCalendar) -> None:
    # 8 h from the opening is the closing time of the same day, the last instant of it
    assert office.add(local(2026, 3, 3, 9, 0), 8 * H) == local(2026, 3, 3, 17, 0)


def test_to_the_minute(office: BusinessCalendar) -> None:
    assert office.add(local(2026, 3, 3, 16, 59), timedelta(minutes=2)) == local(2026, 3, 4, 9, 1)


def test_between_counts_only_open_time(office: BusinessCalendar) -> None:
    assert office.between(local(2026, 3, 6, 16, 0), local(2026, 3, 9, 10, 0)) == 2 * H
    assert office.between(local(2026, 3, 7, 0, 0), local(2026, 3, 8, 23, 59)) == timedelta(0)
    assert office.between(local(2026, 3, 9, 10, 0), local(2026, 3, 6, 16, 0)) == timedelta(0)


def test_is_open(office: BusinessCalendar) -> None:
    assert office.is_open(local(2026, 3, 3, 9, 0))
    assert office.is_open(local(2026, 3, 3, 16, 59))
    assert not office.is_open(local(2026, 3, 3, 17, 0))
    assert not office.is_open(local(2026, 3, 7, 12, 0))  # Saturday
    assert not office.is_open(local(2026, 12, 25, 12, 0))  # Christmas Day


# ------------------------------------------------------------------ bank holidays


def test_christmas_and_boxing_day_2025(office: BusinessCalendar) -> None:
    # Wed 24 Dec 16:00: 1 h that day; Thu 25 Christmas, Fri 26 Boxing Day, weekend; Mon 29 Dec 10:00
    assert office.add(local(2025, 12, 24, 16, 0), 2 * H) == local(2025, 12, 29, 10, 0)


def test_christmas_2026_with_substitute_boxing_day(office: BusinessCalendar) -> None:
    # Boxing Day 2026 is a Saturday: the substitute bank holiday is Monday 28 Dec
    assert office.add(local(2026, 12, 24, 16, 0), 2 * H) == local(2026, 12, 29, 10, 0)


def test_christmas_shutdown_closure_days(shipped: BusinessCalendar) -> None:
    # shipped office calendar: 29-31 Dec are closure days and 1 Jan is New Year's Day
    assert shipped.add(local(2026, 12, 24, 16, 0), 2 * H) == local(2027, 1, 4, 10, 0)
    assert not shipped.is_open(local(2026, 12, 30, 12, 0))
    assert shipped.between(local(2026, 12, 24, 9, 0), local(2027, 1, 4, 9, 0)) == 8 * H


def test_good_friday_and_easter_monday_2026(office: BusinessCalendar) -> None:
    # Thu 2 Apr 16:00 BST + 2 h: Fri 3 Apr Good Friday and Mon 6 Apr Easter Monday are closed
    assert office.add(local(2026, 4, 2, 16, 0), 2 * H) == local(2026, 4, 7, 10, 0)
    assert office.add(local(2026, 4, 2, 16, 0), 2 * H) == utc(2026, 4, 7, 9, 0)


def test_good_friday_2027_in_march(office: BusinessCalendar) -> None:
    # Easter 2027 is early: Good Friday 26 Mar (GMT), Easter Monday 29 Mar (BST after the 28 Mar change)
    assert office.add(local(2027, 3, 25, 16, 0), 2 * H) == local(2027, 3, 30, 10, 0)
    assert office.add(local(2027, 3, 25, 16, 0), 2 * H) == utc(2027, 3, 30, 9, 0)


def test_early_may_bank_holiday(office: BusinessCalendar) -> None:
    assert office.add(local(2026, 5, 1, 16, 0), 2 * H) == local(2026, 5, 5, 10, 0)


def test_late_may_bank_holiday(office: BusinessCalendar) -> None:
    assert office.add(local(2026, 5, 22, 16, 30), 1 * H) == local(2026, 5, 26, 9, 30)


def test_august_bank_holiday(office: BusinessCalendar) -> None:
    # Fri 28 Aug 12:00 + one 8 h working day: Mon 31 Aug is the summer bank holiday
    assert office.add(local(2026, 8, 28, 12, 0), 8 * H) == local(2026, 9, 1, 12, 0)


def test_new_years_day(office: BusinessCalendar) -> None:
    assert office.add(local(2025, 12, 31, 16, 0), 2 * H) == local(2026, 1, 2, 10, 0)


def test_calendar_without_bank_holidays() -> None:
    cal = BusinessCalendar("no-holidays", NINE_TO_FIVE, bank_holidays=False)
    assert cal.add(local(2026, 12, 24, 16, 0), 2 * H) == local(2026, 12, 25, 10, 0)


# ------------------------------------------------------------------ DST


def test_spring_forward_last_sunday_of_march(office: BusinessCalendar) -> None:
    # clocks go forward on Sun 29 Mar 2026; Friday 16:00 GMT is 16:00 UTC, Monday 10:00 BST is 09:00 UTC
    start = local(2026, 3, 27, 16, 0)
    due = office.add(start, 2 * H)
    assert due == local(2026, 3, 30, 10, 0)
    assert due == utc(2026, 3, 30, 9, 0)
    assert due - start == timedelta(days=2, hours=17)  # 65 real hours, not 66
    assert office.between(start, due) == 2 * H


def test_fall_back_last_sunday_of_october(office: BusinessCalendar) -> None:
    # clocks go back on Sun 25 Oct 2026; Friday 16:00 BST is 15:00 UTC, Monday 10:00 GMT is 10:00 UTC
    start = local(2026, 10, 23, 16, 0)
    due = office.add(start, 2 * H)
    assert due == local(2026, 10, 26, 10, 0)
    assert due == utc(2026, 10, 26, 10, 0)
    assert office.between(start, due) == 2 * H


def test_opening_hours_are_local_on_both_sides_of_dst(office: BusinessCalendar) -> None:
    assert office.intervals(date(2026, 3, 27)) == ((utc(2026, 3, 27, 9), utc(2026, 3, 27, 17)),)
    assert office.intervals(date(2026, 3, 30)) == ((utc(2026, 3, 30, 8), utc(2026, 3, 30, 16)),)


def test_round_the_clock_hours_on_dst_days() -> None:
    cal = BusinessCalendar("all-day", {d: [parse_hours("00:00-24:00")] for d in range(7)}, bank_holidays=False)
    assert cal.between(local(2026, 3, 29, 0, 0), local(2026, 3, 30, 0, 0)) == 23 * H
    assert cal.between(local(2026, 10, 25, 0, 0), local(2026, 10, 26, 0, 0)) == 25 * H


def test_24x7_is_elapsed_time_across_dst() -> None:
    cal = BusinessCalendar.twenty_four_seven()
    # 00:30 GMT + 2 real hours on the spring-forward night is 03:30 BST
    assert cal.add(local(2026, 3, 29, 0, 30), 2 * H) == local(2026, 3, 29, 3, 30)
    # and on Christmas Day it is open like any other
    assert cal.is_open(local(2026, 12, 25, 3, 0))
    assert cal.between(local(2026, 10, 25, 0, 0), local(2026, 10, 26, 0, 0)) == 25 * H


# ------------------------------------------------------------------ shipped policies


def test_working_days_target_same_time_n_days_later(sla: SlaEngine) -> None:
    # refuse.assisted-collection: acknowledge 5 working days on the office calendar
    due = sla.due("refuse.assisted-collection", "normal", local(2026, 3, 2, 10, 0))
    assert due["acknowledge"] == local(2026, 3, 9, 10, 0)
    assert due["resolve"] == local(2026, 3, 30, 10, 0)  # 20 working days, BST by then


def test_missed_bin_over_easter(sla: SlaEngine) -> None:
    # depot 07:00-15:00; Thu 2 Apr 2026 14:00 + 3 working days (24 h): Thu 1 h, Tue 8, Wed 8, Thu 7 h
    due = sla.due("refuse.missed-collection", "normal", local(2026, 4, 2, 14, 0))
    assert due["resolve"] == local(2026, 4, 9, 14, 0)
    assert due["acknowledge"] == local(2026, 4, 7, 10, 0)


def test_dangerous_defect_is_24x7(sla: SlaEngine) -> None:
    due = sla.due("highways.dangerous-defect", "normal", local(2026, 12, 25, 23, 0))
    assert due == {"acknowledge": local(2026, 12, 25, 23, 30), "resolve": local(2026, 12, 26, 1, 0)}


def test_emergency_pothole_switches_to_24x7(sla: SlaEngine) -> None:
    due = sla.due("highways.pothole", "emergency", local(2026, 3, 28, 23, 0))
    # 23:00 GMT + 2 real hours is 01:00 UTC, which is 02:00 BST: the wall clock jumped an hour
    assert due["resolve"] == local(2026, 3, 29, 2, 0)
    assert due["resolve"] == utc(2026, 3, 29, 1, 0)


def test_routine_pothole_is_28_days_elapsed(sla: SlaEngine) -> None:
    due = sla.due("highways.pothole", "normal", utc(2026, 3, 20, 10, 0))
    assert due["resolve"] == utc(2026, 4, 17, 10, 0)


def test_category_1_pothole_two_working_days(sla: SlaEngine) -> None:
    # highways calendar 08:00-17:00 (9 h days); Fri 28 Aug 2026 15:00 + 18 h: Fri 2, Tue 9, Wed 7
    due = sla.due("highways.pothole", "high", local(2026, 8, 28, 15, 0))
    assert due["resolve"] == local(2026, 9, 2, 15, 0)


# ------------------------------------------------------------------ edges


def test_negative_or_naive_refused(office: BusinessCalendar) -> None:
    with pytest.raises(HubbridgeError):
        office.add(local(2026, 3, 3, 10, 0), -H)
    with pytest.raises(HubbridgeError, match="time zone"):
        office.add(datetime(2026, 3, 3, 10, 0), H)


def test_zero_is_identity(office: BusinessCalendar) -> None:
    t = local(2026, 3, 7, 12, 0)
    assert office.add(t, timedelta(0)) == t


def test_calendar_without_hours_refused() -> None:
    with pytest.raises(HubbridgeError, match="no opening hours"):
        BusinessCalendar("never", {})


def test_parse_hours() -> None:
    assert parse_hours("08:30-12:00") == (time(8, 30), time(12, 0))
    assert parse_hours("00:00-24:00") == (time(0), None)
    with pytest.raises(ValueError):
        parse_hours("17:00-09:00")
    with pytest.raises(ValueError):
        parse_hours("nine to five")


def test_split_day_with_lunch_closure() -> None:
    cal = BusinessCalendar("split", {0: [parse_hours("09:00-12:30"), parse_hours("13:30-17:00")]})
    assert cal.add(local(2026, 3, 2, 12, 0), H) == local(2026, 3, 2, 14, 0)
    assert cal.working_day == 7 * H
