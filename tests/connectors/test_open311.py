"""The highways (Open311 GeoReport v2) connector against its simulator over loopback, in JSON and in XML."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery, connector_class
from hubbridge.connectors.open311 import Open311Connector, Open311Simulator
from hubbridge.connectors.open311.connector import CACHE_SIZE
from hubbridge.connectors.open311.simulator import DEFAULT_API_KEY
from hubbridge.errors import (
    BadResponseError,
    ConfigError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

KEY_ENV = "COUNTY_OPEN311_API_KEY"
TENANT = "county"


def pothole(i: int = 1, **extra: Any) -> Delivery:
    payload: dict[str, Any] = {
        "service_code": "HM_PHS",
        "lat": 52.1936,
        "long": -2.2216,
        "address_string": "Foregate Street, Worcester",
        "first_name": "Ann",
        "last_name": "Resident",
        "email": "ann.resident@example.org",
        "phone": "01905 123456",
        "description": "Deep pothole in the nearside lane outside the station",
        "media_url": "https://hub.example.org/files/pothole.jpg",
        "attributes": {"depth": "GT100", "surface": "carriageway", "easting": 384950, "northing": 255120,
                       "site_code": "45600123"},
        **extra,
    }
    return Delivery(hub_ref=f"WH-2026-{i:06d}", authority="worcestershire", service="highways.pothole",
                    payload=payload)


@pytest.fixture
def sim() -> Iterator[Open311Simulator]:
    with Open311Simulator() as s:
        yield s  # type: ignore[misc]


@pytest.fixture(params=["json", "xml"])
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make(sim: Open311Simulator, fmt: str) -> Callable[..., Open311Connector]:
    def build(key: str | None = DEFAULT_API_KEY, read_timeout: float | None = None, **options: Any) -> Open311Connector:
        inst = ConnectorInstance(
            name="highways-county", plugin="open311", endpoint=sim.tenant_url(TENANT),
            credentials={"api_key": KEY_ENV},
            options={"format": fmt, "server_echoes_attributes": True, **options},
            timeouts=Timeouts(connect=2, read=read_timeout or 5),
        )
        return Open311Connector(inst, env={} if key is None else {KEY_ENV: key})

    return build


@pytest.fixture
def conn(make: Callable[..., Open311Connector]) -> Iterator[Open311Connector]:
    c = make()
    yield c
    c.close()


def drain(conn: Open311Connector, cursor: str | None, limit: int = 100) -> tuple[list[Any], str]:
    got: list[Any] = []
    while True:
        page = conn.updates_since(cursor, limit)
        got += page.updates
        cursor = page.cursor
        if not page.has_more:
            return got, cursor


# -- catalogue ------------------------------------------------------------------------------------
def test_plugin_is_registered() -> None:
    assert connector_class("open311") is Open311Connector


def test_service_list(conn: Open311Connector) -> None:
    services = {s["service_code"]: s for s in conn.services()}
    assert set(services) == {"HM_PHS", "SL_LNO", "DR_BLK", "HM_DGD"}
    assert services["SL_LNO"]["service_name"] == "Street light fault"
    assert services["HM_DGD"]["group"] == "Emergencies"


def test_service_definition(conn: Open311Connector) -> None:
    definition = conn.service_definition("HM_PHS")
    attrs = {a["code"]: a for a in definition["attributes"]}
    assert definition["service_code"] == "HM_PHS"
    assert attrs["hub_ref"]["required"] is True and attrs["hub_ref"]["automated"] == "server_set"
    assert attrs["easting"]["datatype"] == "number"
    assert [v["key"] for v in attrs["depth"]["values"]] == ["LT40", "40TO100", "GT100"]
    with pytest.raises(PermanentError, match="not found"):
        conn.service_definition("NOPE")


def test_target_fields() -> None:
    inst = ConnectorInstance(name="h", plugin="open311", endpoint="http://127.0.0.1:1/county/")
    fields = Open311Connector(inst, env={}).target_fields()
    assert fields["service_code"].required and fields["service_code"].max_length == 50
    assert fields["description"].max_length == 4000 and not fields["description"].required
    assert fields["lat"].type == "number"
    attrs = fields["attributes"]
    assert attrs.type == "object"
    assert attrs.children["depth"].enum == ("LT40", "40TO100", "GT100")
    assert attrs.children["easting"].type == "number"
    assert "hub_ref" not in attrs.children  # the connector sets it, never the mapping


# -- create / find --------------------------------------------------------------------------------
def test_create_is_idempotent_and_found(conn: Open311Connector, sim: Open311Simulator) -> None:
    d = pothole(1)
    first = conn.create(d)
    assert first.backoffice_ref.isdigit()
    assert conn.create(d).backoffice_ref == first.backoffice_ref
    assert sim.jobs_for(d.hub_ref) == 1
    found = conn.find(d.hub_ref)
    assert found is not None and found.backoffice_ref == first.backoffice_ref and found.status_code == "open"
    assert conn.find("WH-2026-999999") is None
    job = sim.store.by_ref(TENANT, first.backoffice_ref)
    assert job is not None
    assert job.data["attributes"] == {"hub_ref": d.hub_ref, "depth": "GT100", "surface": "carriageway",
                                      "easting": "384950", "northing": "255120", "site_code": "45600123"}
    assert job.data["first_name"] == "Ann" and job.data["lat"] == "52.1936"


def test_create_after_unknown_outcome_makes_no_duplicate(make: Callable[..., Open311Connector],
                                                         sim: Open311Simulator) -> None:
    conn = make(read_timeout=0.3)
    sim.faults.slow_seconds = 1.0
    d = pothole(2)
    # the find before the post answers; the post does the work, then stalls past the read timeout
    sim.faults.next(["pass", "slow"])
    with pytest.raises(UnknownOutcomeError):
        conn.create(d)
    assert sim.jobs_for(d.hub_ref) == 1
    again = conn.create(d)
    assert sim.jobs_for(d.hub_ref) == 1
    assert again.backoffice_ref == sim.store.by_hub_ref(TENANT, d.hub_ref)[0].ref


def test_mapping_cannot_override_the_hub_ref(conn: Open311Connector, sim: Open311Simulator) -> None:
    d = pothole(3)
    d = Delivery(d.hub_ref, d.authority, d.service,
                 {**d.payload, "attributes": {**d.payload["attributes"], "hub_ref": "WH-2026-000777"}})
    conn.create(d)
    assert sim.jobs_for("WH-2026-000003") == 1 and sim.jobs_for("WH-2026-000777") == 0


@pytest.mark.parametrize("service_code, attributes", [
    ("SL_LNO", {"column_number": "WC/123", "fault_type": "DAYBURN"}),
    ("DR_BLK", {"drain_type": "gully", "flooding": "yes"}),
    ("HM_DGD", {"hazard_type": "MISSING_COVER", "road_blocked": "no"}),
])
def test_every_service_accepts_its_attributes(conn: Open311Connector, sim: Open311Simulator,
                                              service_code: str, attributes: dict[str, str]) -> None:
    d = pothole(10, service_code=service_code, attributes=attributes)
    ref = conn.create(d).backoffice_ref
    assert sim.store.by_ref(TENANT, ref).service_code == service_code  # type: ignore[union-attr]


# -- payload and back-office refusals -------------------------------------------------------------
def test_invalid_payload_refused_before_sending(conn: Open311Connector, sim: Open311Simulator) -> None:
    no_location = pothole(4)
    payload = {k: v for k, v in no_location.payload.items() if k not in ("lat", "long", "address_string")}
    with pytest.raises(PermanentError, match="location is required"):
        conn.create(Delivery(no_location.hub_ref, "worcestershire", "highways.pothole", payload))
    with pytest.raises(PermanentError, match="description"):
        conn.create(pothole(5, description="x" * 4001))
    with pytest.raises(PermanentError, match=r"attributes\.depth"):
        conn.create(pothole(6, attributes={"depth": "HUGE", "surface": "carriageway"}))
    with pytest.raises(PermanentError, match=r"attributes\.colour"):
        conn.create(pothole(7, attributes={"colour": "red"}))
    assert sim.requests == []


def test_back_office_refusal_is_permanent_with_its_description(conn: Open311Connector) -> None:
    # a valid model, but the service requires attributes this payload lacks: the back office says so
    with pytest.raises(PermanentError, match="attribute column_number is required"):
        conn.create(pothole(8, service_code="SL_LNO", attributes={}))
    with pytest.raises(PermanentError, match="service_code NOPE not found"):
        conn.create(pothole(9, service_code="NOPE", attributes={}))


def test_wrong_api_key_refused(make: Callable[..., Open311Connector], sim: Open311Simulator) -> None:
    conn = make(key="not-the-key")
    with pytest.raises(PermanentError, match="Invalid api_key") as info:
        conn.create(pothole(11))
    assert KEY_ENV in str(info.value)
    assert sim.store.jobs == {}


def test_missing_api_key_refused(make: Callable[..., Open311Connector]) -> None:
    with pytest.raises(PermanentError, match="api_key is required"):
        make(key="").create(pothole(12))
    with pytest.raises(ConfigError, match=KEY_ENV):
        make(key=None).create(pothole(13))


def test_simulator_refuses_requests_without_key_on_the_wire(sim: Open311Simulator, fmt: str) -> None:
    url = f"{sim.tenant_url(TENANT)}requests.{fmt}"
    form = {"service_code": "HM_PHS", "lat": "52.19", "long": "-2.22", "attribute[hub_ref]": "WH-2026-000001",
            "attribute[depth]": "LT40", "attribute[surface]": "footway"}
    missing = requests.post(url, data=form, timeout=5)
    wrong = requests.post(url, data={**form, "api_key": "nope"}, timeout=5)
    assert (missing.status_code, wrong.status_code) == (400, 403)
    if fmt == "json":
        assert wrong.json() == [{"code": 403, "description": "Invalid api_key"}]
    else:
        assert b"<errors><error><code>403</code><description>Invalid api_key</description>" in wrong.content
    ok = requests.post(url, data={**form, "api_key": DEFAULT_API_KEY}, timeout=5)
    assert ok.status_code == 200


def test_private_reads_need_the_key(make: Callable[..., Open311Connector], sim: Open311Simulator) -> None:
    sim.public_reads = False
    with pytest.raises(PermanentError, match="api_key is required"):
        make().find("WH-2026-000001")
    assert make(api_key_on_reads=True).find("WH-2026-000001") is None


@pytest.mark.parametrize("kind, error", [
    ("error500", TransientError), ("status429", TransientError), ("reset", TransientError),
    ("garbage", BadResponseError), ("truncated", BadResponseError), ("wrong_type", BadResponseError),
    ("xxe", BadResponseError), ("entities", BadResponseError),
])
def test_faults_are_classified(conn: Open311Connector, sim: Open311Simulator, kind: str,
                               error: type[Exception]) -> None:
    conn.find("WH-2026-000001")  # warm the connection, so a reset hits the faulty call
    sim.faults.next(kind)
    with pytest.raises(error) as info:
        conn.find("WH-2026-000001")
    if kind == "status429":
        assert info.value.retry_after == 1.0  # type: ignore[attr-defined]


def test_post_with_server_error_is_transient_and_not_duplicated(conn: Open311Connector,
                                                                 sim: Open311Simulator) -> None:
    d = pothole(14)
    sim.faults.next(["pass", "error500"])
    with pytest.raises(TransientError):
        conn.create(d)
    assert sim.jobs_for(d.hub_ref) == 0
    conn.create(d)
    assert sim.jobs_for(d.hub_ref) == 1


def test_render_masks_the_api_key_and_sends_nothing(conn: Open311Connector, sim: Open311Simulator,
                                                    fmt: str) -> None:
    text = conn.render(pothole(15))
    assert text.startswith(f"POST {sim.tenant_url(TENANT)}requests.{fmt}\n")
    assert "application/x-www-form-urlencoded" in text
    body = text.splitlines()[3]
    assert body.startswith("api_key=********&service_code=HM_PHS&lat=52.1936&long=-2.2216")
    assert "attribute%5Bhub_ref%5D=WH-2026-000015" in body and "attribute%5Bdepth%5D=GT100" in body
    assert "email=ann.resident%40example.org" in body and "description=Deep+pothole+in" in body
    assert "  attribute[depth] = GT100" in text  # and readable
    assert DEFAULT_API_KEY not in text
    assert sim.requests == []


# -- updates --------------------------------------------------------------------------------------
def test_updates_complete_ordered_and_resumable(conn: Open311Connector, sim: Open311Simulator) -> None:
    refs = [conn.create(pothole(20 + i)).backoffice_ref for i in range(3)]
    sim.advance()
    sim.advance()
    got, cursor = drain(conn, None, limit=2)
    assert len(got) == 9 and len({u.update_id for u in got}) == 9
    assert [u.update_id for u in got] == sorted((u.update_id for u in got), key=int)
    by_ref = {r: [u.status_code for u in got if u.backoffice_ref == r] for r in refs}
    assert all(codes == ["LOG", "INV", "SCH"] for codes in by_ref.values())
    first = got[0]
    assert first.hub_ref == "WH-2026-000020" and first.service_code == "HM_PHS" and first.note == "created"
    assert first.raw["update"]["status"] == "OPEN" and first.raw["request"]["service_code"] == "HM_PHS"
    assert conn.updates_since(cursor).updates == []
    sim.advance()
    more, _ = drain(conn, cursor)
    assert [u.status_code for u in more] == ["WIP"] * 3


def test_updates_sharing_one_timestamp_across_pages(conn: Open311Connector, sim: Open311Simulator) -> None:
    now = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    sim.clock = lambda: now
    for i in range(4):
        conn.create(pothole(30 + i))
    sim.advance()
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        page = conn.updates_since(cursor, limit=3)
        seen += [u.update_id for u in page.updates]
        cursor = page.cursor
        if not page.has_more:
            break
    assert len(seen) == 8 and len(set(seen)) == 8
    # a further update in the same second is still picked up after the cursor
    conn.create(pothole(40))
    page = conn.updates_since(cursor)
    assert [u.hub_ref for u in page.updates] == ["WH-2026-000040"]


def test_late_update_within_the_overlap_is_not_skipped(conn: Open311Connector, sim: Open311Simulator) -> None:
    t0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    sim.clock = lambda: t0
    conn.create(pothole(41))
    _, cursor = drain(conn, None)
    sim.clock = lambda: t0 - timedelta(seconds=20)  # committed late, stamped earlier than the last one seen
    conn.create(pothole(42))
    late, cursor = drain(conn, cursor)
    assert [u.hub_ref for u in late] == ["WH-2026-000042"]
    assert conn.updates_since(cursor).updates == []


def test_updates_for_jobs_raised_in_the_back_office(conn: Open311Connector, sim: Open311Simulator) -> None:
    job = sim.raise_direct(TENANT, "SL_LNO", description="Light out on Bath Road", first_name="Bob",
                           attributes={"column_number": "BR/17", "fault_type": "OUT"})
    got, _ = drain(conn, None)
    assert len(got) == 1
    u = got[0]
    assert (u.backoffice_ref, u.hub_ref, u.service_code, u.status_code) == (job.ref, None, "SL_LNO", "LOG")
    assert u.raw["request"]["description"] == "Light out on Bath Road"


def test_requests_are_remembered_slim_and_bounded_and_raised_ones_are_not_kept(
    conn: Open311Connector, sim: Open311Simulator
) -> None:
    ours = conn.create(pothole(7))
    sim.raise_direct(TENANT, "SL_LNO", description="Light out on Bath Road", first_name="Bob",
                     attributes={"column_number": "BR/17", "fault_type": "OUT"})
    conn._requests.clear()  # as after a restart: the updates' requests are looked up from the back office
    got, _ = drain(conn, None)
    raised = next(u for u in got if u.hub_ref is None)
    assert raised.raw["request"]["description"] == "Light out on Bath Road"  # whole, for the Hub case it becomes
    assert set(conn._requests) == {ours.backoffice_ref}  # a raised job is not remembered
    kept = conn._requests[ours.backoffice_ref]
    assert kept == {"service_request_id": ours.backoffice_ref, "service_code": kept["service_code"],
                    "attributes": {conn.ref_attribute: "WH-2026-000007"}}  # nothing of the resident's
    assert conn._requests.maxsize == CACHE_SIZE


def test_other_tenants_updates_are_not_seen(conn: Open311Connector, sim: Open311Simulator) -> None:
    sim.raise_direct("another-council", "DR_BLK", attributes={"drain_type": "gully", "flooding": "no"})
    assert conn.updates_since(None).updates == []


def test_awaiting_customer_and_other_codes(conn: Open311Connector, sim: Open311Simulator) -> None:
    ref = conn.create(pothole(43)).backoffice_ref
    sim.set_status(TENANT, ref, "AWC", "Please send a photo")
    got, _ = drain(conn, None)
    assert (got[-1].status_code, got[-1].note) == ("AWC", "Please send a photo")
    assert got[-1].raw["update"]["status"] == "INVESTIGATING"


def test_bad_cursor_refused(conn: Open311Connector) -> None:
    with pytest.raises(PermanentError, match="cursor"):
        conn.updates_since("not-a-cursor")


# -- notes and cancellation -----------------------------------------------------------------------
def test_notes_change_nothing_and_a_resend_is_a_second_note(conn: Open311Connector, sim: Open311Simulator) -> None:
    ref = conn.create(pothole(50)).backoffice_ref
    _, cursor = drain(conn, None)
    conn.add_note(ref, "Customer rang: the hole is getting bigger")
    conn.add_note(ref, "Customer rang: the hole is getting bigger")  # a resend after an unknown outcome
    notes = sim.notes[f"{TENANT}/{ref}"]
    # a GeoReport server does not drop a resent update (FixMyStreet holds newer ones back instead): the core
    # looks for a follow-up before sending it again, so this never happens through a delivery
    assert len(notes) == 2 and {n["status"] for n in notes} == {"OPEN"}
    assert sim.store.by_ref(TENANT, ref).status == "LOG"  # type: ignore[union-attr]
    assert conn.updates_since(cursor).updates == []
    with pytest.raises(PermanentError, match="not found"):
        conn.add_note("999999", "hello")


def test_note_on_a_closed_request_does_not_reopen_it(conn: Open311Connector, sim: Open311Simulator) -> None:
    ref = conn.create(pothole(51)).backoffice_ref
    for _ in range(5):
        sim.advance()
    conn.add_note(ref, "Thanks for fixing it")
    assert sim.store.by_ref(TENANT, ref).status == "CLO"  # type: ignore[union-attr]
    assert sim.notes[f"{TENANT}/{ref}"][0]["status"] == "CLOSED"


def test_cancel_closes_the_request_as_an_update(conn: Open311Connector, sim: Open311Simulator) -> None:
    ref = conn.create(pothole(52)).backoffice_ref
    _, cursor = drain(conn, None)
    conn.cancel(ref, "raised twice by the customer")
    conn.cancel(ref, "raised twice by the customer")
    got, _ = drain(conn, cursor)
    assert [(u.status_code, u.note) for u in got] == [("CAN", "Cancelled by the Hub: raised twice by the customer")]
    assert got[0].raw["update"]["status"] == "CLOSED" and got[0].hub_ref == "WH-2026-000052"
    found = conn.find("WH-2026-000052")
    assert found is not None and found.status_code == "closed"
    sim.advance()  # a cancelled job no longer moves
    assert sim.store.by_ref(TENANT, ref).status == "CAN"  # type: ignore[union-attr]


def test_bad_format_option_refused() -> None:
    inst = ConnectorInstance(name="h", plugin="open311", endpoint="http://127.0.0.1:1/county/",
                             options={"format": "yaml"})
    with pytest.raises(ConfigError, match="format"):
        Open311Connector(inst, env={})


def test_render_matches_the_body_create_sends(conn: Open311Connector, sim: Open311Simulator) -> None:
    bodies: list[bytes] = []
    handle = sim.handle

    def capture(request: Any) -> Any:
        if request.method == "POST":
            bodies.append(request.body)
        return handle(request)

    sim.handle = capture  # type: ignore[method-assign]
    d = pothole(16)
    rendered = conn.render(d).splitlines()[3]
    conn.create(d)
    assert bodies[0].decode() == rendered.replace("api_key=********", f"api_key={DEFAULT_API_KEY}")


def test_simulator_built_without_a_key_accepts_any_but_still_needs_one(fmt: str) -> None:
    with Open311Simulator(api_key=None) as s:
        inst = ConnectorInstance(name="h", plugin="open311", endpoint=s.tenant_url(TENANT),
                                 credentials={"api_key": KEY_ENV},
                                 options={"format": fmt, "server_echoes_attributes": True})
        assert Open311Connector(inst, env={KEY_ENV: "demo-any"}).create(pothole(60)).backoffice_ref
        with pytest.raises(PermanentError, match="api_key is required"):
            Open311Connector(inst, env={KEY_ENV: ""}).create(pothole(61))


def test_store_advance_is_what_the_demo_ticks(conn: Open311Connector, sim: Open311Simulator) -> None:
    conn.create(pothole(62))
    assert sim.store.advance() == 1  # the demo calls sim.auto_advance(every, sim.store.advance)
    got, _ = drain(conn, None)
    assert [(u.status_code, u.note) for u in got] == [("LOG", "created"), ("INV", "Inspector assigned")]
