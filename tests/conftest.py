"""Fixtures shared across the suite: real stores (SQLite files, PostgreSQL databases) and settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubbridge.config.settings import get_settings

PG_ADMIN_URL = os.environ.get("HUBBRIDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("HUBBRIDGE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own data dir and fresh settings, never the developer's."""
    for key in list(os.environ):
        if key.startswith("HUBBRIDGE_") and not key.startswith("HUBBRIDGE_TEST_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HUBBRIDGE_DATA_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from hubbridge.store import migrate

    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate(url)
    return url


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import psycopg

    name = f"hubbridge_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    from hubbridge.store import engine_for, migrate

    migrate(url)
    yield url
    engine_for(url).dispose()
    engine_for.cache_clear()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
