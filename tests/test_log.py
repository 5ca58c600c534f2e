"""Personal data never reaches a log line: checked on real rendered output."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hubbridge.log import _PATTERNS, configure_logging, redact_text


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


def test_an_accepted_intake_is_logged_once_and_every_other_request_keeps_its_access_line(
    json_logs: pytest.CaptureFixture[str],
) -> None:
    access = logging.getLogger("uvicorn.access")
    # what uvicorn logs for each request: client, method, path, HTTP version, status
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5123", "POST", "/cases", "1.1", 202)
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5123", "POST", "/cases", "1.1", 401)
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5123", "POST", "/cases", "1.1", 422)
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:5123", "GET", "/console/cases", "1.1", 200)
    lines = [json.loads(line)["event"] for line in json_logs.readouterr().err.strip().splitlines()]
    assert lines == ['10.0.0.7:5123 - "POST /cases HTTP/1.1" 401', '10.0.0.7:5123 - "POST /cases HTTP/1.1" 422',
                     '10.0.0.7:5123 - "GET /console/cases HTTP/1.1" 200']


def test_a_line_below_the_level_never_reaches_the_processors(json_logs: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []

    def spy(_logger: object, _method: str, event_dict: dict) -> dict:  # type: ignore[type-arg]
        seen.append(event_dict["event"])
        return event_dict

    config = structlog.get_config()
    structlog.configure(processors=[config["processors"][0], spy, *config["processors"][1:]])
    log = structlog.get_logger("test.levels")
    log.debug("deliver.start")
    log.info("case.delivered")
    assert seen == ["case.delivered"]
    assert [json.loads(line)["event"] for line in json_logs.readouterr().err.strip().splitlines()] == ["case.delivered"]


@pytest.mark.parametrize(("text", "gone"), [
    ("ring +44 7700 900123 today", "7700 900123"),
    ("NI number AB123456C", "AB123456C"),
    ("IBAN GB29NWBK60161331926819", "GB29NWBK60161331926819"),
    ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
])
def test_redact_text_patterns(text: str, gone: str) -> None:
    assert gone not in redact_text(text)


@settings(max_examples=400, deadline=None)
@example("Basic abc=")
@example("bearer tok")
@example("a@b.co")
@given(st.text(alphabet=st.sampled_from("aAbBeErRsSiIcC GBQW@.-+:0123456789\n"), max_size=40))
def test_text_skipped_as_holding_no_pattern_is_what_every_pattern_leaves(text: str) -> None:
    by_every_pattern = text
    for pattern, replacement in _PATTERNS:
        by_every_pattern = pattern.sub(replacement, by_every_pattern)
    assert redact_text(text) == by_every_pattern


def test_references_survive_redaction() -> None:
    assert redact_text("WH-2026-000123 sent as SR00051688 at UPRN 100120123456") == (
        "WH-2026-000123 sent as SR00051688 at UPRN 100120123456")
    # a Celery task id whose first group happens to be all digits is not an account number
    task = "Task hubbridge.deliver_case[12345678-2c23-4e98-82e1-cce0e71bc04d] succeeded"
    assert redact_text(task) == task
    assert "12345678" not in redact_text("account 12345678-")


# -- real log output of a real pipeline run --------------------------------------------------------

PERSONAL = {
    "name": "Sarah Jane Smithers",
    "email": "sarah.smithers@example.org",
    "phone": "07700 900123",
    "postcode": "WR1 2AB",
    "ni": "QQ123456C",
    "sort_code": "12-34-56",
    "account": "12345678",
}


def test_a_pipeline_run_logs_no_personal_data(json_logs: pytest.CaptureFixture[str], tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hubbridge.connectors.hub import HubSimulator
    from hubbridge.errors import HubbridgeError
    from hubbridge.store import migrate
    from hubbridge.workflows.casegen import generate_cases
    from hubbridge.workflows.delivery import deliver_case
    from hubbridge.workflows.intake import accept_case
    from hubbridge.workflows.runtime import Outcome, Runtime
    from hubbridge.workflows.simulated import DEMO_SECRETS, simulator_for
    from tests.workflows.stack import use_config, write_config

    hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    bartec = simulator_for("bartec", 0).start()
    try:
        cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        migrate(url)
        use_config(monkeypatch, cfg, url)
        rt = Runtime()
        cases = [c for c in generate_cases(30, seed=21, start_serial=990_001)
                 if c["service"] == "refuse.missed-collection"][:2]
        for case in cases:
            case["customer"].update(name=PERSONAL["name"], email=PERSONAL["email"], phone=PERSONAL["phone"])
            case["customer"]["address"]["postcode"] = PERSONAL["postcode"]
            case["description"] = (f"Bin missed again. Ring {PERSONAL['phone']} or {PERSONAL['email']}; "
                                   f"NI {PERSONAL['ni']}, refund to {PERSONAL['sort_code']} {PERSONAL['account']}")
        good, refused = cases
        bad_uprn = sorted(bartec.unknown_uprns)[0]
        refused["location"]["uprn"] = bad_uprn
        refused["customer"]["address"]["uprn"] = bad_uprn
        for case in cases:
            accept_case(rt, json.dumps(case))
        bartec.faults.next("error500")
        assert deliver_case(rt, good["ref"]).kind == "retry"  # a failing delivery, logged
        assert deliver_case(rt, refused["ref"]).kind == "dead"
        # a Hub that sent personal data in the wrong fields: rejected, logged, kept
        with pytest.raises(HubbridgeError):
            accept_case(rt, json.dumps({**good, "ref": PERSONAL["email"], "channel": PERSONAL["phone"]}))
        with pytest.raises(HubbridgeError):
            accept_case(rt, json.dumps(good)[:-40])
        structlog.get_logger("test").info("case dump", case=good, update=Outcome("done", PERSONAL["email"]))
        rt.close()
    finally:
        hub.stop()
        bartec.stop()
    captured = json_logs.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    events = {r["event"] for r in records}
    assert {"case.accepted", "deliver.retry", "dead_lettered", "case dump"} <= events, events
    assert any(r.get("hub_ref") == good["ref"] for r in records), "the correlation id must survive"
    everything = captured.err + captured.out
    for kind, value in PERSONAL.items():
        assert value not in everything, f"{kind} leaked into the logs"
    assert "Sarah" not in everything and "Smithers" not in everything
