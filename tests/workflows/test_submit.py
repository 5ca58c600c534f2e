"""`hubbridge submit`: a JSON Lines batch of cases and follow-ups; nothing lost when the broker is away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from hubbridge.config.settings import get_settings
from hubbridge.store import CaseRow, FollowUpRow, session_scope, utcnow
from hubbridge.workflows.casegen import generate_cases


def test_submit_takes_cases_and_followups_from_one_file(tmp_path: Path, sqlite_url: str,
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


def test_submit_with_the_broker_down_keeps_every_case_and_marks_it_due(tmp_path: Path) -> None:
    cases = list(generate_cases(3, seed=9))
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(c) + "\n" for c in cases))
    store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")}
    env.update(HUBBRIDGE_DATABASE_URL=store, HUBBRIDGE_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")  # nothing there
    done = subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", "submit", str(batch)], env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["accepted"] == 3  # the whole file, not the first line
    assert "beat's next sweep queues them" in " ".join(done.stderr.split())
    with session_scope(store) as s:
        due = s.scalars(select(CaseRow.next_attempt_at).where(CaseRow.hub_ref.in_([c["ref"] for c in cases]))).all()
    assert len(due) == 3 and all(at <= utcnow() for at in due)  # due now: the next sweep publishes them
