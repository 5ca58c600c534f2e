"""Fuzzing POST /cases on a real app, on SQLite and PostgreSQL: a case, or a specific 4xx kept as a dead letter.

The rule: a request reaching intake becomes a case, or is refused with a specific 4xx and kept as a dead letter,
or (the store down) is answered 503 with Retry-After. Never a 5xx with no record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from hubbridge.config.settings import get_settings
from hubbridge.signing import sign
from hubbridge.store import CaseRow, DeadLetterRow, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.runtime import Runtime

SECRET = "fuzz-intake-secret"
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEMPLATE = next(generate_cases(1, seed=99))

odd_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Z", "C"), exclude_characters="\x00"),
    max_size=60,
) | st.sampled_from(
    ["\u202e\u202d", "Ω≈ç√", "\ufeff", "\U0001f5d1\ufe0f", "a\u0301", "\ud7ff", "𝕳𝖚𝖇", "\x00", "' OR 1=1 --"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each fuzz test runs on a private SQLite file and on a private PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fuzz.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def sqlite_url(store_url: str) -> str:  # the tests below name it so; it is whichever store is under test
    return store_url


@pytest.fixture
def client(store_url: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    from hubbridge.store import migrate

    migrate(store_url)
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", store_url)
    monkeypatch.setenv("HUBBRIDGE_INTAKE_SECRET", SECRET)
    get_settings.cache_clear()
    return TestClient(create_app(Runtime(), enqueue=False), raise_server_exceptions=False)


def counts(url: str) -> tuple[int, int]:
    """Cases held, and rejected requests seen (a body seen again counts on its first dead letter)."""
    with session_scope(url) as s:
        return (int(s.scalar(select(func.count()).select_from(CaseRow)) or 0),
                int(s.scalar(select(func.coalesce(func.sum(DeadLetterRow.seen_count), 0))) or 0))


def check(client: TestClient, url: str, body: bytes) -> int:
    """Post `body` signed; assert the answer is clear and the input is either a case or a dead letter."""
    cases, dead = counts(url)
    resp = client.post("/cases", content=body, headers={"Content-Type": "application/json", **sign(body, SECRET)})
    assert resp.status_code in (202, 413, 422), (resp.status_code, resp.text[:500])
    after_cases, after_dead = counts(url)
    if resp.status_code == 202:
        ref = resp.json()["ref"]
        with session_scope(url) as s:
            assert s.scalar(select(CaseRow.id).where(CaseRow.hub_ref == ref)) is not None
        assert after_cases in (cases, cases + 1)
    elif resp.status_code == 422:
        detail = resp.json()
        assert detail["error"] == "invalid Hub case" and detail["fields"], detail
        assert after_dead == dead + 1, "a rejected case must be kept as a dead letter"
        assert after_cases == cases
    else:
        assert "limit" in resp.json()["detail"]
    return resp.status_code


@FUZZ
@given(body=st.binary(max_size=400))
def test_arbitrary_bytes(client: TestClient, sqlite_url: str, body: bytes) -> None:
    check(client, sqlite_url, body)


@FUZZ
@given(value=json_values)
def test_arbitrary_json(client: TestClient, sqlite_url: str, value: Any) -> None:
    check(client, sqlite_url, json.dumps(value).encode())


@FUZZ
@given(field=st.sampled_from(sorted(TEMPLATE)), value=json_values, serial=st.integers(1, 999_999))
def test_one_field_of_a_valid_case_replaced(client: TestClient, sqlite_url: str, field: str, value: Any,
                                           serial: int) -> None:
    case = {**TEMPLATE, "ref": f"WH-2026-{serial:06d}", field: value}
    check(client, sqlite_url, json.dumps(case).encode())


@FUZZ
@given(text=odd_text, where=st.sampled_from(["description", "name", "line1", "bin_location"]),
       serial=st.integers(1, 999_999))
def test_odd_unicode_in_free_text(client: TestClient, sqlite_url: str, text: str, where: str, serial: int) -> None:
    case = json.loads(json.dumps(TEMPLATE))
    case["ref"] = f"WH-2026-{serial:06d}"
    target = {"description": case, "name": case["customer"], "line1": case["customer"]["address"],
              "bin_location": case["attributes"]}[where]
    target[where] = text
    check(client, sqlite_url, json.dumps(case, ensure_ascii=bool(serial % 2)).encode())


@pytest.mark.parametrize("depth", [50, 5_000, 100_000])
def test_deeply_nested_bodies(client: TestClient, sqlite_url: str, depth: int) -> None:
    check(client, sqlite_url, b"[" * depth + b"]" * depth)
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    check(client, sqlite_url, nested)
    case = json.dumps({**TEMPLATE, "ref": "WH-2026-777777", "attributes": "@@"}).encode()
    check(client, sqlite_url, case.replace(b'"@@"', b'{"x":' * depth + b"1" + b"}" * depth))


def test_huge_bodies_are_refused_with_413(client: TestClient, sqlite_url: str) -> None:
    limit = get_settings().max_body_bytes
    huge = json.dumps({**TEMPLATE, "description": "x" * (limit + 10)}).encode()
    assert check(client, sqlite_url, huge) == 413
    many = json.dumps([TEMPLATE] * (limit // 200)).encode()
    assert check(client, sqlite_url, many) == 413


@pytest.mark.services
def test_nul_characters_are_kept_as_a_dead_letter_on_postgresql(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL text cannot hold NUL: the dead letter of such a body must still be saved, not lost in a 500."""
    from hubbridge.store import migrate

    migrate(pg_url)
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", pg_url)
    monkeypatch.setenv("HUBBRIDGE_INTAKE_SECRET", SECRET)
    get_settings.cache_clear()
    pg_client = TestClient(create_app(Runtime(), enqueue=False), raise_server_exceptions=False)
    assert check(pg_client, pg_url, json.dumps({"ref": "\u0000x", "service": "a\u0000b"}).encode()) == 422
    assert check(pg_client, pg_url, b"\x80\x00 not text") == 422
    with session_scope(pg_url) as s:
        kept = s.scalars(select(DeadLetterRow.payload)).all()
    assert len(kept) == 2 and all("\x00" not in p for p in kept)


@pytest.fixture
def down_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str, str]]:
    """An app on a private PostgreSQL database closed to connections, as during a restart."""
    from tests.workflows.test_intake_safety import bring_up, closable_database, take_down

    with closable_database() as (url, name):
        monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", url)
        monkeypatch.setenv("HUBBRIDGE_INTAKE_SECRET", SECRET)
        get_settings.cache_clear()
        client = TestClient(create_app(Runtime(), enqueue=False), raise_server_exceptions=False)
        take_down(name)
        try:
            yield client, url, name
        finally:
            bring_up(name)


@pytest.mark.services
@FUZZ
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
       serial=st.integers(1, 999_999))
def test_store_down_is_503_with_retry_after_for_any_body(down_client: tuple[TestClient, str, str], body: bytes,
                                                        serial: int) -> None:
    client = down_client[0]
    for sent in (body, json.dumps({**TEMPLATE, "ref": f"WH-2026-{serial:06d}"}).encode()):
        resp = client.post("/cases", content=sent, headers={"Content-Type": "application/json",
                                                           **sign(sent, SECRET)})
        assert resp.status_code == 503, (resp.status_code, resp.text[:300])
        assert int(resp.headers["Retry-After"]) > 0 and "Traceback" not in resp.text
