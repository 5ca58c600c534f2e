"""Dead letters: listed, replayed at most once (never a second back-office job), discarded with a note.

Every test runs on SQLite and on PostgreSQL, against the Bartec simulator over loopback.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from sqlalchemy import select, update

from hubbridge.errors import DeadLetterClosed, DeadLetterNotFound, DeadLetterReplayError, HubbridgeError
from hubbridge.store import CaseRow, DeadLetterRow, EventRow, HubUpdateRow, session_scope, utcnow
from hubbridge.workflows import deadletters
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.runtime import Runtime
from hubbridge.workflows.schedule import reconcile

from .conftest import Rig, rig_on

_serials = itertools.count(300_001, 1000)


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path: Path, sims: tuple[Any, Any],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    yield from rig_on(url, tmp_path, sims, monkeypatch)


def missed_bin(**changes: Any) -> dict[str, Any]:
    cases = generate_cases(12, seed=5, start_serial=next(_serials))
    case = next(c for c in cases if c["service"] == "refuse.missed-collection")
    case.update(changes)
    return case


def jobs(rig: Rig, ref: str) -> int:
    return rig.backoffice.store.count_by_hub_ref().get(ref, 0)


def case_row(rig: Rig, ref: str) -> CaseRow:
    with session_scope(rig.url) as s:
        found = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert found is not None
        return found


def dead_of(rig: Rig, ref: str) -> list[DeadLetterRow]:
    with session_scope(rig.url) as s:
        return list(s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref).order_by(DeadLetterRow.id)))


def events(rig: Rig, kind: str) -> list[EventRow]:
    with session_scope(rig.url) as s:
        return list(s.scalars(select(EventRow).where(EventRow.kind == kind).order_by(EventRow.id)))


def refused_case(rig: Rig) -> tuple[str, str]:
    """A case the back office refuses (UPRN not in its gazetteer): dead-lettered at deliver."""
    bad_uprn = sorted(rig.backoffice.unknown_uprns)[0]
    case = missed_bin()
    case["location"]["uprn"] = bad_uprn
    case["customer"]["address"]["uprn"] = bad_uprn
    ref = accept_case(rig.rt, json.dumps(case)).hub_ref
    assert deliver_case(rig.rt, ref).kind == "dead"
    return ref, bad_uprn


def test_fixed_back_office_refusal_replays_into_exactly_one_job(rig: Rig) -> None:
    ref, bad_uprn = refused_case(rig)
    [dl] = dead_of(rig, ref)
    assert (dl.stage, dl.reason) == ("deliver", "refused") and jobs(rig, ref) == 0
    with session_scope(rig.url) as s:
        assert [d.id for d in deadletters.list_dead(s, reason="refused")] == [dl.id]
        assert deadletters.counts_by_reason(s)["refused"] == 1
    rig.backoffice.unknown_uprns.discard(bad_uprn)  # the gazetteer was fixed
    try:
        message = deadletters.replay(rig.rt, dl.id, by="alice")
        assert ref in message and "queued for delivery" in message
        row = case_row(rig, ref)
        assert row.stage == "received" and row.unknown_outcome and row.next_attempt_at <= utcnow()
        assert ref in reconcile(rig.rt).deliver
        assert deliver_case(rig.rt, ref).kind == "done"
        # replaying again, or reconcile handing the case out again, makes no second job
        again = deadletters.replay(rig.rt, dl.id, by="bob")
        assert "already replayed" in again
        assert deliver_case(rig.rt, ref).kind == "skipped"
    finally:
        rig.backoffice.unknown_uprns.add(bad_uprn)
    assert jobs(rig, ref) == 1
    with session_scope(rig.url) as s:
        closed = deadletters.get_dead(s, dl.id)
        assert closed.replayed_at is not None and closed.replay_count == 1
        assert deadletters.list_dead(s, reason="refused") == []
        assert [d.id for d in deadletters.list_dead(s, reason="refused", include_closed=True)] == [dl.id]
    [audit] = events(rig, "dead_letter.replayed")
    assert audit.hub_ref == ref and audit.detail["by"] == "alice" and audit.detail["dead_letter_id"] == dl.id


def test_replay_of_a_case_that_reached_its_back_office_makes_no_second_job(rig: Rig) -> None:
    ref = accept_case(rig.rt, json.dumps(missed_bin())).hub_ref
    limit = rig.rt.config.connectors[case_row(rig, ref).connector].retry.max_attempts
    # The first create lands but its answer is lost; every later call fails until the retries run out.
    rig.backoffice.faults.slow_seconds = 4.0
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")
    rig.backoffice.faults.next("error500", limit + 2)
    kinds = []
    for _ in range(limit):
        kinds.append(deliver_case(rig.rt, ref).kind)
        with session_scope(rig.url) as s:
            s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(claimed_until=None))
    rig.backoffice.faults.clear()
    assert kinds[-1] == "dead" and jobs(rig, ref) == 1
    [dl] = dead_of(rig, ref)
    assert dl.reason == "retries_exhausted"
    deadletters.replay(rig.rt, dl.id, by="ops")
    assert deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1, "replay must look the case up, not create it again"
    # a second dead letter for the same, now delivered, case replays as a no-op
    with session_scope(rig.url) as s:
        extra = dead_letter(s, stage="deliver", reason="refused", detail="late copy", payload="{}",
                                     hub_ref=ref)
        s.flush()
        extra_id = extra.id
    assert "already reached its back office" in deadletters.replay(rig.rt, extra_id, by="ops")
    assert jobs(rig, ref) == 1


def test_concurrent_replays_of_one_dead_letter_make_one_job(rig: Rig) -> None:
    ref, bad_uprn = refused_case(rig)
    [dl] = dead_of(rig, ref)
    rig.backoffice.unknown_uprns.discard(bad_uprn)
    messages: list[str] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            messages.append(deadletters.replay(rig.rt, dl.id, by="ops"))
            deliver_case(rig.rt, ref)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        rig.backoffice.unknown_uprns.add(bad_uprn)
    assert not errors, errors
    assert sum("queued for delivery again" in m for m in messages) == 1, messages
    assert jobs(rig, ref) == 1
    assert len(events(rig, "dead_letter.replayed")) == 1


def test_unroutable_intake_replays_once_the_config_routes_it(rig: Rig, tmp_path: Path) -> None:
    # A config without the Wyre Forest route stands for the admin's mistake; rig.rt is the fixed config.
    yaml = YAML()
    routes_file = tmp_path / "config" / "routes.yaml"
    good = routes_file.read_text()
    routes = yaml.load(good)
    routes["routes"] = [r for r in routes["routes"] if "wyre-forest" not in r["authorities"]]
    with routes_file.open("w") as fh:
        yaml.dump(routes, fh)
    broken = Runtime()
    routes_file.write_text(good)
    case = missed_bin(authority="wyre-forest")
    try:
        with pytest.raises(HubbridgeError):
            accept_case(broken, json.dumps(case))
        [dl] = dead_of(rig, case["ref"])
        assert (dl.stage, dl.reason) == ("intake", "unroutable")
        with pytest.raises(DeadLetterReplayError, match="still not a valid, routable Hub case"):
            deadletters.replay(broken, dl.id, by="ops")
    finally:
        broken.close()
    assert len(dead_of(rig, case["ref"])) == 1, "a failed replay must not add a dead letter"
    message = deadletters.replay(rig.rt, dl.id, by="ops")
    assert case["ref"] in message and "taken in" in message
    row = case_row(rig, case["ref"])
    assert row.connector == "refuse-wyre-forest" and row.next_attempt_at <= utcnow()
    assert "already replayed" in deadletters.replay(rig.rt, dl.id, by="ops")
    assert deliver_case(rig.rt, case["ref"]).kind == "done"
    assert jobs(rig, case["ref"]) == 1
    with session_scope(rig.url) as s:
        assert deadletters.get_dead(s, dl.id).replay_count == 2  # the failed try and the good one
    assert len(events(rig, "dead_letter.replay_failed")) == 1


def test_invalid_json_stays_open_after_a_failed_replay(rig: Rig) -> None:
    with pytest.raises(HubbridgeError):
        accept_case(rig.rt, b'{"ref": "WH-2026-9', channel="api")
    with session_scope(rig.url) as s:
        [dl] = deadletters.list_dead(s, reason="invalid_json")
    with pytest.raises(DeadLetterReplayError, match="not valid JSON"):
        deadletters.replay(rig.rt, dl.id, by="ops")
    with session_scope(rig.url) as s:
        again = deadletters.get_dead(s, dl.id)
        assert deadletters.state_of(again) == "open" and again.replay_count == 1
        assert len(deadletters.list_dead(s, reason="invalid_json")) == 1


def test_discard_needs_a_note_is_audited_and_closes_it(rig: Rig) -> None:
    ref, _ = refused_case(rig)
    [dl] = dead_of(rig, ref)
    with pytest.raises(HubbridgeError, match="needs a note"):
        deadletters.discard(rig.rt, dl.id, by="ops", note="  ")
    deadletters.discard(rig.rt, dl.id, by="carol", note="customer withdrew by phone")
    deadletters.discard(rig.rt, dl.id, by="carol", note="twice")  # no-op
    with pytest.raises(DeadLetterClosed, match="discarded"):
        deadletters.replay(rig.rt, dl.id, by="ops")
    [audit] = events(rig, "dead_letter.discarded")
    assert audit.detail == {"dead_letter_id": dl.id, "by": "carol", "note": "customer withdrew by phone"}
    with session_scope(rig.url) as s:
        assert deadletters.state_of(deadletters.get_dead(s, dl.id)) == "discarded"
        assert deadletters.counts_by_reason(s).get("refused", 0) == 0
    assert jobs(rig, ref) == 0


def test_get_dead_names_the_missing_id(rig: Rig) -> None:
    with session_scope(rig.url) as s, pytest.raises(DeadLetterNotFound, match="no dead letter with id 999999"):
        deadletters.get_dead(s, 999999)


def test_filters_select_by_service_authority_reason_and_age(rig: Rig) -> None:
    with session_scope(rig.url) as s:
        for i, (service, authority, reason) in enumerate([
            ("refuse.missed-collection", "redditch", "refused"),
            ("refuse.missed-collection", "wychavon", "refused"),
            ("highways.pothole", "worcestershire", "unroutable"),
        ]):
            row = dead_letter(s, stage="intake", reason=reason, detail=f"#{i}", payload="{}",
                                       service=service, authority=authority)
            s.flush()
            if i == 0:
                row.created_at = utcnow() - timedelta(days=3)
    with session_scope(rig.url) as s:
        assert len(deadletters.list_dead(s)) == 3
        assert {d.authority for d in deadletters.list_dead(s, service="refuse.missed-collection")} == {
            "redditch", "wychavon"}
        assert [d.detail for d in deadletters.list_dead(s, authority="worcestershire")] == ["#2"]
        assert [d.detail for d in deadletters.list_dead(s, older_than=timedelta(days=2))] == ["#0"]
        assert [d.detail for d in deadletters.list_dead(s, reason="refused", authority="wychavon")] == ["#1"]
        assert len(deadletters.list_dead(s, limit=2)) == 2
        assert deadletters.counts_by_reason(s) == {"refused": 2, "unroutable": 1}


def test_refused_hub_update_is_pushed_again_on_replay(rig: Rig) -> None:
    ref = accept_case(rig.rt, json.dumps(missed_bin())).hub_ref
    assert deliver_case(rig.rt, ref).kind == "done"
    with session_scope(rig.url) as s:
        upd = s.scalar(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref))
        assert upd is not None
        # what push_hub leaves after the Hub refused the update (a 4xx)
        upd.pushed_at = utcnow()
        upd.last_error = "dead-lettered: Hub refused"
        dead_letter(s, stage="push", reason="hub_refused", detail="HTTP 400", payload=upd.payload,
                             hub_ref=ref)
    [dl] = dead_of(rig, ref)
    assert "queued for the Hub again" in deadletters.replay(rig.rt, dl.id, by="ops")
    assert ref in reconcile(rig.rt).push
    assert push_hub(rig.rt, ref).kind == "done"
    assert case_row(rig, ref).stage == "acknowledged"
    assert rig.hub.backoffice_ref(ref)
    assert "already replayed" in deadletters.replay(rig.rt, dl.id, by="ops")


def test_parse_age() -> None:
    assert deadletters.parse_age("2h") == timedelta(hours=2)
    assert deadletters.parse_age("3d") == timedelta(days=3)
    assert deadletters.parse_age("90s") == timedelta(seconds=90)
    for bad in ("", "h", "2x", "-2h", "2.5h"):
        with pytest.raises(ValueError, match="is not an age"):
            deadletters.parse_age(bad)
