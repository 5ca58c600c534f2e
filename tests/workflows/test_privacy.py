"""Subject access and erasure end to end, on SQLite and PostgreSQL: after an erasure no personal value of the
person is left in any column of any table, nor in the log lines written after it; retention erases closed cases."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select, update

import hubbridge.sla.tables  # noqa: F401  (every table of the store is scanned)
from hubbridge.errors import UsageError
from hubbridge.log import configure_logging
from hubbridge.privacy import (
    ERASED,
    ErasedRow,
    PrivacyActionRow,
    Subject,
    apply_retention,
    erase_subject,
    export_subject,
    load_privacy,
    retention_status,
)
from hubbridge.store import (
    Base,
    CaseRow,
    ConnectorHealthRow,
    DeadLetterRow,
    EventRow,
    HubUpdateRow,
    LinkRow,
    RaisedCaseRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.outbox import push_hub

from .conftest import Rig, missed_bins, rig_on

PERSON = {
    "name": "Zoë Fairbairn-Okoro",
    "phone": "07700 900461",
    "email": "zoe.fairbairn@example.org",
    "address": {"line1": "14 Quince Lane", "town": "Redditch", "postcode": "B97 6QZ", "uprn": "100120998877"},
}
REFUSED = "WH-2026-999001"
DESCRIPTION = "Bins not emptied again, gate code 4471, dog in the garden"
PERSONAL = ["Zoë Fairbairn-Okoro", "Fairbairn-Okoro", "zoe.fairbairn@example.org", "07700 900461", "07700900461",
            "14 Quince Lane", "Quince Lane", "B97 6QZ", "100120998877", DESCRIPTION]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_rig(request: pytest.FixtureRequest, tmp_path: Path, sims: tuple[Any, Any],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    yield from rig_on(url, tmp_path, sims, monkeypatch)


def _persons_case(case: dict[str, Any]) -> dict[str, Any]:
    return {**case, "customer": PERSON, "description": DESCRIPTION,
            "location": {"uprn": "100120998877", "description": "14 Quince Lane, Redditch"}}


def _everything_held(url: str) -> str:
    """Every value of every row of every table, as one lower-cased text (JSON both escaped and not)."""
    parts: list[str] = []
    with session_scope(url) as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).mappings():
                for value in row.values():
                    if isinstance(value, dict | list):
                        parts += [json.dumps(value, ensure_ascii=False), json.dumps(value)]
                    elif value is not None:
                        parts.append(str(value))
    return "\n".join(parts).casefold()


def _populate(rig: Rig) -> tuple[list[str], dict[str, Any]]:
    """Two cases of the person (one delivered, one waiting), another person's case, and the person's values in a
    refused intake, a dead letter, a raised job and a connector's last error."""
    first, second, other = missed_bins(3, seed=25)
    mine = [_persons_case({**first, "authority": "redditch"}), _persons_case({**second, "authority": "redditch"})]
    refs = [accept_case(rig.rt, json.dumps(c)).hub_ref for c in mine]
    accept_case(rig.rt, json.dumps(other))
    assert deliver_case(rig.rt, refs[0]).kind == "done"
    push_hub(rig.rt, refs[0])
    refused = {**mine[1], "ref": REFUSED, "channel": "pigeon"}
    with pytest.raises(Exception, match="channel"):
        accept_case(rig.rt, json.dumps(refused))
    with session_scope(rig.url) as s:
        dead_letter(s, stage="translate", reason="MappingError", hub_ref=refs[1], payload=mine[1],
                    detail=f"customer.name: {PERSON['name']!r} at 14 Quince Lane is not allowed here")
        s.add(RaisedCaseRow(connector="bartec-redditch", backoffice_ref="JOB-77", state="raised", hub_ref=refs[0],
                            updates=[{"update_id": "u1", "note": "Called Zoë Fairbairn-Okoro back",
                                      "raw": {"caller": PERSON["name"], "tel": PERSON["phone"]}}]))
        s.merge(ConnectorHealthRow(connector="bartec-redditch",
                                   last_error="job refused: contact zoe.fairbairn@example.org"))
    return refs, other


def test_export_then_erase_leaves_no_personal_value_in_any_table_or_later_log(
    store_rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = store_rig
    refs, other = _populate(rig)
    held = _everything_held(rig.url)
    assert [v for v in PERSONAL if v.casefold() not in held] == ["07700900461"]  # the scan below would see them

    export = export_subject(rig.url, Subject(email="ZOE.Fairbairn@example.org"), by="dpo")
    # the refused intake is the person's case too, though it never became a case row
    expected = sorted([*refs, REFUSED])
    assert export["cases"] == expected
    tables = export["tables"]
    assert {r["hub_ref"] for r in tables["cases"]} == set(refs)
    assert other["ref"] not in json.dumps(export)
    assert {"events", "links", "hub_updates", "dead_letters", "raised_cases", "connector_health",
            "sla_clocks"} <= set(tables)
    assert any(r["hub_ref"] == REFUSED for r in tables["dead_letters"])
    by_name = export_subject(rig.url, Subject(name="zoë  fairbairn-okoro", postcode="b976qz"), by="dpo")
    by_phone = export_subject(rig.url, Subject(phone="+44 7700 900461"), by="dpo")
    assert by_name["cases"] == by_phone["cases"] == expected

    configure_logging("json", "DEBUG")
    try:
        capsys.readouterr()
        done = erase_subject(rig.url, Subject(phone="07700900461"), reason="erasure request ticket 4411", by="dpo")
        # what runs on these cases after the erasure
        assert deliver_case(rig.rt, refs[1]).kind == "skipped"
        push_hub(rig.rt, refs[0])
        export_subject(rig.url, Subject(ref=refs[0]), by="dpo")
        logged = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()

    assert sorted(done.cases) == expected and done.action_id
    assert "privacy.erased" in logged
    held = _everything_held(rig.url)
    for value in PERSONAL:
        assert value.casefold() not in held, value
        assert value.casefold() not in logged.casefold(), value
    with session_scope(rig.url) as s:
        kept = s.scalar(select(CaseRow).where(CaseRow.hub_ref == other["ref"]))
        assert kept is not None  # another person's case is untouched
        assert (kept.payload["customer"], kept.payload["description"]) == (other["customer"], other["description"])
        erased = s.scalar(select(CaseRow).where(CaseRow.hub_ref == refs[0]))
        assert erased is not None and erased.payload["customer"] == {"name": ERASED}
        assert erased.payload["service"] == "refuse.missed-collection" and erased.status != "received"
        waiting = s.scalar(select(CaseRow).where(CaseRow.hub_ref == refs[1]))
        assert waiting is not None and waiting.stage == "dead"
        # the audit trail stays: what happened to the cases, and who erased them, when and why
        kinds = set(s.scalars(select(EventRow.kind).where(EventRow.hub_ref == refs[0])))
        assert {"received", "routed", "delivered", "privacy.erased"} <= kinds
        assert s.scalar(select(LinkRow.backoffice_ref).where(LinkRow.hub_ref == refs[0]))
        assert len(s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == refs[0])).all()) >= 1
        action = s.scalar(select(PrivacyActionRow).where(PrivacyActionRow.id == done.action_id))
        assert action is not None and (action.action, action.by, action.reason) == (
            "erase", "dpo", "erasure request ticket 4411")
        assert sorted(action.hub_refs) == expected and action.at <= utcnow()
        dead = s.scalars(select(DeadLetterRow)).all()
        assert dead and all(d.payload == ERASED and (d.discarded_at or d.replayed_at) for d in dead)
        assert {e.key for e in s.scalars(select(ErasedRow).where(ErasedRow.kind == "case"))} == set(expected)
    again = export_subject(rig.url, Subject(email=PERSON["email"]), by="dpo")
    assert again["cases"] == [] and again["tables"] == {}


def test_retention_erases_a_case_closed_longer_ago_than_its_service_keeps_it(store_rig: Rig) -> None:
    rig = store_rig
    old, recent, open_case = missed_bins(3, seed=26)
    cases = [_persons_case(old), recent, open_case]
    refs = [accept_case(rig.rt, json.dumps(c)).hub_ref for c in cases]
    policy = load_privacy(rig.rt.config.config_dir)
    days = policy.services["refuse.missed-collection"].days_after_closure
    now = utcnow()
    with session_scope(rig.url) as s:
        for ref, closed_ago in ((refs[0], days + 1), (refs[1], days - 1)):
            s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(
                status="closed", stage="acknowledged", status_at=now - timedelta(days=closed_ago)))
        dead_letter(s, stage="translate", reason="MappingError", hub_ref=refs[0], payload=cases[0],
                    detail=f"bad name {PERSON['name']}")
    assert retention_status(rig.url, policy).due_cases == 1

    done = apply_retention(rig.url, policy, now=now)
    assert done.cases == [refs[0]]
    again = apply_retention(rig.url, policy, now=now)
    assert again.cases == [] and again.action_id is None  # nothing twice, no empty audit rows
    held = _everything_held(rig.url)
    for value in PERSONAL:
        assert value.casefold() not in held, value
    with session_scope(rig.url) as s:
        payloads = {r.hub_ref: r.payload for r in s.scalars(select(CaseRow))}
    for ref, case in ((refs[1], recent), (refs[2], open_case)):  # within retention, or still open: kept
        assert (payloads[ref]["customer"], payloads[ref]["description"]) == (case["customer"], case["description"])
    status = retention_status(rig.url, policy)
    assert status.due_cases == 0 and status.erased["case"] == 1
    assert status.last_runs[0]["action"] == "retention" and status.periods["refuse.missed-collection"] == days


def test_a_request_names_one_kind_of_identifier() -> None:
    with pytest.raises(UsageError):
        Subject()
    with pytest.raises(UsageError):
        Subject(name="Zoë Fairbairn-Okoro")
    with pytest.raises(UsageError):
        Subject(email="a@example.org", ref="WH-2026-000001")
    assert Subject(name="A Person", postcode="B97 6QZ").kind == "name+postcode"
    with pytest.raises(UsageError, match="phone"):
        Subject(phone="12")


def test_the_cli_exports_as_json_and_erases_with_a_reason(rig: Rig, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hubbridge.workflows.cli import app

    case = _persons_case(missed_bins(1, seed=27)[0])
    ref = accept_case(rig.rt, json.dumps(case)).hub_ref
    runner = CliRunner()
    out = tmp_path / "export.json"
    done = runner.invoke(app, ["privacy", "export", "--name", PERSON["name"], "--postcode", "B976QZ",
                               "--out", str(out), "--by", "dpo"])
    assert done.exit_code == 0, done.output
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert exported["cases"] == [ref] and exported["tables"]["cases"][0]["payload"]["customer"] == PERSON
    refused = runner.invoke(app, ["privacy", "erase", "--ref", ref, "--yes", "--reason", " "])
    assert refused.exit_code == 2 and "reason" in refused.output
    erased = runner.invoke(app, ["privacy", "erase", "--ref", ref, "--yes", "--by", "dpo",
                                 "--reason", "request of 2026-12-01"])
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.output.strip().splitlines()[-1])["cases"] == [ref]
    assert PERSON["email"] not in _everything_held(rig.url)
    both = runner.invoke(app, ["privacy", "export", "--email", PERSON["email"], "--ref", ref])
    assert both.exit_code == 2


def test_a_retention_period_for_an_unknown_service_is_a_config_error(tmp_path: Path) -> None:
    from hubbridge.config.loader import load_config
    from hubbridge.errors import ConfigErrors

    (tmp_path / "privacy.yaml").write_text("default: {days_after_closure: 30}\n"
                                           "services:\n  refuse.missed-colection: {days_after_closure: 10}\n")
    with pytest.raises(ConfigErrors, match=r"refuse\.missed-colection is not a service") as caught:
        load_privacy(tmp_path, load_config().services)
    assert "privacy.yaml:3" in str(caught.value)
    assert load_privacy(None, load_config().services).default.days_after_closure == 365


def test_beat_runs_retention_through_its_task(rig: Rig) -> None:
    from hubbridge.workflows.app import make_app
    from hubbridge.workflows.runtime import reset_runtime
    from hubbridge.workflows.tasks import privacy_retention

    assert make_app(rig.rt.settings).conf.beat_schedule["privacy-retention"]["task"] == privacy_retention.name
    case = _persons_case(missed_bins(1, seed=28)[0])
    ref = accept_case(rig.rt, json.dumps(case)).hub_ref
    with session_scope(rig.url) as s:
        s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(
            status="cancelled", stage="acknowledged", status_at=utcnow() - timedelta(days=4000)))
    reset_runtime(rig.rt)
    try:
        assert privacy_retention.run() == {"cases": 1, "rows": {"cases": 1}}
    finally:
        reset_runtime()
    assert PERSON["email"] not in _everything_held(rig.url)
