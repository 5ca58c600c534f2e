"""Polling: each connector instance is polled once per interval, at its own offset within it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import update

from hubbridge.config.loader import load_config
from hubbridge.config.settings import Settings
from hubbridge.store import SyncCursorRow, session_scope
from hubbridge.workflows.schedule import POLL_SLACK_SECONDS, _phase, due_polls, poll_slot

from .conftest import Rig

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@given(
    name=st.text(min_size=1, max_size=40),
    every=st.floats(min_value=0.5, max_value=86_400),
    seconds=st.floats(min_value=0, max_value=10**9),
)
def test_each_interval_is_one_slot(name: str, every: float, seconds: float) -> None:
    at = datetime.fromtimestamp(1.7e9 + seconds, UTC)
    slot = poll_slot(name, at, every)
    assert poll_slot(name, at + timedelta(seconds=every * 1.000001), every) == slot + 1
    assert poll_slot(name, at - timedelta(seconds=every * 1.000001), every) == slot - 1


def test_the_shipped_instances_do_not_share_one_offset() -> None:
    # the herd this prevents: every instance of the shipped config polled on the same beat tick
    config = load_config(Settings().config_dir, Settings())
    names = sorted(config.connectors)
    assert len(names) > 3
    every = 60.0
    phases = {n: next(s for s in range(61) if poll_slot(n, T0 + timedelta(seconds=s), every)
                      > poll_slot(n, T0, every)) for n in names}
    # with 60 s intervals and a 2 s beat, the instances' first polls after T0 spread over the minute
    assert len(set(phases.values())) >= len(names) // 2, phases
    assert max(phases.values()) - min(phases.values()) >= 30, phases


def _mark_polled(url: str, names: list[str], at: datetime) -> None:
    with session_scope(url) as s:
        rows = update(SyncCursorRow).where(SyncCursorRow.connector.in_(names))
        s.execute(rows.values(polled_at=at, lease_until=None))


def test_an_instance_is_due_once_per_interval_and_never_twice_in_one(rig: Rig) -> None:
    rt = rig.rt
    plan = due_polls(rt, T0)
    assert plan and set(plan.values()) == {0.0}, "a connector never polled is due at once"
    names = list(plan)
    _mark_polled(rig.url, names, T0)
    every = {n: rt.config.connectors[n].poll_seconds for n in names}

    polls: dict[str, list[datetime]] = {n: [] for n in names}
    step = min(every.values()) / 8  # the beat's sweep, well inside an interval
    tick = T0
    end = T0 + timedelta(seconds=3 * max(every.values()))
    while tick < end:
        tick += timedelta(seconds=step)
        due = list(due_polls(rt, tick))
        for n in due:
            polls[n].append(tick)
        _mark_polled(rig.url, due, tick)  # each poll finishes within its tick

    # all polled together at T0, the instances then drift apart to their own offsets instead of staying a herd
    assert len(names) > 1 and len({times[0] for times in polls.values()}) > 1, polls
    for n, times in polls.items():
        slots = [poll_slot(n, t, every[n]) for t in times]
        assert len(slots) == len(set(slots)), f"{n} polled twice in one interval: {times}"
        assert len(times) == 3, f"{n} polled {len(times)} times in three intervals: {times}"
        gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
        assert all(every[n] - step <= g <= every[n] + step for g in gaps), (n, gaps)


def test_an_instance_held_by_a_poller_is_not_due(rig: Rig) -> None:
    rt = rig.rt
    names = due_polls(rt, T0)  # takes the lease
    assert due_polls(rt, T0 + timedelta(seconds=1), within=3600) == {}
    assert set(due_polls(rt, T0 + timedelta(minutes=10))) == set(names)  # the lease has run out


def test_polls_falling_between_two_ticks_run_at_their_own_offsets_not_on_the_tick(rig: Rig) -> None:
    """Planned a tick ahead, each poll waits for its instance's own moment: one per interval, spread out."""
    rt = rig.rt
    names = list(due_polls(rt, T0))
    _mark_polled(rig.url, names, T0)
    every = {n: rt.config.connectors[n].poll_seconds for n in names}
    tick_s = min(every.values()) / 2  # a beat as coarse as the shipped demo's 2 s ticks for its 2 s polls
    runs: dict[str, list[datetime]] = {n: [] for n in names}
    tick, ticks = T0, 0
    end = T0 + timedelta(seconds=4 * max(every.values()))
    while tick < end:
        tick += timedelta(seconds=tick_s)
        ticks += 1
        plan = due_polls(rt, tick, within=tick_s)
        assert all(0 <= wait < tick_s for wait in plan.values()), plan
        for n, wait in plan.items():
            at = tick + timedelta(seconds=wait)
            runs[n].append(at)
            _mark_polled(rig.url, [n], at)  # the poll runs when planned and finishes at once

    for n, times in runs.items():
        slots = [poll_slot(n, t, every[n]) for t in times]
        assert slots == list(range(slots[0], slots[0] + len(slots))), f"{n}: not one poll per interval: {times}"
        assert len(times) >= 3, (n, times)
        for t in times[1:]:  # each ran just after its own interval began, not at whichever tick followed
            into = t.timestamp() - (poll_slot(n, t, every[n]) * every[n] + _phase(n, every[n]))
            assert 0 <= into <= POLL_SLACK_SECONDS + 1e-3, (n, t, into)
    moments = {t for times in runs.values() for t in times[1:]}
    assert len(names) > 1 and len(moments) > ticks, "the polls still bunch on the ticks"
