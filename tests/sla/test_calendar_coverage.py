"""Calendars do not run out: closure days must be known 12 months ahead, checked at load and by a command."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.sla.cli import sla_app
from hubbridge.sla.policy import closure_coverage, load_sla_config, months_after

runner = CliRunner()


def test_the_shipped_calendars_know_their_closures_a_year_ahead_of_today() -> None:
    coverage = closure_coverage(load_sla_config(SHIPPED_CONFIG_DIR), date(2026, 12, 7))
    assert [(c.calendar, c.short) for c in coverage] == [
        ("always", False), ("depot", False), ("highways", False), ("office", False)]
    known = {c.calendar: c.known_until for c in coverage}
    # the office's last listed closure is in December 2028: that year's closures are known to its end
    assert known["office"] == date(2028, 12, 31) and known["always"] is None


def test_a_calendar_whose_closures_end_within_the_year_is_reported_with_what_to_do() -> None:
    coverage = {c.calendar: c for c in closure_coverage(load_sla_config(SHIPPED_CONFIG_DIR), date(2028, 3, 1))}
    office = coverage["office"]
    assert office.short and office.needed_until == date(2029, 3, 1)
    problem = office.problem()
    assert problem is not None and "'office'" in problem and "2028-12-31" in problem
    assert "closures_known_until" in problem
    assert not coverage["always"].short  # 24/7 never closes


def _config_with(tmp_path: Path, old: str, new: str) -> Path:
    cfg = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG_DIR, cfg)
    text = (cfg / "sla.yaml").read_text()
    assert old in text
    (cfg / "sla.yaml").write_text(text.replace(old, new))
    return cfg


def test_a_calendar_with_no_closure_data_warns_at_load(tmp_path: Path) -> None:
    cfg = _config_with(tmp_path, "    closures_known_until: 2028-12-31", "")
    with capture_logs() as logs:
        load_sla_config(cfg)
    warned = [e for e in logs if e["event"] == "sla.calendar_closures_run_out"]
    assert [e["calendar"] for e in warned] == ["depot"]
    assert warned[0]["known_until"] is None and "no closure data" in warned[0]["problem"]
    assert warned[0]["path"].endswith("sla.yaml")


def test_the_check_command_exits_1_and_names_each_calendar_that_runs_out(tmp_path: Path) -> None:
    ok = runner.invoke(sla_app, ["calendars", "check", "--today", "2026-12-07",
                                 "--config-dir", str(SHIPPED_CONFIG_DIR)])
    assert ok.exit_code == 0, ok.output
    assert "depot" in ok.output and "runs out" not in ok.output

    late = runner.invoke(sla_app, ["calendars", "check", "--today", "2028-06-01", "--json",
                                   "--config-dir", str(SHIPPED_CONFIG_DIR)])
    assert late.exit_code == 1
    body = json.loads(late.stdout)
    assert body["needed_until"] == "2029-06-01"
    assert {c["calendar"] for c in body["calendars"] if c["short"]} == {"depot", "highways", "office"}

    bad = runner.invoke(sla_app, ["calendars", "check", "--today", "June"])
    assert bad.exit_code == 2 and "--today" in bad.output


@pytest.mark.parametrize(("day", "months", "expected"), [
    (date(2026, 12, 7), 12, date(2027, 12, 7)),
    (date(2027, 1, 31), 1, date(2027, 2, 28)),
    (date(2027, 2, 28), 12, date(2028, 2, 28)),
    (date(2028, 2, 29), 12, date(2029, 2, 28)),
])
def test_months_after_keeps_the_day_or_takes_the_month_end(day: date, months: int, expected: date) -> None:
    assert months_after(day, months) == expected
