"""Beat's work: the reconcile sweep that re-queues lost or due work, and the per-instance poll schedule."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update

from hubbridge.store import (
    CaseRow,
    FollowUpRow,
    HubUpdateRow,
    SyncCursorRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows import followups
from hubbridge.workflows.runtime import Runtime

if TYPE_CHECKING:
    from hubbridge.sla.enforce import SweepResult

log = structlog.get_logger(__name__)

@dataclass
class Sweep:
    deliver: list[str] = field(default_factory=list)
    push: list[str] = field(default_factory=list)
    poll: list[str] = field(default_factory=list)
    followups: list[str] = field(default_factory=list)
    sla: SweepResult | None = None


def reconcile(rt: Runtime, now: datetime | None = None, limit: int = 5000) -> Sweep:
    """Find work whose message was lost or whose retry time has come, and hand it back to the queues."""
    now = now or utcnow()
    lease = now + timedelta(seconds=rt.settings.reconcile_after_seconds)
    out = Sweep()
    with session_scope(rt.url) as s:
        refs = s.scalars(
            select(CaseRow.hub_ref)
            .where(CaseRow.stage == "received", CaseRow.next_attempt_at <= now)
            .order_by(CaseRow.queue_priority.desc(), CaseRow.next_attempt_at)
            .limit(limit)
        ).all()
        if refs:
            s.execute(update(CaseRow).where(CaseRow.hub_ref.in_(refs)).values(next_attempt_at=lease))
        out.deliver = list(refs)
        stale = now - timedelta(seconds=rt.settings.reconcile_after_seconds)
        prefs = s.scalars(
            select(HubUpdateRow.hub_ref)
            .where(
                HubUpdateRow.pushed_at.is_(None),
                (
                    (HubUpdateRow.next_attempt_at.is_(None) & (HubUpdateRow.created_at <= stale))
                    | (HubUpdateRow.next_attempt_at <= now)
                ),
            )
            .distinct()
            .limit(limit)
        ).all()
        if prefs:
            s.execute(
                update(HubUpdateRow)
                .where(HubUpdateRow.hub_ref.in_(prefs), HubUpdateRow.pushed_at.is_(None))
                .values(next_attempt_at=lease)
            )
        out.push = list(prefs)
        out.followups = followups.due(s, now, lease, limit)
        out.sla = rt.sla.sweep(s, now)
        out.push = sorted(set(out.push) | set(out.sla.hub_refs))
    return out


def _phase(name: str, every: float) -> float:
    return zlib.crc32(name.encode()) / 2**32 * every


def poll_slot(name: str, at: datetime, every: float) -> int:
    """Which of an instance's poll intervals `at` falls in.

    Each instance's intervals start at its own offset (from its name), so instances polled every 60 s do not
    all land on the workers on the same beat tick: measured, that herd stalled every case arriving while it ran.
    """
    return math.floor((at.timestamp() - _phase(name, every)) / every)


POLL_SLACK_SECONDS = 0.05
"""A poll planned ahead runs this long after its interval starts, so a timer firing a hair early still lands in it."""


def due_polls(rt: Runtime, now: datetime | None = None, within: float = 0.0) -> dict[str, float]:
    """Connector instances to poll (one poll per interval, at the instance's own offset) that no poller holds.

    Each maps to the seconds until its poll should run: 0 for an instance already due, or, for one whose next
    interval starts within `within` seconds (the beat's period), the wait until then. So the polls that fall
    between two beat ticks run spread out at their own offsets rather than together on the tick.
    """
    now = now or utcnow()
    names = sorted({r.connector.name for r in rt.config.routes.values()})
    due: dict[str, float] = {}
    with session_scope(rt.url) as s:
        cursors = {c.connector: c for c in s.scalars(select(SyncCursorRow).where(SyncCursorRow.connector.in_(names)))}
        for name in names:
            inst = rt.config.connectors[name]
            every = inst.poll_seconds
            cur = cursors.get(name)
            if cur is None:
                cur = SyncCursorRow(connector=name)
                s.add(cur)
            if cur.lease_until and cur.lease_until > now:
                continue
            done = poll_slot(name, cur.polled_at, every) if cur.polled_at else None
            if done is None or done < poll_slot(name, now, every):
                wait = 0.0
            else:
                upcoming = done + 1
                starts = upcoming * every + _phase(name, every) + POLL_SLACK_SECONDS - now.timestamp()
                if starts >= within:
                    continue
                wait = max(starts, 0.0)
            cur.lease_until = now + timedelta(seconds=wait + max(60.0, inst.timeouts.read * 2))
            due[name] = round(wait, 3)
    return due


def mark_unpublished(rt: Runtime, deliver: Sequence[str] = (), push: Sequence[str] = (),
                     followup: Sequence[str] = ()) -> None:
    """Make work whose message could not be published due now, so the next sweep (seconds away) publishes it.

    Without this, a case accepted while the broker was down waited for its reconcile lease (minutes).
    A store that is down too is logged: the lease set at intake still brings the work back.
    """
    now = utcnow()
    try:
        with session_scope(rt.url) as s:
            if deliver:
                s.execute(
                    update(CaseRow)
                    .where(CaseRow.hub_ref.in_(list(deliver)), CaseRow.stage == "received")
                    .values(next_attempt_at=now)
                )
            if followup:
                s.execute(
                    update(FollowUpRow)
                    .where(FollowUpRow.hub_ref.in_(list(followup)), FollowUpRow.state == "pending")
                    .values(next_attempt_at=now)
                )
            if push:
                s.execute(
                    update(HubUpdateRow)
                    .where(HubUpdateRow.hub_ref.in_(list(push)), HubUpdateRow.pushed_at.is_(None))
                    .values(next_attempt_at=now)
                )
    except Exception as exc:
        log.warning("schedule.mark_unpublished_failed", deliver=len(deliver), push=len(push), error=str(exc)[:200])
