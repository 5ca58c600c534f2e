"""Shared fixtures of the SLA tests: the shipped config, a fresh store, a case factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import hubbridge.sla  # noqa: F401  (registers the SLA tables)
from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.sla.engine import SlaEngine
from hubbridge.store import Base, CaseRow, make_engine

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def sla() -> SlaEngine:
    return SlaEngine.from_config(SHIPPED_CONFIG_DIR)


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database for the session, dropped afterwards."""
    if not _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = "hubbridge_sla_test"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fresh_engine(url: str) -> Engine:
    engine = make_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh store on SQLite, and on PostgreSQL when it is running."""
    if request.param == "sqlite":
        engine = fresh_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    else:
        engine = fresh_engine(request.getfixturevalue("pg_url"))
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Engine]:
    engine = fresh_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    yield engine
    engine.dispose()


@pytest.fixture
def session(sqlite_store: Engine) -> Iterator[Session]:
    with Session(sqlite_store) as s:
        yield s


CaseFactory = Callable[..., str]


def add_case(session: Session, ref: str, service: str = "refuse.missed-collection", authority: str = "bromsgrove",
             priority: str = "normal", status: str = "routed") -> str:
    session.add(CaseRow(hub_ref=ref, authority=authority, service=service, priority=priority, status=status,
                        payload={}))
    session.flush()
    return ref


def utc(*args: int) -> datetime:
    from datetime import UTC

    return datetime(*args, tzinfo=UTC)
