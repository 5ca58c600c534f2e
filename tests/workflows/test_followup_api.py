"""The follow-up door of the intake API and the file batch: signed, refused clearly, kept, never dropped."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hubbridge.config.settings import get_settings
from hubbridge.signing import sign
from hubbridge.store import DeadLetterRow, session_scope, utcnow
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


def post(client: TestClient, path: str, data: dict, *, signed: bool = True):  # type: ignore[no-untyped-def]
    body = json.dumps(data).encode()
    headers = {"Content-Type": "application/json", **(sign(body, SECRET) if signed else {})}
    return client.post(path, content=body, headers=headers)


def test_a_followup_is_taken_in_for_a_known_case(client: TestClient, sqlite_url: str) -> None:
    case = next(generate_cases(1))
    assert post(client, "/cases", case).status_code == 202
    note = {"id": "evt-1", "kind": "note", "note": "Customer rang back", "occurred_at": utcnow().isoformat()}
    resp = post(client, f"/cases/{case['ref']}/events", note)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"ref": case["ref"], "sequence": 1, "status": "accepted"}
    assert post(client, f"/cases/{case['ref']}/events", note).json()["status"] == "duplicate"
    trail = client.get(f"/cases/{case['ref']}", headers={"Authorization": "Bearer admin-token"}).json()
    assert [(f["sequence"], f["kind"], f["state"]) for f in trail["followups"]] == [(1, "note", "pending")]


def test_a_reposted_case_with_changes_is_answered_amended(client: TestClient, sqlite_url: str) -> None:
    case = next(generate_cases(1))
    post(client, "/cases", case)
    resp = post(client, "/cases", {**case, "description": "Now also a broken lid"})
    assert resp.status_code == 202 and resp.json() == {"ref": case["ref"], "status": "amended", "followups": [1]}


def test_unsigned_unknown_and_invalid_followups_are_refused_clearly(client: TestClient, sqlite_url: str) -> None:
    note = {"kind": "note", "note": "x", "occurred_at": utcnow().isoformat()}
    assert post(client, "/cases/WH-2026-999999/events", note, signed=False).status_code == 401
    resp = post(client, "/cases/WH-2026-999999/events", note)
    assert resp.status_code == 404 and "WH-2026-999999" in resp.json()["fields"]["ref"]
    assert "replayed" in resp.json()["hint"]
    case = next(generate_cases(1))
    post(client, "/cases", case)
    resp = post(client, f"/cases/{case['ref']}/events", {"kind": "evidence", "occurred_at": utcnow().isoformat()})
    assert resp.status_code == 422 and "attachments" in json.dumps(resp.json()["fields"])
    with session_scope(sqlite_url) as s:
        reasons = s.scalars(select(DeadLetterRow.reason).where(DeadLetterRow.stage == "followup")).all()
    assert sorted(reasons) == ["invalid_followup", "unknown_case"]
