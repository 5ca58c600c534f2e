"""The warning/breach sweep: a handful of set-based statements, whatever the number of open clocks.

1. one sweep row is inserted; its id marks the clocks this run fires (`breach_sweep`, `warn_sweep`);
2. breaches: open clocks with `due_at <= now` not yet breached (an index range scan on (state, due_at));
3. warnings: open clocks with `warn_at <= now` not yet warned;
4. the actions, each one INSERT ... SELECT / UPDATE over the marked clocks: audit events, the cases'
   queue priority (and pending deliveries brought forward so reconcile re-publishes them at that
   priority), Hub updates in the outbox (sequence = the case's last + 1), breaches into the escalation
   outbox (`sla_escalations`, destination queue from config), each firing's e-mail / webhook targets and
   back-office chases into `sla_escalation_sends` (sent by `hubbridge.sla.escalate`), then metrics.

`publish_escalations` then sends the escalation outbox to each destination's queue on the broker.

Every action is written in the sweep's transaction, so a crash fires nothing and the next beat retries.
A concurrent sweep skips clocks the first one marked (the `NOT breached` / `NOT warned` filters are
re-checked under the row lock on PostgreSQL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import bindparam, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from hubbridge.sla import metrics
from hubbridge.sla.policy import CUSTOMER, SERVICE_AREA, SlaConfig
from hubbridge.sla.tables import (
    SEND_PENDING,
    TICKING_STATES,
    SlaClockRow,
    SlaEscalationRow,
    SlaEscalationSendRow,
    SlaSweepRow,
)
from hubbridge.store import CaseRow, UtcDateTime

log = structlog.get_logger(__name__)

WARN_QUEUE_PRIORITY = 5
BREACH_QUEUE_PRIORITY = 9
SOURCE = "hubbridge-sla"
GAUGE_REFRESH_SECONDS = 30.0
_gauges_refreshed: float | None = None


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
    escalated: int = 0
    sends: int = 0
    chases: int = 0
    brought_forward: int = 0
    seconds: float = 0.0

    @property
    def hub_refs(self) -> list[str]:
        """The cases with a new Hub update to push (what `schedule.reconcile` hands to push_hub)."""
        return self.updated_refs


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

    service_area = config.clocks_of_promise(SERVICE_AREA) if config is not None else []
    params: dict[str, Any] = {"sid": sid, "now": now, "now_iso": _iso(now),
                              **{f"sa_{i}": name for i, name in enumerate(service_area)}}
    typed = [bindparam("now", type_=UtcDateTime())]
    fired = f"{_fired('breach')} UNION ALL {_fired('warning')}"
    j = parts["json"]
    # which promise the clock times: the few service-area clock names of sla.yaml go inline
    sa_in = ", ".join(f":sa_{i}" for i in range(len(service_area)))
    promise = (f"CASE WHEN f.clock IN ({sa_in}) THEN '{SERVICE_AREA}' ELSE '{CUSTOMER}' END" if service_area
               else f"'{CUSTOMER}'")
    whose = (f"CASE WHEN f.clock IN ({sa_in}) THEN 'the service area''s ' ELSE 'the customer''s ' END"
             if service_area else "'the customer''s '")
    note = (
        "CASE WHEN f.kind = 'breach' THEN "
        "'SLA breach: ' || " + whose + " || f.clock || ' clock was due ' || " + parts["due_text"] +
        " || '; escalated to ' || COALESCE(f.escalation, 'the service manager') "
        "ELSE 'SLA warning: ' || " + whose + " || f.clock || ' clock is due ' || " + parts["due_text"] + " END"
    )
    events = session.execute(text(
        f"INSERT INTO events (hub_ref, kind, detail, at) "
        f"SELECT f.hub_ref, 'sla.' || f.kind, {j}('clock', f.clock, 'promise', {promise}, 'service', f.service, "
        f"'authority', f.authority, 'due_at', {parts['due_text']}, 'escalation', f.escalation, "
        f"'spent_s', f.spent_s, 'target_s', f.target_s, 'sweep', CAST(:sid AS BIGINT), 'note', {note}), :now "
        f"FROM ({fired}) f"
    ).bindparams(*typed), params)
    result.events = events.rowcount or 0

    for column, level in (("breach_sweep", BREACH_QUEUE_PRIORITY), ("warn_sweep", WARN_QUEUE_PRIORITY)):
        # A queued message keeps the priority it was published with, so a case still waiting for its
        # first delivery is made due now: the next reconcile re-publishes it at the raised priority (the
        # delivery claim makes the old copy a no-op). Cases in retry backoff keep their retry time and
        # are re-published at the raised priority when it comes, so a struggling back office is not rushed.
        raised = session.execute(text(
            f"UPDATE cases SET queue_priority = {level}, updated_at = :now, "
            f"next_attempt_at = CASE WHEN stage = 'received' AND attempts = 0 "
            f"AND (claimed_until IS NULL OR claimed_until < :now) THEN :now ELSE next_attempt_at END "
            f"WHERE queue_priority < {level} AND hub_ref IN (SELECT hub_ref FROM sla_clocks WHERE {column} = :sid)"
        ).bindparams(*typed), params)
        result.brought_forward += raised.rowcount or 0

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

    result.escalated = _escalate(session, config, params)
    result.sends, result.chases = _queue_sends(session, config, sid, now)

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
             hub_updates=result.hub_updates, escalated=result.escalated, sends=result.sends,
             chases=result.chases, seconds=round(result.seconds, 3))
    return result


def _finish(session: Session, run: SlaSweepRow, result: SweepResult, began: float, refresh_gauges: bool,
            now: datetime) -> None:
    global _gauges_refreshed
    # The gauges change when something fires (here) or a clock stops (between sweeps); re-reading them
    # scans every warned clock, too dear for every idle beat tick, so an idle sweep re-reads them at
    # most every GAUGE_REFRESH_SECONDS. (The API reads them from the store at scrape time anyway.)
    fired = bool(result.warnings or result.breaches)
    stale = _gauges_refreshed is None or time.monotonic() - _gauges_refreshed >= GAUGE_REFRESH_SECONDS
    if refresh_gauges and (fired or stale):
        metrics.refresh(session, now)
        _gauges_refreshed = time.monotonic()
    result.seconds = time.perf_counter() - began
    run.warnings = result.warnings
    run.breaches = result.breaches
    run.seconds = result.seconds
    session.flush()
    metrics.SWEEP_SECONDS.observe(result.seconds)


def _escalate(session: Session, config: SlaConfig | None, params: dict[str, object]) -> int:
    """Put this sweep's breaches into the escalation outbox, the destination queue named by config."""
    names = sorted(config.escalations) if config is not None else []
    # the name -> queue table is tiny (one row per escalation in sla.yaml), so it goes inline as a CASE
    whens = " ".join(f"WHEN :esc_{i} THEN :queue_{i}" for i in range(len(names)))
    queue_of = f"CASE escalation {whens} ELSE :fallback END" if names else ":fallback"
    binds: dict[str, object] = {"fallback": FALLBACK_QUEUE}
    for i, name in enumerate(names):
        assert config is not None
        binds[f"esc_{i}"] = name
        binds[f"queue_{i}"] = config.escalations[name].queue
    inserted = session.execute(text(
        f"INSERT INTO sla_escalations (sweep_id, hub_ref, clock, service, authority, escalation, queue, due_at, "
        f"created_at) SELECT :sid, hub_ref, clock, service, authority, COALESCE(escalation, ''), "
        f"{queue_of}, due_at, :now FROM sla_clocks WHERE breach_sweep = :sid"
    ).bindparams(bindparam("now", type_=UtcDateTime())), {**params, **binds})
    return inserted.rowcount or 0


DELIVERED_STAGES = ("delivered", "acknowledged")
"""A case its back office holds: a breach on it chases the back office."""
CHASE_CHANNEL = "chase"
CHASE_TARGET = "backoffice"


def _queue_sends(session: Session, config: SlaConfig | None, sid: int, now: datetime) -> tuple[int, int]:
    """Queue this sweep's warnings and breaches for each e-mail / webhook target, and the back-office chases.

    The unique (sweep, clock, kind, escalation, target) row is what makes each reach each target once; the
    sender claims, sends and records it. Returns (target sends, chases) queued.
    """
    if config is None:
        return 0, 0
    clk = SlaClockRow
    fired = session.execute(
        select(clk.id, clk.hub_ref, clk.clock, clk.service, clk.authority, clk.escalation, clk.policy,
               clk.due_at, clk.breach_sweep, CaseRow.stage)
        .join(CaseRow, CaseRow.hub_ref == clk.hub_ref, isouter=True)
        .where(or_(clk.breach_sweep == sid, clk.warn_sweep == sid))
        .order_by(clk.hub_ref, clk.clock)
    ).all()
    rows: list[dict[str, Any]] = []
    chases = 0
    for f in fired:
        kind = "breach" if f.breach_sweep == sid else "warning"
        base = {"sweep_id": sid, "clock_id": f.id, "hub_ref": f.hub_ref, "clock": f.clock, "kind": kind,
                "service": f.service, "authority": f.authority, "escalation": f.escalation or "", "due_at": f.due_at,
                "fired_at": now, "state": SEND_PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now,
                "priority": None}
        esc = config.escalations.get(f.escalation) if f.escalation else None
        for target in esc.targets if esc is not None else []:
            if kind in target.on and (target.authorities is None or f.authority in target.authorities):
                rows.append({**base, "target": target.name, "channel": target.type})
        if kind == "breach" and f.stage in DELIVERED_STAGES:
            chase = config.chase(f.policy, f.escalation)
            if chase is not None and chase.covers(f.clock, config.promise_of(f.clock)):
                rows.append({**base, "target": CHASE_TARGET, "channel": CHASE_CHANNEL,
                             "priority": chase.raise_priority})
                chases += 1
    if rows:
        session.execute(insert(SlaEscalationSendRow), rows)
    return len(rows) - chases, chases


ESCALATION_EXCHANGE = "hubbridge.sla"
FALLBACK_QUEUE = "sla.escalations"
"""Where a breach goes when its clock names no escalation (or one since removed from sla.yaml)."""


def publish_escalations(session: Session, connection: Any, config: SlaConfig | None = None,
                        *, limit: int = 5000) -> int:
    """Send unpublished escalation outbox rows to their queues (persistent, top priority) and stamp them.

    At least once: a crash between publishing and the commit publishes those rows again, so a consumer
    treats (hub_ref, clock, sweep) as the message's identity. Returns how many were sent.
    """
    from kombu import Exchange, Producer, Queue

    esc = SlaEscalationRow
    rows = list(session.scalars(select(esc).where(esc.published_at.is_(None)).order_by(esc.id).limit(limit)))
    if not rows:
        return 0
    exchange = Exchange(ESCALATION_EXCHANGE, type="direct", durable=True)
    teams = {k: v.hub_team for k, v in config.escalations.items()} if config is not None else {}
    declared: set[str] = set()
    with connection.channel() as channel:
        producer = Producer(channel, exchange=exchange)
        for row in rows:
            if row.queue not in declared:
                queue = Queue(row.queue, exchange, routing_key=row.queue, durable=True,
                              queue_arguments={"x-max-priority": 10})
                queue.declare(channel=channel)
                declared.add(row.queue)
            producer.publish(
                {"hub_ref": row.hub_ref, "clock": row.clock,
                 "promise": config.promise_of(row.clock) if config is not None else CUSTOMER,
                 "service": row.service, "authority": row.authority,
                 "escalation": row.escalation, "hub_team": teams.get(row.escalation), "sweep": row.sweep_id,
                 "due_at": row.due_at.isoformat() if row.due_at else None,
                 "breached_at": row.created_at.isoformat()},
                routing_key=row.queue, serializer="json", delivery_mode=2, priority=BREACH_QUEUE_PRIORITY,
                message_id=f"{row.hub_ref}:{row.clock}:{row.sweep_id}", retry=True,
            )
    now = datetime.now(UTC)
    session.execute(update(esc).where(esc.id.in_([r.id for r in rows]))
                    .values(published_at=now).execution_options(synchronize_session=False))
    session.flush()
    log.info("sla.escalations.published", count=len(rows), queues=sorted(declared))
    return len(rows)
