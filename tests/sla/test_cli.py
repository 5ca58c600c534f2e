"""`hubbridge sla due | show | report` through typer's CliRunner."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from hubbridge.case import HubStatus
from hubbridge.sla.cli import sla_app
from hubbridge.sla.engine import SlaEngine
from tests.sla.conftest import fresh_engine, utc

runner = CliRunner()


def test_due_json() -> None:
    result = runner.invoke(sla_app, ["due", "--policy", "refuse.missed-collection", "--start",
                                     "2026-04-02T14:00:00+01:00", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"clocks"}
    assert datetime.fromisoformat(data["clocks"]["resolve"]) == utc(2026, 4, 9, 13, 0)  # 14:00 BST, after Easter
    assert datetime.fromisoformat(data["clocks"]["acknowledge"]) == utc(2026, 4, 7, 9, 0)


def test_due_priority_and_naive_start_is_london() -> None:
    result = runner.invoke(sla_app, ["due", "--policy", "highways.pothole", "--priority", "emergency",
                                     "--start", "2026-07-01T23:30", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clocks"]["resolve"] == "2026-07-02T00:30:00+00:00"  # 01:30 BST


def test_due_table() -> None:
    result = runner.invoke(sla_app, ["due", "--policy", "highways.dangerous-defect", "--start",
                                     "2026-12-25T03:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "acknowledge" in result.stdout and "Fri 25 Dec 2026 05:00 GMT" in result.stdout


def test_due_errors() -> None:
    result = runner.invoke(sla_app, ["due", "--policy", "refuse.missed", "--start", "2026-03-02T09:00Z"])
    assert result.exit_code == 2 and "no SLA policy 'refuse.missed'" in result.output
    result = runner.invoke(sla_app, ["due", "--policy", "refuse.missed-collection", "--start", "soon"])
    assert result.exit_code == 2 and "ISO 8601" in result.output
    result = runner.invoke(sla_app, ["due", "--policy", "refuse.missed-collection", "--priority", "urgent",
                                     "--start", "2026-03-02T09:00Z"])
    assert result.exit_code == 2


@pytest.fixture
def db(tmp_path: Path, sla: SlaEngine) -> str:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    engine = fresh_engine(url)
    start = utc(2026, 3, 2, 7, 0)
    with Session(engine) as s:
        for i in range(1, 5):
            ref = f"WH-2026-{i:06d}"
            sla.start(s, ref, "refuse.missed-collection", "bromsgrove" if i < 4 else "redditch", "normal", start)
            sla.on_status(s, ref, HubStatus.ACKNOWLEDGED, start + timedelta(hours=i * 2))
        sla.on_status(s, "WH-2026-000001", HubStatus.AWAITING_CUSTOMER, start + timedelta(hours=5))
        sla.on_status(s, "WH-2026-000001", HubStatus.IN_PROGRESS, utc(2026, 3, 3, 8, 0))
        sla.on_status(s, "WH-2026-000002", HubStatus.RESOLVED, utc(2026, 3, 3, 8, 0))
        s.commit()
    engine.dispose()
    return url


def test_show(db: str) -> None:
    result = runner.invoke(sla_app, ["show", "WH-2026-000001", "--database-url", db, "--now", "2026-03-03T09:00Z"])
    assert result.exit_code == 0, result.output
    assert "acknowledge" in result.stdout and "resolve" in result.stdout and "awaiting_customer" in result.stdout
    result = runner.invoke(sla_app, ["show", "WH-2026-000001", "--database-url", db, "--json",
                                     "--now", "2026-03-03T09:00Z"])
    data = json.loads(result.stdout)
    resolve = next(c for c in data["clocks"] if c["clock"] == "resolve")
    assert resolve["state"] == "running" and resolve["spent_s"] == 6 * 3600  # 5 h + Tue 08:00-09:00
    assert resolve["pauses"][0]["resumed_at"] == "2026-03-03T08:00:00+00:00"
    # 4 business hours paused (Mon 12-15, Tue 07-08): Wed 15:00 -> Thu 11:00
    assert resolve["due_at"] == "2026-03-05T11:00:00+00:00"


def test_show_unknown(db: str) -> None:
    result = runner.invoke(sla_app, ["show", "WH-2026-999999", "--database-url", db])
    assert result.exit_code == 2 and "no SLA clocks for WH-2026-999999" in result.output


def test_report_formats(db: str) -> None:
    args = ["report", "--from", "2026-03-01", "--to", "2026-03-31", "--database-url", db, "--now", "2026-03-03T09:00Z"]
    table = runner.invoke(sla_app, args)
    assert table.exit_code == 0, table.output
    assert "met %" in table.stdout and "bromsgrove" in table.stdout
    as_csv = runner.invoke(sla_app, [*args, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    ack = next(r for r in rows if r["authority"] == "bromsgrove" and r["clock"] == "acknowledge")
    assert (ack["volume"], ack["met"], ack["breached"], ack["met_pct"]) == ("3", "2", "1", "66.7")
    as_json = runner.invoke(sla_app, [*args, "--format", "json", "--by", "authority"])
    data = json.loads(as_json.stdout)
    assert data["by"] == ["authority"] and {r["authority"] for r in data["rows"]} == {"bromsgrove", "redditch"}


def test_report_bad_input(db: str) -> None:
    result = runner.invoke(sla_app, ["report", "--from", "March", "--to", "2026-03-31", "--database-url", db])
    assert result.exit_code == 2
    result = runner.invoke(sla_app, ["report", "--from", "2026-03-01", "--to", "2026-03-31", "--by", "colour",
                                     "--database-url", db])
    assert result.exit_code == 2 and "cannot group by" in result.output
