"""Personal data never reaches a log line: checked on real rendered output."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from hubbridge.log import configure_logging, redact_text


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    configure_logging("json", "INFO")
    yield capsys
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_structlog_lines_redact_personal_data(json_logs: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("test")
    log.info("case received for sarah.smith@example.org, call 07700 900123",
             hub_ref="WH-2026-000001", customer={"name": "Sarah Smith", "phone": "07700 900123"},
             ni="QQ 12 34 56 C", bank="sort code 12-34-56 account 12345678", token="s3cret")
    line = json_logs.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["hub_ref"] == "WH-2026-000001"
    for secret in ("sarah.smith@example.org", "07700 900123", "Sarah Smith", "QQ 12 34 56 C", "12-34-56",
                   "12345678", "s3cret"):
        assert secret not in line
    assert "[email]" in record["event"] and "[phone]" in record["event"]


def test_stdlib_logging_goes_through_the_same_redaction(json_logs: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("celery.worker").warning("task failed for ben@example.com")
    line = json_logs.readouterr().err.strip().splitlines()[-1]
    assert "ben@example.com" not in line and "[email]" in line


@pytest.mark.parametrize(("text", "gone"), [
    ("ring +44 7700 900123 today", "7700 900123"),
    ("NI number AB123456C", "AB123456C"),
    ("IBAN GB29NWBK60161331926819", "GB29NWBK60161331926819"),
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
])
def test_redact_text_patterns(text: str, gone: str) -> None:
    assert gone not in redact_text(text)


def test_references_survive_redaction() -> None:
    assert redact_text("WH-2026-000123 sent as SR00051688 at UPRN 100120123456") == (
        "WH-2026-000123 sent as SR00051688 at UPRN 100120123456")
