"""Bartec follow-ups (issue 22): notes, evidence documents and cancel over the real simulator on loopback."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from lxml import etree
from structlog.testing import capture_logs
from zeep import Client, Settings

from hubbridge.case import FollowUpKind
from hubbridge.config.models import ConnectorInstance
from hubbridge.connectors.bartec import BartecConnector, BartecSimulator
from hubbridge.connectors.bartec.simulator import ITEM, TNS
from hubbridge.connectors.base import Document, FollowUp
from hubbridge.connectors.conformance import PASS, SAMPLE_JPEG, ConformanceHarness, sample_followup
from hubbridge.connectors.simulator import Request, Response
from hubbridge.errors import NotSupported, PermanentError, TransientError, UnknownOutcomeError
from tests.connectors import test_bartec_conformance as bartec_conformance
from tests.connectors.test_bartec_conformance import ENV, TENANT, bartec_delivery, bartec_harness

WSDL = Path(__file__).parents[2] / "connectors" / "bartec" / "bartec.wsdl"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
DOCUMENT_NS = "http://www.bartec-systems.com/ServiceRequest_Document_Create.xsd"
DETAIL_NS = "http://www.bartec-systems.com/ServiceRequests_Detail_Get.xsd"

OPEN311_ADAPTER_DOCUMENT_CREATE = {
    "token": "ABC=", "Public": "true", "ServiceRequestID": "1234", "DateTaken": "2020-06-17T17:28:30+01:00",
    "Comment": "Photo uploaded from FixMyStreet",
    "AttachedDocument": {"FileExtension": "jpg", "ID": "11", "Name": "1.1.jpg", "Document": "Y29udGVudA=="},
}
"""The ServiceRequest_Document_Create body open311-adapter's test expects it to send to Bartec
(mysociety/open311-adapter t/open311/endpoint/bartec.t, "correct request to create photo"): the names our request
must use. Bartec.pm puts the wrapper's children in http://bartec-systems.com/ and AttachedDocument's in
http://www.bartec-systems.com (its bar1:/bar2: prefixes)."""


class RecordingBartec(BartecSimulator):
    """The faithful simulator, keeping every request body so a test can read what the connector sent."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def handle(self, request: Request) -> Response:
        self.bodies.append(request.body)
        return super().handle(request)

    def sent(self, op: str) -> list[etree._Element]:
        """The operation elements of every `op` request seen, oldest first."""
        found = []
        for body in self.bodies:
            if f"{op}".encode() in body:
                el = etree.fromstring(body).find(f"{{{SOAP}}}Body/{{{TNS}}}{op}")
                if el is not None:
                    found.append(el)
        return found


@pytest.fixture
def sim() -> Iterator[RecordingBartec]:
    with RecordingBartec() as s:
        yield s  # type: ignore[misc]


@pytest.fixture
def harness(sim: RecordingBartec) -> ConformanceHarness:
    return bartec_harness(sim)


def _job(harness: ConformanceHarness, index: int) -> tuple[BartecConnector, str, str]:
    connector = harness.make_connector()
    assert isinstance(connector, BartecConnector)
    delivery = bartec_delivery(index)
    return connector, connector.create(delivery).backoffice_ref, delivery.hub_ref


def _records(sim: BartecSimulator, ref: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [r for r in sim.followups_for(ref, TENANT) if kind is None or r["kind"] == kind]


def _with_options(sim: BartecSimulator, **options: Any) -> BartecConnector:
    target = bartec_conformance.TestBartecConformance.target  # by module: a Test* name here would rerun the suite
    return BartecConnector(ConnectorInstance(
        name="refuse-f", plugin="bartec", endpoint=sim.tenant_url(TENANT), credentials=dict(target.credentials),
        options=options), env=ENV)


def _post(sim: BartecSimulator, connector: BartecConnector, op: str, inner: str) -> etree._Element:
    """Send one hand-written operation (what a careless client might send) and return the SOAP body."""
    body = (f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Body><{op} xmlns="{TNS}">'
            f"<token>{connector._session_token()}</token>{inner}</{op}></soap:Body></soap:Envelope>")
    resp = requests.post(sim.tenant_url(TENANT), data=body.encode(), timeout=5,
                         headers={"SOAPAction": f'"{TNS}{op}"', "Content-Type": "text/xml; charset=utf-8"})
    found = etree.fromstring(resp.content).find(f"{{{SOAP}}}Body")
    assert found is not None
    return found


# -- the WSDL describes the new messages as the real clients send them --------------------------------------
def test_document_create_request_has_open311_adapters_shape(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 200)
    connector.follow_up(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 3))
    (sent,) = sim.sent("ServiceRequest_Document_Create")
    wrapper = {etree.QName(c).localname for c in sent}
    assert wrapper == set(OPEN311_ADAPTER_DOCUMENT_CREATE)
    assert {etree.QName(c).namespace for c in sent} == {TNS}
    attached = sent.find(f"{{{TNS}}}AttachedDocument")
    assert attached is not None
    assert {etree.QName(c).localname for c in attached} == set(OPEN311_ADAPTER_DOCUMENT_CREATE["AttachedDocument"])
    assert {etree.QName(c).namespace for c in attached} == {ITEM}
    assert base64.b64decode(attached.findtext(f"{{{ITEM}}}Document") or "") == SAMPLE_JPEG
    assert attached.findtext(f"{{{ITEM}}}FileExtension") == "jpg"
    assert attached.findtext(f"{{{ITEM}}}Name") == f"{hub_ref}-3_photo-3.jpg"
    assert sent.findtext(f"{{{TNS}}}Public") == "false"  # off by default: evidence can show people and homes
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None and sent.findtext(f"{{{TNS}}}ServiceRequestID") == str(job.id)


def test_wsdl_reads_the_detail_and_document_answers(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 201)
    connector.follow_up(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 1))
    connector.follow_up(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2))
    client = Client(str(WSDL), settings=Settings(strict=True, forbid_dtd=True, forbid_entities=True))
    binding = client.wsdl.bindings[f"{{{TNS}}}CollectiveAPISoap"]
    body = _post(sim, connector, "ServiceRequests_Detail_Get", f"<ServiceCodes><string>{ref}</string></ServiceCodes>")
    envelope = body.getparent()
    assert body.find(f"{{{TNS}}}ServiceRequests_Detail_GetResponse/{{{DETAIL_NS}}}ServiceRequests_Detail_GetResult"
                     f"/{{{DETAIL_NS}}}ServiceRequest/{{{ITEM}}}Notes/{{{ITEM}}}Note/{{{ITEM}}}NoteType/"
                     f"{{{ITEM}}}Description") is not None
    detail = binding.get("ServiceRequests_Detail_Get").output.deserialize(envelope)
    (sr,) = detail.ServiceRequest
    assert sr.ServiceCode == ref and sr.Notes.Note[0].Note.startswith(f"[{hub_ref}/1] ")
    assert sr.AttachedDocuments.AttachedDocument[0].DocumentName == f"{hub_ref}-2_photo-2.jpg"
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None
    stored = _post(sim, connector, "ServiceRequest_Document_Create",
                   f"<ServiceRequestID>{job.id}</ServiceRequestID><Public>true</Public><AttachedDocument>"
                   f'<ID xmlns="{ITEM}">11</ID><Name xmlns="{ITEM}">1.1.jpg</Name>'
                   f'<Document xmlns="{ITEM}">Y29udGVudA==</Document><FileExtension xmlns="{ITEM}">jpg</FileExtension>'
                   "</AttachedDocument>")
    answer = binding.get("ServiceRequest_Document_Create").output.deserialize(stored.getparent())
    assert answer.Errors.Result == 0
    assert stored.find(f"{{{TNS}}}ServiceRequest_Document_CreateResponse/{{{DOCUMENT_NS}}}"
                       "ServiceRequest_Document_CreateResult") is not None


# -- each supported kind lands once, in Bartec's own terms ---------------------------------------------------
def test_note_and_amendment_are_notes_that_carry_the_key(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 202)
    note = connector.follow_up(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 1))
    connector.follow_up(sample_followup(FollowUpKind.AMENDMENT, ref, hub_ref, 2))
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None
    first, second = job.data["notes"]
    assert first["note"] == f"[{hub_ref}/1] Customer called again: the bin is by the side gate"
    assert (first["type"], second["type"]) == (11, 1)  # General note, Specific note: the default filing
    assert note.backoffice_id == str(first["id"])
    assert [r["kind"] for r in _records(sim, ref)] == ["note", "amendment"]
    assert connector.find_follow_up(replace(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 1), known_new=False))
    # /1 is found; /10 is not mistaken for it
    assert connector.find_follow_up(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 10, known_new=False)) is None


def test_cancel_sets_the_types_cancelled_status_once(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 203)
    followup = sample_followup(FollowUpKind.CANCEL, ref, hub_ref, 4)
    assert connector.find_follow_up(replace(followup, known_new=False)) is None
    connector.follow_up(followup)
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None and job.status == "CANCELLED"
    assert job.events[-1].note == f"[{hub_ref}/4] Customer withdrew the request: sorted out with a neighbour"
    assert connector.find_follow_up(replace(followup, known_new=False)) is not None
    connector.follow_up(replace(followup, known_new=False))  # already cancelled: nothing more is sent
    assert len(_records(sim, ref, "cancel")) == 1 and len(sim.sent("ServiceRequest_Status_Set")) == 1


def test_cancelled_in_bartec_counts_as_found(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 204)
    sim.set_status(TENANT, ref, "CANCELLED", "cancelled at the depot")
    assert connector.find_follow_up(sample_followup(FollowUpKind.CANCEL, ref, hub_ref, 1, known_new=False))


def test_cancel_of_a_closed_request_is_refused(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 205)
    sim.set_status(TENANT, ref, "CLOSED")
    followup = sample_followup(FollowUpKind.CANCEL, ref, hub_ref, 1, known_new=False)
    assert connector.find_follow_up(followup) is None
    with pytest.raises(PermanentError, match="cannot be changed"):
        connector.follow_up(followup)
    assert _records(sim, ref) == []


def test_unsupported_kinds_are_not_supported(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 206)
    assert FollowUpKind.PRIORITY not in connector.followup_kinds
    assert FollowUpKind.REOPEN not in connector.followup_kinds
    for kind in (FollowUpKind.PRIORITY, FollowUpKind.REOPEN):
        with pytest.raises(NotSupported):
            connector.follow_up(sample_followup(kind, ref, hub_ref, 1))
        with pytest.raises(NotSupported):
            connector.find_follow_up(sample_followup(kind, ref, hub_ref, 1, known_new=False))
    assert _records(sim, ref) == [] and sim.sent("ServiceRequest_Note_Create") == []


# -- a lost answer never makes a second note or document -----------------------------------------------------
@pytest.mark.parametrize(("kind", "op"), [(FollowUpKind.NOTE, "ServiceRequest_Note_Create"),
                                          (FollowUpKind.AMENDMENT, "ServiceRequest_Note_Create"),
                                          (FollowUpKind.EVIDENCE, "ServiceRequest_Document_Create"),
                                          (FollowUpKind.CANCEL, "ServiceRequest_Status_Set")])
def test_lost_answer_of_the_write_itself_is_found(sim: RecordingBartec, harness: ConformanceHarness,
                                                  kind: FollowUpKind, op: str) -> None:
    connector, ref, hub_ref = _job(harness, 210 + list(FollowUpKind).index(kind))
    slow = harness.make_connector(read_timeout=0.5)
    sim.faults.slow_seconds = 1.5
    followup = sample_followup(kind, ref, hub_ref, 2)
    slow.find("WH-2026-001100")  # session set-up out of the way
    sim.faults.next("slow", match=op)  # Bartec does the work; its answer comes after the client gave up
    try:
        with pytest.raises(UnknownOutcomeError):
            slow.follow_up(followup)
    finally:
        sim.faults.clear()
        slow.close()
    assert len(_records(sim, ref, kind.value)) == 1
    again = replace(followup, known_new=False)
    assert connector.find_follow_up(again) is not None
    connector.follow_up(again)  # the core's retry, looked up first: nothing new is sent
    assert len(_records(sim, ref, kind.value)) == 1
    assert len(sim.sent(op)) == 1


def test_bartec_itself_is_not_idempotent(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    """Sending a follow-up twice as new makes two notes, as on a real Bartec: only the look-up prevents it."""
    connector, ref, hub_ref = _job(harness, 220)
    followup = sample_followup(FollowUpKind.NOTE, ref, hub_ref, 1)
    connector.follow_up(followup)
    connector.follow_up(followup)
    assert len(_records(sim, ref, "note")) == 2


def test_a_partly_stored_evidence_sends_only_what_is_missing(sim: RecordingBartec,
                                                             harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 221)
    followup = replace(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 5), documents=(
        Document("front.jpg", "image/jpeg", SAMPLE_JPEG), Document("scan", "application/pdf", b"%PDF-1.4 x")))
    sim.faults.next([PASS, "error500"], match="ServiceRequest_Document_Create")  # the second one fails
    with pytest.raises(TransientError):
        connector.follow_up(followup)
    sim.faults.clear()
    assert [r["documents"] for r in _records(sim, ref, "evidence")] == [[f"{hub_ref}-5-1_front.jpg"]]
    assert connector.find_follow_up(replace(followup, known_new=False)) is None  # not all of it landed
    connector.follow_up(followup)  # even as known_new, what Bartec already holds is not sent again
    assert [r["documents"] for r in _records(sim, ref, "evidence")] == [[f"{hub_ref}-5-1_front.jpg"],
                                                                         [f"{hub_ref}-5-2_scan.pdf"]]
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None and [d["extension"] for d in job.data["documents"]] == ["jpg", "pdf"]
    assert connector.find_follow_up(replace(followup, known_new=False)) is not None


# -- the mapping's fields, options, and what is refused before anything is sent ------------------------------
def test_mapping_fields_name_the_document_and_the_note_type(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 222)
    evidence = replace(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 1),
                       fields={"Name": "../../bin store.JPG", "Comment": "Photo of the bin store", "Public": True})
    connector.follow_up(evidence)
    (sent,) = sim.sent("ServiceRequest_Document_Create")
    assert sent.findtext(f"{{{TNS}}}Comment") == "Photo of the bin store"
    assert sent.findtext(f"{{{TNS}}}Public") == "true"
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None and job.data["documents"][0]["name"] == f"{hub_ref}-1_bin-store.JPG"
    assert job.data["documents"][0]["extension"] == "jpg"
    connector.follow_up(replace(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 2), fields={"NoteType": "Other note"}))
    assert job.data["notes"][0]["type"] == 68
    with pytest.raises(PermanentError, match="no note type 'Crew note'"):
        connector.follow_up(replace(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 3),
                                    fields={"NoteType": "Crew note"}))
    assert len(job.data["notes"]) == 1


def test_note_types_and_public_documents_come_from_the_options(sim: RecordingBartec,
                                                               harness: ConformanceHarness) -> None:
    connector = _with_options(sim, followup_note_types={"amendment": "Other note", "note": "No such type"},
                              document_public=True)
    ref = connector.create(bartec_delivery(223)).backoffice_ref
    hub_ref = bartec_delivery(223).hub_ref
    connector.follow_up(sample_followup(FollowUpKind.AMENDMENT, ref, hub_ref, 1))
    connector.follow_up(sample_followup(FollowUpKind.NOTE, ref, hub_ref, 2))  # missing type: the general one
    connector.follow_up(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 3))
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None and [n["type"] for n in job.data["notes"]] == [68, 11]
    assert job.data["documents"][0]["public"] is True
    with pytest.raises(ValueError, match="followup_note_types"):
        ConnectorInstance(name="refuse-v", plugin="bartec", endpoint="http://127.0.0.1:1/x/",
                          options={"followup_note_types": {"priority": "General note"}})


@pytest.mark.parametrize(("document", "problem"), [
    (Document("photo.jpg", "image/jpeg", url="https://hub.example.gov.uk/e/1.jpg"), "only as a URL"),
    (Document("photo", "application/x-unknown-thing", SAMPLE_JPEG), "no file extension"),
    (Document("photo.jpg", "image/jpeg", b""), "is empty"),
])
def test_a_document_bartec_cannot_store_is_refused_first(sim: RecordingBartec, harness: ConformanceHarness,
                                                         document: Document, problem: str) -> None:
    connector, ref, hub_ref = _job(harness, 224)
    followup = replace(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 1), documents=(document,))
    with pytest.raises(PermanentError, match=problem):
        connector.follow_up(followup)
    assert sim.sent("ServiceRequest_Document_Create") == [] and _records(sim, ref) == []


def test_simulator_refuses_what_bartec_refuses(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, _ = _job(harness, 225)
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None
    refused = _post(sim, connector, "ServiceRequest_Note_Create",
                    f"<ServiceCode>{ref}</ServiceCode><NoteTypeID>999</NoteTypeID><Note>x</Note>")
    assert b"Specified NoteTypeID does not exist" in etree.tostring(refused)
    no_extension = _post(sim, connector, "ServiceRequest_Document_Create",
                         f"<ServiceRequestID>{job.id}</ServiceRequestID><Public>false</Public><AttachedDocument>"
                         f'<ID xmlns="{ITEM}">1</ID><Name xmlns="{ITEM}">photo</Name>'
                         f'<Document xmlns="{ITEM}">Y29udGVudA==</Document></AttachedDocument>')
    assert b"FileExtension must be supplied" in etree.tostring(no_extension)
    bad_base64 = _post(sim, connector, "ServiceRequest_Document_Create",
                       f"<ServiceRequestID>{job.id}</ServiceRequestID><Public>false</Public><AttachedDocument>"
                       f'<ID xmlns="{ITEM}">1</ID><Name xmlns="{ITEM}">a.jpg</Name>'
                       f'<Document xmlns="{ITEM}">not base64!</Document>'
                       f'<FileExtension xmlns="{ITEM}">jpg</FileExtension></AttachedDocument>')
    assert b"soap:Client" in etree.tostring(bad_base64)
    assert _records(sim, ref) == []


def test_follow_up_on_an_unknown_request_is_refused(harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    for kind in (FollowUpKind.EVIDENCE, FollowUpKind.CANCEL):
        with pytest.raises(PermanentError, match="no service request SR99999999"):
            connector.follow_up(sample_followup(kind, "SR99999999", "WH-2026-999999", 1))


def test_logs_carry_neither_note_text_nor_document_bytes(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 226)
    secret_text = "Mrs Example at 4 Acacia Avenue is in hospital"
    followups: list[FollowUp] = [
        sample_followup(FollowUpKind.NOTE, ref, hub_ref, 1, text=secret_text),
        replace(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 2), text=secret_text),
        sample_followup(FollowUpKind.CANCEL, ref, hub_ref, 3, text=secret_text),
    ]
    with capture_logs() as logs:
        for followup in followups:
            connector.follow_up(followup)
    assert logs, "follow-ups are logged (without their content)"
    flat = repr(logs)
    assert secret_text not in flat and base64.b64encode(SAMPLE_JPEG).decode()[:40] not in flat
    assert "SAMPLE" not in flat and repr(SAMPLE_JPEG[:16]) not in flat


def test_date_taken_is_bartecs_local_time(sim: RecordingBartec, harness: ConformanceHarness) -> None:
    connector, ref, hub_ref = _job(harness, 227)
    followup = replace(sample_followup(FollowUpKind.EVIDENCE, ref, hub_ref, 1),
                       occurred_at=datetime(2026, 6, 17, 16, 28, 30, tzinfo=UTC))
    connector.follow_up(followup)
    (sent,) = sim.sent("ServiceRequest_Document_Create")
    assert sent.findtext(f"{{{TNS}}}DateTaken") == "2026-06-17T17:28:30"  # BST, no offset, as Bartec keeps it
