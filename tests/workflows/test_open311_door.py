"""The Open311 GeoReport v2 front door, driven by a GeoReport client nobody here wrote (PyPI `georeport`),
by spec-form POSTs with `requests`, and end to end through real API, worker and beat processes.

The API is served by uvicorn on loopback over a SQLite store (the embedded default); the County's highways
back office is the Open311 simulator, whose own records are the oracle for "reached its back office once".
"""

from __future__ import annotations

import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from georeport import GeoReport
from ruamel.yaml import YAML
from sqlalchemy import func, select

from hubbridge.store import CaseRow, DeadLetterRow, EventRow, FollowUpRow, session_scope
from hubbridge.workflows.harness import free_port
from hubbridge.workflows.runtime import Runtime

from .stack import Stack, use_config, write_config

KEY = "fms-test-key-5b1d"
WORCESTER_KEY = "worcester-web-key-77"
REF = re.compile(r"^FM-\d{4}-\d{6}$")


def _door_config(cfg: Path, *, public_reads: bool) -> None:
    """The shipped open311.yaml, with a second client (one council, token answers) and one required question."""
    yaml = YAML()
    doc = yaml.load((cfg / "open311.yaml").read_text())
    doc["clients"].append({"name": "worcester-web", "key_env": "WORCESTER_WEB_OPEN311_KEY",
                           "authorities": ["worcester"], "ref_prefix": "WW", "respond_with": "token"})
    doc["services"]["highways.blocked-drain"]["require"] = ["flooding"]
    doc["public_reads"] = public_reads
    with (cfg / "open311.yaml").open("w") as fh:
        yaml.dump(doc, fh)


@dataclass
class Door:
    url: str
    rt: Runtime
    backoffice: Any

    @property
    def base(self) -> str:
        return f"{self.url}/open311/v2"

    def post(self, fmt: str = "json", **form: str) -> requests.Response:
        return requests.post(f"{self.base}/requests.{fmt}", data=form, timeout=10)


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Any, Any]]:
    from hubbridge.connectors.hub import HubSimulator
    from hubbridge.workflows.simulated import DEMO_SECRETS, simulator_for

    hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    county = simulator_for("open311", 0).start()
    yield hub, county
    hub.stop()
    county.stop()


def _serve(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def _door(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, url: str, *,
          public_reads: bool) -> Iterator[Door]:
    from hubbridge.workflows.api import create_app

    hub, county = sims
    hub.reset()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"open311": county.url}, ["open311"])
    _door_config(cfg, public_reads=public_reads)
    use_config(monkeypatch, cfg, url)
    monkeypatch.setenv("FIXMYSTREET_OPEN311_KEY", KEY)
    monkeypatch.setenv("WORCESTER_WEB_OPEN311_KEY", WORCESTER_KEY)
    rt = Runtime()
    base, server, thread = _serve(create_app(rt, enqueue=False))
    yield Door(base, rt, county)
    server.should_exit = True
    thread.join(10)
    rt.close()


@pytest.fixture
def door(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Iterator[Door]:
    """The API on loopback; GET requests is public (the `georeport` client sends no api_key on reads)."""
    yield from _door(tmp_path, sims, monkeypatch, sqlite_url, public_reads=True)


@pytest.fixture
def private_door(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
                 sqlite_url: str) -> Iterator[Door]:
    """The API on loopback as shipped: every read needs a client's api_key."""
    yield from _door(tmp_path, sims, monkeypatch, sqlite_url, public_reads=False)


_serial = iter(range(1000, 10**6))


def pothole(**extra: str) -> dict[str, str]:
    """A spec-form pothole report as FixMyStreet sends one (its report id in attribute[fixmystreet_id])."""
    return {"api_key": KEY, "jurisdiction_id": "worcestershire.gov.uk", "service_code": "highways.pothole",
            "lat": "52.1924", "long": "-2.2203", "address_string": "High Street, Worcester WR1 2QS",
            "attribute[depth]": "over-100mm", "attribute[surface]": "road",
            "attribute[fixmystreet_id]": str(next(_serial)), "attribute[easting]": "385020",
            "attribute[northing]": "254950", "email": "ann.smith@example.org", "first_name": "Ann",
            "last_name": "Smith", "phone": "01905 123456", "description": "Deep pothole by the bus stop",
            "media_url": "https://fixmystreet.example/photo/42.full.jpeg", **extra}


def _errors(resp: requests.Response, fmt: str) -> list[tuple[int, str]]:
    """The spec's error list, from JSON or XML, as (code, description) pairs."""
    if fmt == "json":
        assert resp.headers["content-type"].startswith("application/json")
        return [(int(e["code"]), e["description"]) for e in resp.json()]
    assert resp.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(resp.content)
    assert root.tag == "errors"
    return [(int(e.findtext("code") or 0), e.findtext("description") or "") for e in root.findall("error")]


def _posted_id(resp: requests.Response, fmt: str) -> str:
    assert resp.status_code == 200, resp.text
    if fmt == "json":
        return str(resp.json()[0]["service_request_id"])
    root = ET.fromstring(resp.content)
    assert root.tag == "service_requests"
    return root.findtext("request/service_request_id") or ""


def _cases(door: Door) -> int:
    with session_scope(door.rt.url) as s:
        return int(s.scalar(select(func.count()).select_from(CaseRow)) or 0)


# -- discovery with the georeport client ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_georeport_client_lists_services_and_reads_definitions(door: Door, fmt: str) -> None:
    client = GeoReport(door.base, jurisdiction="worcestershire.gov.uk", output_format=fmt)
    services = client.get_service_list()
    codes = {s["service_code"] for s in services}
    assert codes == {"highways.pothole", "highways.street-light-fault", "highways.blocked-drain",
                     "highways.dangerous-defect"}
    pothole_entry = next(s for s in services if s["service_code"] == "highways.pothole")
    assert pothole_entry["service_name"] == "Pothole"
    assert str(pothole_entry["metadata"]).lower() == "true"

    definition = client.get_service_definition("highways.pothole")
    attrs = definition["attributes"] if fmt == "json" else definition["attributes"]["attribute"]
    by_code = {a["code"]: a for a in attrs}
    # the questions are the case attributes the pothole mapping reads; the answers its map keys
    depth = by_code["depth"]
    assert depth["datatype"] == "singlevaluelist"
    values = depth["values"] if fmt == "json" else depth["values"]["value"]
    assert {v["key"] for v in values} == {"under-40mm", "40-100mm", "over-100mm", "not-sure"}
    # FixMyStreet's conventions: what it fills itself (server_set), what an asset layer fills (hidden_field)
    assert by_code["fixmystreet_id"]["automated"] == "server_set"
    assert str(by_code["fixmystreet_id"]["variable"]).lower() == "false"
    assert by_code["easting"]["automated"] == "server_set"
    assert by_code["site_code"]["automated"] == "hidden_field"
    # a required question (open311.yaml `require`) says so in the definition
    drain = client.get_service_definition("highways.blocked-drain")
    drain_attrs = drain["attributes"] if fmt == "json" else drain["attributes"]["attribute"]
    flooding = next(a for a in drain_attrs if a["code"] == "flooding")
    assert str(flooding["required"]).lower() == "true"
    assert {v["key"] for v in (flooding["values"] if fmt == "json" else flooding["values"]["value"])} == {
        "true", "false"}


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_service_discovery_names_the_endpoint(door: Door, fmt: str) -> None:
    resp = requests.get(f"{door.base}/discovery.{fmt}", timeout=10)
    assert resp.status_code == 200
    if fmt == "json":
        endpoint = resp.json()["endpoints"][0]
        url, formats = endpoint["url"], endpoint["formats"]
    else:
        root = ET.fromstring(resp.content)
        url = root.findtext("endpoints/endpoint/url") or ""
        formats = [f.text for f in root.findall("endpoints/endpoint/formats/format")]
    assert url == f"{door.base}/" and formats == ["text/xml", "application/json"]


# -- posting a request and reading it back ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_posted_request_becomes_a_hub_case_and_reads_back(door: Door, fmt: str) -> None:
    form = pothole()
    ref = _posted_id(door.post(fmt, **form), fmt)
    assert REF.match(ref), ref

    with session_scope(door.rt.url) as s:
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert case is not None
        received = s.scalar(select(EventRow).where(EventRow.hub_ref == ref, EventRow.kind == "received"))
    p = case.payload
    assert (case.authority, case.service, case.status) == ("worcestershire", "highways.pothole", "routed")
    assert p["channel"] == "web"
    assert received is not None and received.detail["channel"] == "open311"
    assert p["customer"] == {"name": "Ann Smith", "email": "ann.smith@example.org", "phone": "01905 123456"}
    assert p["location"]["lat"] == pytest.approx(52.1924) and p["location"]["lon"] == pytest.approx(-2.2203)
    assert p["location"]["easting"] == 385020 and p["location"]["description"].startswith("High Street")
    assert p["attributes"]["depth"] == "over-100mm"
    assert p["attributes"]["fixmystreet_id"] == form["attribute[fixmystreet_id]"]
    assert p["attachments"] == [{"filename": "42.full.jpeg", "content_type": "image/jpeg",
                                 "url": form["media_url"]}]

    client = GeoReport(door.base, jurisdiction="worcestershire.gov.uk", output_format=fmt)
    one = client.get_service_request(ref)
    assert one["service_request_id"] == ref
    assert one["status"] == "open"
    assert one["service_code"] == "highways.pothole"
    assert one["agency_responsible"] == "Worcestershire County Council Highways"
    assert float(one["lat"]) == pytest.approx(52.1924)
    # expected_datetime is the resolve clock's due time: the pothole policy's working days after now
    expected = one["expected_datetime"]
    assert expected and expected > one["requested_datetime"]
    listed = client.get_service_requests(status="open")
    listed = listed if isinstance(listed, list) else [listed]  # xmltodict gives one request as a dict
    assert ref in {r["service_request_id"] for r in listed}
    # (the client cannot read an empty XML list - xmltodict makes it None - so the closed list is read plainly)
    closed = requests.get(f"{door.base}/requests.json", params={"status": "closed"}, timeout=10).json()
    assert ref not in {r["service_request_id"] for r in closed}


def test_the_postcode_or_the_clients_one_council_decides_the_authority(door: Door) -> None:
    form = pothole(address_string="5 Foregate Street, Worcester WR1 3LD")
    del form["jurisdiction_id"]
    ref = _posted_id(door.post(**form), "json")
    with session_scope(door.rt.url) as s:
        assert s.scalar(select(CaseRow.authority).where(CaseRow.hub_ref == ref)) == "worcester"
    # a client of one council needs neither; its answers are tokens, exchanged at GET tokens/{token}
    form = pothole(api_key=WORCESTER_KEY, address_string="somewhere without a postcode")
    del form["jurisdiction_id"]
    resp = door.post("xml", **form)
    assert resp.status_code == 200, resp.text
    token = ET.fromstring(resp.content).findtext("request/token")
    assert token and ET.fromstring(resp.content).findtext("request/service_request_id") is None
    got = requests.get(f"{door.base}/tokens/{token}.json", timeout=10).json()
    assert re.match(r"^WW-\d{4}-\d{6}$", got[0]["service_request_id"]) and got[0]["token"] == token
    with session_scope(door.rt.url) as s:
        assert s.scalar(select(CaseRow.authority).where(CaseRow.hub_ref == got[0]["service_request_id"])) == \
            "worcester"
    missing = requests.get(f"{door.base}/tokens/nope.xml", timeout=10)
    assert missing.status_code == 404 and _errors(missing, "xml")[0][0] == 404


# -- idempotency on the client's own id -----------------------------------------------------------------------------


def test_a_resend_with_the_same_fixmystreet_id_makes_no_second_case(door: Door) -> None:
    form = pothole()
    first = _posted_id(door.post(**form), "json")
    again = _posted_id(door.post("xml", **form), "xml")
    assert again == first
    # a burst of resends at once (a client retrying after timeouts) still makes one case
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: _posted_id(door.post(**{**pothole(), **{
            "attribute[fixmystreet_id]": "77001"}}), "json"), range(8)))
    assert len(ids) == 1
    assert _cases(door) == 2
    # a resend the reporter edited meanwhile is the same case, amended (as a re-posted Hub case is)
    edited = _posted_id(door.post(**{**form, "description": "Deep pothole by the bus stop, now 15 cm"}), "json")
    assert edited == first and _cases(door) == 2
    with session_scope(door.rt.url) as s:
        amendments = list(s.scalars(select(FollowUpRow.kind).where(FollowUpRow.hub_ref == first)))
    assert amendments == ["amendment"]
    # without the client's id every POST is a request of its own, each with the next reference
    form = pothole()
    del form["attribute[fixmystreet_id]"]
    a, b = _posted_id(door.post(**form), "json"), _posted_id(door.post(**form), "json")
    assert a != b and int(b[-6:]) == int(a[-6:]) + 1
    assert _cases(door) == 4


def test_concurrent_requests_get_distinct_references(door: Door) -> None:
    with ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: _posted_id(door.post(**pothole()), "json"), range(30)))
    assert len(set(ids)) == 30
    serials = sorted(int(i[-6:]) for i in ids)
    assert serials == list(range(serials[0], serials[0] + 30))
    assert _cases(door) == 30


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> str:
    from tests.conftest import pg_available

    if not pg_available():
        pytest.skip("PostgreSQL is not running on localhost")
    return str(request.getfixturevalue("pg_url"))


def test_reference_serials_are_safe_under_concurrency_on_postgresql(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: tuple[Any, Any], pg: str) -> None:
    from hubbridge.config.open311_door import Open311Client
    from hubbridge.workflows.open311_door import _allocate

    hub, county = sims
    cfg = write_config(tmp_path / "config", hub.endpoint, {"open311": county.url}, ["open311"])
    use_config(monkeypatch, cfg, pg)
    rt = Runtime()
    client = Open311Client(name="fixmystreet", key_env="FIXMYSTREET_OPEN311_KEY", authorities=["*"], ref_prefix="FM")
    with ThreadPoolExecutor(8) as pool:
        refs = list(pool.map(lambda _: _allocate(rt, client, None, "highways.pothole")[0].hub_ref, range(40)))
        same = list(pool.map(lambda _: _allocate(rt, client, "fms-9", "highways.pothole")[0].hub_ref, range(8)))
    rt.close()
    assert len(set(refs)) == 40
    serials = sorted(int(r[-6:]) for r in refs)
    assert serials == list(range(1, 41))
    assert len(set(same)) == 1 and same[0] not in refs


# -- refusals, in the spec's error format -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_refusals_come_in_the_spec_error_format(door: Door, fmt: str) -> None:
    cases = [
        (pothole(api_key="not-the-key"), 403, "api_key is invalid"),
        ({k: v for k, v in pothole().items() if k != "api_key"}, 403, "api_key was not provided"),
        (pothole(service_code="highways.graffiti"), 400, "service_code highways.graffiti was not found"),
        ({**{k: v for k, v in pothole().items() if not k.startswith("attribute[")},
          "service_code": "highways.blocked-drain", "attribute[drain_type]": "gully"}, 400,
         "attribute[flooding] is required"),
        (pothole(**{"attribute[depth]": "bottomless"}), 400, "attribute[depth]: 'bottomless' is not one of"),
        (pothole(jurisdiction_id="gloucestershire.gov.uk"), 404, "jurisdiction_id gloucestershire.gov.uk was not"),
        (pothole(api_key=WORCESTER_KEY, jurisdiction_id="bromsgrove"), 403, "may not report to jurisdiction"),
        ({k: v for k, v in pothole().items() if k not in ("lat", "long", "address_string")}, 400,
         "a location is required"),
        (pothole(email="not an address"), 400, "customer.email"),
    ]
    for form, status, words in cases:
        resp = door.post(fmt, **form)
        assert resp.status_code == status, (form, resp.text)
        errors = _errors(resp, fmt)
        assert len(errors) == 1 and errors[0][0] == status and words in errors[0][1], (words, errors)
    assert _cases(door) == 0
    # a refused request from a known client is kept (without its key), once per body; bad keys are not
    with session_scope(door.rt.url) as s:
        kept = list(s.scalars(select(DeadLetterRow).where(DeadLetterRow.reason == "open311_refused")))
    assert len(kept) == 7
    assert all(KEY not in d.payload and WORCESTER_KEY not in d.payload for d in kept)
    # the contact fields are kept as a Hub customer too, where a subject access or erasure looks
    assert all(json.loads(d.payload)["customer"]["name"] == "Ann Smith" for d in kept)

    unknown = requests.get(f"{door.base}/services/highways.graffiti.{fmt}", timeout=10)
    assert unknown.status_code == 404 and _errors(unknown, fmt)[0][0] == 404
    no_request = requests.get(f"{door.base}/requests/FM-2026-999999.{fmt}", timeout=10)
    assert no_request.status_code == 404 and _errors(no_request, fmt)[0][0] == 404
    no_format = requests.get(f"{door.base}/services.csv", timeout=10)
    assert no_format.status_code == 404
    elsewhere = requests.get(f"{door.base}/services.{fmt}", params={"jurisdiction_id": "gloucestershire"}, timeout=10)
    assert elsewhere.status_code == 404 and "gloucestershire" in _errors(elsewhere, fmt)[0][1]


def test_reads_need_a_key_unless_public_and_show_only_the_clients_own(private_door: Door) -> None:
    door = private_door
    mine = _posted_id(door.post(**pothole()), "json")
    form = pothole(api_key=WORCESTER_KEY, jurisdiction_id="worcester")
    resp = door.post(**form)
    theirs = requests.get(f"{door.base}/tokens/{resp.json()[0]['token']}.json",
                          params={"api_key": WORCESTER_KEY}, timeout=10).json()[0]["service_request_id"]
    keyless = requests.get(f"{door.base}/requests.xml", timeout=10)
    assert keyless.status_code == 403 and _errors(keyless, "xml")[0][0] == 403
    listed = requests.get(f"{door.base}/requests.json", params={"api_key": KEY}, timeout=10).json()
    assert [r["service_request_id"] for r in listed] == [mine]
    other = requests.get(f"{door.base}/requests/{theirs}.json", params={"api_key": KEY}, timeout=10)
    assert other.status_code == 404  # another client's request is not even said to exist
    # GeoReport answers carry no contact details
    assert "ann.smith" not in str(listed) and "01905" not in str(listed)


# -- updates both ways (in process: deliver, let the back office move, poll) ------------------------------------------


def _updates(door: Door, fmt: str = "json", **params: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{door.base}/servicerequestupdates.{fmt}", params={"api_key": KEY, **params}, timeout=10)
    assert resp.status_code == 200, resp.text
    if fmt == "json":
        return list(resp.json())
    root = ET.fromstring(resp.content)
    assert root.tag == "service_requests_updates"
    return [{c.tag: c.text for c in u} for u in root.findall("request_update")]


def test_back_office_updates_come_back_in_order_with_their_status_codes(door: Door) -> None:
    from hubbridge.workflows.delivery import deliver_case
    from hubbridge.workflows.sync import poll_connector

    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    ref = _posted_id(door.post(**pothole()), "json")
    assert deliver_case(door.rt, ref).kind == "done"
    assert door.backoffice.jobs_for(ref) == 1
    for _ in range(4):  # LOG -> INV -> SCH -> WIP -> FIX
        door.backoffice.advance()
    poll_connector(door.rt, "highways-county")
    got = _updates(door, start_date=start)
    assert [u["service_request_id"] for u in got] == [ref] * len(got)
    assert [u["status"] for u in got] == ["open", "open", "in_progress", "in_progress", "in_progress", "fixed"]
    assert [u.get("external_status_code") for u in got] == [None, "LOG", "INV", "SCH", "WIP", "FIX"]
    assert len({u["update_id"] for u in got}) == len(got)
    assert got[-1]["description"] == "Repair completed"
    xml = _updates(door, "xml", start_date=start)
    assert [u["update_id"] for u in xml] == [u["update_id"] for u in got]
    assert xml[-1]["external_status_code"] == "FIX"
    # the request reads closed now, with the back office's last words as its status notes
    one = requests.get(f"{door.base}/requests/{ref}.json", timeout=10).json()[0]
    assert one["status"] == "closed" and one["status_notes"] == "Repair completed"
    # a window after them holds none of them
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    assert _updates(door, start_date=later, end_date=later) == []


def test_the_clients_own_updates_become_follow_ups_once(door: Door) -> None:
    from hubbridge.workflows.delivery import deliver_case

    ref = _posted_id(door.post(**pothole()), "json")
    deliver_case(door.rt, ref)
    note = {"api_key": KEY, "service_request_id": ref, "update_id": "5551", "status": "OPEN",
            "updated_datetime": "2026-12-08T09:30:00Z", "description": "It is getting deeper",
            "first_name": "Ann", "last_name": "Smith", "email": "ann.smith@example.org"}
    first = requests.post(f"{door.base}/servicerequestupdates.json", data=note, timeout=10)
    assert first.status_code == 200, first.text
    again = requests.post(f"{door.base}/servicerequestupdates.xml", data=note, timeout=10)
    assert ET.fromstring(again.content).findtext("request_update/update_id") == first.json()[0]["update_id"]
    photo = {**note, "update_id": "5552", "media_url": "https://fixmystreet.example/photo/43.full.jpeg"}
    assert requests.post(f"{door.base}/servicerequestupdates.json", data=photo, timeout=10).status_code == 200
    fixed = {**note, "update_id": "5553", "status": "CLOSED", "description": "Filled in today, thanks"}
    assert requests.post(f"{door.base}/servicerequestupdates.json", data=fixed, timeout=10).status_code == 200
    with session_scope(door.rt.url) as s:
        kinds = [r.kind for r in s.scalars(select(FollowUpRow).where(FollowUpRow.hub_ref == ref)
                                           .order_by(FollowUpRow.sequence))]
    assert kinds == ["note", "evidence", "cancel"]
    bad = requests.post(f"{door.base}/servicerequestupdates.json", data={**note, "service_request_id": "FM-2026-9"},
                        timeout=10)
    assert bad.status_code == 404 and _errors(bad, "json")[0][0] == 404
    missing = requests.post(f"{door.base}/servicerequestupdates.xml",
                            data={k: v for k, v in note.items() if k != "update_id"}, timeout=10)
    assert missing.status_code == 400 and "update_id" in _errors(missing, "xml")[0][1]


# -- end to end: real API, worker and beat processes on the embedded default -----------------------------------------


class DoorStack(Stack):
    """The harness with the highways back office only and the door's client key in the processes' environment."""

    def adjust_config(self, cfg: Path) -> None:
        _door_config(cfg, public_reads=False)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[DoorStack]:
    s = DoorStack(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}",
                  f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}", plugins=("open311",), workers=1)
    s.extra_env = {"FIXMYSTREET_OPEN311_KEY": KEY}
    try:
        yield s
    finally:
        s.stop()


def test_end_to_end_a_fixmystreet_request_reaches_the_county_once_and_its_updates_come_back(
        stack: DoorStack) -> None:
    stack.start(tick_seconds=1.0)
    stack.start_api()
    county = stack.sims["open311"]
    base = f"{stack.api_url}/open311/v2"
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    form = pothole()
    ref = _posted_id(requests.post(f"{base}/requests.xml", data=form, timeout=30), "xml")
    assert REF.match(ref)
    # FixMyStreet's send timed out and it sends again: the same reference, still one job at the County
    assert _posted_id(requests.post(f"{base}/requests.json", data=form, timeout=30), "json") == ref

    # the County's job moves on every second (the simulator's tick); beat's polls bring each step back
    deadline = time.monotonic() + 120
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        stack.check_alive()
        resp = requests.get(f"{base}/servicerequestupdates.json", params={"api_key": KEY, "start_date": start},
                            timeout=10)
        assert resp.status_code == 200, resp.text
        seen = resp.json()
        if any(u.get("external_status_code") == "CLO" for u in seen):
            break
        time.sleep(1)
    codes = [u.get("external_status_code") for u in seen if u.get("external_status_code")]
    assert codes == ["LOG", "INV", "SCH", "WIP", "FIX", "CLO"], (seen, stack.logs())
    assert seen[-1]["status"] == "closed"
    assert county.jobs_for(ref) == 1
    one = requests.get(f"{base}/requests/{ref}.json", params={"api_key": KEY}, timeout=10).json()[0]
    assert one["status"] == "closed"
    with session_scope(stack.database_url) as s:
        assert s.scalar(select(func.count()).select_from(CaseRow)) == 1
    # GeoReport puts the api_key in GET URLs: no log line may carry it, nor the reporter's contact details
    for path in stack.root.glob("*.log"):
        text = path.read_text(errors="replace")
        assert KEY not in text and "ann.smith@example.org" not in text and "01905 123456" not in text, path.name
