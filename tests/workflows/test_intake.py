"""The intake API: signed cases in, 422 naming every bad field, nothing dropped."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hubbridge.config.settings import get_settings
from hubbridge.signing import sign
from hubbridge.store import CaseRow, DeadLetterRow, EventRow, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.runtime import Runtime

SECRET = "intake-test-secret"


@pytest.fixture
def client(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("HUBBRIDGE_INTAKE_SECRET", SECRET)
    monkeypatch.setenv("HUBBRIDGE_API_TOKEN", "admin-token")
    get_settings.cache_clear()
    return TestClient(create_app(Runtime(), enqueue=False))


def post(client: TestClient, body: bytes, **extra: str):  # type: ignore[no-untyped-def]
    return client.post("/cases", content=body, headers={"Content-Type": "application/json", **sign(body, SECRET),
                                                         **extra})


def count(url: str, model: type, *where: object) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_valid_case_is_accepted_stored_and_routed(client: TestClient, sqlite_url: str) -> None:
    case = next(generate_cases(1))
    resp = post(client, json.dumps(case).encode())
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"ref": case["ref"], "status": "accepted"}
    with session_scope(sqlite_url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == case["ref"]))
        assert row is not None and row.status == "routed" and row.stage == "received"
        assert row.connector == f"refuse-{case['authority']}"
        kinds = s.scalars(select(EventRow.kind).where(EventRow.hub_ref == case["ref"])).all()
    assert kinds[:2] == ["received", "routed"]
    again = post(client, json.dumps(case).encode())
    assert again.status_code == 202 and again.json()["status"] == "duplicate"
    assert count(sqlite_url, CaseRow) == 1


def test_invalid_case_gets_422_naming_every_field_and_is_kept(client: TestClient, sqlite_url: str) -> None:
    case = next(generate_cases(1))
    case["channel"] = "pigeon"
    case["customer"]["address"]["postcode"] = "nowhere"
    case["created_at"] = "yesterday"
    resp = post(client, json.dumps(case).encode())
    assert resp.status_code == 422
    fields = resp.json()["fields"]
    assert set(fields) == {"channel", "customer.address.postcode", "created_at"}
    assert resp.json()["ref"] == case["ref"]
    with session_scope(sqlite_url) as s:
        dl = s.scalar(select(DeadLetterRow))
        assert dl is not None and dl.stage == "intake" and dl.reason == "invalid_case"
        assert json.loads(dl.payload)["channel"] == "pigeon"  # the input exactly as received
        assert "customer.address.postcode" in dl.detail


def test_unknown_authority_is_a_field_error(client: TestClient, sqlite_url: str) -> None:
    case = {**next(generate_cases(1)), "authority": "birmingham"}
    resp = post(client, json.dumps(case).encode())
    assert resp.status_code == 422
    assert "unknown authority 'birmingham'" in resp.json()["fields"]["authority"]
    assert count(sqlite_url, DeadLetterRow, DeadLetterRow.reason == "unroutable") == 1


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2, 3]", b'"a string"', "\u2028{}".encode()])
def test_malformed_json_is_refused_and_recorded(client: TestClient, sqlite_url: str, body: bytes) -> None:
    resp = post(client, body)
    assert resp.status_code == 422
    assert "(body)" in resp.json()["fields"]
    assert count(sqlite_url, DeadLetterRow, DeadLetterRow.stage == "intake") == 1


def test_unsigned_stale_and_tampered_requests_are_refused(client: TestClient, sqlite_url: str) -> None:
    body = json.dumps(next(generate_cases(1))).encode()
    assert client.post("/cases", content=body).status_code == 401
    stale = sign(body, SECRET, timestamp=int(time.time()) - 3600)
    assert client.post("/cases", content=body, headers=stale).status_code == 401
    tampered = body.replace(b"refuse", b"highways", 1)
    assert client.post("/cases", content=tampered, headers=sign(body, SECRET)).status_code == 401
    assert count(sqlite_url, CaseRow) == 0


def test_oversize_body_is_refused(client: TestClient) -> None:
    body = b'{"ref": "' + b"x" * 300_000 + b'"}'
    assert post(client, body).status_code == 413


def test_intake_is_off_without_a_secret(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    client = TestClient(create_app(Runtime(), enqueue=False))
    body = json.dumps(next(generate_cases(1))).encode()
    resp = client.post("/cases", content=body, headers=sign(body, "anything"))
    assert resp.status_code == 503 and "HUBBRIDGE_INTAKE_SECRET" in resp.json()["detail"]


def test_case_status_needs_the_token(client: TestClient) -> None:
    case = next(generate_cases(1))
    post(client, json.dumps(case).encode())
    assert client.get(f"/cases/{case['ref']}").status_code == 401
    resp = client.get(f"/cases/{case['ref']}", headers={"Authorization": "Bearer admin-token"})
    assert resp.status_code == 200 and resp.json()["status"] == "routed"
    assert client.get("/cases/WH-2026-999999", headers={"Authorization": "Bearer admin-token"}).status_code == 404
