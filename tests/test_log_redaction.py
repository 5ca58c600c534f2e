"""Redaction that knows the case: a line bound to a case hides that case's own customer values, wherever they are."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from sqlalchemy import event, select

from hubbridge.log import (
    CUSTOMER,
    _CaseValues,
    bind_case,
    bind_values,
    case_values,
    clear_bound_values,
    configure_logging,
    forget_case,
    remember_case,
)
from hubbridge.store import CaseRow, engine_for, session_scope, utcnow

PAYLOAD = {
    "ref": "WH-2026-004711",
    "authority": "redditch",
    "service": "refuse.missed-collection",
    "customer": {"name": "Mrs Ottilie Brackenbury", "phone": "01527 881234", "email": "ob@example.net",
                 "address": {"line1": "7 Larkspur Close", "town": "Redditch", "postcode": "B98 7XY"}},
    "location": {"description": "Behind 7 Larkspur Close, by the garages"},
    "description": "Green bin missed twice, carer visits on Tuesdays",
    "attributes": {"bin_location": "Side passage"},
}


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure_logging("json", "INFO")
    structlog.contextvars.clear_contextvars()
    yield capsys
    structlog.contextvars.clear_contextvars()
    clear_bound_values()
    forget_case(PAYLOAD["ref"])
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_line_bound_to_a_case_hides_its_name_and_street_in_free_text(json_logs: pytest.CaptureFixture[str]) -> None:
    # the mapping error of issue 25: the case's own values inside `detail`, which patterns alone let through
    bind_case(PAYLOAD["ref"], PAYLOAD)
    structlog.get_logger("t").warning(
        "mapping.failed", detail="field 'contact': value 'Ottilie Brackenbury, 7 Larkspur Close' too long",
        extra={"why": ["Brackenbury called from larkspur close"]}, seen="Side passage")
    line = last_line(json_logs)
    record = json.loads(line)
    for value in ("Ottilie", "Brackenbury", "Larkspur Close", "Side passage"):
        assert value.lower() not in line.lower(), value
    assert record["hub_ref"] == PAYLOAD["ref"]  # the reference itself is what ties the line to the case
    assert record["detail"] == f"field 'contact': value '{CUSTOMER}, {CUSTOMER}' too long"
    assert "Mrs" not in case_values(PAYLOAD)  # a title alone names no one


def test_a_line_naming_the_ref_explicitly_is_redacted_and_other_cases_lines_are_not(
    json_logs: pytest.CaptureFixture[str]
) -> None:
    remember_case(PAYLOAD["ref"], PAYLOAD)
    log = structlog.get_logger("t")
    log.info("note", hub_ref=PAYLOAD["ref"], text="Green bin missed twice, carer visits on Tuesdays - Redditch")
    assert json.loads(last_line(json_logs))["text"] == f"{CUSTOMER} - Redditch"  # the town alone is nobody's
    log.info("note", hub_ref="WH-2026-000002", text="Ottilie is a street name in another case")
    assert "Ottilie" in last_line(json_logs)
    forget_case(PAYLOAD["ref"])
    log.info("note", hub_ref=PAYLOAD["ref"], text="Brackenbury")
    assert "Brackenbury" in last_line(json_logs)


def test_values_bound_without_a_ref_last_until_cleared(json_logs: pytest.CaptureFixture[str]) -> None:
    log = structlog.get_logger("t")
    bind_values(case_values(PAYLOAD))
    log.info("raised job", text="call 01527881234 back about Larkspur Close")
    line = last_line(json_logs)
    assert "Larkspur" not in line and "01527881234" not in line
    clear_bound_values()
    log.info("raised job", text="Larkspur Close")
    assert "Larkspur Close" in last_line(json_logs)


def test_a_case_loaded_from_the_store_is_redacted_in_later_lines_without_reading_the_store_again(
    json_logs: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    now = utcnow()
    with session_scope(sqlite_url) as s:
        s.add(CaseRow(hub_ref=PAYLOAD["ref"], authority="redditch", service=PAYLOAD["service"], payload=PAYLOAD,
                      status_at=now, received_at=now, updated_at=now))
    forget_case(PAYLOAD["ref"])
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(CaseRow).where(CaseRow.hub_ref == PAYLOAD["ref"])) is not None
    statements: list[str] = []
    engine = engine_for(sqlite_url)

    def count(_c: object, _cur: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        structlog.contextvars.bind_contextvars(hub_ref=PAYLOAD["ref"])
        log = structlog.get_logger("t")
        for _ in range(50):
            log.info("deliver.retry", error="refused: ob@example.net at B98 7XY, Mrs Ottilie Brackenbury")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    lines = [line for line in json_logs.readouterr().err.splitlines() if "deliver.retry" in line]
    assert len(lines) == 50 and statements == []
    assert all("Ottilie" not in line and "ob@example.net" not in line and "B98 7XY" not in line for line in lines)


def test_the_process_keeps_a_bounded_number_of_cases() -> None:
    kept = _CaseValues(2)
    for n in range(3):
        kept.remember(f"WH-2026-00000{n}", {"Person Number" + str(n)})
    assert kept.get("WH-2026-000000") is None
    assert kept.get("WH-2026-000002") is not None and kept.get("WH-2026-000002").search("person number2")
