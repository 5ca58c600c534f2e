"""Business calendars: opening hours in a local time zone, bank holidays and closure days, or 24/7.

All arithmetic is done on timezone-aware instants; opening hours are local wall-clock times turned into
UTC per day, so a DST change day is simply a day whose local hours map to different UTC instants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

import holidays

from hubbridge.errors import ConfigError, HubbridgeError

LONDON = ZoneInfo("Europe/London")
MAX_SCAN_DAYS = 366 * 30
"""A target that needs more than thirty years of opening hours is a config mistake, not a due time."""

Hours = tuple[time, time | None]
"""Local opening interval; an end of None means midnight at the end of the day (24:00)."""


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise HubbridgeError(f"{what} must carry a time zone, got {value.isoformat()}",
                             hint="give an ISO 8601 time with an offset, e.g. 2026-03-02T09:00:00+00:00")
    return value.astimezone(UTC)


class BusinessCalendar:
    """When a service is open: weekly opening hours, England & Wales bank holidays, closure days."""

    def __init__(
        self,
        name: str,
        hours: Mapping[int, Sequence[Hours]] | None = None,
        *,
        tz: ZoneInfo = LONDON,
        bank_holidays: bool = True,
        closures: Iterable[date] = (),
        always_open: bool = False,
        working_day_hours: float | None = None,
    ) -> None:
        self.name = name
        self.tz = tz
        self.always_open = always_open
        self.hours: dict[int, tuple[Hours, ...]] = {d: tuple(hours.get(d, ())) for d in range(7)} if hours else {}
        self.closures = frozenset(closures)
        self._holidays = holidays.country_holidays("GB", subdiv="ENG") if bank_holidays and not always_open else None
        self._days: dict[date, tuple[tuple[datetime, datetime], ...]] = {}
        if not always_open and not any(self.hours.get(d) for d in range(7)):
            raise ConfigError(f"calendar {name!r} has no opening hours on any weekday",
                              hint="give hours for at least one weekday, or always_open: true")
        self._working_day_hours = working_day_hours

    @classmethod
    def twenty_four_seven(cls, name: str = "24x7") -> BusinessCalendar:
        """A calendar that never closes: business time is elapsed time."""
        return cls(name, always_open=True, bank_holidays=False)

    @cached_property
    def working_day(self) -> timedelta:
        """Business time counted as one working day: configured, or the most common weekday's hours."""
        if self._working_day_hours is not None:
            return timedelta(hours=self._working_day_hours)
        if self.always_open:
            return timedelta(hours=24)
        lengths = [sum((_wall_length(s, e) for s, e in self.hours[d]), timedelta()) for d in range(7)]
        lengths = [x for x in lengths if x]
        return max(set(lengths), key=lambda x: (lengths.count(x), x))

    def is_holiday(self, day: date) -> bool:
        return self._holidays is not None and day in self._holidays

    def is_open_day(self, day: date) -> bool:
        if self.always_open:
            return True
        return bool(self.hours.get(day.weekday())) and day not in self.closures and not self.is_holiday(day)

    def intervals(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """The UTC opening intervals of a local calendar day, in order."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        if self.always_open:
            spans: list[tuple[time, time | None]] = [(time(0), None)]
        elif not self.is_open_day(day):
            spans = []
        else:
            spans = list(self.hours[day.weekday()])
        out = []
        for start, end in spans:
            s = datetime.combine(day, start, tzinfo=self.tz).astimezone(UTC)
            e_local = (datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.tz) if end is None
                       else datetime.combine(day, end, tzinfo=self.tz))
            e = e_local.astimezone(UTC)
            if e > s:
                out.append((s, e))
        result = tuple(out)
        if len(self._days) > 20000:
            self._days.clear()
        self._days[day] = result
        return result

    def _local_date(self, instant: datetime) -> date:
        return instant.astimezone(self.tz).date()

    def is_open(self, instant: datetime) -> bool:
        """True when `instant` falls inside opening hours (start inclusive, end exclusive)."""
        t = _aware(instant, "instant")
        if self.always_open:
            return True
        day = self._local_date(t)
        return any(s <= t < e for s, e in self.intervals(day))

    def add(self, start: datetime, amount: timedelta) -> datetime:
        """The instant when `amount` of business time has passed after `start`.

        A result landing exactly on a closing time is returned as that closing time (the business instant
        is the same as the next opening, and closing time is the last moment of the day).
        """
        t = _aware(start, "start")
        if amount < timedelta(0):
            raise HubbridgeError(f"cannot add negative business time {amount}")
        if amount == timedelta(0):
            return t
        if self.always_open:
            return t + amount
        remaining = amount
        day = self._local_date(t) - timedelta(days=1)
        for _ in range(MAX_SCAN_DAYS):
            for s, e in self.intervals(day):
                if e <= t:
                    continue
                begin = max(s, t)
                available = e - begin
                if remaining <= available:
                    return begin + remaining
                remaining -= available
            day += timedelta(days=1)
        raise ConfigError(f"calendar {self.name!r}: {amount} of business time does not fit in 30 years",
                          hint="check the calendar's hours and closures")

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time inside [start, end); zero when end is not after start."""
        a = _aware(start, "start")
        b = _aware(end, "end")
        if b <= a:
            return timedelta(0)
        if self.always_open:
            return b - a
        total = timedelta(0)
        day = self._local_date(a) - timedelta(days=1)
        last = self._local_date(b)
        while day <= last:
            for s, e in self.intervals(day):
                lo, hi = max(s, a), min(e, b)
                if hi > lo:
                    total += hi - lo
            day += timedelta(days=1)
        return total

    def next_open(self, instant: datetime) -> datetime:
        """The first open instant at or after `instant`."""
        t = _aware(instant, "instant")
        if self.always_open:
            return t
        day = self._local_date(t) - timedelta(days=1)
        for _ in range(MAX_SCAN_DAYS):
            for s, e in self.intervals(day):
                if e > t:
                    return max(s, t)
            day += timedelta(days=1)
        raise ConfigError(f"calendar {self.name!r} never opens", hint="check its hours and closure days in sla.yaml")

    def __repr__(self) -> str:
        return f"BusinessCalendar({self.name!r})"


def _wall_length(start: time, end: time | None) -> timedelta:
    end_minutes = 24 * 60 if end is None else end.hour * 60 + end.minute
    return timedelta(minutes=end_minutes - (start.hour * 60 + start.minute))


def parse_hours(text: str) -> Hours:
    """`"09:00-17:00"` -> (09:00, 17:00); `"24:00"` as an end means midnight."""
    try:
        left, right = (p.strip() for p in text.split("-"))
        start = time.fromisoformat(left)
        end = None if right == "24:00" else time.fromisoformat(right)
    except ValueError:
        raise ValueError(f"opening hours must look like 09:00-17:00, got {text!r}") from None
    if end is not None and end <= start:
        raise ValueError(f"opening hours {text!r} end before they start")
    return start, end
