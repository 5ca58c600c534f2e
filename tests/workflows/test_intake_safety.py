"""Intake defects of issue 25: huge numbers, NaN, control characters, replays and a store that is down."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hubbridge.config.settings import get_settings
from hubbridge.signing import sign
from hubbridge.store import CaseRow, DeadLetterRow, EventRow, engine_for, migrate, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.runtime import Runtime
from tests.conftest import PG_ADMIN_URL

SECRET = "intake-safety-secret"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'safety.sqlite'}"
        migrate(url)
        return url
    return str(request.getfixturevalue("pg_url"))


def app_client(url: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", url)
    monkeypatch.setenv("HUBBRIDGE_INTAKE_SECRET", SECRET)
    get_settings.cache_clear()
    return TestClient(create_app(Runtime(), enqueue=False), raise_server_exceptions=False)


@pytest.fixture
def client(store_url: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    return app_client(store_url, monkeypatch)


def post(client: TestClient, body: bytes):  # type: ignore[no-untyped-def]
    return client.post("/cases", content=body, headers={"Content-Type": "application/json", **sign(body, SECRET)})


def dead_letters(url: str) -> list[DeadLetterRow]:
    with session_scope(url) as s:
        return list(s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id)).all())


def cases(url: str) -> int:
    with session_scope(url) as s:
        return len(s.scalars(select(CaseRow.id)).all())


def a_case(**changes: object) -> dict:
    case = next(generate_cases(1, seed=25))
    case.update(changes)
    return case


def test_a_number_of_5000_digits_is_refused_422_and_kept(client: TestClient, store_url: str) -> None:
    body = json.dumps(a_case(attributes={"bins": 1})).replace('"bins": 1', '"bins": ' + "9" * 5000).encode()
    resp = post(client, body)
    assert resp.status_code == 422, resp.text
    assert "5000 digits" in resp.json()["fields"]["attributes.bins"]
    [kept] = dead_letters(store_url)
    assert kept.stage == "intake" and kept.payload == body.decode() and cases(store_url) == 0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused_and_kept(client: TestClient, store_url: str, constant: str) -> None:
    body = json.dumps(a_case(attributes={"weight": 1.5})).replace("1.5", constant).encode()
    resp = post(client, body)
    assert resp.status_code == 422, resp.text
    assert "attributes.weight" in resp.json()["fields"]
    [kept] = dead_letters(store_url)
    assert constant in kept.payload and cases(store_url) == 0


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\ufffe", "\ud800"])
def test_control_characters_are_refused_naming_the_field(client: TestClient, store_url: str, char: str) -> None:
    case = a_case()
    case["customer"]["name"] = f"Ann{char}Smith"
    resp = post(client, json.dumps(case).encode())
    assert resp.status_code == 422, resp.text
    problem = resp.json()["fields"]["customer.name"]
    assert f"U+{ord(char):04X}" in problem and "Ann" not in problem
    [kept] = dead_letters(store_url)
    assert kept.hub_ref == case["ref"] and "\x00" not in kept.payload and cases(store_url) == 0


def test_bidi_overrides_and_zero_width_characters_are_stripped(client: TestClient, store_url: str) -> None:
    case = a_case(description="Bin \u202emissed\u202c by\u200b the\ufeff crew")
    case["customer"]["name"] = "Ann \u2066Smith\u2069"
    resp = post(client, json.dumps(case).encode())
    assert resp.status_code == 202, resp.text
    with session_scope(store_url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == case["ref"]))
        assert row is not None
        assert row.payload["description"] == "Bin missed by the crew"
        assert row.payload["customer"]["name"] == "Ann Smith"
        received = s.scalar(select(EventRow).where(EventRow.hub_ref == case["ref"], EventRow.kind == "received"))
        assert received is not None
        assert received.detail["invisible_stripped"] == ["customer.name", "description"]


def test_a_replayed_rejected_request_is_one_dead_letter_counted(client: TestClient, store_url: str) -> None:
    body = json.dumps(a_case(service="nothing.here")).encode()
    for _ in range(3):
        assert post(client, body).status_code == 422
    other = json.dumps(a_case(service="nothing.else")).encode()
    assert post(client, other).status_code == 422
    first, second = dead_letters(store_url)
    assert first.seen_count == 3 and first.last_seen_at is not None and first.last_seen_at >= first.created_at
    assert second.seen_count == 1


@contextmanager
def closable_database() -> Iterator[tuple[str, str]]:
    """A private PostgreSQL database that a test can close to new connections, like a restart does."""
    name = f"hubbridge_down_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    migrate(url)
    yield url, name
    engine_for(url).dispose()
    engine_for.cache_clear()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def closable_pg() -> Iterator[tuple[str, str]]:
    with closable_database() as found:
        yield found


def take_down(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def bring_up(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@pytest.mark.services
def test_store_down_answers_503_with_retry_after(closable_pg: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, name = closable_pg
    client = app_client(url, monkeypatch)
    good = json.dumps(a_case()).encode()
    assert post(client, good).status_code == 202  # the pool now holds a live connection, about to be killed
    take_down(name)
    for body in (json.dumps(a_case(ref="WH-2026-000002")).encode(), b"not json"):
        resp = post(client, body)
        assert resp.status_code == 503, resp.text
        assert int(resp.headers["Retry-After"]) > 0
        assert "Traceback" not in resp.text and resp.json()["error"] == "the store is unavailable"
    bring_up(name)
    resp = post(client, json.dumps(a_case(ref="WH-2026-000002")).encode())
    assert resp.status_code == 202, resp.text
    assert cases(url) == 2
