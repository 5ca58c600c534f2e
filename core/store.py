"""The relational store: cases, links, audit events, Hub update outbox, dead letters, sync cursors.

SQLite by default, PostgreSQL by URL. The schema is owned by the Alembic migrations in
`core/migrations`; these table classes must match them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    insert,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend (SQLite keeps none of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


ID = BigInteger().with_variant(Integer, "sqlite")


class CaseRow(Base):
    """One Hub case and where it stands in the pipeline."""

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str] = mapped_column(String(32), unique=True)
    authority: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(80))
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    origin: Mapped[str] = mapped_column(String(16), default="hub")  # hub | backoffice
    status: Mapped[str] = mapped_column(String(24), default="received")  # Hub status vocabulary
    status_at: Mapped[datetime] = mapped_column(default=utcnow)  # when the back office set that status
    stage: Mapped[str] = mapped_column(String(16), default="received")
    # stage: received -> delivered -> acknowledged, or dead; pipeline progress, distinct from status
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    connector: Mapped[str | None] = mapped_column(String(64))
    mapping_version: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    unknown_outcome: Mapped[bool] = mapped_column(default=False)  # a call was (maybe) made: look up first
    claimed_until: Mapped[datetime | None] = mapped_column()  # one worker delivers a case at a time
    queue_priority: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_cases_stage_next", "stage", "next_attempt_at"),
        Index("ix_cases_service_authority", "service", "authority"),
    )


class LinkRow(Base):
    """Hub reference <-> connector instance <-> back-office reference."""

    __tablename__ = "links"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str] = mapped_column(String(32), ForeignKey("cases.hub_ref"))
    connector: Mapped[str] = mapped_column(String(64))
    backoffice_ref: Mapped[str] = mapped_column(String(128))
    mapping_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("connector", "backoffice_ref", name="uq_links_backoffice"),
        UniqueConstraint("hub_ref", "connector", name="uq_links_hub"),
    )


class EventRow(Base):
    """Append-only audit trail: everything that happened to a case, in order."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str | None] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(48))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class HubUpdateRow(Base):
    """Outbox of updates for the Hub: written with the change that caused them, pushed in sequence."""

    __tablename__ = "hub_updates"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str] = mapped_column(String(32))
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    pushed_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("hub_ref", "sequence", name="uq_hub_updates_seq"),
        Index("ix_hub_updates_pending", "pushed_at", "next_attempt_at"),
    )


class FollowUpRow(Base):
    """A follow-up from the Hub (note, amendment, evidence, priority, cancel, reopen) for a case's back-office job.

    Delivered in `sequence` order per case, once each: `unknown_outcome` set means a call may have reached the
    back office, so the next attempt looks for it first. `client_id` is the Hub's own id for the event.
    """

    __tablename__ = "followups"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str] = mapped_column(String(32), ForeignKey("cases.hub_ref"))
    sequence: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16), default="api")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the follow-up, without file contents
    digest: Mapped[str] = mapped_column(String(64))  # of the content: the same id with other content is refused
    state: Mapped[str] = mapped_column(String(12), default="pending")  # pending | delivered | dead
    via: Mapped[str | None] = mapped_column(String(16))  # operation | note | email: how it reached the service area
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    claimed_until: Mapped[datetime | None] = mapped_column()
    unknown_outcome: Mapped[bool] = mapped_column(default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    backoffice_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("hub_ref", "sequence", name="uq_followups_seq"),
        UniqueConstraint("hub_ref", "client_id", name="uq_followups_client_id"),
        Index("ix_followups_due", "state", "next_attempt_at"),
    )


class FollowUpFileRow(Base):
    """A file sent with an evidence follow-up; its bytes are kept only until the follow-up is delivered."""

    __tablename__ = "followup_files"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    followup_id: Mapped[int] = mapped_column(ID, ForeignKey("followups.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(Text)
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    erased_at: Mapped[datetime | None] = mapped_column()


class SeenUpdateRow(Base):
    """Back-office updates already taken in, so a re-read page never makes a duplicate Hub update."""

    __tablename__ = "seen_updates"

    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    update_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hub_ref: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class SyncCursorRow(Base):
    """How far updates have been read from each connector instance."""

    __tablename__ = "sync_cursors"

    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column()  # one poller at a time per instance
    polled_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeadLetterRow(Base):
    """Work that could not be done, with the reason, kept until replayed or discarded."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    hub_ref: Mapped[str | None] = mapped_column(String(32), index=True)
    stage: Mapped[str] = mapped_column(String(24))  # intake | route | translate | deliver | sync | push
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    service: Mapped[str | None] = mapped_column(String(80))
    authority: Mapped[str | None] = mapped_column(String(64))
    connector: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the raw input, exactly as received
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column()
    discarded_at: Mapped[datetime | None] = mapped_column()
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    # a rejected intake body seen again (a replayed capture) counts on its first dead letter, not a new one
    body_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    seen_count: Mapped[int] = mapped_column(Integer, default=1)
    last_seen_at: Mapped[datetime | None] = mapped_column()


class RevokedSessionRow(Base):
    """A console session ended by logout: its cookie is refused until it would have expired anyway."""

    __tablename__ = "console_revoked_sessions"

    session_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class CaseViewRow(Base):
    """A console user looked at a case: who, which case and when (each council may ask who saw its cases)."""

    __tablename__ = "console_case_views"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    hub_ref: Mapped[str] = mapped_column(String(128), index=True)
    page: Mapped[str] = mapped_column(String(32))
    viewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConnectorHealthRow(Base):
    """Each connector instance's circuit state and recent record, shared by every worker process."""

    __tablename__ = "connector_health"

    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(12), default="closed")  # closed | open | half_open
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    opened_until: Mapped[datetime | None] = mapped_column()
    successes: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_success_at: Mapped[datetime | None] = mapped_column()
    last_failure_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)


class RaisedCaseRow(Base):
    """Outbox of jobs raised directly in a back office, each to become one Hub case.

    (connector, backoffice_ref) is the idempotency key, on our side (unique) and the Hub's; the row is
    written in the same transaction as the back-office update that revealed the job, and the job's
    updates wait in `updates` (in order) until the Hub has given the case its reference.
    """

    __tablename__ = "raised_cases"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    connector: Mapped[str] = mapped_column(String(64))
    backoffice_ref: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(12), default="pending")  # pending | raised | linked (ours) | dead
    hub_ref: Mapped[str | None] = mapped_column(String(32))
    service_code: Mapped[str | None] = mapped_column(String(100))
    updates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # waiting for the Hub ref
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    raised_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("connector", "backoffice_ref", name="uq_raised_cases_backoffice"),
        Index("ix_raised_cases_due", "connector", "state", "next_attempt_at"),
    )


class ThrottleRow(Base):
    """A connector instance's request-rate state (GCRA), shared by every worker process.

    `tat` is the theoretical arrival time, in Unix seconds, of the next request allowed.
    """

    __tablename__ = "connector_throttle"

    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    tat: Mapped[float] = mapped_column(Float, default=0.0)


class ThrottleSlotRow(Base):
    """One of a connector instance's concurrent-call slots; a lease so a killed worker's slot comes back."""

    __tablename__ = "connector_slots"

    connector: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    holder: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[float | None] = mapped_column(Float)  # Unix seconds


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API, the worker and beat read while one of them writes
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


IDLE_PING_SECONDS = 2.0
"""A pooled PostgreSQL connection idle longer than this is pinged before use."""


def _checked_in(_dbapi_conn: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    # A ping on every checkout (pool_pre_ping) was a round trip per transaction, 7% of a worker's time. A
    # connection in steady use has just proved itself; one that sat idle may have been dropped (a restart, an
    # idle timeout), so only that one is tested. DisconnectionError makes the pool connect afresh.
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT 1")
    except Exception as exc:
        raise DisconnectionError(f"pooled store connection is dead: {exc}") from exc


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # a local file does not drop connections: no ping
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=5,
        max_overflow=10,
        pool_recycle=1800,
        pool_use_lifo=True,  # reuse the busiest connection, so the rest idle out and get pinged or recycled
        json_serializer=lambda o: json.dumps(o, default=str),
    )
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def migrate(url: str) -> None:
    """Bring the schema at `url` up to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection_url"] = url
    command.upgrade(cfg, "head")


@lru_cache(maxsize=8)
def _sessions_for(engine: Engine) -> sessionmaker[Session]:
    # keyed on the engine, not the URL: a pool process clears `engine_for` after the fork and must not keep
    # a session factory bound to its parent's engine (and connections)
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    session = _sessions_for(engine_for(url))()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_EVENTS = "hubbridge.events"


def record_event(session: Session, hub_ref: str | None, kind: str, **detail: Any) -> None:
    """Add an audit event to the session's transaction; it is written, with the others, when the session commits."""
    if not session.in_transaction():
        session.begin()  # so a rollback or close before any statement still ends it, and drops its events
    session.info.setdefault(_EVENTS, []).append({"hub_ref": hub_ref, "kind": kind, "detail": detail, "at": utcnow()})


@event.listens_for(Session, "before_commit")
def _write_events(session: Session) -> None:
    # One multi-row INSERT per transaction, not one INSERT ... RETURNING per event through the unit of work:
    # a case's steps record five or six events, and each was a round trip and an ORM object.
    pending = session.info.pop(_EVENTS, None)
    if pending:
        session.execute(insert(EventRow.__table__), pending)


@event.listens_for(Session, "do_orm_execute")
def _write_events_before_reading_them(state: Any) -> None:
    # a query of the audit trail inside the transaction that recorded events must see them
    if _EVENTS in state.session.info and state.is_select and any(m.class_ is EventRow for m in state.all_mappers):
        _write_events(state.session)


@event.listens_for(Session, "after_transaction_end")
def _drop_events(session: Session, transaction: Any) -> None:
    # a transaction rolled back or closed uncommitted: its events never happened
    if transaction.parent is None:
        session.info.pop(_EVENTS, None)


@event.listens_for(CaseRow, "load")
def _remember_case_values(row: CaseRow, _context: Any) -> None:
    # A process that loads a case will log about it: its customer values are noted once here, so every later line
    # bound to its ref redacts them without a store read per line. A payload not loaded (deferred) is skipped.
    from hubbridge.log import remember_case

    payload = row.__dict__.get("payload")
    if payload is not None:
        remember_case(row.hub_ref, payload)
