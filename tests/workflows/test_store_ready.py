"""CLI commands on an unmigrated store: the embedded SQLite one is created, a server one is named with the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL


def hubbridge(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")}
    env["HUBBRIDGE_DATA_DIR"] = str(data_dir)
    return env


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database that exists but has never been migrated."""
    name = f"hubbridge_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_dlq_list_on_a_fresh_data_dir_creates_the_embedded_store(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    done = hubbridge(["dlq", "list", "--json"], clean_env(data), tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dead_letters"] == []
    assert (data / "hubbridge.sqlite").exists()
    assert "Traceback" not in done.stderr


def test_an_unmigrated_postgres_store_is_named_with_the_command_to_run(tmp_path: Path, empty_pg_url: str) -> None:
    env = clean_env(tmp_path / "data") | {"HUBBRIDGE_DATABASE_URL": empty_pg_url}
    done = hubbridge(["dlq", "list", "--json"], env, tmp_path)
    assert done.returncode == 2
    assert "has not been migrated" in done.stderr and "hubbridge migrate" in done.stderr
    assert "Traceback" not in done.stderr and "sqlalchemy.exc" not in done.stderr
    migrated = hubbridge(["migrate"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    after = hubbridge(["dlq", "list", "--json"], env, tmp_path)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["dead_letters"] == []
