"""Follow-ups from the Hub: taken in once, delivered to the back-office job once each and in order, or kept."""
from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update

from hubbridge.case import FollowUpKind
from hubbridge.connectors.conformance import SAMPLE_JPEG
from hubbridge.errors import FollowUpValidationError
from hubbridge.store import (
    CaseRow,
    DeadLetterRow,
    FollowUpFileRow,
    FollowUpRow,
    HubUpdateRow,
    LinkRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows.deadletters import replay
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.followups import accept_followup, deliver_followups, followups_of
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.runtime import Runtime

from .conftest import Rig, accept, missed_bins, row
from .stack import use_config


def followup(ref: str, kind: str, **extra: Any) -> dict[str, Any]:
    body = {"ref": ref, "kind": kind, "occurred_at": utcnow().isoformat(), **extra}
    if kind == "note" and "note" not in extra:
        body["note"] = "Customer rang back: the bin is behind the side gate"
    return body


def photo(**extra: Any) -> dict[str, Any]:
    return {"filename": "bin.jpg", "content_type": "image/jpeg",
            "content": base64.b64encode(SAMPLE_JPEG).decode(), **extra}


def delivered_case(rig: Rig) -> tuple[str, str]:
    ref = accept(rig, missed_bins(1)[0])
    assert deliver_case(rig.rt, ref).kind == "done"
    with session_scope(rig.url) as s:
        backoffice_ref = s.scalar(select(LinkRow.backoffice_ref).where(LinkRow.hub_ref == ref))
    assert backoffice_ref
    return ref, backoffice_ref


def records(rig: Rig, backoffice_ref: str) -> list[dict[str, Any]]:
    """The follow-ups the back office itself holds for one job (its own records, not ours)."""
    with rig.backoffice.store._lock:
        job = next(j for j in rig.backoffice.store.jobs.values() if j.ref == backoffice_ref)
    return rig.backoffice.followups_for(backoffice_ref, job.tenant)


def states(rig: Rig, ref: str) -> list[tuple[int, str, str]]:
    with session_scope(rig.url) as s:
        return [(f["sequence"], f["kind"], f["state"]) for f in followups_of(s, ref)]


def supported(rig: Rig) -> frozenset[FollowUpKind]:
    """The kinds the rig's back office (Bartec) has an operation for."""
    name = next(r.connector.name for r in rig.rt.config.routes.values() if r.connector.plugin == "bartec")
    return rig.rt.connector(name).followup_kinds


# -- taking them in ---------------------------------------------------------------------------------------------


def test_a_followup_for_an_unknown_case_is_refused_and_kept(rig: Rig) -> None:
    with pytest.raises(FollowUpValidationError) as caught:
        accept_followup(rig.rt, json.dumps(followup("WH-2026-999990", "note")))
    assert caught.value.unknown_case and "WH-2026-999990" in str(caught.value)
    with session_scope(rig.url) as s:
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == "WH-2026-999990")).one()
    assert (dead.stage, dead.reason) == ("followup", "unknown_case")


def test_a_malformed_followup_names_its_fields(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    with pytest.raises(FollowUpValidationError) as caught:
        accept_followup(rig.rt, json.dumps(followup(ref, "priority")))  # no priority given
    assert "priority" in str(caught.value)
    with pytest.raises(FollowUpValidationError) as caught:
        accept_followup(rig.rt, json.dumps(followup(ref, "amendment", changes={"authority": "redditch"})))
    assert "changes.authority" in caught.value.fields
    with pytest.raises(FollowUpValidationError) as caught:
        accept_followup(rig.rt, json.dumps(followup("WH-2026-000002", "note")), ref=ref)
    assert "ref" in caught.value.fields


@pytest.mark.parametrize("problem, file, field", [
    ("type", photo(content_type="application/x-msdownload"), "content_type"),
    ("magic", photo(content=base64.b64encode(b"MZ\x90\x00 not a jpeg").decode()), "content"),
    ("size", photo(content=base64.b64encode(b"\xff\xd8\xff" + b"0" * 2048).decode()), "content"),
])
def test_evidence_limits_are_clear(rig: Rig, monkeypatch: pytest.MonkeyPatch, problem: str, file: dict,
                                   field: str) -> None:
    rig.rt.settings.evidence_max_bytes = 1024
    ref = accept(rig, missed_bins(1)[0])
    with pytest.raises(FollowUpValidationError) as caught:
        accept_followup(rig.rt, json.dumps(followup(ref, "evidence", attachments=[file])))
    assert f"attachments.0.{field}" in caught.value.fields
    assert SAMPLE_JPEG.hex() not in str(caught.value)
    with session_scope(rig.url) as s:
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref)).one()
    assert file.get("content", "")[:40] not in dead.payload  # the file's bytes are not kept in the dead letter


def test_the_same_hub_event_id_is_one_followup(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    body = followup(ref, "note", id="crm-evt-1")
    first = accept_followup(rig.rt, json.dumps(body))
    again = accept_followup(rig.rt, json.dumps(body))
    assert not first.duplicate and again.duplicate and again.sequence == first.sequence
    with pytest.raises(FollowUpValidationError) as caught:
        accept_followup(rig.rt, json.dumps({**body, "note": "something else"}))
    assert "id" in caught.value.fields


def test_a_reposted_case_with_changes_becomes_an_amendment_never_a_silent_drop(rig: Rig) -> None:
    case = missed_bins(1)[0]
    ref = accept(rig, case)
    assert accept_case(rig.rt, json.dumps(case)).amended == []  # the same content: a plain duplicate
    changed = {**case, "description": "Bin left out since Monday, now at the back gate", "priority": "high"}
    accepted = accept_case(rig.rt, json.dumps(changed))
    assert accepted.duplicate and len(accepted.amended) == 2
    assert [k for _, k, _ in states(rig, ref)] == ["amendment", "priority"]
    with session_scope(rig.url) as s:
        amendment = s.scalars(select(FollowUpRow).where(FollowUpRow.hub_ref == ref, FollowUpRow.sequence == 1)).one()
        assert amendment.payload["changes"] == {"description": changed["description"]}
        assert s.scalar(select(CaseRow.priority).where(CaseRow.hub_ref == ref)) == "high"
    # sent once more with the same changes: nothing new
    assert accept_case(rig.rt, json.dumps(changed)).amended == []


# -- what they do to the SLA clocks -----------------------------------------------------------------------------


def clocks(rig: Rig, ref: str) -> dict[str, Any]:
    with session_scope(rig.url) as s:
        return {c.clock: (c.state, c.due_at, c.priority) for c in rig.rt.sla.clocks_of(s, ref)}


def test_a_priority_change_recomputes_the_clocks(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    before = clocks(rig, ref)
    accept_followup(rig.rt, json.dumps(followup(ref, "priority", priority="high")))
    after = clocks(rig, ref)
    assert after["resolve"][2] == "high" and after["resolve"][1] < before["resolve"][1]
    assert row(rig, ref).priority == "high"


def test_a_cancellation_stops_the_clocks_and_the_hub_hears_it_once_delivered(rig: Rig) -> None:
    ref, backoffice_ref = delivered_case(rig)
    accept_followup(rig.rt, json.dumps(followup(ref, "cancel", note="sorted out with a neighbour")))
    assert {state for state, _, _ in clocks(rig, ref).values()} == {"stopped"}
    out = deliver_followups(rig.rt, ref)
    if FollowUpKind.CANCEL not in supported(rig):
        pytest.skip("this back office takes no cancellations")  # pragma: no cover - Bartec does
    assert out.kind == "done" and out.push == [ref]
    assert states(rig, ref) == [(1, "cancel", "delivered")]
    assert [r["kind"] for r in records(rig, backoffice_ref)] == ["cancel"]
    assert push_hub(rig.rt, ref).kind == "done"
    assert rig.hub.updates_for(ref)[-1]["status"] == "cancelled"


def test_evidence_on_a_case_awaiting_the_customer_resumes_its_clock(rig: Rig) -> None:
    ref, _ = delivered_case(rig)
    from hubbridge.case import HubStatus
    from hubbridge.workflows.outbox import set_status

    with session_scope(rig.url) as s:
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        set_status(rig.rt, s, case, HubStatus.AWAITING_CUSTOMER, utcnow() - timedelta(minutes=5))
    assert clocks(rig, ref)["resolve"][0] == "paused"
    accepted = accept_followup(rig.rt, json.dumps(followup(ref, "evidence", attachments=[photo()])))
    assert accepted.push
    assert clocks(rig, ref)["resolve"][0] == "running"
    assert row(rig, ref).status == "in_progress"


# -- delivering them --------------------------------------------------------------------------------------------


def test_followups_wait_for_their_case_then_go_in_order_once(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    for i in range(3):
        accept_followup(rig.rt, json.dumps(followup(ref, "note", note=f"Detail {i} from the customer")))
    out = deliver_followups(rig.rt, ref)
    assert out.kind == "skipped" and "waiting" in out.detail
    assert [s for *_, s in states(rig, ref)] == ["pending"] * 3
    assert deliver_case(rig.rt, ref).kind == "done"
    assert deliver_followups(rig.rt, ref).kind == "done"
    with session_scope(rig.url) as s:
        backoffice_ref = s.scalar(select(LinkRow.backoffice_ref).where(LinkRow.hub_ref == ref))
    texts = [r["text"] for r in records(rig, backoffice_ref) if r["kind"] == "note"]
    assert [next(i for i in range(3) if f"Detail {i}" in t) for t in texts] == [0, 1, 2]
    assert deliver_followups(rig.rt, ref).kind == "done"  # a redelivered message sends nothing again
    assert len([r for r in records(rig, backoffice_ref) if r["kind"] == "note"]) == 3


def test_a_lost_answer_never_makes_a_second_note(rig: Rig) -> None:
    ref, backoffice_ref = delivered_case(rig)
    accept_followup(rig.rt, json.dumps(followup(ref, "note")))
    rig.backoffice.faults.slow_seconds = 4.0  # beyond the 3 s read timeout: the note is made, the answer lost
    rig.backoffice.faults.next("slow", match="ServiceRequest_Note_Create")
    out = deliver_followups(rig.rt, ref)
    assert out.kind == "retry"
    rig.backoffice.faults.clear()
    with session_scope(rig.url) as s:
        s.execute(update(FollowUpRow).where(FollowUpRow.hub_ref == ref).values(next_attempt_at=utcnow()))
    assert deliver_followups(rig.rt, ref).kind == "done"
    assert len([r for r in records(rig, backoffice_ref) if r["kind"] == "note"]) == 1
    assert states(rig, ref) == [(1, "note", "delivered")]


def test_evidence_files_are_erased_once_delivered(rig: Rig) -> None:
    if FollowUpKind.EVIDENCE not in supported(rig):
        pytest.skip("this back office takes no documents")  # pragma: no cover - Bartec does
    ref, backoffice_ref = delivered_case(rig)
    accept_followup(rig.rt, json.dumps(followup(ref, "evidence", attachments=[photo()])))
    assert deliver_followups(rig.rt, ref).kind == "done"
    [record] = [r for r in records(rig, backoffice_ref) if r["kind"] == "evidence"]
    assert record["documents"]
    with session_scope(rig.url) as s:
        f = s.scalars(select(FollowUpFileRow)).all()[-1]
        assert f.erased_at is not None and f.sha256 and f.size == len(SAMPLE_JPEG)
        assert s.scalar(select(FollowUpFileRow.content).where(FollowUpFileRow.id == f.id)) is None


def _with_followups(rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict) -> Runtime:
    """The rig's config with every Bartec instance given these follow-up settings."""
    cfg = Path(rig.rt.config.config_dir)
    path = cfg / "connectors.yaml"
    data = yaml.safe_load(path.read_text())
    for inst in data["connectors"].values():
        if inst["plugin"] == "bartec":
            inst["followups"] = settings
    path.write_text(yaml.safe_dump(data))
    use_config(monkeypatch, cfg, rig.url)
    return Runtime()


def test_a_kind_with_no_operation_is_dead_lettered_with_the_setting_to_change(
        rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = sorted(set(FollowUpKind) - supported(rig) - {FollowUpKind.AMENDMENT})
    if not missing:
        pytest.skip("this back office has an operation for every kind")  # pragma: no cover
    kind = missing[0]
    rt = _with_followups(rig, tmp_path, monkeypatch, {})  # no fallback configured: the default, a dead letter
    try:
        ref, _ = delivered_case(Rig(rt, rig.hub, rig.backoffice))
        extra = {"priority": "high"} if kind == FollowUpKind.PRIORITY else {"note": "x y z"}
        accept_followup(rt, json.dumps(followup(ref, kind.value, **extra)))
        deliver_followups(rt, ref)
        with session_scope(rig.url) as s:
            dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref)).one()
        assert dead.reason == "no_followup_operation" and f"followups.otherwise.{kind.value}" in dead.detail
        assert states(rig, ref) == [(1, kind.value, "dead")]
    finally:
        rt.close()


def test_a_kind_with_no_operation_goes_as_a_note_when_the_config_says_so(
        rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = sorted(set(FollowUpKind) - supported(rig) - {FollowUpKind.AMENDMENT})
    if not missing or FollowUpKind.NOTE not in supported(rig):
        pytest.skip("nothing to fall back")  # pragma: no cover
    kind = missing[0]
    rt = _with_followups(rig, tmp_path, monkeypatch, {"otherwise": {kind.value: "note"}})
    try:
        ref, backoffice_ref = delivered_case(Rig(rt, rig.hub, rig.backoffice))
        extra = {"priority": "high"} if kind == FollowUpKind.PRIORITY else {"note": "Customer says it is back"}
        accept_followup(rt, json.dumps(followup(ref, kind.value, **extra)))
        assert deliver_followups(rt, ref).kind == "done"
        [note] = [r for r in records(rig, backoffice_ref) if r["kind"] == "note"]
        assert ("priority" in note["text"]) if kind == FollowUpKind.PRIORITY else ("back" in note["text"])
        with session_scope(rig.url) as s:
            assert s.scalar(select(FollowUpRow.via).where(FollowUpRow.hub_ref == ref)) == "note"
    finally:
        rt.close()


def test_a_refused_followup_is_dead_lettered_and_replays(rig: Rig) -> None:
    ref, backoffice_ref = delivered_case(rig)
    accept_followup(rig.rt, json.dumps(followup(ref, "note")))
    accept_followup(rig.rt, json.dumps(followup(ref, "note", note="A second, later note")))
    with session_scope(rig.url) as s:  # the job is gone from the back office's view: the note is refused
        s.execute(update(LinkRow).where(LinkRow.hub_ref == ref).values(backoffice_ref="99999999"))
    out = deliver_followups(rig.rt, ref)
    assert out.kind == "done"  # the first went dead, the second did too, neither holds the case up
    assert [s for *_, s in states(rig, ref)] == ["dead", "dead"]
    with session_scope(rig.url) as s:
        s.execute(update(LinkRow).where(LinkRow.hub_ref == ref).values(backoffice_ref=backoffice_ref))
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref).order_by(DeadLetterRow.id)).all()
    assert all(d.stage == "followup" and d.reason == "refused" for d in dead)
    for d in dead:
        assert "queued" in replay(rig.rt, d.id, by="test")
    assert deliver_followups(rig.rt, ref).kind == "done"
    assert [s for *_, s in states(rig, ref)] == ["delivered", "delivered"]
    assert len([r for r in records(rig, backoffice_ref) if r["kind"] == "note"]) == 2


def test_hub_updates_outbox_is_untouched_by_notes(rig: Rig) -> None:
    ref, _ = delivered_case(rig)
    accept_followup(rig.rt, json.dumps(followup(ref, "note")))
    deliver_followups(rig.rt, ref)
    with session_scope(rig.url) as s:
        statuses = s.scalars(select(HubUpdateRow.status).where(HubUpdateRow.hub_ref == ref)).all()
    assert statuses == ["delivered"]  # a note tells the back office; the Hub already knows what it said


def test_erasing_a_person_erases_what_their_followups_said_and_their_files(rig: Rig) -> None:
    from hubbridge.privacy import Subject, erase_subject

    ref = accept(rig, missed_bins(1)[0])  # not delivered yet: its follow-ups wait, files and all
    accept_followup(rig.rt, json.dumps(followup(ref, "note", note="Mrs Example's son will be in")))
    accept_followup(rig.rt, json.dumps(followup(ref, "evidence", attachments=[photo(filename="mrs-example.jpg")])))
    erase_subject(rig.url, Subject(ref=ref), reason="erasure request ticket 77", by="dpo")
    with session_scope(rig.url) as s:
        rows = s.scalars(select(FollowUpRow).where(FollowUpRow.hub_ref == ref).order_by(FollowUpRow.sequence)).all()
        files = s.scalars(select(FollowUpFileRow).where(FollowUpFileRow.followup_id.in_([r.id for r in rows]))).all()
        content = s.scalars(select(FollowUpFileRow.content).where(FollowUpFileRow.id.in_([f.id for f in files]))).all()
    assert [r.state for r in rows] == ["dead", "dead"]  # nothing erased is delivered afterwards
    assert all("note" not in r.payload and "attachments" not in r.payload and r.payload["erased"] for r in rows)
    assert [f.filename for f in files] == ["[erased]"] and content == [None]
