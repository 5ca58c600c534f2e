"""Follow-ups on planning enquiries (notes, amendments, evidence, withdrawal) against the REST simulator."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from structlog.testing import capture_logs

from hubbridge.case import FollowUpKind
from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery, Document, FollowUp
from hubbridge.connectors.planning import PlanningConnector, PlanningSimulator
from hubbridge.connectors.planning.connector import followup_mark
from hubbridge.connectors.planning.simulator import DEFAULT_TOKEN
from hubbridge.errors import BadResponseError, NotSupported, PermanentError, UnknownOutcomeError

TENANT = "bromsgrove"
TOKEN_ENV = "PLANNING_BROMSGROVE_TOKEN"
PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
SUPPORTED = (FollowUpKind.NOTE, FollowUpKind.AMENDMENT, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL)


@pytest.fixture
def sim() -> Iterator[PlanningSimulator]:
    with PlanningSimulator() as s:
        assert isinstance(s, PlanningSimulator)
        s.faults.slow_seconds = 1.0
        yield s


def make(sim: PlanningSimulator, read: float = 5.0) -> PlanningConnector:
    inst = ConnectorInstance(name=f"planning-{TENANT}", plugin="planning", endpoint=sim.tenant_url(TENANT),
                             credentials={"token": TOKEN_ENV}, timeouts=Timeouts(connect=2, read=read))
    return PlanningConnector(inst, env={TOKEN_ENV: DEFAULT_TOKEN})


@pytest.fixture
def conn(sim: PlanningSimulator) -> Iterator[PlanningConnector]:
    c = make(sim)
    yield c
    c.close()


def raise_enquiry(conn: PlanningConnector, i: int = 1) -> tuple[str, str]:
    payload = {"enquiry_type": "BREACH_REPORT", "description": "Extension being built without permission",
               "customer": {"name": "A Resident"}, "breach_type": "UNAUTHORISED_WORKS",
               "site": {"address_text": "12 High Street, Bromsgrove"}}
    hub_ref = f"WH-2026-{i:06d}"
    ref = conn.create(Delivery(hub_ref=hub_ref, authority=TENANT, service="planning.breach",
                               payload=payload)).backoffice_ref
    return ref, hub_ref


def followup(kind: FollowUpKind, ref: str, hub_ref: str, seq: int = 1, *, text: str | None = None,
             documents: tuple[Document, ...] | None = None, known_new: bool = True, **fields: Any) -> FollowUp:
    if documents is None:
        documents = (Document("rear-wall.jpg", "image/jpeg", PHOTO),) if kind == FollowUpKind.EVIDENCE else ()
    return FollowUp(hub_ref=hub_ref, backoffice_ref=ref, key=f"{hub_ref}/{seq}", kind=kind,
                    text=text or f"Customer says: {kind.value} number {seq}", occurred_at=datetime.now(UTC),
                    documents=documents, fields=fields, known_new=known_new)


def records(sim: PlanningSimulator, ref: str, kind: FollowUpKind | None = None) -> list[dict[str, Any]]:
    return [r for r in sim.followups_for(ref, TENANT) if kind is None or r["kind"] == kind.value]


def posts(sim: PlanningSimulator) -> int:
    return sum(1 for m, _t, _p in sim.requests if m == "POST")


# -- each kind lands once ----------------------------------------------------------------------------------
def test_notes_and_amendments_are_categorised_notes(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, text="Works continue at weekends"))
    conn.follow_up(followup(FollowUpKind.AMENDMENT, ref, hub_ref, 2, text="It is number 14, not 12"))
    assert [(r["kind"], r["text"]) for r in records(sim, ref)] == [
        ("note", f"{followup_mark(hub_ref + '/1')} Works continue at weekends"),
        ("amendment", f"{followup_mark(hub_ref + '/2')} It is number 14, not 12"),
    ]
    notes = sim.store.notes[sim.job(TENANT, ref).id]
    assert [(n["category"], n["author"]) for n in notes] == [("GENERAL", "hubbridge"), ("AMENDMENT", "hubbridge")]
    assert [c.status_code for c in conn.updates_since(None).updates] == ["RECEIVED"]  # our notes are not echoed


def test_evidence_is_stored_as_files_or_links(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    docs = (Document("rear-wall.jpg", "image/jpeg", PHOTO, url="https://hub.example.gov.uk/e/1.jpg"),
            Document("plan.pdf", "application/pdf", url="https://hub.example.gov.uk/e/2.pdf"))
    result = conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, documents=docs, text="Photos of the wall"))
    stored = sim.store.documents[sim.job(TENANT, ref).id]
    # the file itself when the Hub sent it, the link otherwise
    assert stored[0]["sha256"] == hashlib.sha256(PHOTO).hexdigest() and "url" not in stored[0]
    assert stored[1]["url"] == "https://hub.example.gov.uk/e/2.pdf" and "sha256" not in stored[1]
    assert result.backoffice_id == ",".join(d["document_id"] for d in stored)
    [record] = records(sim, ref)
    assert record["kind"] == "evidence" and record["documents"] == ["rear-wall.jpg", "plan.pdf"]
    assert record["text"] == f"{followup_mark(hub_ref + '/1')} Photos of the wall"


def test_cancel_withdraws_once(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    assert conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref)).raw["status"] == "WITHDRAWN"
    conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref, 2))  # already withdrawn: nothing changes
    assert sim.job(TENANT, ref).status == "WITHDRAWN"
    assert [r["kind"] for r in records(sim, ref)] == ["cancel"]


def test_followups_keep_their_order(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    for seq in range(1, 6):
        conn.follow_up(followup(FollowUpKind.NOTE if seq % 2 else FollowUpKind.AMENDMENT, ref, hub_ref, seq))
    assert [r["text"].split("]")[0] for r in records(sim, ref)] == [f"[Hub {hub_ref}/{n}" for n in range(1, 6)]


# -- lost answers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", SUPPORTED)
def test_lost_answer_is_found_and_not_sent_again(sim: PlanningSimulator, conn: PlanningConnector,
                                                 kind: FollowUpKind) -> None:
    ref, hub_ref = raise_enquiry(conn)
    slow = make(sim, read=0.5)
    slow.find("WH-2026-999998")  # connection out of the way, so the fault lands on the follow-up
    sent = followup(kind, ref, hub_ref, 3)
    sim.faults.next("slow")
    with pytest.raises(UnknownOutcomeError):
        slow.follow_up(sent)
    sim.faults.clear()
    assert len(records(sim, ref, kind)) == 1  # done; only the answer was lost
    again = replace(sent, known_new=False)
    found = conn.find_follow_up(again)
    assert found is not None
    before = posts(sim)
    assert conn.follow_up(again) == found
    assert posts(sim) == before  # a GET found it: nothing sent again
    assert len(records(sim, ref, kind)) == 1
    slow.close()


@pytest.mark.parametrize("fault", ["garbage", "truncated", "wrong_type"])
def test_bad_answer_after_the_work_then_found(sim: PlanningSimulator, conn: PlanningConnector, fault: str) -> None:
    ref, hub_ref = raise_enquiry(conn)
    sent = followup(FollowUpKind.EVIDENCE, ref, hub_ref, 4)
    sim.faults.next(fault, match="/documents")
    with pytest.raises(BadResponseError):
        conn.follow_up(sent)
    assert conn.find_follow_up(replace(sent, known_new=False)) is not None
    assert len(records(sim, ref, FollowUpKind.EVIDENCE)) == 1


def test_follow_ups_do_not_lean_on_an_idempotency_key(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    """Sent twice without a look-up, a note lands twice: only the read-back keeps a follow-up to one."""
    ref, hub_ref = raise_enquiry(conn)
    for _ in range(2):
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1))
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2))
    assert [r["kind"] for r in records(sim, ref)] == ["note", "evidence", "note", "evidence"]


def test_not_sent_is_not_found_and_keys_do_not_collide(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    for kind in SUPPORTED:
        assert conn.find_follow_up(followup(kind, ref, hub_ref, 1, known_new=False)) is None
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 10))
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 10))
    assert conn.find_follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, known_new=False)) is None
    assert conn.find_follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 1, known_new=False)) is None
    assert conn.find_follow_up(followup(FollowUpKind.NOTE, "PL99999999", hub_ref, 1, known_new=False)) is None


def test_withdrawn_in_the_back_office_counts_as_found(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    sim.set_status(TENANT, ref, "WITHDRAWN", "customer phoned the planning team")
    cancel = followup(FollowUpKind.CANCEL, ref, hub_ref, known_new=False)
    assert conn.find_follow_up(cancel) is not None
    before = posts(sim)
    conn.follow_up(cancel)
    assert posts(sim) == before and records(sim, ref) == []


# -- refusals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [FollowUpKind.PRIORITY, FollowUpKind.REOPEN])
def test_kinds_without_an_operation_are_not_supported(sim: PlanningSimulator, conn: PlanningConnector,
                                                      kind: FollowUpKind) -> None:
    ref, hub_ref = raise_enquiry(conn)
    before = len(sim.requests)
    with pytest.raises(NotSupported):
        conn.follow_up(followup(kind, ref, hub_ref))
    with pytest.raises(NotSupported):
        conn.find_follow_up(followup(kind, ref, hub_ref, known_new=False))
    assert len(sim.requests) == before and records(sim, ref) == []


def test_back_office_refusals_are_permanent(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    with pytest.raises(PermanentError, match="404"):
        conn.follow_up(followup(FollowUpKind.NOTE, "PL99999999", "WH-2026-000099"))
    ref, hub_ref = raise_enquiry(conn, 2)
    sim.set_status(TENANT, ref, "CLOSED_NO_BREACH")
    with pytest.raises(PermanentError, match="cannot be withdrawn"):
        conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref))
    # what the server itself refuses, past the connector's own checks: an over-long note, a bad file
    url = f"{sim.tenant_url(TENANT)}api/v1/enquiries/{ref}/"
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "Content-Type": "application/json"}
    long_note = requests.post(url + "notes", data=json.dumps({"text": "x" * 4001}), headers=headers, timeout=5)
    bad_file = requests.post(url + "documents", headers=headers, timeout=5, data=json.dumps({"documents": [
        {"filename": "a.exe", "content_type": "application/x-msdownload",
         "content_base64": base64.b64encode(b"MZ").decode()}]}))
    assert (long_note.status_code, bad_file.status_code) == (422, 422)
    assert records(sim, ref) == []


def test_long_notes_are_cut_and_still_found(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    sent = followup(FollowUpKind.NOTE, ref, hub_ref, text="y" * 9000)
    conn.follow_up(sent)
    [note] = sim.store.notes[sim.job(TENANT, ref).id]
    assert len(note["text"]) == 4000 and note["text"].startswith(followup_mark(sent.key))
    assert conn.find_follow_up(replace(sent, known_new=False)) is not None


@pytest.mark.parametrize(("documents", "match"), [
    ((Document("run.exe", "application/x-msdownload", b"MZ"),), "not taken"),
    ((Document("big.pdf", "application/pdf", b"%" * (2 * 1024 * 1024 + 1)),), "bytes"),
    ((Document("nothing.pdf", "application/pdf"),), "exactly one"),
    (tuple(Document(f"p{i}.jpg", "image/jpeg", b"\xff" * (1024 * 1024)) for i in range(5)), "at most"),
    (tuple(Document(f"p{i}.jpg", "image/jpeg", PHOTO) for i in range(11)), "at most 10"),
])
def test_evidence_the_back_office_would_refuse_is_refused_before_sending(
        sim: PlanningSimulator, conn: PlanningConnector, documents: tuple[Document, ...], match: str) -> None:
    ref, hub_ref = raise_enquiry(conn)
    before = posts(sim)
    with pytest.raises(PermanentError, match=match):
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, documents=documents))
    assert posts(sim) == before and records(sim, ref) == []


def test_mapping_fields_are_used_and_checked(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    # one followups: section fills every kind, so a field of another kind's request is left out
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, author="Hub contact centre",
                            category="CUSTOMER_CONTACT", reason="not for a note"))
    conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref, 2, reason="Sorted out with the neighbour"))
    [note] = sim.store.notes[sim.job(TENANT, ref).id]
    assert (note["author"], note["category"]) == ("Hub contact centre", "CUSTOMER_CONTACT")
    assert records(sim, ref)[-1]["text"] == f"{followup_mark(hub_ref + '/2')} Sorted out with the neighbour"
    before = posts(sim)
    with pytest.raises(PermanentError, match="category"):
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 3, category="URGENT"))
    with pytest.raises(PermanentError, match="media_url"):
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 3, media_url="https://x.example/"))
    assert posts(sim) == before


def test_note_text_and_file_bytes_are_never_logged(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref, hub_ref = raise_enquiry(conn)
    secret_text = "The owner, Mr Z Example, said he has permission"
    with capture_logs() as logs:
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, text=secret_text))
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2, text=secret_text))
        conn.follow_up(replace(followup(FollowUpKind.NOTE, ref, hub_ref, 1, text=secret_text), known_new=False))
    assert logs
    dumped = repr(logs)
    assert "Mr Z Example" not in dumped and "rear-wall" not in dumped
    assert base64.b64encode(PHOTO)[:16].decode() not in dumped
