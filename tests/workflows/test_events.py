"""The audit trail: a transaction's events are written together when it commits, and not at all otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event, select

from hubbridge.store import EventRow, engine_for, record_event, session_scope


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def statements(url: str) -> Iterator[list[str]]:
    seen: list[str] = []

    def keep(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()))

    engine = engine_for(url)
    event.listen(engine, "before_cursor_execute", keep)
    yield seen
    event.remove(engine, "before_cursor_execute", keep)


def _trail(url: str) -> list[tuple[str | None, str, dict[str, object]]]:
    with session_scope(url) as s:
        return [(e.hub_ref, e.kind, e.detail) for e in s.scalars(select(EventRow).order_by(EventRow.id))]


def test_a_transactions_events_are_written_in_order_in_one_insert(url: str, statements: list[str]) -> None:
    with session_scope(url) as s:
        record_event(s, "WH-2026-000001", "received", channel="api")
        record_event(s, "WH-2026-000001", "routed", connector="refuse-worcester")
        record_event(s, None, "backoffice.unlinked", backoffice_ref="SR1")
        assert _trail(url) == []  # nothing is written before the commit
    assert _trail(url) == [
        ("WH-2026-000001", "received", {"channel": "api"}),
        ("WH-2026-000001", "routed", {"connector": "refuse-worcester"}),
        (None, "backoffice.unlinked", {"backoffice_ref": "SR1"}),
    ]
    assert sum(st.startswith("INSERT INTO events") for st in statements) == 1


def test_the_recording_transaction_reads_its_own_events(url: str) -> None:
    with session_scope(url) as s:
        record_event(s, "WH-2026-000005", "sla.start", policy="refuse")
        assert s.scalar(select(EventRow.kind).where(EventRow.hub_ref == "WH-2026-000005")) == "sla.start"
        record_event(s, "WH-2026-000005", "routed")
    assert [kind for _, kind, _ in _trail(url)] == ["sla.start", "routed"]  # each written once


def test_a_rolled_back_transaction_writes_none_of_its_events(url: str) -> None:
    with pytest.raises(RuntimeError), session_scope(url) as s:
        record_event(s, "WH-2026-000002", "delivered")
        raise RuntimeError("the step failed")
    with session_scope(url) as s:
        record_event(s, "WH-2026-000003", "received")
        s.rollback()  # as intake does on a duplicate: what came before the rollback is gone
        record_event(s, "WH-2026-000003", "intake.duplicate")
    assert _trail(url) == [("WH-2026-000003", "intake.duplicate", {})]


def test_a_session_closed_without_commit_forgets_its_events(url: str) -> None:
    from sqlalchemy.orm import Session

    with Session(engine_for(url)) as s:
        record_event(s, "WH-2026-000004", "received")
        s.close()
        record_event(s, "WH-2026-000004", "routed")
        s.commit()
    assert _trail(url) == [("WH-2026-000004", "routed", {})]
