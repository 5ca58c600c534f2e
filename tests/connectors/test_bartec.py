"""Bartec-specific behaviour: WSDL shape against the recordings, refusals, direct jobs, notes, cancel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from lxml import etree
from zeep import Client, Settings
from zeep import exceptions as zx

from hubbridge.config.models import ConnectorInstance
from hubbridge.connectors.bartec import BartecConnector, BartecSimulator, serve
from hubbridge.connectors.bartec.simulator import ITEM, status_id
from hubbridge.connectors.base import connector_class
from hubbridge.connectors.conformance import ConformanceHarness
from hubbridge.errors import ConfigError, PermanentError, TransientError
from tests.connectors.test_bartec_conformance import ENV, TENANT, bartec_delivery, bartec_harness

WSDL = Path(__file__).parents[2] / "connectors" / "bartec" / "bartec.wsdl"
RECORDINGS = Path("/work/shared/reference/open311-adapter/t/open311/endpoint/xml/bartec")
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
RECORDED = {
    "servicerequest_create.xml": "ServiceRequest_Create",
    "servicerequest_create_error.xml": "ServiceRequest_Create",
    "servicerequests_get_SR1.xml": "ServiceRequests_Get",
    "servicerequests_get_SR6.xml": "ServiceRequests_Get",
    "servicerequests_history_get_51340.xml": "ServiceRequests_History_Get",
    "servicerequests_notes_types_get.xml": "ServiceRequests_Notes_Types_Get",
    "servicerequests_status_get.xml": "ServiceRequests_Statuses_Get",
    "servicerequests_updates_get_20200619.xml": "ServiceRequests_Updates_Get",
    "get_premises.xml": "Premises_Get",
}


@pytest.fixture
def sim() -> Iterator[BartecSimulator]:
    with BartecSimulator() as s:
        yield s  # type: ignore[misc]


@pytest.fixture
def harness(sim: BartecSimulator) -> ConformanceHarness:
    return bartec_harness(sim)


def _binding() -> object:
    client = Client(str(WSDL), settings=Settings(strict=True, forbid_dtd=True, forbid_entities=True))
    return client.wsdl.bindings["{http://bartec-systems.com/}CollectiveAPISoap"]


def _envelope(body: str) -> etree._Element:
    return etree.fromstring(
        f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>".encode())


@pytest.mark.skipif(not RECORDINGS.is_dir(), reason="reference recordings not available")
@pytest.mark.parametrize(("name", "op"), sorted(RECORDED.items()))
def test_wsdl_parses_the_recorded_responses(name: str, op: str) -> None:
    result = _binding().get(op).output.deserialize(_envelope((RECORDINGS / name).read_text()))  # type: ignore[attr-defined]
    assert result is not None
    if name == "servicerequest_create_error.xml":
        assert "Specified UPRN does not exist" in result.Errors.Message
    if name == "servicerequests_get_SR1.xml":
        assert result.ServiceRequest[0].ServiceStatus.Status == "OPEN"


def test_wsdl_is_strict_about_unexpected_elements() -> None:
    body = ('<ServiceRequest_CreateResponse xmlns="http://bartec-systems.com/"><ServiceRequest_CreateResult '
            'xmlns="http://www.bartec-systems.com/ServiceRequests_Types_Get.xsd"><Surprise>1</Surprise>'
            "</ServiceRequest_CreateResult></ServiceRequest_CreateResponse>")
    with pytest.raises(zx.XMLParseError):
        _binding().get("ServiceRequest_Create").output.deserialize(_envelope(body))  # type: ignore[attr-defined]


def test_simulator_answers_in_the_recorded_namespaces(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    connector.create(bartec_delivery(0))
    token = connector._session_token()
    body = (f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Body><ServiceRequests_Get xmlns="http://bartec-systems.com/">'
            f"<token>{token}</token><ExternalReference>WH-2026-000001</ExternalReference>"
            "</ServiceRequests_Get></soap:Body></soap:Envelope>")
    resp = requests.post(sim.tenant_url(TENANT), data=body.encode(), timeout=5,
                         headers={"SOAPAction": '"http://bartec-systems.com/ServiceRequests_Get"',
                                  "Content-Type": "text/xml; charset=utf-8"})
    root = etree.fromstring(resp.content)
    result = root.find(f"{{{SOAP}}}Body/{{http://bartec-systems.com/}}ServiceRequests_GetResponse/"
                       "{http://www.bartec-systems.com/ServiceRequests_Get.xsd}ServiceRequests_GetResult")
    assert result is not None and result.get("RecordCount") == "1"
    sr = result.find("{http://www.bartec-systems.com/ServiceRequests_Get.xsd}ServiceRequest")
    assert sr.find(f"{{{ITEM}}}ServiceCode").text.startswith("SR")
    assert sr.find(f"{{{ITEM}}}ServiceStatus/{{{ITEM}}}Status").text == "PENDING"
    errors = result.find("{http://www.bartec-systems.com/ServiceRequests_Get.xsd}Errors")
    assert errors.find(f"{{{ITEM}}}Result").text == "0"


def test_unknown_uprn_is_permanent_with_bartecs_message(harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    delivery = bartec_delivery(3, uprn="999999999999")
    with pytest.raises(PermanentError, match="Specified UPRN does not exist") as info:
        connector.create(delivery)
    assert delivery.hub_ref in str(info.value)
    assert harness.jobs_for(delivery.hub_ref) == 0


def test_payload_checked_against_the_wsdl_before_sending(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    base = bartec_delivery(4)
    too_long = type(base)(base.hub_ref, base.authority, base.service,
                          {**base.payload, "serviceLocationDescription": "x" * 81})
    unknown = type(base)(base.hub_ref, base.authority, base.service, {**base.payload, "Colour": "green"})
    missing = type(base)(base.hub_ref, base.authority, base.service,
                         {k: v for k, v in base.payload.items() if k != "ServiceTypeID"})
    before = len(sim.requests)
    with pytest.raises(PermanentError, match=r"serviceLocationDescription is 81 characters.*80"):
        connector.create(too_long)
    with pytest.raises(PermanentError, match="Colour is not a ServiceRequest_Create element"):
        connector.create(unknown)
    with pytest.raises(PermanentError, match="ServiceTypeID"):
        connector.create(missing)
    assert len(sim.requests) == before


def test_target_fields_come_from_the_wsdl(harness: ConformanceHarness) -> None:
    fields = harness.make_connector().target_fields()
    assert "token" not in fields and "ExternalReference" not in fields
    assert fields["serviceLocationDescription"].max_length == 80
    assert fields["UPRN"].required and fields["ServiceTypeID"].type == "int"
    assert fields["DateRequested"].type == "dateTime"
    assert fields["reporterContact"].children["Email"].max_length == 100
    assert fields["reporterContact"].children["ReporterType"].enum == ("Public", "Councillor", "Staff")
    ext = fields["extendedData"].children["ServiceRequest_CreateServiceRequest_CreateFields"]
    assert ext.repeated and ext.children["FieldValue"].max_length == 250


def test_render_is_the_exact_envelope(harness: ConformanceHarness) -> None:
    text = harness.make_connector().render(bartec_delivery(5))
    root = etree.fromstring(text.encode())
    create = root.find(f"{{{SOAP}}}Body/{{http://bartec-systems.com/}}ServiceRequest_Create")
    assert create.find("{http://bartec-systems.com/}ExternalReference").text == "WH-2026-000006"
    assert create.find("{http://bartec-systems.com/}token").text == "(session token)"
    contact = create.find("{http://bartec-systems.com/}reporterContact")
    assert contact[0].tag == "{http://www.bartec-systems.com/ServiceRequests_Create.xsd}Forename"


def test_job_raised_in_bartec_reaches_sync(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    job = sim.raise_direct(TENANT, "100120009999", 270, location_description="Dog bin by the park gate")
    page = connector.updates_since(None)
    [update] = [u for u in page.updates if u.backoffice_ref == job.ref]
    assert update.hub_ref is None and update.service_code == "270" and update.status_code == "OPEN"


def test_sync_asks_a_job_type_only_for_jobs_raised_in_bartec(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    """A job the Hub sent names its case, so its updates need no ServiceRequests_Get each to find its type."""
    ref = harness.make_connector().create(bartec_delivery(9)).backoffice_ref
    raised = sim.raise_direct(TENANT, "100120009998", 270, location_description="Fly-tip behind the shops")
    poller = harness.make_connector()  # another worker process: nothing cached from the create
    asked: list[str] = []
    invoke = poller._invoke
    poller._invoke = lambda op, **kw: (asked.append(op), invoke(op, **kw))[1]  # type: ignore[method-assign]
    updates = {u.backoffice_ref: u for u in poller.updates_since(None).updates}
    assert updates[ref].hub_ref == "WH-2026-000010" and updates[ref].service_code is None
    assert updates[raised.ref].hub_ref is None and updates[raised.ref].service_code == "270"
    assert asked.count("ServiceRequests_Get") == 1


def test_lifecycle_statuses_and_back_office_notes(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    ref = connector.create(bartec_delivery(6)).backoffice_ref
    for _ in range(5):
        harness.advance()
    statuses = [u.status_code for u in connector.updates_since(None).updates if u.backoffice_ref == ref]
    assert statuses == ["PENDING", "OPEN", "ASSIGNED", "IN PROGRESS", "CLOSED"]
    ref2 = connector.create(bartec_delivery(7)).backoffice_ref
    sim.set_status(TENANT, ref2, "UNABLE TO COMPLETE", "Bin not presented at the kerb")
    last = connector.updates_since(None).updates[-1]
    assert (last.backoffice_ref, last.status_code, last.note) == (ref2, "UNABLE TO COMPLETE",
                                                                  "Bin not presented at the kerb")
    assert last.hub_ref == "WH-2026-000008" and last.service_code == "238"


def test_cancel_and_notes(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    ref = connector.create(bartec_delivery(8)).backoffice_ref
    connector.add_note(ref, "Customer says the bin is behind the side gate")
    job = sim.store.by_ref(TENANT, ref)
    assert job is not None and job.data["notes"][0]["note"] == "Customer says the bin is behind the side gate"
    assert job.data["notes"][0]["type"] == 11
    connector.cancel(ref, "Duplicate report")
    connector.cancel(ref, "Duplicate report")  # idempotent
    assert job.status == "CANCELLED" and job.events[-1].note == "Duplicate report"
    cancelled = [u for u in connector.updates_since(None).updates if u.status_code == "CANCELLED"]
    assert len(cancelled) == 1
    closed = connector.create(bartec_delivery(9)).backoffice_ref
    sim.set_status(TENANT, closed, "CLOSED")
    with pytest.raises(PermanentError, match="cannot be changed"):
        connector.cancel(closed, "too late")
    with pytest.raises(PermanentError, match="no service request"):
        connector.cancel("SR99999999", "unknown")
    assert status_id(238, "CANCELLED") != status_id(239, "CANCELLED")


def test_expired_token_is_renewed(sim: BartecSimulator, harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    connector.find("WH-2026-000100")
    sim.expire_tokens()
    assert connector.find("WH-2026-000100") is None


def test_credentials_come_from_the_environment(sim: BartecSimulator) -> None:
    instance = ConnectorInstance(name="refuse-x", plugin="bartec", endpoint=sim.tenant_url(TENANT),
                                 credentials={"username": "NO_SUCH_USER_VAR", "password": "NO_SUCH_PASS_VAR"})
    with pytest.raises(ConfigError, match="NO_SUCH_USER_VAR"):
        BartecConnector(instance, env={}).find("WH-2026-000001")
    refused = BartecConnector(instance, env={"NO_SUCH_USER_VAR": "", "NO_SUCH_PASS_VAR": ""})
    with pytest.raises(PermanentError, match="Authenticate refused"):
        refused.find("WH-2026-000001")


def test_tenants_are_separate(sim: BartecSimulator) -> None:
    a = bartec_harness(sim, "bromsgrove").make_connector()
    b = bartec_harness(sim, "redditch").make_connector()
    a.create(bartec_delivery(10))
    assert b.find("WH-2026-000011") is None
    assert sim.jobs_for("WH-2026-000011", "bromsgrove") == 1
    assert all(u.backoffice_ref not in {j.ref for j in sim.store.tenant_jobs("bromsgrove")}
               for u in b.updates_since(None).updates)


def test_bad_cursor_is_permanent(harness: ConformanceHarness) -> None:
    with pytest.raises(PermanentError, match="invalid Bartec sync cursor"):
        harness.make_connector().updates_since("{not json")


def test_soap_client_fault_for_a_malformed_request(sim: BartecSimulator) -> None:
    resp = requests.post(sim.tenant_url(TENANT), data=b"<not-soap/>", timeout=5)
    assert resp.status_code == 500 and b"soap:Client" in resp.content
    hostile = requests.post(sim.tenant_url(TENANT), timeout=5,
                            data=b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>')
    assert hostile.status_code == 500 and b"soap:Client" in hostile.content and b"root:" not in hostile.content


def test_plugin_entry_point_and_serve() -> None:
    assert connector_class("bartec") is BartecConnector
    sim = serve(port=0, advance_every=None)
    try:
        assert requests.get(sim.url + "bromsgrove/?wsdl", timeout=5).content.startswith(b"<?xml")
    finally:
        sim.stop()


def test_instance_env_credentials_shape() -> None:
    assert set(ENV) == {"WYCHAVON_BARTEC_USER", "WYCHAVON_BARTEC_PASSWORD"}


def test_a_failed_history_call_hands_over_the_jobs_read_so_far(sim: BartecSimulator,
                                                                 harness: ConformanceHarness) -> None:
    """Sync reads one history per changed job; one flaky call must not throw the whole page away."""
    connector = harness.make_connector()
    refs = [connector.create(bartec_delivery(20 + i)).backoffice_ref for i in range(4)]
    harness.advance()
    everything = [(u.backoffice_ref, u.update_id) for u in connector.updates_since(None).updates]
    last_job = next(j for j in sim.store.jobs.values() if j.ref == refs[-1])
    sim.faults.next("error500", match=f"ServiceRequestID>{last_job.id}<")

    first = connector.updates_since(None)
    assert first.has_more and first.updates
    assert refs[-1] not in {u.backoffice_ref for u in first.updates}
    second = connector.updates_since(first.cursor)
    got = [(u.backoffice_ref, u.update_id) for u in first.updates + second.updates]
    assert sorted(got) == sorted(everything) and len(set(got)) == len(got)
    assert connector.updates_since(second.cursor).updates == []
    for ref in refs:  # each job's own history arrives in order
        ids = [int(i) for r, i in got if r == ref]
        assert ids == sorted(ids)


def test_a_failed_history_call_with_nothing_read_is_transient(sim: BartecSimulator,
                                                               harness: ConformanceHarness) -> None:
    connector = harness.make_connector()
    connector.create(bartec_delivery(30))
    sim.faults.next("error500", match="ServiceRequests_History_Get")
    with pytest.raises(TransientError):
        connector.updates_since(None)
    assert connector.updates_since(None).updates
