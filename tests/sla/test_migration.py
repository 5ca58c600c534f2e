"""Migration 0002 creates the SLA tables on SQLite and PostgreSQL, and the engine works on them."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from hubbridge.sla.engine import SlaEngine
from hubbridge.store import engine_for, migrate
from tests.sla.conftest import PG_ADMIN, _pg_available, add_case, utc

SLA_TABLES = {"sla_clocks", "sla_pauses", "sla_sweeps", "sla_escalations"}


def _check(url: str, sla: SlaEngine) -> None:
    migrate(url)
    engine = engine_for(url)
    insp = inspect(engine)
    assert set(insp.get_table_names()) >= SLA_TABLES
    indexes = {i["name"] for i in insp.get_indexes("sla_clocks")}
    assert {"ix_sla_clocks_state_due", "ix_sla_clocks_state_warn"} <= indexes
    with Session(engine) as s:
        add_case(s, "WH-2026-000001")
        sla.start(s, "WH-2026-000001", "refuse.missed-collection", "bromsgrove", "normal", utc(2026, 3, 2, 7))
        result = sla.sweep(s, utc(2026, 3, 9, 7))
        assert result.breaches == 2 and result.hub_updates == 2 and result.escalated == 2
        s.commit()
    engine.dispose()


def test_sqlite(tmp_path: Path, sla: SlaEngine) -> None:
    _check(f"sqlite:///{tmp_path / 'migrated.sqlite'}", sla)


@pytest.mark.services
def test_postgresql(sla: SlaEngine) -> None:
    if not _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = "hubbridge_sla_migration_test"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        _check(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", sla)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
