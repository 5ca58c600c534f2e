"""A loopback Bartec Collective style SOAP server: tenants by first path segment, jobs, updates, faults.

Requests are parsed with the project's safe XML parser; answers are SOAP 1.1 envelopes shaped like the
recorded Bartec responses (see bartec.wsdl for the sources): operation wrappers in
http://bartec-systems.com/, results in their own http://www.bartec-systems.com/<Operation>.xsd
namespace, shared items in http://www.bartec-systems.com, refusals as `<Errors><Result>1</Result>`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lxml import etree

from hubbridge.case import LONDON
from hubbridge.connectors.http import parse_xml
from hubbridge.connectors.simulator import Job, JobStore, Request, Response, Simulator
from hubbridge.errors import BadResponseError

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
TNS = "http://bartec-systems.com/"
ITEM = "http://www.bartec-systems.com"
WSDL_PATH = Path(__file__).with_name("bartec.wsdl")

LIFECYCLE = ("PENDING", "OPEN", "ASSIGNED", "IN PROGRESS", "CLOSED")
"""How the simulator moves a job along; UNABLE TO COMPLETE and CANCELLED are set explicitly."""
STATUSES = ("PENDING", "INTERVENTION", "OPEN", "ASSIGNED", "IN PROGRESS", "UNABLE TO COMPLETE", "CLOSED",
            "CANCELLED")
FINAL_STATUSES = ("CLOSED", "CANCELLED")

SERVICE_TYPES: dict[int, tuple[str, str]] = {
    # ServiceTypeID: (type name, service class), refuse and street-scene types as districts configure them
    238: ("Missed refuse", "MISSED BIN"),
    239: ("Missed recycling", "MISSED BIN"),
    240: ("Missed garden waste", "MISSED BIN"),
    241: ("Missed food", "MISSED BIN"),
    250: ("Assisted collection", "COLLECTION"),
    260: ("Bulky waste collection", "BULKY WASTE"),
    270: ("DOG BIN", "EMPTY BIN"),
    280: ("New container", "CONTAINERS"),
    290: ("Fly tipping", "STREET CLEANSING"),
}
NO_DEFAULT_LAND_TYPE = frozenset({290})
"""Service types set up without a default land type: a create must then give LandTypeID (open311-adapter 906f2725)."""
NOTE_TYPES = {1: "Specific note", 11: "General note", 68: "Other note"}
NOTE_TYPE_KINDS = {1: "amendment", 11: "note", 68: "note"}
"""How the simulated councils file what the Hub tells them (Bartec itself knows no Hub kinds): amendments as
Specific notes, anything else as a note. Only the follow-up records tests count read it; the connector's
default `followup_note_types` option files them the same way."""
UNKNOWN_UPRNS = frozenset({"999999999999", "100000000000", "1"})
"""UPRNs the simulated gazetteer does not hold: creating a job there gives Bartec's real error."""
LOCATION_DESCRIPTION_MAX = 80


def status_id(service_type_id: int, status: str) -> int:
    """Bartec status IDs are per service type; the simulator derives them so they are stable."""
    return 2000 + service_type_id * 10 + STATUSES.index(status)


def status_of(status_id_value: int) -> tuple[int, str] | None:
    type_id, index = divmod(status_id_value - 2000, 10)
    if type_id in SERVICE_TYPES and 0 <= index < len(STATUSES):
        return type_id, STATUSES[index]
    return None


def bartec_time(at: datetime) -> str:
    """Bartec's wire format: local (UK) time, no offset, milliseconds."""
    return at.astimezone(LONDON).replace(tzinfo=None).isoformat(timespec="milliseconds")


def millis(at: datetime) -> datetime:
    """The instant as Bartec reports it (to the millisecond), so comparisons match what clients saw."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def parse_time(text: str | None) -> datetime | None:
    """An xsd:dateTime from a request; naive values are UK local time, as Bartec sends and expects."""
    if not text:
        return None
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=LONDON) if value.tzinfo is None else value


class SoapFault(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Refused(Exception):
    """An in-body Bartec refusal: `<Errors><Result>1</Result><Message>...`."""


def _sub(parent: etree._Element, ns: str, name: str, text: object | None = None, **attrs: str) -> etree._Element:
    """A child element, declaring `ns` as the default namespace only where it changes (as Bartec does)."""
    nsmap = None if parent.nsmap.get(None) == ns else {None: ns}
    el = etree.SubElement(parent, f"{{{ns}}}{name}", attrs, nsmap=nsmap)
    if text is not None:
        el.text = str(text)
    return el


def _child(el: etree._Element | None, name: str) -> etree._Element | None:
    if el is None:
        return None
    for c in el:
        if isinstance(c.tag, str) and etree.QName(c).localname == name:
            return c
    return None


def _items(el: etree._Element | None, name: str) -> list[etree._Element]:
    """The element children of `el`'s child `name` (an ArrayOf... parameter), empty when absent."""
    parent = _child(el, name) if el is not None else None
    return [] if parent is None else [c for c in parent if isinstance(c.tag, str)]


def _text(el: etree._Element | None, name: str) -> str | None:
    if el is None:
        return None
    c = _child(el, name)
    if c is None or c.text is None:
        return None
    return c.text.strip()


class BartecSimulator(Simulator):
    """Bartec Collective over SOAP on loopback; one council per first path segment."""

    name = "bartec"
    xml = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, history_date_filter: bool = False,
                 external_reference_lookup: bool = False) -> None:
        super().__init__(host, port)
        self.history_date_filter = history_date_filter
        """Off by default, as on a real Bartec: True makes History_Get's Date filter work as documented."""
        self.external_reference_lookup = external_reference_lookup
        """Off by default: a convenience the real Bartec lacks, ServiceRequests_Get filtered by ExternalReference."""
        self.store = JobStore(LIFECYCLE, ref_format="SR{id:08d}", first_id=51400)
        self.unknown_uprns: set[str] = set(UNKNOWN_UPRNS)
        self._tokens: dict[str, str] = {}  # token -> tenant
        self._lock = threading.Lock()
        self._note_ids = itertools.count(9000)
        self._document_ids = itertools.count(7000)
        self._ops: dict[str, Callable[[str, etree._Element], etree._Element]] = {
            "ServiceRequest_Create": self._create,
            "ServiceRequests_Get": self._get,
            "ServiceRequests_Updates_Get": self._updates,
            "ServiceRequests_History_Get": self._history,
            "ServiceRequests_Statuses_Get": self._statuses,
            "ServiceRequest_Status_Set": self._status_set,
            "ServiceRequest_Note_Create": self._note_create,
            "ServiceRequest_Document_Create": self._document_create,
            "ServiceRequests_Detail_Get": self._detail,
            "ServiceRequests_Notes_Types_Get": self._note_types,
            "Premises_Get": self._premises,
        }

    # -- what tests and the demo drive ------------------------------------------------------------
    def advance(self, tenant: str | None = None) -> int:
        """Move every open job one step along PENDING → OPEN → ASSIGNED → IN PROGRESS → CLOSED."""
        return self.store.advance(tenant)

    def auto_advance(self, every_seconds: float = 5.0, step: Callable[[], object] | None = None) -> None:
        """Move jobs along in the background (by default every job one step) until stopped."""
        super().auto_advance(every_seconds, step or self.advance)

    def raise_direct(self, tenant: str, uprn: str, service_type_id: int, *, location_description: str = "",
                     status: str = "OPEN", note: str | None = None) -> Job:
        """A job raised directly in the back office (a resident phoned the depot): no ExternalReference."""
        if service_type_id not in SERVICE_TYPES:
            raise ValueError(f"unknown service type {service_type_id}")
        job = self.store.create(tenant, None, str(service_type_id), {
            "uprn": str(uprn), "service_type_id": service_type_id, "location_description": location_description,
            "date_requested": self.store.clock(), "notes": [], "added_by": "depot",
        })
        self._set_initial_status(job, status, note or "raised in Bartec")
        return job

    def set_status(self, tenant: str, service_code: str, status: str, note: str | None = None,
                   closing_code: str | None = None) -> None:
        """Change a job's status as a back-office user would (e.g. CLOSED with closing code NOT JUSTIFIED)."""
        job = self.store.by_ref(tenant, service_code)
        if job is None:
            raise KeyError(service_code)
        ev = self.store.set_status(job, status, note)
        if closing_code:
            with self.store._lock:
                job.data.setdefault("closing_codes", {})[ev.update_id] = closing_code

    def expire_tokens(self) -> None:
        """Forget every issued token, as Bartec does when a session times out."""
        with self._lock:
            self._tokens.clear()

    def _set_initial_status(self, job: Job, status: str, note: str | None) -> None:
        with self.store._lock:  # the creation event carries the starting status, not a second event
            job.status = status
            job.events[0].status = status
            job.events[0].note = note

    # -- HTTP / SOAP ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.method == "GET":  # e.g. <tenant>/?wsdl: the project's WSDL, as an asmx service serves its own
            return Response(200, WSDL_PATH.read_bytes(), "text/xml; charset=utf-8")
        if request.method != "POST":
            return Response(405, b"POST a SOAP envelope", "text/plain", {"Allow": "POST"})
        try:
            op, op_el = self._operation(request)
            if op == "Authenticate":
                return self._envelope(self._authenticate(request.tenant, op_el))
            with self._lock:
                token_tenant = self._tokens.get(_text(op_el, "token") or "")
            if token_tenant != request.tenant:
                return self._envelope(self._refusal(op, "Invalid Token"))
            try:
                return self._envelope(self._ops[op](request.tenant, op_el))
            except _Refused as exc:
                return self._envelope(self._refusal(op, str(exc)))
            except (ValueError, TypeError) as exc:
                raise SoapFault("Client", f"Server was unable to read request. ---> {exc}") from None
        except SoapFault as fault:
            return self._fault(fault.code, fault.message)

    def server_error(self) -> Response:
        return self._fault("Server", "Server was unable to process request. ---> Timeout expired.")

    def _operation(self, request: Request) -> tuple[str, etree._Element]:
        try:
            root = parse_xml(request.body, "bartec-simulator", "request")
        except BadResponseError as exc:
            raise SoapFault("Client", f"Server was unable to read request: {exc.message}") from None
        body = root.find(f"{{{SOAP_ENV}}}Body")
        if body is None or len(body) == 0 or not isinstance(body[0].tag, str):
            raise SoapFault("Client", "Server was unable to read request: no SOAP body")
        qname = etree.QName(body[0])
        if qname.namespace != TNS or (qname.localname not in self._ops and qname.localname != "Authenticate"):
            raise SoapFault("Client", f"Server did not recognize the value of HTTP Header SOAPAction: "
                                      f"{request.headers.get('soapaction', '')}.")
        return qname.localname, body[0]

    def _envelope(self, response_el: etree._Element) -> Response:
        env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV, "xsi": XSI})
        body = etree.SubElement(env, f"{{{SOAP_ENV}}}Body")
        body.append(response_el)
        return Response(200, etree.tostring(env, xml_declaration=True, encoding="utf-8"), "text/xml; charset=utf-8")

    def _fault(self, code: str, message: str) -> Response:
        env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
        fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP_ENV}}}Body"), f"{{{SOAP_ENV}}}Fault")
        etree.SubElement(fault, "faultcode").text = f"soap:{code}"
        etree.SubElement(fault, "faultstring").text = message
        etree.SubElement(fault, "detail")
        return Response(500, etree.tostring(env, xml_declaration=True, encoding="utf-8"), "text/xml; charset=utf-8")

    @staticmethod
    def _result(op: str, result_ns: str | None = None, count: int | str | None = None) -> tuple[Any, Any]:
        wrapper = etree.Element(f"{{{TNS}}}{op}Response", nsmap={None: TNS})
        ns = result_ns or f"http://www.bartec-systems.com/{op}.xsd"
        attrs = {} if count is None else {"RecordCount": str(count)}
        return wrapper, _sub(wrapper, ns, f"{op}Result", **attrs)

    @staticmethod
    def _errors(result: etree._Element, code: int = 0, message: str | None = None) -> None:
        errors = _sub(result, result.nsmap[None], "Errors")
        _sub(errors, ITEM, "Result", code)
        _sub(errors, ITEM, "Message", message)

    def _refusal(self, op: str, message: str) -> etree._Element:
        ns = "http://www.bartec-systems.com/ServiceRequests_Types_Get.xsd" if op == "ServiceRequest_Create" else None
        wrapper, result = self._result(op, ns, 0)
        self._errors(result, 1, message)
        return wrapper

    # -- operations -------------------------------------------------------------------------------
    def _authenticate(self, tenant: str, el: etree._Element) -> etree._Element:
        wrapper = etree.Element(f"{{{TNS}}}AuthenticateResponse", nsmap={None: TNS})
        result = _sub(wrapper, TNS, "AuthenticateResult")
        if not _text(el, "user") or not _text(el, "password"):
            error = _sub(_sub(result, TNS, "Errors"), TNS, "Error")
            _sub(error, ITEM, "Result", 1)
            _sub(error, ITEM, "Message", "Invalid user name or password")
            return wrapper
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = tenant
        tok = _sub(result, TNS, "Token")
        _sub(tok, TNS, "TokenString", token)
        _sub(tok, TNS, "ExpiryDate", bartec_time(datetime.now(UTC) + timedelta(hours=1)))
        return wrapper

    def _create(self, tenant: str, el: etree._Element) -> etree._Element:
        where = "Error in 'API.pr_ServiceRequest_Create'"
        uprn = _text(el, "UPRN")
        if not uprn:
            raise _Refused(f"{where}: UPRN must be supplied")
        uprn = uprn.split(".")[0]
        if uprn in self.unknown_uprns:
            raise _Refused(f"{where}: Specified UPRN does not exist")
        type_text = _text(el, "ServiceTypeID")
        type_id = int(type_text) if type_text else 0
        if type_id not in SERVICE_TYPES:
            raise _Refused(f"{where}: Specified ServiceTypeID does not exist")
        if type_id in NO_DEFAULT_LAND_TYPE and not _text(el, "LandTypeID"):
            raise _Refused(f"{where}: LandTypeID must be supplied")
        status = "PENDING"
        status_text = _text(el, "ServiceStatusID")
        if status_text:
            found = status_of(int(status_text))
            if found is None or found[0] != type_id:
                raise _Refused(f"{where}: Specified ServiceStatusID is not valid for the service type")
            status = found[1]
        description = _text(el, "serviceLocationDescription") or ""
        if len(description) > LOCATION_DESCRIPTION_MAX:
            raise _Refused(f"{where}: String or binary data would be truncated (serviceLocationDescription)")
        requested = parse_time(_text(el, "DateRequested"))
        if requested is None:
            raise _Refused(f"{where}: DateRequested must be supplied")
        metric = _child(_child(el, "ServiceRequest_Location"), "Metric")
        contact = _child(el, "reporterContact")
        extended = _child(el, "extendedData")
        fields = {}
        for f in [] if extended is None else [c for c in extended if isinstance(c.tag, str)]:
            name = _text(f, "FieldName")
            if name:
                fields[name] = _text(f, "FieldValue") or ""
        data = {
            "uprn": uprn, "service_type_id": type_id, "location_description": description,
            "date_requested": requested, "crm_id": _text(el, "CRMID"),
            "lat": _text(metric, "Latitude"), "lon": _text(metric, "Longitude"),
            "contact": {k: _text(contact, k) for k in ("Forename", "Surname", "Email", "Telephone", "ReporterType")},
            "extended": fields, "notes": [], "added_by": "hubbridge",
        }
        job = self.store.create(tenant, _text(el, "ExternalReference") or None, str(type_id), data)
        self._set_initial_status(job, status, "created")
        wrapper, result = self._result("ServiceRequest_Create",
                                       "http://www.bartec-systems.com/ServiceRequests_Types_Get.xsd", 1)
        _sub(result, result.nsmap[None], "ServiceRequest_Create")
        _sub(result, result.nsmap[None], "ServiceCode", job.ref)
        return wrapper

    def _get(self, tenant: str, el: etree._Element) -> etree._Element:
        code = _text(el, "ServiceCode")
        external = _text(el, "ExternalReference")
        uprns = {(u.text or "").strip().split(".")[0] for u in _items(el, "UPRNs")}
        types = {int(t.text) for t in _items(el, "ServiceTypes") if t.text}
        dates = _child(el, "RequestDate")
        low, high = parse_time(_text(dates, "MinimumDate")), parse_time(_text(dates, "MaximumDate"))
        if external and not self.external_reference_lookup:
            # a real Bartec has no such criterion; answer as the faithful server would: a SOAP client fault
            raise SoapFault("Client", "Server was unable to read request. ---> The element 'ServiceRequests_Get' "
                                      "has invalid child element 'ExternalReference'.")
        pool = self.store.by_hub_ref(tenant, external) if external else self.store.tenant_jobs(tenant)
        jobs = [j for j in pool
                if (not code or j.ref == code)
                and (not uprns or j.data["uprn"] in uprns) and (not types or j.data["service_type_id"] in types)
                and (low is None or j.data["date_requested"] >= low)
                and (high is None or j.data["date_requested"] <= high)]
        jobs.sort(key=lambda j: j.id)
        wrapper, result = self._result("ServiceRequests_Get", count=len(jobs))
        for job in jobs:
            self._service_request(result, job)
        self._errors(result)
        return wrapper

    def _service_request(self, result: etree._Element, job: Job) -> etree._Element:
        type_id = job.data["service_type_id"]
        type_name, class_name = SERVICE_TYPES[type_id]
        sr = _sub(result, result.nsmap[None], "ServiceRequest")
        _sub(sr, ITEM, "id", job.id)
        _sub(sr, ITEM, "ServiceCode", job.ref)
        premises = _sub(sr, ITEM, "Premises")
        _sub(premises, ITEM, "UPRN", job.data["uprn"])
        if job.data.get("lat") and job.data.get("lon"):
            loc = _sub(sr, ITEM, "ServiceLocation")
            _sub(loc, ITEM, "Metric", Latitude=job.data["lat"], Longitude=job.data["lon"])
        _sub(sr, ITEM, "DateRequested", bartec_time(job.data["date_requested"]))
        st = _sub(sr, ITEM, "ServiceType")
        _sub(st, ITEM, "ID", type_id)
        _sub(st, ITEM, "Name", type_name)
        _sub(st, ITEM, "Description", type_name)
        sc = _sub(st, ITEM, "ServiceClass")
        _sub(sc, ITEM, "Name", class_name)
        _sub(sc, ITEM, "Category", "General")
        ss = _sub(sr, ITEM, "ServiceStatus")
        _sub(ss, ITEM, "ID", status_id(type_id, job.status))
        _sub(ss, ITEM, "Status", job.status)
        _sub(ss, ITEM, "SequenceNumber", STATUSES.index(job.status))
        _sub(ss, ITEM, "ServiceTypeID", type_id)
        _sub(sr, ITEM, "ExternalReference", job.hub_ref or "")
        stamp = _sub(sr, ITEM, "RecordStamp")
        _sub(stamp, ITEM, "AddedBy", job.data.get("added_by", "hubbridge"))
        _sub(stamp, ITEM, "DateAdded", bartec_time(job.created_at))
        return sr

    def _updates(self, tenant: str, el: etree._Element) -> etree._Element:
        since = parse_time(_text(el, "LastUpdated"))
        if since is None:
            raise _Refused("Error in 'API.pr_ServiceRequests_Updates_Get': LastUpdated must be supplied")
        jobs = self.store.changed_since(tenant, since)  # `since` is whole milliseconds, as millis(changed_at) is
        jobs.sort(key=lambda j: (j.changed_at, j.id))
        wrapper, result = self._result("ServiceRequests_Updates_Get", count=len(jobs))
        ns = result.nsmap[None]
        for job in jobs:
            type_name, class_name = SERVICE_TYPES[job.data["service_type_id"]]
            upd = _sub(result, ns, "ServiceRequest_Updates", RecordCount="0")
            _sub(upd, ns, "ServiceRequestID", job.id)
            _sub(upd, ns, "ServiceCode", job.ref)
            # the external reference given at create (open311-adapter: "JobReference is the external ID")
            _sub(upd, ns, "JobReference", job.hub_ref or "")
            _sub(upd, ns, "ServiceCategory", "General")
            _sub(upd, ns, "ServiceClass", class_name)
            _sub(upd, ns, "ServiceType", type_name)
            _sub(upd, ns, "DateAdded", "0001-01-01T00:00:00")
            _sub(upd, ns, "DateChanged", bartec_time(job.changed_at))
        self._errors(result)
        return wrapper

    def _history(self, tenant: str, el: etree._Element) -> etree._Element:
        sr_id = int(_text(el, "ServiceRequestID") or 0)
        since = parse_time(_text(el, "Date"))
        if since is None:
            # as the real service answers when Date is left out (open311-adapter commit 11e47701)
            raise _Refused("SqlDateTime overflow. Must be between 1/1/1753 12:00:00 AM and 12/31/9999 11:59:59 PM.")
        job = self.store.jobs.get(sr_id)
        events = []
        if job is not None and job.tenant == tenant:
            with self.store._lock:
                if self.history_date_filter:
                    events = [e for e in job.events if millis(e.at) >= since]
                elif since <= millis(job.created_at):
                    # Bartec's bug: Date does not filter entries; it gives all of the history when it is before
                    # the request was created and none of it after
                    events = list(job.events)
        wrapper, result = self._result("ServiceRequests_History_Get", count=len(events))
        ns = result.nsmap[None]
        for ev in events:
            assert job is not None
            type_name, class_name = SERVICE_TYPES[job.data["service_type_id"]]
            h = _sub(result, ns, "ServiceRequest_History")
            _sub(h, ns, "id", ev.update_id)
            _sub(h, ns, "ServiceCode", job.ref)
            _sub(h, ns, "UPRN", job.data["uprn"])
            _sub(h, ns, "DateRequested", bartec_time(job.data["date_requested"]))
            _sub(h, ns, "DateChanged", bartec_time(ev.at))
            if ev.status in FINAL_STATUSES:
                _sub(h, ns, "DateClosed", bartec_time(ev.at))
            closing = job.data.get("closing_codes", {}).get(ev.update_id)
            if closing:
                _sub(h, ns, "ClosingCode", closing)
            _sub(h, ns, "ServiceClassName", class_name)
            _sub(h, ns, "ServiceTypeName", type_name)
            _sub(h, ns, "ServiceStatusName", ev.status)
            _sub(h, ns, "ExternalReference", job.hub_ref or "")
            stamp = _sub(h, ns, "RecordStamp")
            _sub(stamp, ITEM, "AddedBy", job.data.get("added_by", "hubbridge"))
            _sub(stamp, ITEM, "DateAdded", bartec_time(ev.at))
            _sub(stamp, ITEM, "Comments", ev.note or "")
        self._errors(result)
        return wrapper

    def _statuses(self, tenant: str, el: etree._Element) -> etree._Element:
        wanted = _text(el, "ServiceTypeID")
        types = [int(wanted)] if wanted else sorted(SERVICE_TYPES)
        types = [t for t in types if t in SERVICE_TYPES]
        wrapper, result = self._result("ServiceRequests_Statuses_Get", count=len(types) * len(STATUSES))
        for type_id in types:
            for seq, status in enumerate(STATUSES):
                ss = _sub(result, result.nsmap[None], "ServiceStatus")
                _sub(ss, ITEM, "ID", status_id(type_id, status))
                _sub(ss, ITEM, "Status", status)
                _sub(ss, ITEM, "SequenceNumber", seq)
                _sub(ss, ITEM, "ServiceTypeID", type_id)
        self._errors(result)
        return wrapper

    def _job(self, tenant: str, el: etree._Element, where: str) -> Job:
        code = _text(el, "ServiceCode")
        job = self.store.by_ref(tenant, code) if code else None
        sr_id = _text(el, "ServiceRequestID")
        if job is None and sr_id:
            found = self.store.jobs.get(int(sr_id))
            job = found if found is not None and found.tenant == tenant else None
        if job is None:
            raise _Refused(f"Error in '{where}': Specified service request does not exist")
        return job

    def _status_set(self, tenant: str, el: etree._Element) -> etree._Element:
        where = "API.pr_ServiceRequest_Status_Set"
        job = self._job(tenant, el, where)
        found = status_of(int(_text(el, "StatusID") or 0))
        if found is None or found[0] != job.data["service_type_id"]:
            raise _Refused(f"Error in '{where}': Specified StatusID is not valid for the service type")
        if job.status in FINAL_STATUSES:
            raise _Refused(f"Error in '{where}': Service request {job.ref} is {job.status} and cannot be changed")
        comments = _text(el, "Comments")
        self.store.set_status(job, found[1], comments)
        if found[1] == "CANCELLED":
            # other statuses a client sets (e.g. OPEN on a new bulky collection) are no follow-up of the Hub's
            self.store.record_followup(job, "cancel", comments or "", status_id=status_id(found[0], found[1]))
        wrapper, result = self._result("ServiceRequest_Status_Set", count=1)
        self._errors(result)
        return wrapper

    def _note_create(self, tenant: str, el: etree._Element) -> etree._Element:
        where = "API.pr_ServiceRequest_Note_Create"
        job = self._job(tenant, el, where)
        note_type = int(_text(el, "NoteTypeID") or 0)
        if note_type not in NOTE_TYPES:
            raise _Refused(f"Error in '{where}': Specified NoteTypeID does not exist")
        note_id = next(self._note_ids)
        # a second identical call makes a second note, as on a real Bartec: nothing here is idempotent
        text = _text(el, "Note") or ""
        with self.store._lock:
            job.data["notes"].append({"id": note_id, "type": note_type, "note": text,
                                      "comment": _text(el, "Comment"), "at": self.store.clock()})
        self.store.record_followup(job, NOTE_TYPE_KINDS.get(note_type, "note"), text, note_id=note_id,
                                   note_type=note_type)
        wrapper, result = self._result("ServiceRequest_Note_Create", count=1)
        _sub(result, result.nsmap[None], "NoteID", note_id)
        self._errors(result)
        return wrapper

    def _document_create(self, tenant: str, el: etree._Element) -> etree._Element:
        where = "API.pr_ServiceRequest_Document_Create"
        job = self._job(tenant, el, where)
        attached = _child(el, "AttachedDocument")
        if attached is None:
            raise _Refused(f"Error in '{where}': AttachedDocument must be supplied")
        name, extension = _text(attached, "Name"), _text(attached, "FileExtension")
        if not name:
            raise _Refused(f"Error in '{where}': Name must be supplied")
        if not extension:
            raise _Refused(f"Error in '{where}': FileExtension must be supplied")
        try:
            content = base64.b64decode(_text(attached, "Document") or "", validate=True)
        except (binascii.Error, ValueError):
            # what an asmx service answers when a base64Binary parameter does not decode
            raise SoapFault("Client", "Server was unable to read request. ---> There is an error in XML document. "
                                      "---> Invalid length for a Base-64 char array or string.") from None
        if not content:
            raise _Refused(f"Error in '{where}': Document must be supplied")
        public = (_text(el, "Public") or "false").lower() in ("true", "1")
        document = {"id": next(self._document_ids), "client_id": _text(attached, "ID"), "name": name,
                    "extension": extension, "size": len(content), "public": public,
                    "comment": _text(el, "Comment"), "date_taken": parse_time(_text(el, "DateTaken")),
                    "at": self.store.clock()}
        with self.store._lock:
            job.data.setdefault("documents", []).append(document)
        self.store.record_followup(job, "evidence", document["comment"] or "", documents=[name],
                                   document_id=document["id"], size=len(content))
        wrapper, result = self._result("ServiceRequest_Document_Create", count=1)
        self._errors(result)
        return wrapper

    def _detail(self, tenant: str, el: etree._Element) -> etree._Element:
        codes = [(c.text or "").strip() for c in _items(el, "ServiceCodes")]
        jobs = [j for j in (self.store.by_ref(tenant, code) for code in codes if code) if j is not None]
        wrapper, result = self._result("ServiceRequests_Detail_Get", count=len(jobs))
        for job in jobs:
            sr = self._service_request(result, job)
            with self.store._lock:
                notes, documents = list(job.data.get("notes", ())), list(job.data.get("documents", ()))
            if notes:
                holder = _sub(sr, ITEM, "Notes")
                for note in notes:
                    n = _sub(holder, ITEM, "Note")
                    _sub(n, ITEM, "ID", note["id"])
                    nt = _sub(n, ITEM, "NoteType")
                    _sub(nt, ITEM, "ID", note["type"])
                    _sub(nt, ITEM, "Description", NOTE_TYPES[note["type"]])
                    _sub(n, ITEM, "Note", note["note"])
                    if note.get("comment"):
                        _sub(n, ITEM, "Comment", note["comment"])
                    stamp = _sub(n, ITEM, "RecordStamp")
                    _sub(stamp, ITEM, "AddedBy", "hubbridge")
                    _sub(stamp, ITEM, "DateAdded", bartec_time(note["at"]))
            if documents:
                holder = _sub(sr, ITEM, "AttachedDocuments")
                for document in documents:
                    d = _sub(holder, ITEM, "AttachedDocument")
                    _sub(d, ITEM, "ID", document["id"])
                    _sub(d, ITEM, "DocumentName", document["name"])
                    _sub(d, ITEM, "FileExtension", document["extension"])
                    _sub(d, ITEM, "Public", "true" if document["public"] else "false")
                    stamp = _sub(d, ITEM, "RecordStamp")
                    _sub(stamp, ITEM, "AddedBy", "hubbridge")
                    _sub(stamp, ITEM, "DateAdded", bartec_time(document["at"]))
        self._errors(result)
        return wrapper

    def _note_types(self, tenant: str, el: etree._Element) -> etree._Element:
        wrapper, result = self._result("ServiceRequests_Notes_Types_Get", count=len(NOTE_TYPES))
        for type_id, description in NOTE_TYPES.items():
            nt = _sub(result, result.nsmap[None], "ServiceNoteType")
            _sub(nt, ITEM, "ID", type_id)
            _sub(nt, ITEM, "Description", description)
            _sub(nt, ITEM, "Public", "false")
        self._errors(result)
        return wrapper

    def _premises(self, tenant: str, el: etree._Element) -> etree._Element:
        uprn = (_text(el, "UPRN") or "").split(".")[0]
        found = bool(uprn) and uprn not in self.unknown_uprns
        wrapper, result = self._result("Premises_Get", count=int(found))
        if found:
            p = _sub(result, result.nsmap[None], "Premises")
            _sub(p, ITEM, "UPRN", uprn)
            addr = _sub(p, ITEM, "Address")
            _sub(addr, ITEM, "Address1")
            _sub(addr, ITEM, "Address2", int(uprn) % 200 + 1)
            _sub(addr, ITEM, "Street", "HIGH STREET")
            _sub(addr, ITEM, "Town", tenant.replace("-", " ").upper())
        self._errors(result)
        return wrapper


def serve(port: int = 8701, host: str = "127.0.0.1", advance_every: float | None = 10.0) -> BartecSimulator:
    """Start the simulator (for the demo); jobs move one step every `advance_every` seconds."""
    sim = BartecSimulator(host=host, port=port)
    sim.start()
    if advance_every:
        sim.auto_advance(advance_every)
    return sim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hubbridge.connectors.bartec",
                                     description="Run the Bartec Collective simulator on loopback.")
    parser.add_argument("--port", type=int, default=8701)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--advance-every", type=float, default=10.0,
                        help="seconds between lifecycle steps (0: never)")
    args = parser.parse_args(argv)
    sim = serve(args.port, args.host, args.advance_every or None)
    print(f"Bartec simulator on {sim.url}<tenant>/ (WSDL at {sim.url}<tenant>/?wsdl); Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.stop()
