"""The planning connector against its simulator over loopback: create/find, updates, notes, withdraw, webhooks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from hubbridge import signing
from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery
from hubbridge.connectors.planning import PlanningConnector, PlanningSimulator
from hubbridge.connectors.planning.simulator import DEFAULT_TOKEN
from hubbridge.errors import (
    BadResponseError,
    ConfigError,
    PermanentError,
    SecurityError,
    TransientError,
    UnknownOutcomeError,
)

TOKEN_ENV = "PLANNING_BROMSGROVE_TOKEN"
SECRET = "webhook-shared-secret"


def breach(i: int = 1, **extra: Any) -> Delivery:
    payload = {
        "enquiry_type": "BREACH_REPORT",
        "description": "Extension being built at the rear without permission",
        "customer": {"name": "A Resident", "email": "a.resident@example.org", "customer_type": "NEIBOU"},
        "site": {"uprn": "100120123456", "address_text": "12 High Street, Bromsgrove", "postcode": "b60 1aa",
                 "easting": 395800, "northing": 270600},
        "breach_type": "UNAUTHORISED_WORKS",
        "how_received": "TELE",
        **extra,
    }
    return Delivery(hub_ref=f"WH-2026-{i:06d}", authority="bromsgrove", service="planning.breach", payload=payload)


def application_enquiry(i: int) -> Delivery:
    return Delivery(hub_ref=f"WH-2026-{i:06d}", authority="bromsgrove", service="planning.application-enquiry",
                    payload={"enquiry_type": "APPLICATION_ENQUIRY", "application_reference": "24/00123/FUL",
                             "description": "When will a decision be made?", "customer": {"name": "B Caller"}})


def pre_app(i: int) -> Delivery:
    return Delivery(hub_ref=f"WH-2026-{i:06d}", authority="bromsgrove", service="planning.pre-application",
                    payload={"enquiry_type": "PRE_APPLICATION_ADVICE", "description": "Two-storey side extension",
                             "customer": {"name": "C Owner", "customer_type": "OWNER"},
                             "site": {"address_text": "3 Mill Lane, Bromsgrove"}, "development_scale": "HOUSEHOLDER"})


@pytest.fixture
def sim() -> Iterator[PlanningSimulator]:
    with PlanningSimulator() as s:
        assert isinstance(s, PlanningSimulator)
        s.faults.slow_seconds = 1.5
        yield s


def make(sim: PlanningSimulator, tenant: str = "bromsgrove", token: str = DEFAULT_TOKEN,
         read: float = 5.0) -> PlanningConnector:
    inst = ConnectorInstance(name=f"planning-{tenant}", plugin="planning", endpoint=sim.tenant_url(tenant),
                             credentials={"token": TOKEN_ENV}, timeouts=Timeouts(connect=2, read=read))
    return PlanningConnector(inst, env={TOKEN_ENV: token})


@pytest.fixture
def conn(sim: PlanningSimulator) -> Iterator[PlanningConnector]:
    c = make(sim)
    yield c
    c.close()


def all_updates(conn: PlanningConnector, cursor: str | None = None, limit: int = 2) -> tuple[list[Any], str | None]:
    out = []
    while True:
        page = conn.updates_since(cursor, limit)
        assert len(page.updates) <= limit
        out += page.updates
        cursor = page.cursor
        if not page.has_more:
            return out, cursor


# -- create / find ---------------------------------------------------------------------------------


def test_create_then_find(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    res = conn.create(breach(1))
    assert res.backoffice_ref.startswith("PL")
    assert res.status_code == "RECEIVED"
    found = conn.find("WH-2026-000001")
    assert found is not None and found.backoffice_ref == res.backoffice_ref
    assert conn.find("WH-2026-999999") is None
    job = sim.job("bromsgrove", res.backoffice_ref)
    assert job.data["site"]["postcode"] == "B60 1AA"
    assert job.data["confidential"] is True


def test_create_twice_makes_one_enquiry(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    first = conn.create(breach(2))
    again = conn.create(breach(2))
    assert again.backoffice_ref == first.backoffice_ref
    assert sim.jobs_for("WH-2026-000002") == 1


def test_unknown_outcome_then_retry_finds_the_enquiry(sim: PlanningSimulator) -> None:
    conn = make(sim, read=0.5)
    sim.faults.next(["pass", "slow"])  # the look-up passes, the POST stalls
    with pytest.raises(UnknownOutcomeError):
        conn.create(breach(3))
    assert sim.jobs_for("WH-2026-000003") == 1  # it was done, the answer was lost
    time.sleep(1.2)
    res = conn.create(breach(3))
    assert sim.jobs_for("WH-2026-000003") == 1
    assert res.backoffice_ref == sim.store.by_hub_ref("bromsgrove", "WH-2026-000003")[0].ref


def test_garbage_after_create_is_bad_response_and_retry_does_not_duplicate(
        sim: PlanningSimulator, conn: PlanningConnector) -> None:
    for i, kind in enumerate(("garbage", "truncated", "wrong_type", "xxe"), start=10):
        # a queued None lets the look-up through; the POST then does the work and answers badly
        sim.faults.next(["pass", kind])
        with pytest.raises(BadResponseError):
            conn.create(breach(i))
        assert conn.create(breach(i)).backoffice_ref
        assert sim.jobs_for(f"WH-2026-{i:06d}") == 1


def test_server_honours_idempotency_key(sim: PlanningSimulator) -> None:
    url = sim.tenant_url("bromsgrove") + "api/v1/enquiries"
    body = json.loads(make(sim).render(breach(4)).split("\n\n", 1)[1])
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}", "Idempotency-Key": "WH-2026-000004"}
    first = requests.post(url, json=body, headers=headers, timeout=5)
    second = requests.post(url, json=body, headers=headers, timeout=5)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    assert sim.jobs_for("WH-2026-000004") == 1
    changed = {**body, "description": "something else"}
    assert requests.post(url, json=changed, headers=headers, timeout=5).status_code == 409
    assert sim.jobs_for("WH-2026-000004") == 1


def test_simulator_validates_bodies_with_field_errors(sim: PlanningSimulator) -> None:
    url = sim.tenant_url("redditch") + "api/v1/enquiries"
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    bad = {"enquiry_type": "BREACH_REPORT", "description": "x" * 4001, "customer": {"name": ""},
           "external_reference": "WH-2026-000005", "site": {"uprn": "not-a-uprn"}, "colour": "red"}
    resp = requests.post(url, json=bad, headers=headers, timeout=5)
    assert resp.status_code == 422
    fields = {e["field"] for e in resp.json()["errors"]}
    assert {"description", "customer.name", "site.uprn", "colour"} <= fields
    assert requests.post(url, data="{not json", headers={**headers, "Content-Type": "application/json"},
                         timeout=5).status_code == 400
    assert requests.post(url, data="a=b", headers=headers, timeout=5).status_code == 415
    assert not sim.store.jobs


def test_unknown_uprn_is_refused_permanently(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    d = breach(13, site={"uprn": "999000000001"})
    with pytest.raises(PermanentError, match=r"site\.uprn: UPRN 999000000001 is not in the bromsgrove gazetteer"):
        conn.create(d)
    assert sim.jobs_for(d.hub_ref) == 0


def test_invalid_payload_is_refused_before_sending(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    d = Delivery("WH-2026-000006", "bromsgrove", "planning.application-enquiry",
                 {"enquiry_type": "APPLICATION_ENQUIRY", "description": "when?", "customer": {"name": "D"}})
    with pytest.raises(PermanentError, match="application_reference"):
        conn.create(d)
    with pytest.raises(PermanentError, match="external_reference"):
        conn.create(breach(7, external_reference="WH-2026-000001"))
    with pytest.raises(PermanentError, match=r"site\.easting"):
        conn.render(breach(8, site={"easting": -5, "northing": 1}))
    assert sim.requests == []


def test_auth_and_config_errors(sim: PlanningSimulator) -> None:
    with pytest.raises(PermanentError, match="token"):
        make(sim, token="wrong").create(breach(9))
    inst = ConnectorInstance(name="planning-x", plugin="planning", endpoint=sim.tenant_url("bromsgrove"))
    with pytest.raises(ConfigError, match=r"credentials\.token"):
        PlanningConnector(inst, env={})
    inst = ConnectorInstance(name="planning-x", plugin="planning", endpoint=sim.tenant_url("bromsgrove"),
                             credentials={"token": "UNSET_PLANNING_TOKEN"})
    with pytest.raises(ConfigError, match="UNSET_PLANNING_TOKEN"):
        PlanningConnector(inst, env={}).find("WH-2026-000001")
    with pytest.raises(PermanentError, match="404"):
        make(sim, tenant="birmingham").find("WH-2026-000001")


def test_faults_are_classified(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    sim.faults.next("error500")
    with pytest.raises(TransientError):
        conn.find("WH-2026-000001")
    sim.faults.next("status429")
    with pytest.raises(TransientError) as caught:
        conn.updates_since(None)
    assert caught.value.retry_after == 1.0
    sim.faults.next("reset")
    with pytest.raises(TransientError):
        conn.updates_since(None)


def test_tenants_are_separate(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    conn.create(breach(11))
    other = make(sim, tenant="wyre-forest")
    assert other.find("WH-2026-000011") is None
    assert other.updates_since(None).updates == []


# -- render / target fields ------------------------------------------------------------------------


def test_render_is_the_exact_body_without_the_token(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    text = conn.render(breach(12))
    head, body = text.split("\n\n", 1)
    assert head.startswith(f"POST {sim.tenant_url('bromsgrove')}api/v1/enquiries")
    assert "Idempotency-Key: WH-2026-000012" in head
    assert DEFAULT_TOKEN not in text and TOKEN_ENV in head
    sent = json.loads(body)
    assert sent["external_reference"] == "WH-2026-000012"
    assert sent["site"]["postcode"] == "B60 1AA"
    assert sent["how_received"] == "TELE" and sent["priority"] == "NORMAL"
    assert sim.requests == []
    res = conn.create(breach(12))
    stored = sim.job("bromsgrove", res.backoffice_ref).data
    assert stored == {k: v for k, v in sent.items() if k != "external_reference"}


def test_target_fields_follow_the_request_model(conn: PlanningConnector) -> None:
    fields = conn.target_fields()
    assert "external_reference" not in fields
    assert fields["description"].required and fields["description"].max_length == 4000
    assert fields["enquiry_type"].enum == ("APPLICATION_ENQUIRY", "BREACH_REPORT", "PRE_APPLICATION_ADVICE")
    assert fields["customer"].required and fields["customer"].children["name"].max_length == 100
    assert fields["site"].children["address_text"].max_length == 200
    assert fields["application_reference"].max_length == 30 and not fields["application_reference"].required
    assert fields["attachments"].repeated and fields["attachments"].children["url"].max_length == 2000
    assert fields["received_at"].type == "datetime"


# -- updates ---------------------------------------------------------------------------------------


def test_updates_are_complete_ordered_and_resumable(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    refs = [conn.create(d).backoffice_ref for d in (breach(20), breach(21), application_enquiry(22), pre_app(23))]
    direct = sim.raise_direct("bromsgrove", "BREACH_REPORT", "Caravan stationed on green belt land")
    sim.raise_direct("malvern-hills", "PRE_APPLICATION_ADVICE")  # another district: never seen here
    for _ in range(3):
        sim.advance()
    got, cursor = all_updates(conn, limit=2)
    expected = sorted((ev.update_id, j.ref, ev.status) for j in sim.store.tenant_jobs("bromsgrove") for ev in j.events)
    assert [(int(u.update_id), u.backoffice_ref, u.status_code) for u in got] == expected
    assert len({u.update_id for u in got}) == len(got)
    by_ref = {u.backoffice_ref: u for u in got}
    assert by_ref[direct.ref].hub_ref is None
    assert by_ref[refs[0]].hub_ref == "WH-2026-000020"
    assert by_ref[refs[2]].service_code == "APPLICATION_ENQUIRY"
    assert all(u.occurred_at.tzinfo is not None for u in got)
    # nothing new: the cursor stays put and nothing is repeated
    page = conn.updates_since(cursor, 2)
    assert page.updates == [] and page.cursor == cursor and not page.has_more
    # changes after the cursor arrive, and only those
    sim.advance()
    more, _ = all_updates(conn, cursor, limit=3)
    assert more and all(int(u.update_id) > int(cursor or 0) for u in more)
    assert conn.updates_since(None, 10_000).updates  # oversize limits are clamped, not refused


def test_updates_made_while_paging_are_not_skipped(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    for i in range(30, 36):
        conn.create(breach(i))
    seen: list[int] = []
    cursor = None
    stop = threading.Event()

    def churn() -> None:
        # new enquiries and status changes keep landing between (and during) page reads
        n = 0
        while not stop.is_set() and n < 300:
            sim.advance()
            if n % 3 == 0:
                sim.raise_direct("bromsgrove", "APPLICATION_ENQUIRY", f"direct {n}")
            n += 1
            time.sleep(0.002)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(40):
            page = conn.updates_since(cursor, 3)
            seen += [int(u.update_id) for u in page.updates]
            cursor = page.cursor
    finally:
        stop.set()
        t.join()
    rest, _ = all_updates(conn, cursor, limit=50)
    seen += [int(u.update_id) for u in rest]
    expected = sorted(ev.update_id for j in sim.store.tenant_jobs("bromsgrove") for ev in j.events)
    assert seen == expected


def test_lifecycles_per_enquiry_type(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    made = {d.hub_ref: conn.create(d).backoffice_ref for d in (breach(40), breach(41), application_enquiry(42),
                                                              pre_app(43))}
    for _ in range(8):
        sim.advance()
    statuses: dict[str, list[str]] = {}
    for u in all_updates(conn, limit=100)[0]:
        statuses.setdefault(u.hub_ref or "", []).append(u.status_code or "")
    breach_paths = sorted([statuses["WH-2026-000040"], statuses["WH-2026-000041"]])
    assert breach_paths == sorted([
        ["RECEIVED", "ALLOCATED", "UNDER_INVESTIGATION", "CLOSED_NO_BREACH"],
        ["RECEIVED", "ALLOCATED", "UNDER_INVESTIGATION", "ENFORCEMENT_ACTION", "CLOSED"],
    ])
    assert statuses["WH-2026-000042"] == ["RECEIVED", "ALLOCATED", "RESPONSE_SENT", "CLOSED"]
    assert statuses["WH-2026-000043"] == ["RECEIVED", "ALLOCATED", "AWAITING_INFORMATION", "UNDER_ASSESSMENT",
                                          "ADVICE_ISSUED", "CLOSED"]
    assert sim.advance() == 0
    assert len(made) == 4


def test_officer_notes_appear_in_updates(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref = conn.create(pre_app(50)).backoffice_ref
    sim.set_status("bromsgrove", ref, "AWAITING_INFORMATION", "Please send site plans")
    sim.officer_note("bromsgrove", ref, "Site visit booked for Tuesday")
    got = all_updates(conn)[0]
    assert [(u.status_code, u.note) for u in got[-2:]] == [
        ("AWAITING_INFORMATION", "Please send site plans"), ("AWAITING_INFORMATION", "Site visit booked for Tuesday")]
    assert got[-1].raw["kind"] == "note"


# -- notes / withdraw ------------------------------------------------------------------------------


def test_add_note_lands_once(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref = conn.create(breach(60)).backoffice_ref
    conn.add_note(ref, "Customer called: works continuing at weekends")
    conn.add_note(ref, "Customer called: works continuing at weekends")  # a retried task
    conn.add_note(ref, "Customer sent photos")
    notes = sim.store.notes[sim.job("bromsgrove", ref).id]
    assert [n["text"] for n in notes] == ["Customer called: works continuing at weekends", "Customer sent photos"]
    with pytest.raises(PermanentError, match="404"):
        conn.add_note("PL99999999", "nobody home")
    with pytest.raises(PermanentError, match="text"):
        conn.add_note(ref, "")


def test_withdraw(sim: PlanningSimulator, conn: PlanningConnector) -> None:
    ref = conn.create(breach(70)).backoffice_ref
    conn.cancel(ref, "Customer says the works had permission after all")
    conn.cancel(ref, "sent again")  # already withdrawn: fine
    assert sim.job("bromsgrove", ref).status == "WITHDRAWN"
    last = all_updates(conn)[0][-1]
    assert (last.backoffice_ref, last.status_code, last.hub_ref) == (ref, "WITHDRAWN", "WH-2026-000070")
    closed = conn.create(application_enquiry(71)).backoffice_ref
    for _ in range(3):
        sim.advance()
    assert sim.job("bromsgrove", closed).status == "CLOSED"
    with pytest.raises(PermanentError, match="already closed"):
        conn.cancel(closed, "too late")
    assert sim.advance() == 0  # a withdrawn enquiry does not move on


# -- webhooks --------------------------------------------------------------------------------------


class Receiver:
    """A tiny loopback endpoint capturing what the simulator pushes."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                rec.got.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/planning/{{tenant}}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pushed(sim: PlanningSimulator, conn: PlanningConnector) -> Iterator[list[tuple[dict[str, str], bytes]]]:
    rec = Receiver()
    sim.configure_webhook(rec.url, SECRET)
    conn.create(breach(80))
    sim.advance()
    assert sim.wait_for_webhooks(10)
    yield rec.got
    rec.close()


def test_webhook_signed_push_is_accepted(pushed: list[tuple[dict[str, str], bytes]]) -> None:
    assert len(pushed) == 2
    updates = [u for headers, body in pushed for u in PlanningConnector.parse_webhook(headers, body, SECRET)]
    assert [(u.hub_ref, u.status_code, u.service_code) for u in updates] == [
        ("WH-2026-000080", "RECEIVED", "BREACH_REPORT"), ("WH-2026-000080", "ALLOCATED", "BREACH_REPORT")]
    assert int(updates[0].update_id) < int(updates[1].update_id)


def test_webhook_refuses_unsigned_stale_tampered_and_foreign(pushed: list[tuple[dict[str, str], bytes]]) -> None:
    headers, body = pushed[0]
    with pytest.raises(SecurityError, match="not signed"):
        PlanningConnector.parse_webhook({"Content-Type": "application/json"}, body, SECRET)
    ts = int(headers[signing.TIMESTAMP_HEADER])
    with pytest.raises(SecurityError, match="stale"):
        PlanningConnector.parse_webhook(headers, body, SECRET, now=ts + 301)
    with pytest.raises(SecurityError, match="future"):
        PlanningConnector.parse_webhook(headers, body, SECRET, now=ts - 301)
    tampered = body.replace(b"RECEIVED", b"CLOSED_NO_BREACH")
    with pytest.raises(SecurityError, match="bad signature"):
        PlanningConnector.parse_webhook(headers, tampered, SECRET)
    with pytest.raises(SecurityError, match="bad signature"):
        PlanningConnector.parse_webhook({**headers, signing.TIMESTAMP_HEADER: str(ts + 1)}, body, SECRET)
    with pytest.raises(SecurityError, match="bad signature"):
        PlanningConnector.parse_webhook(headers, body, "another-districts-secret")
    with pytest.raises(SecurityError, match="over the"):
        PlanningConnector.parse_webhook(headers, b" " * (1024 * 1024 + 1), SECRET)
    assert PlanningConnector.parse_webhook(headers, body, SECRET, now=ts + 299)


def test_webhook_signed_garbage_is_bad_response() -> None:
    body = b'{"event": "enquiry.changed", "changes": [{"sequence": 0}]}'
    with pytest.raises(BadResponseError):
        PlanningConnector.parse_webhook(signing.sign(body, SECRET), body, SECRET)
