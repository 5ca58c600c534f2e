"""The door's tables: the requests clients posted (idempotency key, token, Hub reference) and the reference serials."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Integer, String, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from hubbridge.case import LONDON
from hubbridge.config.open311_door import Open311Client
from hubbridge.store import ID, Base, session_scope, utcnow
from hubbridge.workflows.open311_door.wire import GeoReportError

if TYPE_CHECKING:
    from hubbridge.workflows.runtime import Runtime


class Open311SerialRow(Base):
    """The last serial given per (reference prefix, year): one row, incremented in place, per client a year."""

    __tablename__ = "open311_serials"

    prefix: Mapped[str] = mapped_column(String(2), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(Integer, default=0)


class Open311RequestRow(Base):
    """One request a client posted: its own id (the idempotency key), the token and the Hub reference given."""

    __tablename__ = "open311_requests"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(64))
    client_request_id: Mapped[str | None] = mapped_column(String(128))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    hub_ref: Mapped[str] = mapped_column(String(32), unique=True)
    service_code: Mapped[str] = mapped_column(String(80))
    state: Mapped[str] = mapped_column(String(12), default="allocated")  # allocated | accepted | refused
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("client", "client_request_id", name="uq_open311_requests_client_id"),)


_SERIAL_CEILING = 999_999


def _next_serial(s: Session, prefix: str, year: int) -> int:
    """The next serial of (prefix, year): one UPDATE ... RETURNING on a row, so concurrent callers queue on it."""
    table = Open311SerialRow.__table__
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    s.execute(dialect_insert(table).values(prefix=prefix, year=year, last=0).on_conflict_do_nothing())
    serial = s.execute(update(table).where(table.c.prefix == prefix, table.c.year == year)
                       .values(last=table.c.last + 1).returning(table.c.last)).scalar_one()
    if serial > _SERIAL_CEILING:
        raise GeoReportError(503, f"the {prefix} references of {year} are used up; give the client another prefix")
    return int(serial)


def _sent_before(s: Session, client: Open311Client, client_id: str | None) -> Open311RequestRow | None:
    """The row of an earlier send of this client's request id, if there is one."""
    return s.scalar(select(Open311RequestRow).where(Open311RequestRow.client == client.name,
                                                    Open311RequestRow.client_request_id == client_id))


def _allocate(rt: Runtime, client: Open311Client, client_id: str | None, code: str) -> tuple[Open311RequestRow, bool]:
    """This request's row: the one of an earlier send with the same client id, else a new reference; (row, resent)."""
    if client_id:
        with session_scope(rt.url) as s:
            row = _sent_before(s, client, client_id)
            if row is not None:
                return row, True
    now = utcnow()
    try:
        with session_scope(rt.url) as s:
            year = now.astimezone(LONDON).year
            ref = f"{client.ref_prefix}-{year}-{_next_serial(s, client.ref_prefix, year):06d}"
            row = Open311RequestRow(client=client.name, client_request_id=client_id, token=secrets.token_hex(16),
                                    hub_ref=ref, service_code=code, state="allocated", created_at=now)
            s.add(row)
    except IntegrityError:
        # the same client id sent twice at once: the other send holds it; both answer its reference
        with session_scope(rt.url) as s:
            row = _sent_before(s, client, client_id)
        if row is None:
            raise
        return row, True
    return row, False


def _set_state(rt: Runtime, row_id: int, state: str) -> None:
    with session_scope(rt.url) as s:
        s.execute(update(Open311RequestRow).where(Open311RequestRow.id == row_id).values(state=state))
