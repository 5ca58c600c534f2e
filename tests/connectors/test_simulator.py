"""The simulators' job store: its indexes answer exactly what a scan of every job would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hubbridge.connectors.simulator import Job, JobEvent, JobStore

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store() -> tuple[JobStore, _Clock]:
    s = JobStore(["OPEN", "INSPECTED", "CLOSED"])
    clock = _Clock()
    s.clock = clock
    return s, clock


def _scan_between(s: JobStore, tenant: str, start: datetime, end: datetime | None) -> list[tuple[Job, JobEvent]]:
    found = [(j, e) for j in s.jobs.values() if j.tenant == tenant for e in j.events
             if e.at >= start and (end is None or e.at < end)]
    return sorted(found, key=lambda p: (p[1].at, p[1].update_id))


def test_lookups_by_ref_and_hub_ref_keep_tenants_apart(store: tuple[JobStore, _Clock]) -> None:
    s, _ = store
    a = s.create("north", "HUB-1", "pothole", {})
    b = s.create("south", "HUB-1", "pothole", {})
    again = s.create("north", "HUB-1", "pothole", {})  # back offices are not idempotent: a resend is a second job

    assert s.by_ref("north", a.ref) is a
    assert s.by_ref("south", a.ref) is None
    assert s.by_hub_ref("north", "HUB-1") == [a, again]
    assert s.by_hub_ref("south", "HUB-1") == [b]
    assert s.by_hub_ref("north", "HUB-2") == []
    assert s.tenant_jobs("south") == [b]

    s.by_hub_ref("north", "HUB-1").clear()  # callers get a copy, not the index
    assert len(s.by_hub_ref("north", "HUB-1")) == 2


def test_events_after_pages_in_update_order(store: tuple[JobStore, _Clock]) -> None:
    s, _ = store
    jobs = [s.create("t", f"HUB-{i}", "bin", {}) for i in range(5)]
    s.create("other", "HUB-X", "bin", {})
    for j in jobs:
        s.set_status(j, "INSPECTED")

    first = s.events_after("t", 0, 4)
    rest = s.events_after("t", first[-1][1].update_id, 100)
    ids = [e.update_id for _, e in first + rest]
    assert ids == sorted(ids) and len(ids) == 10
    assert all(j.tenant == "t" for j, _ in first + rest)
    assert s.newest_update_id("t") == ids[-1]
    assert s.newest_update_id("nobody") == 0
    assert s.events_after("t", ids[-1], 10) == []


def test_events_between_follow_the_clock_even_when_it_moves_back(store: tuple[JobStore, _Clock]) -> None:
    s, clock = store
    a = s.create("t", "A", "bin", {})
    clock.now = T0 + timedelta(hours=2)
    s.set_status(a, "INSPECTED")
    clock.now = T0 + timedelta(hours=1)  # a test rewinds the clock: id order and time order now differ
    b = s.create("t", "B", "bin", {})
    s.set_status(b, "INSPECTED")

    for start, end in [(T0, None), (T0 + timedelta(minutes=30), None), (T0 + timedelta(hours=1), None),
                       (T0, T0 + timedelta(hours=1)), (T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
                       (T0 + timedelta(hours=3), None)]:
        assert s.events_between("t", start, end) == _scan_between(s, "t", start, end), (start, end)


def test_changed_since_is_the_last_change_not_any_change(store: tuple[JobStore, _Clock]) -> None:
    s, clock = store
    a = s.create("t", "A", "bin", {})
    clock.now = T0 + timedelta(hours=2)
    s.set_status(a, "INSPECTED")
    clock.now = T0 + timedelta(hours=1)
    s.set_status(a, "CLOSED")  # last change at 10:00, though an earlier one was stamped 11:00
    b = s.create("t", "B", "bin", {})
    clock.now = T0 + timedelta(hours=3)
    c = s.create("t", "C", "bin", {})

    assert s.changed_since("t", T0 + timedelta(minutes=90)) == [c]
    assert s.changed_since("t", T0 + timedelta(hours=1)) == [a, b, c]
    assert s.changed_since("t", T0 + timedelta(hours=4)) == []
