"""The follow-up door of the intake API and the file batch: signed, refused clearly, kept, never dropped."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from hubbridge.config.settings import get_settings
from hubbridge.signing import sign
from hubbridge.store import DeadLetterRow, FollowUpRow, session_scope, utcnow
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


def test_submit_takes_cases_and_followups_from_one_file(tmp_path, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hubbridge.workflows.cli import app

    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    from hubbridge.workflows import runtime as rt_module

    monkeypatch.setattr(rt_module, "_runtime", None, raising=False)
    case = next(generate_cases(1))
    lines = [json.dumps(case),
             json.dumps({"ref": case["ref"], "kind": "priority", "priority": "high",
                         "occurred_at": utcnow().isoformat()}),
             json.dumps({**case, "priority": "high", "description": "Changed on the second call"}),
             json.dumps({"ref": "WH-2026-999998", "kind": "cancel", "occurred_at": utcnow().isoformat()})]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["submit", str(batch), "--no-enqueue"])
    assert result.exit_code == 1, result.output  # one line was refused
    counts = json.loads(result.output.strip().splitlines()[-1])
    assert counts == {"accepted": 1, "duplicate": 0, "amended": 1, "followups": 1, "rejected": 1}
    with session_scope(sqlite_url) as s:
        kinds = s.scalars(select(FollowUpRow.kind).where(FollowUpRow.hub_ref == case["ref"])
                          .order_by(FollowUpRow.sequence)).all()
    assert kinds == ["priority", "amendment"]
