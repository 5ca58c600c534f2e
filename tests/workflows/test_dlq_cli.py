"""`hubbridge dlq list|show|replay|discard` on a real store (SQLite, and PostgreSQL for listing)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
import structlog
from sqlalchemy import select
from typer.testing import CliRunner

from hubbridge.config.settings import get_settings
from hubbridge.store import DeadLetterRow, EventRow, session_scope, utcnow
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.cli import app
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import reset_runtime

from .conftest import Rig

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    """Exit code and standard output (logs go to standard error), or both streams if it failed."""
    result = runner.invoke(app, list(args), env={"COLUMNS": "220"})
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


@pytest.fixture(autouse=True)
def _plain_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.fixture
def cli_rig(rig: Rig) -> Iterator[Rig]:
    reset_runtime(rig.rt)  # the CLI uses the process runtime: make it the rig's
    yield rig
    reset_runtime(None)


def seed(url: str) -> list[int]:
    ids = []
    with session_scope(url) as s:
        for i, (reason, authority, age) in enumerate([("invalid_json", "redditch", 3), ("unroutable", "wychavon", 0),
                                                      ("invalid_json", "wychavon", 0)]):
            row = dead_letter(s, stage="intake", reason=reason, detail=f"problem {i}", payload="{not json",
                                       service="refuse.missed-collection", authority=authority)
            s.flush()
            row.created_at = utcnow() - timedelta(days=age, minutes=1)
            ids.append(row.id)
    return ids


def test_list_json_with_filters_on_postgresql(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", pg_url)
    get_settings.cache_clear()
    ids = seed(pg_url)
    code, text = run("dlq", "list", "--json")
    assert code == 0
    data = json.loads(text)
    assert [d["id"] for d in data["dead_letters"]] == ids
    assert data["open_by_reason"] == {"invalid_json": 2, "unroutable": 1}
    code, text = run("dlq", "list", "--json", "--reason", "invalid_json", "--authority", "wychavon")
    assert [d["id"] for d in json.loads(text)["dead_letters"]] == [ids[2]]
    code, text = run("dlq", "list", "--json", "--older-than", "2d")
    assert [d["id"] for d in json.loads(text)["dead_letters"]] == [ids[0]]
    assert "payload" not in json.loads(text)["dead_letters"][0]  # listings never carry the personal data


def test_list_table_show_and_bad_age(cli_rig: Rig) -> None:
    ids = seed(cli_rig.url)
    code, text = run("dlq", "list", "--service", "refuse.missed-collection")
    assert code == 0
    assert "invalid_json" in text and "unroutable" in text and "problem 1" in text
    assert "open by reason: invalid_json 2, unroutable 1" in text
    code, text = run("dlq", "show", str(ids[0]), "--json")
    assert code == 0 and json.loads(text)["payload"] == "{not json"
    code, text = run("dlq", "show", "424242")
    assert code == 1 and "no dead letter with id 424242" in text
    code, text = run("dlq", "list", "--older-than", "yesterday")
    assert code != 0 and "not an age" in text


def test_replay_by_id_and_all_with_filters(cli_rig: Rig) -> None:
    cases = [c for c in generate_cases(20, seed=11, start_serial=700_001)
             if c["service"] == "refuse.missed-collection"][:2]
    bad = []
    for case in cases:
        broken = {**case, "channel": "pigeon"}
        with pytest.raises(Exception, match="channel"):
            accept_case(cli_rig.rt, json.dumps(broken))
        bad.append(broken)
    with session_scope(cli_rig.url) as s:
        dead = s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id)).all()
        # the Hub fixed the channel: stand in for it by fixing the stored input
        for row, case in zip(dead, cases, strict=True):
            row.payload = json.dumps(case)
        ids = [d.id for d in dead]
    code, text = run("dlq", "replay", str(ids[0]), "--by", "alice")
    assert code == 0 and f"case {cases[0]['ref']} taken in" in text and "1 replayed, 0 failed" in text
    code, text = run("dlq", "replay", "--all", "--reason", "invalid_case", "--json", "--by", "alice")
    assert code == 0
    data = json.loads(text)
    assert data["replayed"] == 1 and [r["id"] for r in data["results"]] == [ids[1]]
    code, text = run("dlq", "replay", str(ids[0]), "--json")
    assert code == 0 and "already replayed" in json.loads(text)["results"][0]["message"]
    code, text = run("dlq", "replay", str(ids[0]), "--reason", "invalid_case")
    assert code != 0 and "only apply with --all" in text
    with session_scope(cli_rig.url) as s:
        by = [e.detail["by"] for e in s.scalars(select(EventRow).where(EventRow.kind == "dead_letter.replayed"))]
    assert by == ["alice", "alice"]


def test_discard_needs_note_and_failed_replay_exits_nonzero(cli_rig: Rig) -> None:
    ids = seed(cli_rig.url)
    code, text = run("dlq", "replay", str(ids[0]))
    assert code == 1 and "not valid JSON" in text and "0 replayed, 1 failed" in text
    code, text = run("dlq", "discard", str(ids[0]))
    assert code != 0 and "--note" in text
    code, text = run("dlq", "discard", str(ids[0]), str(ids[2]), "--note", "test traffic", "--by", "ops")
    assert code == 0 and "2 discarded, 0 failed" in text
    code, text = run("dlq", "list", "--json")
    assert [d["id"] for d in json.loads(text)["dead_letters"]] == [ids[1]]
    code, text = run("dlq", "list", "--json", "--all")
    states = {d["id"]: d["state"] for d in json.loads(text)["dead_letters"]}
    assert states == {ids[0]: "discarded", ids[1]: "open", ids[2]: "discarded"}
