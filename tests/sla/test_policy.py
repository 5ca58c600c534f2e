"""The SLA policy file: the shipped one is complete, and mistakes are reported with file:line:col."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hubbridge.case import Priority
from hubbridge.config.models import ServicesFile
from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.config.yamlfile import load_yaml
from hubbridge.errors import ConfigError, ConfigErrors
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.policy import load_sla_config

SERVICES = load_yaml(SHIPPED_CONFIG_DIR / "services.yaml").validate(ServicesFile).services


def test_every_service_has_a_policy_with_both_clocks(sla: SlaEngine) -> None:
    for service in SERVICES:
        for priority in Priority:
            specs = sla.specs(service, priority)
            assert {"acknowledge", "resolve"} <= set(specs), service
            for spec in specs.values():
                assert spec.target > timedelta(0)
                assert 0 < spec.warn_fraction < 1
                assert spec.escalation in sla.config.escalations


def test_every_shipped_policy_cites_its_source() -> None:
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    policies = text.split("\npolicies:\n", 1)[1]
    blocks = [b for b in policies.split("\n  ") if b and not b.startswith((" ", "#"))]
    assert len(blocks) == len(SERVICES)
    for service in SERVICES:
        block = policies.split(f"\n  {service}:\n", 1)[1]
        assert block.lstrip().startswith("# Source:"), service


def test_shipped_figures(sla: SlaEngine) -> None:
    assert sla.specs("highways.dangerous-defect", "normal")["resolve"].target == timedelta(hours=2)
    assert sla.specs("highways.dangerous-defect", "normal")["resolve"].calendar.always_open
    assert sla.specs("highways.pothole", "normal")["resolve"].target == timedelta(days=28)
    assert sla.specs("highways.pothole", "high")["resolve"].target == timedelta(hours=18)  # 2 x 9 h days
    assert sla.specs("refuse.missed-collection", "normal")["resolve"].target == timedelta(hours=24)  # 3 days
    assert sla.specs("revenues.benefit-change-of-circumstances", "normal")["resolve"].target == timedelta(days=8)
    assert sla.specs("planning.pre-application-advice", "normal")["resolve"].target == timedelta(weeks=8)
    assert sla.specs("planning.application-enquiry", "low")["acknowledge"].target == timedelta(hours=40)


def test_default_warn_fraction_is_three_quarters(sla: SlaEngine) -> None:
    spec = sla.specs("refuse.missed-collection", "normal")["resolve"]
    assert spec.warn_fraction == 0.75
    assert spec.warn_after == timedelta(hours=18)


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    shutil.copy(SHIPPED_CONFIG_DIR / "services.yaml", tmp_path / "services.yaml")
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    assert old in text
    (tmp_path / "sla.yaml").write_text(text.replace(old, new, 1))
    return tmp_path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    cdir = _broken(tmp_path, "    bank_holidays: true        # England", "    bank_holiday: true        # England")
    with pytest.raises(ConfigErrors) as exc:
        load_sla_config(cdir)
    err = exc.value.errors[0]
    assert err.path == str(cdir / "sla.yaml")
    assert err.line == _line_of(cdir / "sla.yaml", "bank_holiday: true")
    assert "did you mean 'bank_holidays'" in str(err)


def test_unknown_calendar_reference(tmp_path: Path) -> None:
    cdir = _broken(tmp_path, "    calendar: depot\n", "    calendar: depott\n")
    with pytest.raises(ConfigErrors) as exc:
        load_sla_config(cdir)
    [err] = exc.value.errors
    assert "unknown calendar 'depott'" in str(err) and "did you mean 'depot'" in str(err)
    assert err.line == _line_of(cdir / "sla.yaml", "calendar: depott")


def test_two_targets_refused(tmp_path: Path) -> None:
    cdir = _broken(tmp_path, "acknowledge: {target: {working_hours: 4}}",
                   "acknowledge: {target: {working_hours: 4, working_days: 1}}")
    with pytest.raises(ConfigErrors, match="exactly one of working_hours"):
        load_sla_config(cdir)


def test_missing_resolve_clock_refused(tmp_path: Path) -> None:
    cdir = _broken(tmp_path, "      resolve: {target: {working_days: 3}}\n", "")
    with pytest.raises(ConfigErrors, match="no 'resolve' clock"):
        load_sla_config(cdir)


def test_bad_opening_hours(tmp_path: Path) -> None:
    cdir = _broken(tmp_path, 'mon: "07:00-15:00"', 'mon: "15:00-07:00"')
    with pytest.raises(ConfigErrors, match="end before they start"):
        load_sla_config(cdir)


def test_bad_warn_fraction(tmp_path: Path) -> None:
    cdir = _broken(tmp_path, "warn_fraction: 0.75", "warn_fraction: 1.5")
    with pytest.raises(ConfigErrors) as exc:
        load_sla_config(cdir)
    # the line of the top-level warn_fraction, wherever the file's header comment ends
    lines = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text().splitlines()
    assert exc.value.errors[0].line == 1 + next(i for i, x in enumerate(lines) if x.startswith("warn_fraction:"))


def test_service_without_policy_refused(tmp_path: Path) -> None:
    text = (SHIPPED_CONFIG_DIR / "services.yaml").read_text()
    (tmp_path / "services.yaml").write_text(text + "  refuse.garden-waste:\n    name: Garden waste\n    area: refuse\n")
    shutil.copy(SHIPPED_CONFIG_DIR / "sla.yaml", tmp_path / "sla.yaml")
    with pytest.raises(ConfigErrors, match=r"'refuse\.garden-waste' has no SLA policy"):
        load_sla_config(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file is missing"):
        SlaEngine.from_config(tmp_path)


def test_unknown_policy_named(sla: SlaEngine) -> None:
    with pytest.raises(ConfigError, match=r"no SLA policy 'refuse\.missed'"):
        sla.due("refuse.missed", "normal", datetime(2026, 3, 2, tzinfo=UTC))
