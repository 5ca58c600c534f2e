"""A loopback SOAP server playing a revenues & benefits back office (one system per tenant path segment).

Speaks the shipped `revenues.wsdl`: raises work items, moves them through officer work queues, pages its
changes by change number, takes notes, evidence documents and withdrawals (none of them idempotent, as the
WSDL says), reads notes and documents back, refuses unknown accounts and work items with soap:Client faults
and, through the shared FaultPlan, misbehaves like a real one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from lxml import etree

from hubbridge.connectors.http import parse_xml
from hubbridge.connectors.revenues.connector import NS, WSDL_PATH, XSD_PATH, xsd_facets
from hubbridge.connectors.simulator import Job, JobStore, Request, Response, Simulator
from hubbridge.errors import BadResponseError

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
XML_TYPE = "text/xml; charset=utf-8"

TENANT_AUTHORITIES: dict[str, frozenset[str]] = {
    "shared-services": frozenset({"MHDC", "WCC", "WDC"}),  # Malvern Hills, Worcester, Wychavon
    "bromsgrove": frozenset({"BDC"}),
    "redditch": frozenset({"RBC"}),
    "wyre-forest": frozenset({"WFDC"}),
}
"""Which billing authorities each tenant's system bills for."""

ALL_AUTHORITIES = frozenset({"BDC", "MHDC", "RBC", "WCC", "WDC", "WFDC"})
WORK_ITEM_TYPES = frozenset({"CTCOA", "CTSPD", "HBCOC", "CTARR"})
EVIDENCE_TYPES = frozenset({"CTSPD", "HBCOC"})
"""Work-item types that wait for the customer's evidence before they can be completed."""

LIFECYCLE = ("RECEIVED", "ALLOCATED", "IN_PROGRESS", "AWAITING_EVIDENCE", "COMPLETED", "CLOSED")
FINAL = frozenset({"CLOSED", "REJECTED", "WITHDRAWN"})
NOT_WITHDRAWABLE = frozenset({"COMPLETED", "CLOSED", "REJECTED"})

UNKNOWN_ACCOUNTS = frozenset({"90000001", "90000002", "90000003", "99999"})
"""Council tax account / benefit claim references the simulated system has never heard of."""

NOTE_TYPES = frozenset({"GENERAL", "CUSTOMER_CONTACT", "AMENDMENT"})
DOCUMENT_TYPES = frozenset({"application/pdf", "image/jpeg", "image/png", "image/gif", "image/tiff", "text/plain"})
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
MAX_DOCUMENTS = 10
"""What AddServiceRequestDocument takes in one call (the XSD's maxOccurs and its documented size limit)."""

TEAM = {"CTCOA": "Council Tax team", "CTSPD": "Council Tax discounts team", "HBCOC": "Benefits team",
        "CTARR": "Council Tax recovery team"}


def element_max_lengths() -> dict[str, int]:
    """maxLength of each named element of the XSD, as the back office's short columns enforce them."""
    facets = xsd_facets()
    root = parse_xml(XSD_PATH.read_bytes(), "revenues-simulator", what="schema")
    out: dict[str, int] = {}
    for el in root.iter("{http://www.w3.org/2001/XMLSchema}element"):
        name, typ = el.get("name"), (el.get("type") or "")
        fc = facets.get(typ)
        if name and fc is not None and fc.max_length is not None:
            out[name] = fc.max_length
    return out


class SoapFault(Exception):
    """Raised inside a handler to answer with a soap:Fault."""

    def __init__(self, code: str, error: str, text: str) -> None:
        self.code, self.error, self.text = code, error, text
        super().__init__(text)


def _iso(value: datetime) -> str:
    return value.isoformat()


def _flag(op_el: etree._Element, name: str) -> bool:
    return (op_el.findtext(f"{{{NS}}}{name}") or "").strip().lower() in ("true", "1")


class RevenuesSimulator(Simulator):
    """Revenues & benefits back office on loopback; one system per tenant (`/shared-services/`, ...)."""

    name = "revenues"
    xml = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 tenants: Iterable[str] = tuple(TENANT_AUTHORITIES),
                 credentials: Mapping[str, tuple[str, str]] | None = None) -> None:
        super().__init__(host, port)
        self.tenants = set(tenants)
        self.credentials = dict(credentials or {})
        """tenant -> (username, password); a tenant not listed accepts any non-empty pair."""
        self.unknown_accounts = set(UNKNOWN_ACCOUNTS)
        self.store = JobStore(LIFECYCLE, ref_format="RB{id:07d}", first_id=1000)
        self._lock = threading.RLock()
        self._kinds: dict[int, tuple[str, str]] = {}  # change number -> (ChangeType, Source)
        self._note_types: dict[int, str] = {}  # change number of a note -> its NoteType
        self._documents: dict[int, list[dict[str, Any]]] = {}  # job id -> stored documents (no file bytes)
        self._document_ids = 0
        self._max_len = element_max_lengths()

    # -- test and demo controls ------------------------------------------------------------------------
    def advance(self, tenant: str | None = None) -> int:
        """Move every open work item one step through the work queues; returns how many moved."""
        moved = 0
        with self._lock:
            for job in list(self.store.jobs.values()):
                if (tenant is not None and job.tenant != tenant) or self.store.stalled(job):
                    continue
                step = self._next_step(job)
                if step is None:
                    continue
                status, note = step
                if status == "AWAITING_EVIDENCE":
                    job.data["evidence_requested"] = True
                self._change(job, status, note, "STATUS", "OFFICER")
                moved += 1
        return moved

    def _next_step(self, job: Job) -> tuple[str, str] | None:
        kind = job.service_code
        match job.status:
            case "RECEIVED":
                return "ALLOCATED", f"allocated to the {TEAM.get(kind, 'Revenues team')}"
            case "ALLOCATED":
                return "IN_PROGRESS", "an officer is working on it"
            case "IN_PROGRESS" if kind in EVIDENCE_TYPES and not job.data.get("evidence_requested"):
                return "AWAITING_EVIDENCE", "evidence requested from the customer"
            case "AWAITING_EVIDENCE":
                return "IN_PROGRESS", "evidence received"
            case "IN_PROGRESS":
                return "COMPLETED", "account updated and a revised bill or notification issued"
            case "COMPLETED":
                return "CLOSED", "closed"
        return None

    def raise_direct(self, tenant: str, work_item_type: str, *, authority: str | None = None,
                     council_tax_account: str | None = None, benefit_claim: str | None = None,
                     customer_name: str = "Resident", effective: date | None = None,
                     notes: str | None = None) -> Job:
        """A work item keyed in by back-office staff (no Hub reference), as when a resident phones them."""
        if tenant not in self.tenants:
            raise ValueError(f"unknown tenant {tenant!r}")
        codes = sorted(TENANT_AUTHORITIES.get(tenant, ALL_AUTHORITIES))
        data = {
            "AuthorityCode": authority or codes[0], "CouncilTaxAccountRef": council_tax_account,
            "BenefitClaimRef": benefit_claim, "CustomerName": customer_name,
            "EffectiveDate": (effective or self.store.clock().date()).isoformat(), "Notes": notes,
            "RaisedBy": "OFFICER",
        }
        return self._create(tenant, None, work_item_type, data, "OFFICER")

    def set_status(self, tenant: str, ref: str, status: str, note: str | None = None) -> None:
        """Put one work item into any status (e.g. REJECTED), as an officer would."""
        with self._lock:
            job = self.store.by_ref(tenant, ref)
            if job is None:
                raise KeyError(f"{tenant}: no work item {ref}")
            self._change(job, status, note or f"status set to {status}", "STATUS", "OFFICER")

    def add_officer_note(self, tenant: str, ref: str, text: str) -> None:
        """A note keyed by back-office staff."""
        with self._lock:
            job = self.store.by_ref(tenant, ref)
            if job is None:
                raise KeyError(f"{tenant}: no work item {ref}")
            self._change(job, job.status, text, "NOTE", "OFFICER")

    def jobs_for(self, hub_ref: str, tenant: str | None = None) -> int:
        """How many work items carry `hub_ref` (in one tenant, or in any)."""
        with self._lock:
            return sum(1 for j in self.store.jobs.values()
                       if j.hub_ref == hub_ref and (tenant is None or j.tenant == tenant))

    def documents_of(self, tenant: str, ref: str) -> list[dict[str, Any]]:
        """What the document store holds for a work item (names, types, sizes, digests), oldest first."""
        with self._lock:
            job = self.store.by_ref(tenant, ref)
            return [dict(d) for d in self._documents.get(job.id, ())] if job is not None else []

    def notes_of(self, tenant: str, ref: str) -> list[str]:
        """Texts of the notes on a work item, oldest first."""
        with self._lock:
            job = self.store.by_ref(tenant, ref)
            if job is None:
                return []
            return [e.note or "" for e in job.events if self._kinds.get(e.update_id, ("",))[0] == "NOTE"]

    # -- store plumbing ------------------------------------------------------------------------------------
    def _create(self, tenant: str, hub_ref: str | None, kind: str, data: dict[str, Any], source: str) -> Job:
        with self._lock:
            job = self.store.create(tenant, hub_ref, kind, data)
            ev = job.events[-1]
            ev.note = "work item raised" if source == "INTERFACE" else "work item raised by an officer"
            self._kinds[ev.update_id] = ("CREATED", source)
            return job

    def _change(self, job: Job, status: str, note: str | None, kind: str, source: str) -> int:
        with self._lock:
            ev = self.store.set_status(job, status, note)
            self._kinds[ev.update_id] = (kind, source)
            return ev.update_id

    # -- HTTP / SOAP ---------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.tenant not in self.tenants:
            return Response(404, f"no revenues system at /{request.tenant}/".encode(), "text/plain")
        if request.method == "GET":  # `GET .../?wsdl` (any GET) describes the service, as .asmx/.svc hosts do
            if request.path.endswith("revenues.xsd"):
                return Response(200, XSD_PATH.read_bytes(), XML_TYPE)
            return Response(200, WSDL_PATH.read_bytes(), XML_TYPE)
        if request.method != "POST":
            return Response(405, b"method not allowed", "text/plain")
        try:
            return self._soap(request)
        except SoapFault as fault:
            return self.fault(fault.code, fault.error, fault.text)

    def server_error(self) -> Response:
        return self.fault("Server", "UNAVAILABLE", "The revenues system is temporarily unavailable")

    @staticmethod
    def fault(code: str, error: str, text: str) -> Response:
        env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
        body = etree.SubElement(env, f"{{{SOAP_ENV}}}Body")
        f = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
        etree.SubElement(f, "faultcode").text = f"soap:{code}"
        etree.SubElement(f, "faultstring").text = text
        detail = etree.SubElement(f, "detail")
        sf = etree.SubElement(detail, f"{{{NS}}}ServiceFault", nsmap={"rb": NS})
        etree.SubElement(sf, f"{{{NS}}}ErrorCode").text = error
        etree.SubElement(sf, f"{{{NS}}}ErrorText").text = text
        return Response(500, etree.tostring(env, xml_declaration=True, encoding="utf-8"), XML_TYPE)

    def _soap(self, request: Request) -> Response:
        try:
            root = parse_xml(request.body, "revenues-simulator", what="SOAP request")
        except BadResponseError as exc:
            raise SoapFault("Client", "VALIDATION", f"malformed request: {exc.message}") from None
        if root.tag != f"{{{SOAP_ENV}}}Envelope":
            raise SoapFault("Client", "VALIDATION", "not a SOAP 1.1 envelope")
        self._authenticate(request.tenant, root)
        body = root.find(f"{{{SOAP_ENV}}}Body")
        op_el = body[0] if body is not None and len(body) else None
        if op_el is None or not isinstance(op_el.tag, str) or not op_el.tag.startswith(f"{{{NS}}}"):
            raise SoapFault("Client", "VALIDATION", "SOAP body carries no revenues operation")
        op = etree.QName(op_el).localname
        handler = {
            "CreateServiceRequest": self._op_create,
            "GetServiceRequest": self._op_get,
            "GetServiceRequestChanges": self._op_changes,
            "AddServiceRequestNote": self._op_note,
            "AddServiceRequestDocument": self._op_document,
            "WithdrawServiceRequest": self._op_withdraw,
        }.get(op)
        if handler is None:
            raise SoapFault("Client", "VALIDATION", f"unknown operation {op}")
        self._check_lengths(op_el)
        result = handler(request.tenant, op_el)
        env = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
        etree.SubElement(env, f"{{{SOAP_ENV}}}Body").append(result)
        return Response(200, etree.tostring(env, xml_declaration=True, encoding="utf-8"), XML_TYPE)

    def _authenticate(self, tenant: str, root: etree._Element) -> None:
        token = root.find(f"{{{SOAP_ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
        user = token.findtext(f"{{{WSSE}}}Username") if token is not None else None
        password = token.findtext(f"{{{WSSE}}}Password") if token is not None else None
        if not user or not password:
            raise SoapFault("Client", "AUTHENTICATION", "a WS-Security UsernameToken is required")
        expected = self.credentials.get(tenant)
        if expected is not None and (user, password) != expected:
            raise SoapFault("Client", "AUTHENTICATION", "invalid username or password")

    def _check_lengths(self, op_el: etree._Element) -> None:
        for el in op_el.iter():
            if not isinstance(el.tag, str) or len(el):
                continue
            limit = self._max_len.get(etree.QName(el).localname)
            if limit is not None and el.text and len(el.text) > limit:
                raise SoapFault("Client", "VALIDATION",
                                f"{etree.QName(el).localname} is {len(el.text)} characters; at most {limit} allowed")

    # -- operations ----------------------------------------------------------------------------------------
    def _op_create(self, tenant: str, op_el: etree._Element) -> etree._Element:
        sr = op_el.find(f"{{{NS}}}ServiceRequest")
        if sr is None:
            raise SoapFault("Client", "VALIDATION", "ServiceRequest is required")

        def text(path: str) -> str | None:
            value = sr.findtext("/".join(f"{{{NS}}}{p}" for p in path.split("/")))
            return value.strip() if value and value.strip() else None

        def need(path: str) -> str:
            value = text(path)
            if value is None:
                raise SoapFault("Client", "VALIDATION", f"{path} is required")
            return value

        hub_ref = need("ExternalReference")
        authority = need("AuthorityCode")
        if authority not in TENANT_AUTHORITIES.get(tenant, ALL_AUTHORITIES):
            raise SoapFault("Client", "VALIDATION", f"authority {authority} is not billed by this system")
        kind = need("WorkItemType")
        if kind not in WORK_ITEM_TYPES:
            raise SoapFault("Client", "VALIDATION", f"unknown work item type {kind}")
        ctax, claim = text("CouncilTaxAccountRef"), text("BenefitClaimRef")
        if ctax is None and claim is None:
            raise SoapFault("Client", "VALIDATION", "a CouncilTaxAccountRef or BenefitClaimRef is required")
        if kind == "HBCOC" and claim is None:
            raise SoapFault("Client", "VALIDATION", "a benefit change of circumstances needs BenefitClaimRef")
        if ctax is not None and not re.fullmatch(r"[0-9]{6,9}", ctax):
            raise SoapFault("Client", "VALIDATION", f"CouncilTaxAccountRef {ctax!r} is not a 6-9 digit reference")
        if claim is not None and not re.fullmatch(r"[0-9]{5,8}", claim):
            raise SoapFault("Client", "VALIDATION", f"BenefitClaimRef {claim!r} is not a 5-8 digit reference")
        for ref in (ctax, claim):
            if ref is not None and ref in self.unknown_accounts:
                raise SoapFault("Client", "UNKNOWN_ACCOUNT", f"no account or claim with reference {ref}")
        effective = need("EffectiveDate")
        try:
            date.fromisoformat(effective)
        except ValueError:
            raise SoapFault("Client", "VALIDATION", f"EffectiveDate {effective!r} is not a date") from None
        name = need("Customer/FullName")
        if kind == "CTCOA":
            for part in ("NewAddress/AddressLine1", "NewAddress/Town", "NewAddress/Postcode"):
                need(part)
        if kind == "CTARR":
            for part in ("PaymentProposal/InstalmentAmount", "PaymentProposal/Frequency",
                         "PaymentProposal/FirstPaymentDate"):
                need(part)
        data = {
            "AuthorityCode": authority, "CouncilTaxAccountRef": ctax, "BenefitClaimRef": claim,
            "CustomerName": name, "EffectiveDate": effective, "RaisedBy": "INTERFACE",
            "Telephone": text("Customer/Telephone"), "Email": text("Customer/Email"),
            "NewPostcode": text("NewAddress/Postcode"), "Notes": text("Notes"), "ReceivedVia": text("ReceivedVia"),
        }
        job = self._create(tenant, hub_ref, kind, data, "INTERFACE")
        resp = etree.Element(f"{{{NS}}}CreateServiceRequestResponse", nsmap={None: NS})
        resp.append(self._work_item(job))
        return resp

    def _op_get(self, tenant: str, op_el: etree._Element) -> etree._Element:
        ref = op_el.findtext(f"{{{NS}}}WorkItemRef")
        ext = op_el.findtext(f"{{{NS}}}ExternalReference")
        notes = _flag(op_el, "IncludeNotes")
        documents = _flag(op_el, "IncludeDocuments")
        with self._lock:
            if ref:
                job = self.store.by_ref(tenant, ref)
                jobs = [job] if job is not None else []
            elif ext:
                jobs = sorted(self.store.by_hub_ref(tenant, ext), key=lambda j: j.id)
            else:
                raise SoapFault("Client", "VALIDATION", "give WorkItemRef or ExternalReference")
            resp = etree.Element(f"{{{NS}}}GetServiceRequestResponse", nsmap={None: NS})
            for job in jobs:
                resp.append(self._work_item(job, notes=notes, documents=documents))
        return resp

    def _op_changes(self, tenant: str, op_el: etree._Element) -> etree._Element:
        try:
            since = int(op_el.findtext(f"{{{NS}}}SinceChangeNumber") or "")
            limit = int(op_el.findtext(f"{{{NS}}}MaxRecords") or "")
        except ValueError:
            raise SoapFault("Client", "VALIDATION", "SinceChangeNumber and MaxRecords must be integers") from None
        if since < 0 or not 1 <= limit <= 500:
            raise SoapFault("Client", "VALIDATION", "SinceChangeNumber >= 0 and MaxRecords 1-500 required")
        with self._lock:
            found = self.store.events_after(tenant, since, limit + 1)
            newest = self.store.newest_update_id(tenant)
            resp = etree.Element(f"{{{NS}}}GetServiceRequestChangesResponse", nsmap={None: NS})
            etree.SubElement(resp, f"{{{NS}}}LastChangeNumber").text = str(newest)
            etree.SubElement(resp, f"{{{NS}}}MoreAvailable").text = "true" if len(found) > limit else "false"
            for job, ev in found[:limit]:
                kind, source = self._kinds.get(ev.update_id, ("STATUS", "SYSTEM"))
                ch = etree.SubElement(resp, f"{{{NS}}}Change")
                self._sub(ch, "ChangeNumber", str(ev.update_id))
                self._sub(ch, "ChangedAt", _iso(ev.at))
                self._sub(ch, "ChangeType", kind)
                self._sub(ch, "Source", source)
                self._sub(ch, "WorkItemRef", job.ref)
                self._sub(ch, "ExternalReference", job.hub_ref)
                self._sub(ch, "WorkItemType", job.service_code)
                self._sub(ch, "StatusCode", ev.status)
                self._sub(ch, "NoteText", ev.note)
        return resp

    def _op_note(self, tenant: str, op_el: etree._Element) -> etree._Element:
        job = self._job(tenant, op_el)
        text = (op_el.findtext(f"{{{NS}}}NoteText") or "").strip()
        if not text:
            raise SoapFault("Client", "VALIDATION", "NoteText is required")
        note_type = (op_el.findtext(f"{{{NS}}}NoteType") or "GENERAL").strip()
        if note_type not in NOTE_TYPES:
            raise SoapFault("Client", "VALIDATION", f"unknown NoteType {note_type}")
        with self._lock:
            number = self._change(job, job.status, text, "NOTE", "INTERFACE")
            self._note_types[number] = note_type
            # the follow-up kind this note stands for, as the tests count them: an amendment is a typed note
            self.store.record_followup(job, "amendment" if note_type == "AMENDMENT" else "note", text,
                                       change_number=number)
        resp = etree.Element(f"{{{NS}}}AddServiceRequestNoteResponse", nsmap={None: NS})
        self._sub(resp, "WorkItemRef", job.ref)
        self._sub(resp, "ChangeNumber", str(number))
        return resp

    def _op_withdraw(self, tenant: str, op_el: etree._Element) -> etree._Element:
        job = self._job(tenant, op_el)
        reason = (op_el.findtext(f"{{{NS}}}Reason") or "").strip()
        if not reason:
            raise SoapFault("Client", "VALIDATION", "Reason is required")
        with self._lock:
            if job.status in NOT_WITHDRAWABLE:
                raise SoapFault("Client", "NOT_WITHDRAWABLE",
                                f"work item {job.ref} is {job.status} and can no longer be withdrawn")
            if job.status != "WITHDRAWN":  # withdrawing again changes nothing, so there is nothing to record
                number = self._change(job, "WITHDRAWN", f"withdrawn: {reason}", "STATUS", "INTERFACE")
                self.store.record_followup(job, "cancel", reason, change_number=number)
            resp = etree.Element(f"{{{NS}}}WithdrawServiceRequestResponse", nsmap={None: NS})
            resp.append(self._work_item(job))
        return resp

    def _op_document(self, tenant: str, op_el: etree._Element) -> etree._Element:
        job = self._job(tenant, op_el)
        uploads = op_el.findall(f"{{{NS}}}Document")
        if not uploads:
            raise SoapFault("Client", "VALIDATION", "at least one Document is required")
        if len(uploads) > MAX_DOCUMENTS:
            raise SoapFault("Client", "VALIDATION", f"{len(uploads)} documents; at most {MAX_DOCUMENTS} per call")
        # every file is checked before any is stored: the call stores all of them or none
        checked = [self._upload(i, el) for i, el in enumerate(uploads, start=1)]
        with self._lock:
            now = self.store.clock()
            stored = []
            for name, ctype, content, description in checked:
                self._document_ids += 1
                stored.append({"DocumentId": f"DOC{self._document_ids:07d}", "FileName": name, "ContentType": ctype,
                               "SizeBytes": len(content), "Description": description, "StoredAt": now,
                               "Source": "INTERFACE", "sha256": hashlib.sha256(content).hexdigest()})
            self._documents.setdefault(job.id, []).extend(stored)
            count = f"{len(stored)} document{'s' if len(stored) > 1 else ''}"
            number = self._change(job, job.status, f"{count} added to the work item's evidence", "DOCUMENT",
                                  "INTERFACE")
            self.store.record_followup(job, "evidence", checked[0][3] or "",
                                       documents=[d["FileName"] for d in stored], change_number=number)
            resp = etree.Element(f"{{{NS}}}AddServiceRequestDocumentResponse", nsmap={None: NS})
            self._sub(resp, "WorkItemRef", job.ref)
            self._sub(resp, "ChangeNumber", str(number))
            for doc in stored:
                resp.append(self._document(doc))
        return resp

    @staticmethod
    def _upload(index: int, el: etree._Element) -> tuple[str, str, bytes, str | None]:
        name = (el.findtext(f"{{{NS}}}FileName") or "").strip()
        ctype = (el.findtext(f"{{{NS}}}ContentType") or "").strip()
        raw = re.sub(r"\s+", "", el.findtext(f"{{{NS}}}Content") or "")
        description = (el.findtext(f"{{{NS}}}Description") or "").strip() or None
        if not name:
            raise SoapFault("Client", "VALIDATION", f"Document {index}: FileName is required")
        if ctype not in DOCUMENT_TYPES:
            raise SoapFault("Client", "VALIDATION", f"Document {index}: content type {ctype!r} is not taken")
        try:
            content = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise SoapFault("Client", "VALIDATION", f"Document {index}: Content is not base64") from None
        if not content:
            raise SoapFault("Client", "VALIDATION", f"Document {index}: the file is empty")
        if len(content) > MAX_DOCUMENT_BYTES:
            raise SoapFault("Client", "VALIDATION",
                            f"Document {index}: {len(content)} bytes; at most {MAX_DOCUMENT_BYTES} allowed")
        return name, ctype, content, description

    # -- XML helpers ---------------------------------------------------------------------------------------
    def _job(self, tenant: str, op_el: etree._Element) -> Job:
        ref = (op_el.findtext(f"{{{NS}}}WorkItemRef") or "").strip()
        job = self.store.by_ref(tenant, ref) if ref else None
        if job is None:
            raise SoapFault("Client", "UNKNOWN_WORK_ITEM", f"no work item {ref!r} in this system")
        return job

    @staticmethod
    def _sub(parent: etree._Element, name: str, value: str | None) -> None:
        if value is not None:
            etree.SubElement(parent, f"{{{NS}}}{name}").text = value

    def _document(self, doc: Mapping[str, Any]) -> etree._Element:
        el = etree.Element(f"{{{NS}}}Document")
        for name in ("DocumentId", "FileName", "ContentType"):
            self._sub(el, name, doc[name])
        self._sub(el, "SizeBytes", str(doc["SizeBytes"]))
        self._sub(el, "Description", doc["Description"])
        self._sub(el, "StoredAt", _iso(doc["StoredAt"]))
        self._sub(el, "Source", doc["Source"])
        return el

    def _work_item(self, job: Job, *, notes: bool = False, documents: bool = False) -> etree._Element:
        d = job.data
        el = etree.Element(f"{{{NS}}}WorkItem")
        self._sub(el, "WorkItemRef", job.ref)
        self._sub(el, "ExternalReference", job.hub_ref)
        self._sub(el, "AuthorityCode", d.get("AuthorityCode"))
        self._sub(el, "WorkItemType", job.service_code)
        self._sub(el, "CouncilTaxAccountRef", d.get("CouncilTaxAccountRef"))
        self._sub(el, "BenefitClaimRef", d.get("BenefitClaimRef"))
        self._sub(el, "StatusCode", job.status)
        self._sub(el, "StatusDate", _iso(job.changed_at))
        self._sub(el, "CreatedAt", _iso(job.created_at))
        self._sub(el, "RaisedBy", d.get("RaisedBy"))
        self._sub(el, "CustomerName", d.get("CustomerName"))
        self._sub(el, "EffectiveDate", d.get("EffectiveDate"))
        if notes:
            for ev in job.events:
                change_type, source = self._kinds.get(ev.update_id, ("", ""))
                if change_type != "NOTE":
                    continue
                note = etree.SubElement(el, f"{{{NS}}}Note")
                self._sub(note, "ChangeNumber", str(ev.update_id))
                self._sub(note, "CreatedAt", _iso(ev.at))
                self._sub(note, "Source", source)
                self._sub(note, "NoteType", self._note_types.get(ev.update_id, "GENERAL"))
                self._sub(note, "NoteText", ev.note or "")
        if documents:
            for doc in self._documents.get(job.id, ()):
                el.append(self._document(doc))
        return el


__all__ = ["LIFECYCLE", "TENANT_AUTHORITIES", "UNKNOWN_ACCOUNTS", "RevenuesSimulator"]
