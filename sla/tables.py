"""Store tables of the SLA engine: one row per clock of a case, its pauses, and each sweep run.

A clock carries its running state as columns (spent business time up to `since`, `due_at`, `warn_at`)
so the sweep finds warnings and breaches with an index range scan, never by replaying history.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hubbridge.store import ID, Base, utcnow

PENDING = "pending"
RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"
OPEN_STATES = (PENDING, RUNNING, PAUSED)
TICKING_STATES = (RUNNING, PAUSED)
"""Paused clocks stay in the sweep: one paused after its due time was reached still breaches."""


class SlaClockRow(Base):
    """One SLA clock (acknowledge, resolve, ...) of one case."""

    __tablename__ = "sla_clocks"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str] = mapped_column(String(32))
    clock: Mapped[str] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(80))
    authority: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(80))
    priority: Mapped[str] = mapped_column(String(16))
    calendar: Mapped[str] = mapped_column(String(32))
    escalation: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10), default=PENDING)  # pending | running | paused | stopped
    target_s: Mapped[int] = mapped_column(BigInteger)  # business seconds allowed
    warn_s: Mapped[int] = mapped_column(BigInteger)  # business seconds before the warning
    spent_s: Mapped[int] = mapped_column(BigInteger, default=0)  # business seconds used up to `since`
    since: Mapped[datetime | None] = mapped_column()  # start of the running segment (running only)
    started_at: Mapped[datetime | None] = mapped_column()
    due_at: Mapped[datetime | None] = mapped_column()
    warn_at: Mapped[datetime | None] = mapped_column()
    paused_at: Mapped[datetime | None] = mapped_column()
    stopped_at: Mapped[datetime | None] = mapped_column()
    stop_status: Mapped[str | None] = mapped_column(String(24))
    warned: Mapped[bool] = mapped_column(default=False)
    warned_at: Mapped[datetime | None] = mapped_column()
    breached: Mapped[bool] = mapped_column(default=False)
    breached_at: Mapped[datetime | None] = mapped_column()
    warn_sweep: Mapped[int | None] = mapped_column(BigInteger)  # the sweep that fired the warning
    breach_sweep: Mapped[int | None] = mapped_column(BigInteger)  # the sweep that fired the breach
    pauses: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("hub_ref", "clock", name="uq_sla_clocks_ref_clock"),
        Index("ix_sla_clocks_state_due", "state", "due_at"),
        Index("ix_sla_clocks_state_warn", "state", "warn_at"),
        Index("ix_sla_clocks_warn_sweep", "warn_sweep"),
        Index("ix_sla_clocks_breach_sweep", "breach_sweep"),
        Index("ix_sla_clocks_started", "started_at"),
    )


class SlaPauseRow(Base):
    """One pause of a clock: from the pausing status until the clock runs (or stops) again."""

    __tablename__ = "sla_pauses"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    clock_id: Mapped[int] = mapped_column(ID, ForeignKey("sla_clocks.id", ondelete="CASCADE"), index=True)
    hub_ref: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24))
    paused_at: Mapped[datetime] = mapped_column()
    resumed_at: Mapped[datetime | None] = mapped_column()


class SlaEscalationRow(Base):
    """One breach to hand to its escalation destination: an outbox row, written by the sweep, published later.

    Written in the sweep's transaction so no breach is escalated without being recorded (or the reverse);
    `publish_escalations` sends unpublished rows to their queue and stamps `published_at`.
    """

    __tablename__ = "sla_escalations"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(BigInteger)
    hub_ref: Mapped[str] = mapped_column(String(32))
    clock: Mapped[str] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(80))
    authority: Mapped[str] = mapped_column(String(64))
    escalation: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(96))
    due_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (Index("ix_sla_escalations_published", "published_at", "id"),)


class SlaSweepRow(Base):
    """One run of the sweep; its id marks the clocks it fired so the actions can be done set-based."""

    __tablename__ = "sla_sweeps"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column()
    warnings: Mapped[int] = mapped_column(Integer, default=0)
    breaches: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


SEND_PENDING = "pending"
SEND_SENT = "sent"
SEND_DEAD = "dead"


class SlaEscalationSendRow(Base):
    """One warning or breach of one clock to one escalation target (an e-mail or webhook message).

    Written by the sweep in its transaction, so each firing is queued exactly once per target; the sender
    claims a row, sends, and records the outcome: `sent`, or a retry time, or `dead` with a dead letter.
    """

    __tablename__ = "sla_escalation_sends"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(BigInteger)
    clock_id: Mapped[int] = mapped_column(BigInteger)
    hub_ref: Mapped[str] = mapped_column(String(32), index=True)
    clock: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(8))  # warning | breach
    service: Mapped[str] = mapped_column(String(80))
    authority: Mapped[str] = mapped_column(String(64))
    escalation: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(8))  # email | webhook | chase (a follow-up to the back office)
    priority: Mapped[str | None] = mapped_column(String(16))  # chase: the priority to ask for, if any
    due_at: Mapped[datetime | None] = mapped_column()
    fired_at: Mapped[datetime] = mapped_column()
    state: Mapped[str] = mapped_column(String(8), default=SEND_PENDING)  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    claimed_until: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column()
    dead_letter_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("sweep_id", "clock_id", "kind", "escalation", "target", name="uq_sla_escalation_sends_once"),
        Index("ix_sla_escalation_sends_due", "state", "next_attempt_at"),
    )
