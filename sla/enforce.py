"""The warning/breach sweep: a handful of set-based statements, whatever the number of open clocks.

1. one sweep row is inserted; its id marks the clocks this run fires (`breach_sweep`, `warn_sweep`);
2. breaches: open clocks with `due_at <= now` not yet breached (an index range scan on (state, due_at));
3. warnings: open clocks with `warn_at <= now` not yet warned;
4. the actions, each one INSERT ... SELECT / UPDATE over the marked clocks: audit events, the cases'
   queue priority, Hub updates in the outbox (sequence = the case's last + 1), then metrics.

Every action is written in the sweep's transaction, so a crash fires nothing and the next beat retries.
A concurrent sweep skips clocks the first one marked (the `NOT breached` / `NOT warned` filters are
re-checked under the row lock on PostgreSQL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.orm import Session

from hubbridge.sla import metrics
from hubbridge.sla.policy import SlaConfig
from hubbridge.sla.tables import TICKING_STATES, SlaClockRow, SlaSweepRow
from hubbridge.workflows.store import UtcDateTime

log = structlog.get_logger(__name__)

WARN_QUEUE_PRIORITY = 5
BREACH_QUEUE_PRIORITY = 9
SOURCE = "hubbridge-sla"


@dataclass
class SweepResult:
    """What one sweep fired; `updated_refs` got a new Hub update to push."""

    sweep_id: int
    now: datetime
    warnings: int = 0
    breaches: int = 0
    events: int = 0
    hub_updates: int = 0
    updated_refs: list[str] = field(default_factory=list)
    escalations: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


def _iso(value: datetime) -> str:
    # the same text pydantic gives for CaseUpdate.occurred_at in mode="json"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{value.microsecond:06d}" if value.microsecond else "") + "Z"


def _sql_parts(dialect: str) -> dict[str, str]:
    if dialect == "postgresql":
        return {
            "json": "json_build_object",
            "due_text": "to_char(f.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            "null": "CAST(NULL AS TEXT)",
        }
    return {
        "json": "json_object",
        "due_text": "strftime('%Y-%m-%dT%H:%M:%SZ', f.due_at)",
        "null": "NULL",
    }


def _fired(kind: str) -> str:
    column = "breach_sweep" if kind == "breach" else "warn_sweep"
    return (f"SELECT id, hub_ref, clock, service, authority, '{kind}' AS kind, due_at, escalation, spent_s, "
            f"target_s FROM sla_clocks WHERE {column} = :sid")


def sweep(session: Session, now: datetime, config: SlaConfig | None = None, *,
          refresh_gauges: bool = True) -> SweepResult:
    """Fire every warning and breach due at `now` exactly once, and do their actions set-based."""
    began = time.perf_counter()
    now = now.astimezone(UTC)
    dialect = session.get_bind().dialect.name
    parts = _sql_parts(dialect)
    run = SlaSweepRow(at=now, warnings=0, breaches=0)
    session.add(run)
    session.flush()
    sid = run.id
    result = SweepResult(sweep_id=sid, now=now)
    clk = SlaClockRow

    breach = session.execute(
        update(clk)
        .where(clk.state.in_(TICKING_STATES), clk.due_at <= now, clk.breached.is_(False))
        .values(breached=True, breached_at=now, breach_sweep=sid, warned=True,
                warned_at=func.coalesce(clk.warned_at, now))
        .execution_options(synchronize_session=False)
    )
    result.breaches = breach.rowcount or 0
    warn = session.execute(
        update(clk)
        .where(clk.state.in_(TICKING_STATES), clk.warn_at <= now, clk.warned.is_(False))
        .values(warned=True, warned_at=now, warn_sweep=sid)
        .execution_options(synchronize_session=False)
    )
    result.warnings = warn.rowcount or 0
    if not (result.breaches or result.warnings):
        _finish(session, run, result, began, refresh_gauges, now)
        return result

    params = {"sid": sid, "now": now, "now_iso": _iso(now)}
    typed = [bindparam("now", type_=UtcDateTime())]
    fired = f"{_fired('breach')} UNION ALL {_fired('warning')}"
    j = parts["json"]
    note = (
        "CASE WHEN f.kind = 'breach' THEN "
        "'SLA breach: the ' || f.clock || ' clock was due ' || " + parts["due_text"] +
        " || '; escalated to ' || COALESCE(f.escalation, 'the service manager') "
        "ELSE 'SLA warning: the ' || f.clock || ' clock is due ' || " + parts["due_text"] + " END"
    )
    events = session.execute(text(
        f"INSERT INTO events (hub_ref, kind, detail, at) "
        f"SELECT f.hub_ref, 'sla.' || f.kind, {j}('clock', f.clock, 'service', f.service, "
        f"'authority', f.authority, 'due_at', {parts['due_text']}, 'escalation', f.escalation, "
        f"'spent_s', f.spent_s, 'target_s', f.target_s, 'sweep', CAST(:sid AS BIGINT), 'note', {note}), :now "
        f"FROM ({fired}) f"
    ).bindparams(*typed), params)
    result.events = events.rowcount or 0

    for column, level in (("breach_sweep", BREACH_QUEUE_PRIORITY), ("warn_sweep", WARN_QUEUE_PRIORITY)):
        session.execute(text(
            f"UPDATE cases SET queue_priority = {level}, updated_at = :now "
            f"WHERE queue_priority < {level} AND hub_ref IN (SELECT hub_ref FROM sla_clocks WHERE {column} = :sid)"
        ).bindparams(*typed), params)

    updates = session.execute(text(
        f"INSERT INTO hub_updates (hub_ref, sequence, status, payload, created_at, attempts) "
        f"SELECT x.hub_ref, x.seq, x.status, {j}('ref', x.hub_ref, 'status', x.status, 'sequence', x.seq, "
        f"'backoffice_ref', {parts['null']}, 'note', x.note, 'resolution', {parts['null']}, "
        f"'source', '{SOURCE}', 'occurred_at', CAST(:now_iso AS TEXT)), :now, 0 "
        f"FROM (SELECT f.hub_ref, c.status, {note} AS note, "
        f"COALESCE((SELECT MAX(h.sequence) FROM hub_updates h WHERE h.hub_ref = f.hub_ref), 0) "
        f"+ ROW_NUMBER() OVER (PARTITION BY f.hub_ref ORDER BY f.kind, f.clock) AS seq "
        f"FROM ({fired}) f JOIN cases c ON c.hub_ref = f.hub_ref) x"
    ).bindparams(*typed), params)
    result.hub_updates = updates.rowcount or 0

    result.updated_refs = list(session.scalars(text(
        f"SELECT DISTINCT f.hub_ref FROM ({fired}) f JOIN cases c ON c.hub_ref = f.hub_ref ORDER BY f.hub_ref"
    ), {"sid": sid}))
    for ref, esc in session.execute(text(
        "SELECT hub_ref, COALESCE(escalation, '') FROM sla_clocks WHERE breach_sweep = :sid ORDER BY hub_ref"
    ), {"sid": sid}):
        refs = result.escalations.setdefault(esc, [])
        if not refs or refs[-1] != ref:
            refs.append(ref)

    for kind, column in (("breach", clk.breach_sweep), ("warning", clk.warn_sweep)):
        rows = session.execute(
            select(clk.service, clk.authority, clk.clock, func.count())
            .where(column == sid).group_by(clk.service, clk.authority, clk.clock)
        )
        for service, authority, clock, count in rows:
            metrics.fired(kind, service, authority, clock, count)
    _finish(session, run, result, began, refresh_gauges, now)
    log.info("sla.sweep", sweep=sid, warnings=result.warnings, breaches=result.breaches,
             hub_updates=result.hub_updates, seconds=round(result.seconds, 3))
    return result


def _finish(session: Session, run: SlaSweepRow, result: SweepResult, began: float, refresh_gauges: bool,
            now: datetime) -> None:
    if refresh_gauges:
        metrics.refresh(session, now)
    result.seconds = time.perf_counter() - began
    run.warnings = result.warnings
    run.breaches = result.breaches
    run.seconds = result.seconds
    session.flush()
    metrics.SWEEP_SECONDS.observe(result.seconds)
