"""Follow-ups on revenues work items (notes, amendments, evidence, withdrawal) against the SOAP simulator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from hubbridge.case import FollowUpKind
from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery, Document, FollowUp
from hubbridge.connectors.revenues import RevenuesConnector, RevenuesSimulator
from hubbridge.connectors.revenues.connector import followup_mark
from hubbridge.errors import BadResponseError, NotSupported, PermanentError, UnknownOutcomeError

TENANT = "shared-services"
ENV = {"RB_USER": "hub-interface", "RB_PASS": "s3cret-pass"}
PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"  # bytes that are not text, to check they arrive
SUPPORTED = (FollowUpKind.NOTE, FollowUpKind.AMENDMENT, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL)


@pytest.fixture
def sim() -> Iterator[RevenuesSimulator]:
    with RevenuesSimulator() as s:
        assert isinstance(s, RevenuesSimulator)
        s.faults.slow_seconds = 1.0
        yield s


def make(sim: RevenuesSimulator, read: float = 5.0) -> RevenuesConnector:
    inst = ConnectorInstance(name=f"revenues-{TENANT}", plugin="revenues", endpoint=sim.tenant_url(TENANT),
                             credentials={"username": "RB_USER", "password": "RB_PASS"},
                             timeouts=Timeouts(connect=2, read=read))
    return RevenuesConnector(inst, env=ENV)


@pytest.fixture
def conn(sim: RevenuesSimulator) -> Iterator[RevenuesConnector]:
    c = make(sim)
    yield c
    c.close()


def raise_item(conn: RevenuesConnector, i: int = 1, kind: str = "HBCOC") -> tuple[str, str]:
    payload: dict[str, Any] = {"WorkItemType": kind, "CouncilTaxAccountRef": f"{40000000 + i}",
                               "BenefitClaimRef": f"{600000 + i}", "EffectiveDate": "2026-04-01",
                               "Customer": {"FullName": "Ann Example"}}
    hub_ref = f"WH-2026-{i:06d}"
    ref = conn.create(Delivery(hub_ref=hub_ref, authority="worcester", service="revenues.benefit-coc",
                               payload=payload)).backoffice_ref
    return ref, hub_ref


def followup(kind: FollowUpKind, ref: str, hub_ref: str, seq: int = 1, *, text: str | None = None,
             documents: tuple[Document, ...] | None = None, known_new: bool = True, **fields: Any) -> FollowUp:
    if documents is None:
        documents = (Document("payslip-march.jpg", "image/jpeg", PHOTO),) if kind == FollowUpKind.EVIDENCE else ()
    return FollowUp(hub_ref=hub_ref, backoffice_ref=ref, key=f"{hub_ref}/{seq}", kind=kind,
                    text=text or f"Customer says: {kind.value} number {seq}", occurred_at=datetime.now(UTC),
                    documents=documents, fields=fields, known_new=known_new)


def records(sim: RevenuesSimulator, ref: str, kind: FollowUpKind | None = None) -> list[dict[str, Any]]:
    return [r for r in sim.followups_for(ref, TENANT) if kind is None or r["kind"] == kind.value]


def posts(sim: RevenuesSimulator) -> int:
    return sum(1 for m, _t, _p in sim.requests if m == "POST")


# -- each kind lands once, in the back office's own records ------------------------------------------------
def test_notes_and_amendments_are_typed_notes(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    note = conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, text="Customer rang back"))
    amendment = conn.follow_up(followup(FollowUpKind.AMENDMENT, ref, hub_ref, 2, text="New start date 1 May"))
    assert note.backoffice_id and amendment.backoffice_id and note.backoffice_id != amendment.backoffice_id
    assert [(r["kind"], r["text"]) for r in records(sim, ref)] == [
        ("note", f"{followup_mark(hub_ref + '/1')} Customer rang back"),
        ("amendment", f"{followup_mark(hub_ref + '/2')} New start date 1 May"),
    ]
    item = conn._items(WorkItemRef=ref, IncludeNotes=True)[0]
    assert [(n.NoteType, n.Source) for n in item.Note] == [("GENERAL", "INTERFACE"), ("AMENDMENT", "INTERFACE")]


def test_evidence_is_stored_whole_against_the_item(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    docs = (Document("payslip.jpg", "image/jpeg", PHOTO), Document("tenancy.pdf", "application/pdf", b"%PDF-1.4 x"))
    result = conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, documents=docs, text="Proof of income"))
    stored = sim.documents_of(TENANT, ref)
    assert [d["FileName"] for d in stored] == ["payslip.jpg", "tenancy.pdf"]
    assert stored[0]["sha256"] == hashlib.sha256(PHOTO).hexdigest() and stored[0]["SizeBytes"] == len(PHOTO)
    assert result.backoffice_id == ",".join(d["DocumentId"] for d in stored)
    assert all(d["Description"] == f"{followup_mark(hub_ref + '/1')} Proof of income" for d in stored)
    [record] = records(sim, ref)
    assert record["kind"] == "evidence" and record["documents"] == ["payslip.jpg", "tenancy.pdf"]


def test_cancel_withdraws_once(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    result = conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref, text="Customer is not moving after all"))
    assert result.raw["StatusCode"] == "WITHDRAWN"
    assert conn.status(ref).status_code == "WITHDRAWN"  # type: ignore[union-attr]
    conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref, 2))  # withdrawing again changes nothing
    assert [r["kind"] for r in records(sim, ref)] == ["cancel"]


def test_followups_keep_their_order(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    for seq in range(1, 6):
        kind = FollowUpKind.AMENDMENT if seq % 2 else FollowUpKind.NOTE
        conn.follow_up(followup(kind, ref, hub_ref, seq))
    assert [r["text"].split("]")[0] for r in records(sim, ref)] == [f"[Hub {hub_ref}/{n}" for n in range(1, 6)]


# -- lost answers: found again, never sent twice --------------------------------------------------------------
@pytest.mark.parametrize("kind", SUPPORTED)
def test_lost_answer_is_found_and_not_sent_again(sim: RevenuesSimulator, conn: RevenuesConnector,
                                                 kind: FollowUpKind) -> None:
    ref, hub_ref = raise_item(conn)
    slow = make(sim, read=0.5)
    slow.status(ref)  # sign-in and connection out of the way, so the fault lands on the follow-up
    sent = followup(kind, ref, hub_ref, 3)
    sim.faults.next("slow")
    with pytest.raises(UnknownOutcomeError):
        slow.follow_up(sent)
    sim.faults.clear()
    assert len(records(sim, ref, kind)) == 1  # the work was done; only the answer was lost
    again = replace(sent, known_new=False)
    found = conn.find_follow_up(again)
    assert found is not None
    before = posts(sim)
    assert conn.follow_up(again) == found  # looked up, found, nothing sent
    assert posts(sim) == before + 1  # the one read
    assert len(records(sim, ref, kind)) == 1
    slow.close()


@pytest.mark.parametrize("fault", ["garbage", "truncated", "xxe"])
def test_bad_answer_after_the_work_then_found(sim: RevenuesSimulator, conn: RevenuesConnector, fault: str) -> None:
    ref, hub_ref = raise_item(conn)
    sent = followup(FollowUpKind.NOTE, ref, hub_ref, 4)
    sim.faults.next(fault, match="AddServiceRequestNote")
    with pytest.raises(BadResponseError):
        conn.follow_up(sent)
    assert conn.find_follow_up(replace(sent, known_new=False)) is not None
    assert len(sim.notes_of(TENANT, ref)) == 1


def test_the_back_office_is_not_idempotent(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    """Sent twice without a look-up, a note lands twice: the look-up, not the server, keeps it to one."""
    ref, hub_ref = raise_item(conn)
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1))
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1))
    assert len(records(sim, ref, FollowUpKind.NOTE)) == 2
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2))
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2))
    assert len(sim.documents_of(TENANT, ref)) == 2


def test_not_sent_is_not_found_and_keys_do_not_collide(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    for kind in SUPPORTED:
        assert conn.find_follow_up(followup(kind, ref, hub_ref, 1, known_new=False)) is None
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 10))
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 10))
    assert conn.find_follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, known_new=False)) is None
    assert conn.find_follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 1, known_new=False)) is None
    # an officer's note quoting the mark is not ours
    sim.add_officer_note(TENANT, ref, f"{followup_mark(hub_ref + '/7')} copied by an officer")
    assert conn.find_follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 7, known_new=False)) is None


def test_withdrawn_by_an_officer_counts_as_found(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    sim.set_status(TENANT, ref, "WITHDRAWN", "customer phoned the office")
    cancel = followup(FollowUpKind.CANCEL, ref, hub_ref, known_new=False)
    assert conn.find_follow_up(cancel) is not None
    assert conn.follow_up(cancel).raw["StatusCode"] == "WITHDRAWN"
    assert records(sim, ref) == []


# -- refusals --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [FollowUpKind.PRIORITY, FollowUpKind.REOPEN])
def test_kinds_without_an_operation_are_not_supported(sim: RevenuesSimulator, conn: RevenuesConnector,
                                                      kind: FollowUpKind) -> None:
    ref, hub_ref = raise_item(conn)
    before = posts(sim)
    with pytest.raises(NotSupported):
        conn.follow_up(followup(kind, ref, hub_ref))
    with pytest.raises(NotSupported):
        conn.find_follow_up(followup(kind, ref, hub_ref, known_new=False))
    assert posts(sim) == before and records(sim, ref) == []
    assert kind not in conn.followup_kinds


def test_back_office_refusals_are_permanent(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    with pytest.raises(PermanentError, match="RB9999999"):
        conn.follow_up(followup(FollowUpKind.NOTE, "RB9999999", "WH-2026-000099"))
    ref, hub_ref = raise_item(conn, 2, kind="CTSPD")
    sim.set_status(TENANT, ref, "COMPLETED")
    with pytest.raises(PermanentError, match="can no longer be withdrawn"):
        conn.follow_up(followup(FollowUpKind.CANCEL, ref, hub_ref))
    with pytest.raises(PermanentError, match="at most 2000"):  # the server's own limit, past the connector's cut
        conn._call("AddServiceRequestNote",
                   lambda: conn.service.AddServiceRequestNote(WorkItemRef=ref, NoteText="x" * 2001), ref=ref)
    assert records(sim, ref) == []


def test_long_notes_are_cut_and_still_found(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    sent = followup(FollowUpKind.AMENDMENT, ref, hub_ref, text="y" * 5000)
    conn.follow_up(sent)
    [note] = sim.notes_of(TENANT, ref)
    assert len(note) == 2000 and note.startswith(followup_mark(sent.key)) and note.endswith("full text in the Hub]")
    assert conn.find_follow_up(replace(sent, known_new=False)) is not None


@pytest.mark.parametrize(("document", "match"), [
    (Document("photo.jpg", "image/jpeg", url="https://hub.example.gov.uk/e/1.jpg"), "link only"),
    (Document("photo.heic", "image/heic", PHOTO), "takes only"),
    (Document("scan.pdf", "application/pdf", b"%" * (2 * 1024 * 1024 + 1)), "at most"),
    (Document("empty.pdf", "application/pdf", b""), "empty"),
])
def test_evidence_the_document_store_would_refuse_is_refused_before_sending(
        sim: RevenuesSimulator, conn: RevenuesConnector, document: Document, match: str) -> None:
    ref, hub_ref = raise_item(conn)
    before = posts(sim)
    with pytest.raises(PermanentError, match=match) as info:
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, documents=(document,)))
    assert document.filename not in info.value.message  # a file name can carry a person's name
    assert posts(sim) == before and sim.documents_of(TENANT, ref) == []


def test_mapping_fields_are_used_and_checked(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, NoteType="CUSTOMER_CONTACT"))
    # one followups: section fills every kind, so a field of another kind's operation is left out
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2, Description="Payslips for March",
                            NoteType="CUSTOMER_CONTACT"))
    assert conn._items(WorkItemRef=ref, IncludeNotes=True)[0].Note[0].NoteType == "CUSTOMER_CONTACT"
    assert sim.documents_of(TENANT, ref)[0]["Description"] == f"{followup_mark(hub_ref + '/2')} Payslips for March"
    before = posts(sim)
    with pytest.raises(PermanentError, match="NoteType"):
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 3, NoteType="URGENT"))
    with pytest.raises(PermanentError, match="media_url"):
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 3, media_url="https://x.example/"))
    assert posts(sim) == before


def test_note_text_and_file_bytes_are_never_logged(sim: RevenuesSimulator, conn: RevenuesConnector) -> None:
    ref, hub_ref = raise_item(conn)
    secret_text = "Customer's new partner, Mr Z Example, moved in on 3 March"
    with capture_logs() as logs:
        conn.follow_up(followup(FollowUpKind.NOTE, ref, hub_ref, 1, text=secret_text))
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2, text=secret_text))
        conn.follow_up(replace(followup(FollowUpKind.NOTE, ref, hub_ref, 1, text=secret_text), known_new=False))
    assert logs, "the follow-ups were logged at all"
    dumped = repr(logs)
    assert "Mr Z Example" not in dumped and "payslip" not in dumped and repr(PHOTO[:8]) not in dumped
