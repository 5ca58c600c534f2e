"""Follow-ups through the Open311 connector (FixMyStreet's servicerequestupdates) over loopback, JSON and XML."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from hubbridge.case import FollowUpKind
from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery, Document, FollowUp
from hubbridge.connectors.conformance import conformance_tests
from hubbridge.connectors.open311 import Open311Connector, Open311Simulator
from hubbridge.connectors.open311.simulator import DEFAULT_API_KEY
from hubbridge.connectors.simulator import Request, Response
from hubbridge.errors import NotSupported, OutcomeUnknown, PermanentError, TransientError, UnknownOutcomeError
from tests.connectors.test_open311_conformance import OPEN311

KEY_ENV = "COUNTY_OPEN311_API_KEY"
TENANT = "county"
PHOTO = "https://hub.example.gov.uk/evidence/WH-2026-000001/2/photo.jpg?token=s3cr3t-signature"


class WireSimulator(Open311Simulator):
    """The simulator, also keeping each `POST servicerequestupdates` form exactly as it arrived."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.update_forms: list[dict[str, list[str]]] = []

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path.startswith("/servicerequestupdates."):
            self.update_forms.append(parse_qs(request.body.decode(), keep_blank_values=True))
        return super().handle(request)


@pytest.fixture(params=["json", "xml"])
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server() -> Iterator[Callable[..., WireSimulator]]:
    started: list[WireSimulator] = []

    def start(**options: Any) -> WireSimulator:
        sim = WireSimulator(**options)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(server: Callable[..., WireSimulator]) -> WireSimulator:
    return server(list_posted_updates=True)


@pytest.fixture
def make(fmt: str) -> Iterator[Callable[..., Open311Connector]]:
    made: list[Open311Connector] = []

    def build(sim: Open311Simulator, *, key: str = DEFAULT_API_KEY, read_timeout: float = 5.0,
              **options: Any) -> Open311Connector:
        inst = ConnectorInstance(
            name="highways-county", plugin="open311", endpoint=sim.tenant_url(TENANT),
            credentials={"api_key": KEY_ENV},
            options={"format": fmt, "server_echoes_attributes": True, "jurisdiction_id": "worcestershire",
                     **options},
            timeouts=Timeouts(connect=2, read=read_timeout),
        )
        conn = Open311Connector(inst, env={KEY_ENV: key})
        made.append(conn)
        return conn

    yield build
    for conn in made:
        conn.close()


def pothole(i: int) -> Delivery:
    return Delivery(
        hub_ref=f"WH-2026-{i:06d}", authority="worcestershire", service="highways.pothole",
        payload={"service_code": "HM_PHS", "lat": 52.1936, "long": -2.2216, "description": "Deep pothole",
                 "attributes": {"depth": "GT100", "surface": "carriageway"}})


def followup(kind: FollowUpKind, ref: str, hub_ref: str, seq: int = 2, *, text: str = "Customer rang again",
             documents: tuple[Document, ...] = (), fields: dict[str, Any] | None = None,
             known_new: bool = True) -> FollowUp:
    return FollowUp(hub_ref=hub_ref, backoffice_ref=ref, key=f"{hub_ref}/{seq}", kind=kind, text=text,
                    occurred_at=datetime(2026, 12, 8, 9, 30, 15, 123456, tzinfo=UTC), documents=documents,
                    fields=fields or {}, known_new=known_new)


def photo(url: str | None = PHOTO, n: int = 1) -> Document:
    return Document(filename=f"photo-{n}.jpg", content_type="image/jpeg", content=b"\xff\xd8\xff", url=url)


def one(form: dict[str, list[str]]) -> dict[str, str]:
    """The form's single-valued parameters (media_url may repeat and is checked on its own)."""
    assert all(len(v) == 1 for k, v in form.items() if k != "media_url"), form
    return {k: v[0] for k, v in form.items() if k != "media_url"}


def job_status(sim: Open311Simulator, ref: str) -> str:
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None
    return job.status


# -- what goes on the wire, per kind ------------------------------------------------------------------------
def test_note_is_sent_as_fixmystreet_sends_an_update(sim: WireSimulator, make: Callable[..., Open311Connector],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    conn = make(sim)
    d = pothole(1)
    ref = conn.create(d).backoffice_ref
    result = conn.follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref, text="Customer says the hole is deeper"))
    (form,) = sim.update_forms
    sent = one(form)
    assert sent["api_key"] == DEFAULT_API_KEY and sent["jurisdiction_id"] == "worcestershire"
    assert sent["service_request_id"] == ref
    assert re.fullmatch(r"hub-[0-9a-f]{24}", sent["update_id"])  # open311-adapter takes [\w-]+ only
    assert sent["updated_datetime"] == "2026-12-08T09:30:15Z"  # the follow-up's time, whole seconds
    assert sent["status"] == "OPEN"  # the request is open: the note must not close it
    assert sent["description"] == "[WH-2026-000001/2] Customer says the hole is deeper"
    assert (sent["first_name"], sent["last_name"]) == ("Worcestershire", "Hub")
    assert "media_url" not in form
    records = sim.followups_for(ref, TENANT)
    assert [(r["kind"], r["text"], r["documents"]) for r in records] == [
        ("note", "[WH-2026-000001/2] Customer says the hole is deeper", [])]
    assert result.backoffice_id == records[0]["update_id"]
    assert job_status(sim, ref) == "LOG"
    assert "deeper" not in capsys.readouterr().out, "the follow-up's text must not be logged"


def test_note_on_a_closed_request_keeps_it_closed(sim: WireSimulator, make: Callable[..., Open311Connector]) -> None:
    conn = make(sim)
    d = pothole(2)
    ref = conn.create(d).backoffice_ref
    for _ in range(5):
        sim.advance()
    conn.follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref, text="Thanks, all fixed"))
    assert one(sim.update_forms[0])["status"] == "CLOSED"
    assert job_status(sim, ref) == "CLO"
    assert [r["kind"] for r in sim.followups_for(ref, TENANT)] == ["note"]


def test_evidence_sends_the_document_url_as_media_url(sim: WireSimulator, make: Callable[..., Open311Connector],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    conn = make(sim)
    d = pothole(3)
    ref = conn.create(d).backoffice_ref
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, d.hub_ref, text="Customer sent a photo",
                            documents=(photo(),)))
    (form,) = sim.update_forms
    assert form["media_url"] == [PHOTO]
    assert one(form)["description"] == f"[{d.hub_ref}/2] Customer sent a photo"
    assert one(form)["status"] == "OPEN"
    (record,) = sim.followups_for(ref, TENANT)
    assert record["kind"] == "evidence" and record["documents"] == [PHOTO]
    assert "s3cr3t" not in capsys.readouterr().out, "a media url (with its token) must not be logged"


def test_several_documents_one_media_url_unless_multi(server: Callable[..., WireSimulator],
                                                       make: Callable[..., Open311Connector]) -> None:
    second = "https://hub.example.gov.uk/evidence/2.jpg"
    for multi in (False, True):
        sim = server(list_posted_updates=True)
        conn = make(sim, multi_media_urls=multi)
        d = pothole(4)
        ref = conn.create(d).backoffice_ref
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, d.hub_ref, documents=(photo(), photo(second, 2))))
        (form,) = sim.update_forms
        if multi:  # FixMyStreet's multi_photos: media_url repeated
            assert form["media_url"] == [PHOTO, second]
            assert sim.followups_for(ref, TENANT)[0]["documents"] == [PHOTO, second]
        else:  # FixMyStreet sends its first photo only; the others stay reachable from the text
            assert form["media_url"] == [PHOTO]
            assert one(form)["description"].endswith(f"\n\nFurther documents: {second}")


def test_evidence_without_a_url_is_refused_before_sending(sim: WireSimulator,
                                                          make: Callable[..., Open311Connector]) -> None:
    conn = make(sim)
    d = pothole(5)
    ref = conn.create(d).backoffice_ref
    with pytest.raises(PermanentError, match="no document url"):
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, d.hub_ref, documents=(photo(None),)))
    with pytest.raises(PermanentError, match="not http"):
        conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, d.hub_ref, documents=(photo("file:///etc/passwd"),)))
    assert sim.update_forms == [] and sim.followups_for(ref, TENANT) == []


def test_mapping_fields_are_used(sim: WireSimulator, make: Callable[..., Open311Connector]) -> None:
    conn = make(sim)
    d = pothole(6)
    ref = conn.create(d).backoffice_ref
    mapped = "https://hub.example.gov.uk/mapped.jpg"
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, d.hub_ref, documents=(photo(),),
                            fields={"description": "Photo from the web form", "media_url": mapped,
                                    "first_name": "Ann", "last_name": "Resident", "email": "ann@example.org"}))
    (form,) = sim.update_forms
    sent = one(form)
    assert form["media_url"] == [mapped]
    assert sent["description"] == f"[{d.hub_ref}/2] Photo from the web form"  # the key stays the connector's
    assert (sent["first_name"], sent["last_name"], sent["email"]) == ("Ann", "Resident", "ann@example.org")
    with pytest.raises(PermanentError, match="not an Open311 update status"):
        conn.follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref, 3, fields={"status": "DONE"}))


def test_shipped_mapping_shape_and_a_long_text(sim: WireSimulator, make: Callable[..., Open311Connector]) -> None:
    """The shipped highways mappings give media_url as a list, None for a file sent as bytes only."""
    conn = make(sim)
    d = pothole(17)
    ref = conn.create(d).backoffice_ref
    conn.follow_up(followup(FollowUpKind.EVIDENCE, ref, d.hub_ref, documents=(photo(),),
                            fields={"media_url": [None, PHOTO], "description": "x" * 4000}))
    (form,) = sim.update_forms
    assert form["media_url"] == [PHOTO]
    sent = one(form)["description"]
    assert len(sent) == 4000 and sent.startswith(f"[{d.hub_ref}/2] xxx")  # cut at its end, the key kept


@pytest.mark.parametrize(("options", "cancel_status", "reopen_status"), [
    ({}, "CLOSED", "OPEN"),
    ({"extended_statuses": True}, "CANCELLED", "OPEN"),
    ({"extended_statuses": True, "mark_reopen": True}, "CANCELLED", "REOPEN"),
])
def test_cancel_and_reopen_use_fixmystreet_statuses(sim: WireSimulator, make: Callable[..., Open311Connector],
                                                    options: dict[str, Any], cancel_status: str,
                                                    reopen_status: str) -> None:
    conn = make(sim, **options)
    d = pothole(7)
    ref = conn.create(d).backoffice_ref
    conn.follow_up(followup(FollowUpKind.CANCEL, ref, d.hub_ref, 1, text="Customer withdrew it"))
    assert job_status(sim, ref) == "CAN"
    conn.follow_up(followup(FollowUpKind.REOPEN, ref, d.hub_ref, 2, text="It is back"))
    assert job_status(sim, ref) == "LOG"
    assert [one(f)["status"] for f in sim.update_forms] == [cancel_status, reopen_status]
    assert [r["kind"] for r in sim.followups_for(ref, TENANT)] == ["cancel", "reopen"]
    sim.advance()  # reopened: it moves along its lifecycle again
    assert job_status(sim, ref) == "INV"


@pytest.mark.parametrize("kind", [FollowUpKind.AMENDMENT, FollowUpKind.PRIORITY])
def test_kinds_without_an_operation_are_not_supported(sim: WireSimulator, make: Callable[..., Open311Connector],
                                                      kind: FollowUpKind) -> None:
    conn = make(sim)
    d = pothole(8)
    ref = conn.create(d).backoffice_ref
    assert kind not in conn.followup_kinds
    with pytest.raises(NotSupported):
        conn.follow_up(followup(kind, ref, d.hub_ref))
    with pytest.raises(NotSupported):
        conn.find_follow_up(followup(kind, ref, d.hub_ref))
    assert sim.update_forms == []


def test_followup_kinds() -> None:
    assert Open311Connector.followup_kinds == {FollowUpKind.NOTE, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL,
                                               FollowUpKind.REOPEN}


def test_refusals_are_permanent(sim: WireSimulator, make: Callable[..., Open311Connector]) -> None:
    conn = make(sim)
    with pytest.raises(PermanentError, match="not found"):
        conn.follow_up(followup(FollowUpKind.CANCEL, "999999", "WH-2026-999999"))
    d = pothole(9)
    ref = conn.create(d).backoffice_ref
    with pytest.raises(PermanentError, match="api_key"):
        make(sim, key="wrong-key").follow_up(followup(FollowUpKind.CANCEL, ref, d.hub_ref))
    assert sim.followups_for(ref, TENANT) == []


# -- lost answers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [FollowUpKind.NOTE, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL])
def test_lost_answer_then_find_makes_no_second_update(sim: WireSimulator, make: Callable[..., Open311Connector],
                                                      kind: FollowUpKind) -> None:
    conn = make(sim, server_lists_posted_updates=True)
    slow = make(sim, server_lists_posted_updates=True, read_timeout=0.5)
    d = pothole(10)
    ref = conn.create(d).backoffice_ref
    sent = followup(kind, ref, d.hub_ref, documents=(photo(),) if kind == FollowUpKind.EVIDENCE else ())
    sim.faults.slow_seconds = 1.5
    sim.faults.next("slow", match="servicerequestupdates")  # the POST itself: done, then no answer in time
    with pytest.raises(UnknownOutcomeError):
        slow.follow_up(sent)
    sim.faults.clear()
    assert len(sim.followups_for(ref, TENANT)) == 1  # it did land
    again = replace(sent, known_new=False)
    found = conn.find_follow_up(again)
    assert found is not None and found.backoffice_id == sim.followups_for(ref, TENANT)[0]["update_id"]
    assert conn.follow_up(again).backoffice_id == found.backoffice_id  # not known_new: looks first, sends nothing
    assert len(sim.update_forms) == 1 and len(sim.followups_for(ref, TENANT)) == 1


def test_find_tells_a_key_from_a_longer_one(sim: WireSimulator, make: Callable[..., Open311Connector]) -> None:
    conn = make(sim, server_lists_posted_updates=True)
    d = pothole(11)
    ref = conn.create(d).backoffice_ref
    other = conn.create(pothole(12)).backoffice_ref
    conn.follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref, 31))
    conn.follow_up(followup(FollowUpKind.NOTE, other, d.hub_ref, 3))  # the same key on another request
    assert conn.find_follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref, 3)) is None
    assert conn.find_follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref, 31)) is not None


def test_find_of_an_old_follow_up_looks_back_to_its_time(sim: WireSimulator,
                                                          make: Callable[..., Open311Connector]) -> None:
    conn = make(sim, server_lists_posted_updates=True)
    d = pothole(13)
    ref = conn.create(d).backoffice_ref
    old = replace(followup(FollowUpKind.NOTE, ref, d.hub_ref), occurred_at=datetime.now(UTC) - timedelta(days=3))
    conn.follow_up(old)
    assert conn.find_follow_up(old) is not None


def test_without_the_declared_listing_find_is_outcome_unknown(server: Callable[..., WireSimulator],
                                                              make: Callable[..., Open311Connector]) -> None:
    """The default: a server whose update feed does not list posted comments cannot say; a blind resend is two."""
    sim = server()
    conn = make(sim)
    slow = make(sim, read_timeout=0.5)
    d = pothole(14)
    ref = conn.create(d).backoffice_ref
    sent = followup(FollowUpKind.NOTE, ref, d.hub_ref)
    sim.faults.slow_seconds = 1.5
    sim.faults.next("slow", match="servicerequestupdates")
    with pytest.raises(TransientError):
        slow.follow_up(sent)
    sim.faults.clear()
    with pytest.raises(OutcomeUnknown) as caught:
        conn.find_follow_up(replace(sent, known_new=False))
    assert caught.value.candidates == [ref] and "server_lists_posted_updates" in (caught.value.hint or "")
    # what the default server's feed shows: no trace of the comment, so a look-up there would say "not sent"
    assert make(sim, server_lists_posted_updates=True).find_follow_up(sent) is None
    conn.follow_up(sent)  # the resend an operator must not make blindly: this server keeps both
    assert len(sim.followups_for(ref, TENANT)) == 2


def test_a_server_that_dedupes_update_ids_keeps_one(server: Callable[..., WireSimulator],
                                                    make: Callable[..., Open311Connector]) -> None:
    sim = server(dedupe_update_ids=True)
    conn = make(sim)
    d = pothole(15)
    ref = conn.create(d).backoffice_ref
    first = conn.follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref))
    assert conn.follow_up(followup(FollowUpKind.NOTE, ref, d.hub_ref)).backoffice_id == first.backoffice_id
    assert len(sim.followups_for(ref, TENANT)) == 1


# -- the simulator refuses what open311-adapter's schema refuses ----------------------------------------------
@pytest.mark.parametrize(("change", "error"), [
    ({"update_id": None}, "update_id is required"),
    ({"update_id": "WH-2026-000001/2"}, "update_id may hold only"),
    ({"status": "DONE"}, "status DONE is not one of"),
    ({"status": "open"}, "status open is not one of"),
    ({"updated_datetime": None}, "updated_datetime is required"),
    ({"updated_datetime": "yesterday"}, "W3C datetime"),
    ({"description": None}, "description is required"),
    ({"service_request_id": "999999"}, "not found"),
    ({"api_key": "wrong"}, "Invalid api_key"),
    ({"api_key": None}, "api_key is required"),
])
def test_simulator_refuses_bad_updates(sim: WireSimulator, make: Callable[..., Open311Connector], fmt: str,
                                       change: dict[str, str | None], error: str) -> None:
    ref = make(sim).create(pothole(16)).backoffice_ref
    form = {"api_key": DEFAULT_API_KEY, "service_request_id": ref, "update_id": "hub-1", "status": "OPEN",
            "updated_datetime": "2026-12-08T09:30:15Z", "description": "hello", **change}
    resp = requests.post(f"{sim.tenant_url(TENANT)}servicerequestupdates.{fmt}",
                         data={k: v for k, v in form.items() if v is not None}, timeout=5)
    assert resp.status_code in (400, 403, 404) and error in resp.text
    assert sim.followups_for(ref, TENANT) == []


# -- the shared suite's follow-up checks, against a server declared to list posted updates ---------------------
def _followup_checks_only(cls: type) -> type:
    """Keep only the suite's follow-up checks: the rest already run in test_open311_conformance.py."""
    for name in dir(cls):
        if name.startswith("test_") and not name.startswith("test_followup"):
            setattr(cls, name, None)
    return cls


_LISTING: dict[str, Any] = {**OPEN311, "simulator": lambda: Open311Simulator(list_posted_updates=True)}
TestOpen311JsonFollowupConformance = _followup_checks_only(conformance_tests(
    **_LISTING, options={"format": "json", "server_echoes_attributes": True, "server_lists_posted_updates": True}))
TestOpen311XmlFollowupConformance = _followup_checks_only(conformance_tests(
    **_LISTING, options={"format": "xml", "server_echoes_attributes": True, "server_lists_posted_updates": True}))
