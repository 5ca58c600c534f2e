"""The SLA engine: creates a case's clocks when it is routed and moves them with its Hub status.

Each clock keeps `spent_s` (business seconds used up to `since`) and, while running, `due_at` / `warn_at`
as instants, so finding warnings and breaches is an index range scan (see `hubbridge.sla.enforce`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from hubbridge.case import HubStatus, Priority
from hubbridge.errors import ConfigError, HubbridgeError
from hubbridge.sla.calendar import BusinessCalendar
from hubbridge.sla.policy import CUSTOMER, ClockSpec, SlaConfig, load_sla_config
from hubbridge.sla.tables import OPEN_STATES, PAUSED, PENDING, RUNNING, STOPPED, SlaClockRow, SlaPauseRow
from hubbridge.store import CaseRow, record_event

if TYPE_CHECKING:
    from hubbridge.sla.enforce import SweepResult

log = structlog.get_logger(__name__)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise HubbridgeError(f"naive time {value.isoformat()} given to the SLA engine",
                             hint="pass timezone-aware datetimes")
    return value.astimezone(UTC)


def _secs(delta: timedelta) -> int:
    return round(delta.total_seconds())


# built once: a case's every step reads its clocks, and building the statement costs more than running it
_CLOCKS_OF = select(SlaClockRow).where(SlaClockRow.hub_ref == bindparam("ref")).order_by(SlaClockRow.id)
_CLOCKS_FOR = (select(SlaClockRow).where(SlaClockRow.hub_ref.in_(bindparam("refs", expanding=True)))
               .order_by(SlaClockRow.id))
# a new case's clocks go straight to the table: the ORM's bulk INSERT took 0.84 ms for two rows, this 0.60 ms
_NEW_CLOCKS = insert(SlaClockRow.__table__)


def _columns(row: SlaClockRow) -> dict[str, Any]:
    """The column values set on a new clock (the table's defaults fill the rest)."""
    return {k: v for k, v in vars(row).items() if not k.startswith("_")}


@dataclass
class ClockView:
    """Where one clock stands at a moment, for `sla show` and the API."""

    clock: str
    promise: str
    state: str
    policy: str
    priority: str
    calendar: str
    target_s: int
    spent_s: int
    started_at: datetime | None
    due_at: datetime | None
    warn_at: datetime | None
    stopped_at: datetime | None
    stop_status: str | None
    warned: bool
    breached: bool
    standing: str
    escalation: str | None
    restarts: int
    pauses: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out


class SlaEngine:
    """Times every case's SLA clocks from its Hub status, in the business calendar of its policy."""

    def __init__(self, config: SlaConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config_dir: Path | str) -> SlaEngine:
        """Load `sla.yaml` from the config directory (errors carry file:line:col)."""
        return cls(load_sla_config(config_dir))

    # ------------------------------------------------------------------ arithmetic

    def specs(self, policy: str, priority: Priority | str) -> dict[str, ClockSpec]:
        return self.config.clocks(policy, priority)

    def due(self, service: str, priority: Priority | str, start: datetime,
            *, promise: str | None = CUSTOMER) -> dict[str, datetime]:
        """The due time of each clock of `promise` (None: every clock) of a case of `service` started at `start`.

        The customer's clocks start when the case is routed, the service area's when it is delivered.
        """
        at = _utc(start)
        return {name: spec.calendar.add(at, spec.target) for name, spec in self.specs(service, priority).items()
                if promise is None or spec.promise == promise}

    def calendar(self, name: str) -> BusinessCalendar:
        return self.config.calendar(name)

    # ------------------------------------------------------------------ clock rules

    def clocks_of(self, session: Session, hub_ref: str) -> list[SlaClockRow]:
        return list(session.scalars(_CLOCKS_OF, {"ref": hub_ref}))

    def clocks_for(self, session: Session, hub_refs: Sequence[str]) -> dict[str, list[SlaClockRow]]:
        """Several cases' clocks in one query, keyed by Hub ref (a case with none is absent)."""
        out: dict[str, list[SlaClockRow]] = {}
        if hub_refs:
            for row in session.scalars(_CLOCKS_FOR, {"refs": list(hub_refs)}):
                out.setdefault(row.hub_ref, []).append(row)
        return out

    def start(
        self,
        session: Session,
        hub_ref: str,
        service: str,
        authority: str,
        priority: Priority | str,
        at: datetime,
        *,
        policy: str | None = None,
        escalation: str | None = None,
        new: bool = False,
        status: HubStatus | str | None = None,
    ) -> list[SlaClockRow]:
        """Create the case's clocks (idempotent) and start those whose rules start on `routed` or `status`.

        `policy` defaults to the service key; `escalation` (a route's override) replaces the policy's.
        `new=True` says the case was created in this transaction, so it has no clocks to look for.
        `status` is the case's Hub status when it is already past `routed` (read from the store when not
        given): a case raised in a back office is delivered from the start, so the service area's clocks run.
        """
        at = _utc(at)
        if not new:
            existing = self.clocks_of(session, hub_ref)
            if existing:
                return existing
            if status is None:
                status = session.scalar(select(CaseRow.status).where(CaseRow.hub_ref == hub_ref))
        starting = {HubStatus.ROUTED}
        if status is not None:
            starting.add(HubStatus(status))
        key = policy or service
        prio = Priority(priority)
        rows = []
        for name, spec in self.specs(key, prio).items():
            row = self._new_row(hub_ref, name, spec, service, authority, key, prio, escalation)
            if starting & spec.rules.start_on:
                self._run(row, at, first=True)
            rows.append(row)
        if new:
            # nothing in this transaction holds them: one bulk INSERT, not the unit of work's INSERT ... RETURNING
            # of every column (too many parameters for psycopg to cache the statement's parsing)
            values = [_columns(r) for r in rows]
            keys = set().union(*values)  # a clock started on `routed` has its times set; the others leave them NULL
            session.execute(_NEW_CLOCKS, [dict.fromkeys(keys) | v for v in values])
        else:
            session.add_all(rows)
            session.flush()
        record_event(session, hub_ref, "sla.start", policy=key, priority=prio.value,
                     clocks={r.clock: r.due_at.isoformat() if r.due_at else None for r in rows})
        log.info("sla.start", hub_ref=hub_ref, policy=key, priority=prio.value)
        return rows

    @staticmethod
    def _new_row(hub_ref: str, name: str, spec: ClockSpec, service: str, authority: str, policy: str,
                 prio: Priority, escalation: str | None) -> SlaClockRow:
        return SlaClockRow(
            hub_ref=hub_ref, clock=name, service=service, authority=authority, policy=policy,
            priority=prio.value, calendar=spec.calendar.name, escalation=escalation or spec.escalation,
            state=PENDING, target_s=_secs(spec.target), warn_s=_secs(spec.warn_after), spent_s=0,
            warned=False, breached=False, pauses=0, restarts=0,
        )

    def _add_missing(self, session: Session, rows: list[SlaClockRow], status: HubStatus) -> list[SlaClockRow]:
        """Clocks the case lacks that `status` starts: a case in flight when its policy gained the service
        area's clocks gets them at its delivery, not never."""
        first = rows[0]
        specs = self.specs(first.policy, first.priority)
        have = {r.clock for r in rows}
        missing = {n: s for n, s in specs.items() if n not in have and status in s.rules.start_on}
        if not missing:
            return []
        # a route's escalation override shows as a clock whose escalation is not its policy's
        base = specs.get(first.clock)
        override = first.escalation if base is not None and first.escalation != base.escalation else None
        added = [self._new_row(first.hub_ref, n, s, first.service, first.authority, first.policy,
                               Priority(first.priority), override) for n, s in missing.items()]
        session.add_all(added)
        session.flush()
        return added

    def on_status(
        self, session: Session, hub_ref: str, status: HubStatus | str, at: datetime,
        *, clocks: list[SlaClockRow] | None = None,
    ) -> list[SlaClockRow]:
        """Apply the policy's rules for `status`: start, pause, resume, stop or restart each clock.

        Idempotent: the same status twice changes nothing the second time. `clocks` are the case's clocks when
        the caller has read them already in this session.
        """
        status = HubStatus(status)
        at = _utc(at)
        rows = self.clocks_of(session, hub_ref) if clocks is None else clocks
        if rows and status != HubStatus.ROUTED:
            rows = [*rows, *self._add_missing(session, rows, status)]
        for row in rows:
            rules = self._spec(row).rules
            when = self._not_before(row, at)
            before = row.state
            if row.state == PENDING:
                if status in rules.start_on:
                    self._run(row, when, first=True)
                elif status in rules.stop_on:
                    self._stop(session, row, status, when)
            elif row.state in (RUNNING, PAUSED):
                if status in rules.stop_on:
                    self._stop(session, row, status, when)
                elif status in rules.pause_on:
                    if row.state == RUNNING:
                        self._pause(session, row, status, when)
                elif row.state == PAUSED:
                    self._resume(session, row, when)
            elif row.state == STOPPED and status in rules.restart_on and status not in rules.stop_on:
                self._restart(session, row, when, reset=rules.on_restart == "reset")
                if status in rules.pause_on:
                    self._pause(session, row, status, when)
            if row.state != before:
                record_event(session, hub_ref, f"sla.{row.state}", clock=row.clock, status=status.value,
                             at=when.isoformat(), due_at=row.due_at.isoformat() if row.due_at else None)
        return rows  # written at the session's next flush, with the rest of the caller's changes

    def on_priority(self, session: Session, hub_ref: str, priority: Priority | str, at: datetime) -> list[SlaClockRow]:
        """Re-target every clock for a new priority, keeping the business time already spent."""
        prio = Priority(priority)
        at = _utc(at)
        rows = self.clocks_of(session, hub_ref)
        for row in rows:
            if row.priority == prio.value:
                continue
            when = self._not_before(row, at)
            if row.state == RUNNING:
                self._accrue(row, when)
            specs = self.specs(row.policy, prio)
            spec = specs.get(row.clock)
            if spec is None:
                continue
            old_due = row.due_at
            row.priority = prio.value
            row.calendar = spec.calendar.name
            row.target_s = _secs(spec.target)
            row.warn_s = _secs(spec.warn_after)
            if row.state == RUNNING:
                self._schedule(row)
            elif row.state == PAUSED:
                self._schedule_paused(row)
            record_event(session, hub_ref, "sla.priority", clock=row.clock, priority=prio.value,
                         old_due=old_due.isoformat() if old_due else None,
                         due_at=row.due_at.isoformat() if row.due_at else None)
        session.flush()
        return rows

    def sweep(self, session: Session, now: datetime, *, refresh_gauges: bool = True) -> SweepResult:
        """Fire every warning and breach due at `now`, once each, set-based (see `hubbridge.sla.enforce`)."""
        from hubbridge.sla.enforce import sweep

        return sweep(session, _utc(now), self.config, refresh_gauges=refresh_gauges)

    # ------------------------------------------------------------------ views

    def spent(self, row: SlaClockRow, now: datetime) -> int:
        """Business seconds the clock has used by `now`."""
        if row.state == RUNNING and row.since is not None:
            return row.spent_s + _secs(self.calendar(row.calendar).between(row.since, max(_utc(now), row.since)))
        return row.spent_s

    def standing(self, row: SlaClockRow, now: datetime) -> str:
        """met / breached (stopped), breached / at-risk / on-track / paused / not-started (open)."""
        spent = self.spent(row, now)
        if row.state == STOPPED:
            if row.stop_status in (HubStatus.CANCELLED.value, HubStatus.REJECTED.value):
                return "breached" if spent > row.target_s else "withdrawn"
            return "breached" if spent > row.target_s else "met"
        if row.breached or spent >= row.target_s:
            return "breached"
        if row.warned or spent >= row.warn_s:
            return "at-risk"
        return {PENDING: "not-started", PAUSED: "paused"}.get(row.state, "on-track")

    def show(self, session: Session, hub_ref: str, now: datetime) -> list[ClockView]:
        now = _utc(now)
        out = []
        for row in self.clocks_of(session, hub_ref):
            pauses = session.scalars(select(SlaPauseRow).where(SlaPauseRow.clock_id == row.id)
                                     .order_by(SlaPauseRow.id))
            out.append(ClockView(
                clock=row.clock, promise=self.config.promise_of(row.clock), state=row.state, policy=row.policy,
                priority=row.priority, calendar=row.calendar,
                target_s=row.target_s, spent_s=self.spent(row, now), started_at=row.started_at,
                due_at=row.due_at, warn_at=row.warn_at, stopped_at=row.stopped_at, stop_status=row.stop_status,
                warned=row.warned, breached=row.breached, standing=self.standing(row, now),
                escalation=row.escalation, restarts=row.restarts,
                pauses=[{"status": p.status, "paused_at": p.paused_at.isoformat(),
                         "resumed_at": p.resumed_at.isoformat() if p.resumed_at else None} for p in pauses],
            ))
        return out

    # ------------------------------------------------------------------ transitions

    def _spec(self, row: SlaClockRow) -> ClockSpec:
        specs = self.specs(row.policy, row.priority)
        try:
            return specs[row.clock]
        except KeyError:
            raise ConfigError(f"clock {row.clock!r} of case {row.hub_ref} is no longer in policy {row.policy!r}",
                              key=f"policies.{row.policy}.clocks",
                              hint="keep a clock in sla.yaml while cases still carry it") from None

    @staticmethod
    def _not_before(row: SlaClockRow, at: datetime) -> datetime:
        # a late, out-of-order status must not make time run backwards
        floor = max((t for t in (row.since, row.paused_at, row.started_at) if t is not None), default=None)
        return max(at, floor) if floor is not None else at

    def _accrue(self, row: SlaClockRow, at: datetime) -> None:
        assert row.since is not None
        row.spent_s += _secs(self.calendar(row.calendar).between(row.since, at))
        row.since = at

    def _schedule(self, row: SlaClockRow) -> None:
        """Due and warning instants of a running clock from `since` and what is left."""
        cal = self.calendar(row.calendar)
        assert row.since is not None
        if row.spent_s < row.target_s:
            row.due_at = cal.add(row.since, timedelta(seconds=row.target_s - row.spent_s))
        elif row.due_at is None or row.due_at > row.since:
            row.due_at = row.since  # already over: due now, so a sweep that missed it still fires
        if row.spent_s < row.warn_s:
            row.warn_at = cal.add(row.since, timedelta(seconds=row.warn_s - row.spent_s))
        elif row.warn_at is None or row.warn_at > row.since:
            row.warn_at = row.since

    @staticmethod
    def _schedule_paused(row: SlaClockRow) -> None:
        # a paused clock does not move towards its target; keep instants only if already reached
        if row.spent_s < row.target_s:
            row.due_at = None
        if row.spent_s < row.warn_s:
            row.warn_at = None

    def _run(self, row: SlaClockRow, at: datetime, *, first: bool = False) -> None:
        row.state = RUNNING
        row.since = at
        if first or row.started_at is None:
            row.started_at = at
        self._schedule(row)

    def _pause(self, session: Session, row: SlaClockRow, status: HubStatus, at: datetime) -> None:
        self._accrue(row, at)
        row.state = PAUSED
        row.since = None
        row.paused_at = at
        row.pauses += 1
        self._schedule_paused(row)
        session.add(SlaPauseRow(clock_id=row.id, hub_ref=row.hub_ref, status=status.value, paused_at=at))

    def _close_pause(self, session: Session, row: SlaClockRow, at: datetime) -> None:
        session.flush()
        pause = session.scalars(select(SlaPauseRow).where(SlaPauseRow.clock_id == row.id,
                                                          SlaPauseRow.resumed_at.is_(None))).first()
        if pause is not None:
            pause.resumed_at = at

    def _resume(self, session: Session, row: SlaClockRow, at: datetime) -> None:
        self._close_pause(session, row, at)
        row.paused_at = None
        self._run(row, at)

    def _stop(self, session: Session, row: SlaClockRow, status: HubStatus, at: datetime) -> None:
        if row.state == RUNNING:
            self._accrue(row, at)
        elif row.state == PAUSED:
            self._close_pause(session, row, at)
        if row.started_at is None:
            row.started_at = at
        row.state = STOPPED
        row.since = None
        row.paused_at = None
        row.stopped_at = at
        row.stop_status = status.value

    def _restart(self, session: Session, row: SlaClockRow, at: datetime, *, reset: bool) -> None:
        row.restarts += 1
        row.stopped_at = None
        row.stop_status = None
        if reset:
            row.spent_s = 0
            row.warned = row.breached = False
            row.warned_at = row.breached_at = None
            row.warn_sweep = row.breach_sweep = None
            row.due_at = row.warn_at = None
        self._run(row, at, first=reset)


def open_clock_count(session: Session, hub_refs: Sequence[str] | None = None) -> int:
    """How many clocks are not stopped (optionally for some cases)."""
    from sqlalchemy import func

    q = select(func.count()).select_from(SlaClockRow).where(SlaClockRow.state.in_(OPEN_STATES))
    if hub_refs is not None:
        q = q.where(SlaClockRow.hub_ref.in_(list(hub_refs)))
    return int(session.scalar(q) or 0)
