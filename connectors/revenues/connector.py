"""Revenues & benefits connector: work items in a Civica / Northgate style SOAP service, through zeep."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache, cached_property
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

import structlog
from lxml import etree
from zeep import Client
from zeep import exceptions as zx
from zeep.helpers import serialize_object
from zeep.wsse.username import UsernameToken

from hubbridge.case import FollowUpKind
from hubbridge.config.models import ConnectorInstance
from hubbridge.connectors.base import (
    BackOfficeUpdate,
    Connector,
    CreateResult,
    Delivery,
    Document,
    FollowUp,
    FollowUpResult,
    TargetField,
    UpdatePage,
)
from hubbridge.connectors.http import HttpClient, parse_xml
from hubbridge.connectors.soap import ZEEP_SETTINGS, call, make_client, target_fields_of
from hubbridge.errors import (
    BadResponseError,
    ConfigError,
    NotSupported,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
WSDL_PATH = HERE / "revenues.wsdl"
XSD_PATH = HERE / "revenues.xsd"
NS = "urn:hubbridge:revenues:v1"
BINDING = f"{{{NS}}}RevenuesWorkItemSoap"
XS = "http://www.w3.org/2001/XMLSchema"

AUTHORITY_CODES: dict[str, str] = {
    "bromsgrove": "BDC",
    "malvern-hills": "MHDC",
    "redditch": "RBC",
    "worcester": "WCC",
    "wychavon": "WDC",
    "wyre-forest": "WFDC",
}
"""Hub authority slug -> the back office's billing-authority code (override with options.authority_codes)."""

WORK_ITEM_TYPES = ("CTCOA", "CTSPD", "HBCOC", "CTARR")
STATUS_CODES = ("RECEIVED", "ALLOCATED", "IN_PROGRESS", "AWAITING_EVIDENCE", "COMPLETED", "CLOSED",
                "REJECTED", "WITHDRAWN")

CONNECTOR_FILLED = ("ExternalReference",)
"""Request fields the connector sets itself (from `Delivery.hub_ref`); mappings must not set them."""

MAX_PAGE = 500  # MaxRecords upper bound in the XSD
NOTE_MAX = 2000
REASON_MAX = 200
DESCRIPTION_MAX = 200
FILE_NAME_MAX = 100
MAX_DOCUMENTS = 10
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
"""AddServiceRequestDocument's limits, as the XSD documents them: ten files a call, each at most 2 MiB."""
CUT_MARK = " [cut: full text in the Hub]"
NOTE_TYPE_OF = {FollowUpKind.NOTE: "GENERAL", FollowUpKind.AMENDMENT: "AMENDMENT"}
"""The NoteType a follow-up's note gets unless the mapping's `followups:` fields give one."""
FOLLOWUP_FIELDS = {
    FollowUpKind.NOTE: ("NoteType",), FollowUpKind.AMENDMENT: ("NoteType",),
    FollowUpKind.CANCEL: ("Reason",), FollowUpKind.EVIDENCE: ("Description",),
}
"""The request fields a mapping may set per follow-up kind (`FollowUp.fields`); the connector fills the rest."""
CURSOR_PREFIX = "change:"
LONDON = ZoneInfo("Europe/London")


# -- the XSD's facets: zeep drops restriction facets, so read them from the shipped XSD ------------------
@dataclasses.dataclass(frozen=True)
class Facets:
    base: str
    max_length: int | None = None
    min_length: int | None = None
    enum: tuple[str, ...] = ()
    pattern: str | None = None


def xsd_facets(path: Path = XSD_PATH) -> dict[str, Facets]:
    """Named simple types of the shipped XSD with their base type and facets (maxLength, enumeration, pattern)."""
    root = parse_xml(path.read_bytes(), "revenues", what=f"schema {path.name}")
    out: dict[str, Facets] = {}
    for st in root.iter(f"{{{XS}}}simpleType"):
        name = st.get("name")
        restriction = st.find(f"{{{XS}}}restriction")
        if not name or restriction is None:
            continue
        base = (restriction.get("base") or "xs:string").split(":")[-1]
        max_el = restriction.find(f"{{{XS}}}maxLength")
        min_el = restriction.find(f"{{{XS}}}minLength")
        pat_el = restriction.find(f"{{{XS}}}pattern")
        out[name] = Facets(
            base=base,
            max_length=int(max_el.get("value")) if max_el is not None else None,
            min_length=int(min_el.get("value")) if min_el is not None else None,
            enum=tuple(e.get("value") for e in restriction.findall(f"{{{XS}}}enumeration")),
            pattern=pat_el.get("value") if pat_el is not None else None,
        )
    return out


def _enrich(fields: Mapping[str, TargetField], facets: Mapping[str, Facets],
            patterns: dict[str, str], prefix: str = "") -> dict[str, TargetField]:
    """Put the XSD facets `target_fields_of` cannot see onto its TargetFields; collect patterns by path."""
    out: dict[str, TargetField] = {}
    for name, f in fields.items():
        path = f"{prefix}{name}"
        fc = facets.get(f.type)
        children = _enrich(f.children, facets, patterns, path + ".") if f.children else {}
        if fc is not None:
            if fc.pattern:
                patterns[path] = fc.pattern
            f = dataclasses.replace(f, type=fc.base, max_length=fc.max_length, enum=fc.enum or f.enum)
        out[name] = dataclasses.replace(f, children=children)
    return out


def _plain(value: Any) -> Any:
    """zeep objects to JSON-safe plain data (dates as ISO text), for `raw`."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _fits_type(value: Any, xsd_type: str) -> bool:
    """Whether a payload value can stand for the XSD built-in type (dates as ISO text or date objects)."""
    try:
        if xsd_type == "date":
            if isinstance(value, datetime):
                return False
            if isinstance(value, str):
                return re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None and bool(date.fromisoformat(value))
            return isinstance(value, date)
        if xsd_type == "dateTime":
            if isinstance(value, str):
                return datetime.fromisoformat(value.replace("Z", "+00:00")) is not None
            return isinstance(value, datetime)
        if xsd_type == "decimal":
            return not isinstance(value, bool) and Decimal(str(value)).is_finite()
    except (ValueError, ArithmeticError):
        return False
    return True


@cache
def _enum(simple_type: str) -> tuple[str, ...]:
    """The enumeration of one of the shipped XSD's simple types (read once)."""
    return xsd_facets()[simple_type].enum


def followup_mark(key: str) -> str:
    """What starts every note, reason and document description a follow-up makes, so a read finds it again."""
    return f"[Hub {key}]"


def _cut(text: str, limit: int) -> str:
    """`text` within `limit` characters, saying so when it had to be cut."""
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK


def _file_name(name: str) -> str:
    """A file name within the document store's 100 characters, keeping its extension."""
    if len(name) <= FILE_NAME_MAX:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 10:
        return name[:FILE_NAME_MAX]
    return stem[: FILE_NAME_MAX - len(ext) - 1] + "." + ext


def _aware(value: datetime) -> datetime:
    # The service sends offsets; a naive time from a real back office is UK local time.
    return (value if value.tzinfo is not None else value.replace(tzinfo=LONDON)).astimezone(UTC)


class RevenuesConnector(Connector):
    """Raises and tracks revenues & benefits work items (change of address, SPD, benefit CoC, arrangements)."""

    plugin = "revenues"
    supports_cancel = True
    supports_notes = True
    # No priority (an officer sets work-queue priority in the back office), no reopen (a withdrawn or closed
    # item stays so; the customer's new request is a new work item): the route's fallback handles those.
    followup_kinds: ClassVar[frozenset[FollowUpKind]] = frozenset(
        {FollowUpKind.NOTE, FollowUpKind.AMENDMENT, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL})

    def __init__(self, instance: ConnectorInstance, env: Mapping[str, str] | None = None) -> None:
        super().__init__(instance, env)
        missing = [role for role in ("username", "password") if role not in instance.credentials]
        if missing:
            raise ConfigError(
                f"revenues connector needs credentials {', '.join(missing)}",
                key=f"connectors.{self.name}.credentials",
                hint="give credentials: {username: ENV_VAR, password: ENV_VAR}",
            )
        options = dict(instance.options)
        self.authority_codes = {**AUTHORITY_CODES, **dict(options.get("authority_codes") or {})}
        self.page_size = max(1, min(int(options.get("page_size", 200)), MAX_PAGE))
        self.http = HttpClient(instance)
        try:
            self.client, self.service = make_client(WSDL_PATH, self.http, instance.endpoint, BINDING)
        except (zx.Error, etree.XMLSyntaxError, OSError) as exc:  # the shipped WSDL itself is broken
            raise ConfigError(f"cannot load {WSDL_PATH.name}: {exc}", path=str(WSDL_PATH)) from None
        # secrets are read on the first call, so validation and dry runs work without them
        self._signed_in = False
        self._patterns: dict[str, str] = {}

    def _sign_in(self) -> None:
        if not self._signed_in:
            creds = self.instance.credentials
            self.client.wsse = UsernameToken(self.secret(creds["username"]) or "", self.secret(creds["password"]) or "")
            self._signed_in = True

    # -- schema ----------------------------------------------------------------------------------------
    @cached_property
    def _request_fields(self) -> dict[str, TargetField]:
        """Every field of ServiceRequest, facets included, as the WSDL/XSD define them."""
        raw = target_fields_of(self.client, f"{{{NS}}}CreateServiceRequest")["ServiceRequest"].children
        return _enrich(raw, xsd_facets(), self._patterns)

    def target_fields(self) -> Mapping[str, TargetField]:
        """The `Delivery.payload` fields: the WSDL's ServiceRequest, less what the connector fills itself."""
        fields = {k: v for k, v in self._request_fields.items() if k not in CONNECTOR_FILLED}
        # AuthorityCode defaults from the delivery's authority, so a mapping need not set it.
        fields["AuthorityCode"] = dataclasses.replace(fields["AuthorityCode"], required=False)
        return fields

    # -- create / find / status --------------------------------------------------------------------------
    def create(self, delivery: Delivery) -> CreateResult:
        """Raise the work item for a case, or return the one already raised for its `hub_ref`."""
        blog = log.bind(hub_ref=delivery.hub_ref, instance=self.name)
        request = self._request(delivery)
        self._serialisable(delivery.hub_ref, request)
        existing = None if delivery.known_new else self.find(delivery.hub_ref)
        if existing is not None:
            blog.info("revenues.create.exists", backoffice_ref=existing.backoffice_ref)
            return existing
        item = self._call("CreateServiceRequest", lambda: self.service.CreateServiceRequest(ServiceRequest=request),
                          hub_ref=delivery.hub_ref)
        result = self._result(item, "CreateServiceRequest")
        blog.info("revenues.create.done", backoffice_ref=result.backoffice_ref, status=result.status_code)
        return result

    def find(self, hub_ref: str, delivery: Delivery | None = None) -> CreateResult | None:
        """The work item carrying `hub_ref` as its external reference (the oldest, if several), or None."""
        items = self._items(ExternalReference=hub_ref)
        if not items:
            return None
        items.sort(key=lambda i: (i.CreatedAt, i.WorkItemRef))
        if len(items) > 1:
            log.warning("revenues.find.duplicates", hub_ref=hub_ref, instance=self.name,
                        refs=[i.WorkItemRef for i in items])
        return self._result(items[0], "GetServiceRequest")

    def status(self, backoffice_ref: str) -> CreateResult | None:
        """The current state of one work item by its own reference, or None if the back office has no such item."""
        items = self._items(WorkItemRef=backoffice_ref)
        return self._result(items[0], "GetServiceRequest") if items else None

    def _items(self, **query: str) -> list[Any]:
        resp = self._read("GetServiceRequest", lambda: self.service.GetServiceRequest(**query))
        if resp is None:
            return []
        items = list(resp) if isinstance(resp, list) else list(getattr(resp, "WorkItem", None) or [])
        for item in items:
            if not getattr(item, "WorkItemRef", None):
                raise BadResponseError("GetServiceRequest: work item without WorkItemRef", instance=self.name)
        return items

    # -- updates -----------------------------------------------------------------------------------------
    def updates_since(self, cursor: str | None, limit: int = 100) -> UpdatePage:
        """Changes after the cursor's change number, oldest first; the cursor is `change:<number>`."""
        since = self._parse_cursor(cursor)
        limit = max(1, min(int(limit), MAX_PAGE))
        resp = self._read("GetServiceRequestChanges",
                          lambda: self.service.GetServiceRequestChanges(SinceChangeNumber=since, MaxRecords=limit))
        changes = list(getattr(resp, "Change", None) or [])
        updates: list[BackOfficeUpdate] = []
        last = since
        for ch in changes[:limit]:
            number = int(ch.ChangeNumber)
            if number <= last:
                # out of order or repeated: trusting it could skip or replay changes, so refuse the page
                raise BadResponseError(
                    f"GetServiceRequestChanges: change {number} after {last} is out of order",
                    instance=self.name, hint="the page will be fetched again from the same cursor")
            last = number
            updates.append(BackOfficeUpdate(
                backoffice_ref=str(ch.WorkItemRef),
                update_id=str(number),
                occurred_at=_aware(ch.ChangedAt),
                status_code=str(ch.StatusCode),
                note=ch.NoteText or None,
                hub_ref=ch.ExternalReference or None,
                service_code=str(ch.WorkItemType),
                raw=_plain(serialize_object(ch, dict)),
            ))
        has_more = bool(updates) and (bool(resp.MoreAvailable) or len(changes) > limit)
        return UpdatePage(updates=updates, cursor=f"{CURSOR_PREFIX}{last}", has_more=has_more)

    def _parse_cursor(self, cursor: str | None) -> int:
        if not cursor:
            return 0
        text = cursor[len(CURSOR_PREFIX):] if cursor.startswith(CURSOR_PREFIX) else ""
        if not text.isdigit():
            raise PermanentError(f"unrecognised sync cursor {cursor!r}", instance=self.name,
                                 hint=f"revenues cursors look like '{CURSOR_PREFIX}123'; reset the sync cursor")
        return int(text)

    # -- notes and withdrawal ------------------------------------------------------------------------------
    def add_note(self, backoffice_ref: str, note: str) -> None:
        """Add a note to a work item (cut to the back office's 2,000 characters, saying so)."""
        note = _cut(note, NOTE_MAX)
        self._call("AddServiceRequestNote",
                   lambda: self.service.AddServiceRequestNote(WorkItemRef=backoffice_ref, NoteText=note),
                   ref=backoffice_ref)

    def cancel(self, backoffice_ref: str, reason: str) -> None:
        """Withdraw a work item; withdrawing one already withdrawn succeeds, a completed one is refused."""
        reason = (reason.strip() or "withdrawn at the customer's request")[:REASON_MAX]
        self._call("WithdrawServiceRequest",
                   lambda: self.service.WithdrawServiceRequest(WorkItemRef=backoffice_ref, Reason=reason),
                   ref=backoffice_ref)

    # -- follow-ups -----------------------------------------------------------------------------------------
    def follow_up(self, followup: FollowUp) -> FollowUpResult:
        """A note or amendment as a typed note, evidence as stored documents, a cancel as a withdrawal.

        None of these operations is idempotent, so unless `known_new` the work item is read first and what an
        earlier attempt left there (found by `followup_mark`) is returned instead of sending again.
        """
        fields = self._followup_fields(followup)
        found = self.landed_before(followup)
        if found is not None:
            return found
        if followup.kind == FollowUpKind.CANCEL:
            result = self._withdraw(followup, fields)
        elif followup.kind == FollowUpKind.EVIDENCE:
            result = self._store_documents(followup, fields)
        else:
            result = self._note(followup, fields)
        log.info("revenues.followup.done", key=followup.key, kind=followup.kind.value,
                 backoffice_ref=followup.backoffice_ref, backoffice_id=result.backoffice_id, instance=self.name)
        return result

    def find_follow_up(self, followup: FollowUp) -> FollowUpResult | None:
        """The note, documents or withdrawal a follow-up made, read back with GetServiceRequest; None if absent.

        Notes and documents are ours when their text starts with the follow-up's mark and their Source is
        INTERFACE; a withdrawn item counts as withdrawn by this follow-up, whoever did it.
        """
        if followup.kind not in self.followup_kinds:
            raise NotSupported(f"revenues takes no {followup.kind.value} follow-ups", instance=self.name)
        notes = followup.kind in NOTE_TYPE_OF
        documents = followup.kind == FollowUpKind.EVIDENCE
        items = self._items(WorkItemRef=followup.backoffice_ref, IncludeNotes=notes, IncludeDocuments=documents)
        if not items:
            return None
        item, mark = items[0], followup_mark(followup.key)
        if followup.kind == FollowUpKind.CANCEL:
            if str(item.StatusCode) != "WITHDRAWN":
                return None
            return FollowUpResult(raw={"WorkItemRef": str(item.WorkItemRef), "StatusCode": "WITHDRAWN"})
        if documents:
            mine = [d for d in (getattr(item, "Document", None) or [])
                    if d.Source == "INTERFACE" and (d.Description or "").startswith(mark)]
            if not mine:
                return None
            ids = [str(d.DocumentId) for d in mine]
            return FollowUpResult(backoffice_id=",".join(ids), raw={"WorkItemRef": str(item.WorkItemRef),
                                                                   "DocumentIds": ids})
        for note in getattr(item, "Note", None) or []:
            if note.Source == "INTERFACE" and (note.NoteText or "").startswith(mark):
                return FollowUpResult(backoffice_id=str(note.ChangeNumber),
                                      raw={"WorkItemRef": str(item.WorkItemRef), "ChangeNumber": int(note.ChangeNumber),
                                           "NoteType": note.NoteType})
        return None

    def _followup_fields(self, followup: FollowUp) -> dict[str, Any]:
        if followup.kind not in self.followup_kinds:
            raise NotSupported(f"revenues takes no {followup.kind.value} follow-ups", instance=self.name)
        # One `followups:` section fills the fields of every kind: a field of another kind's operation is left out,
        # a name no follow-up operation has (a misspelling) is refused rather than silently dropped.
        known = {name for names in FOLLOWUP_FIELDS.values() for name in names}
        unknown = sorted(set(followup.fields) - known)
        if unknown:
            raise PermanentError(
                f"{followup.key}: the mapping's follow-up fields {', '.join(unknown)} are not fields of any revenues "
                f"follow-up operation", instance=self.name,
                hint=f"revenues follow-ups take {', '.join(sorted(known))}; fix the mapping's followups: section")
        return {k: v for k, v in followup.fields.items() if k in FOLLOWUP_FIELDS[followup.kind]}

    def _note(self, followup: FollowUp, fields: Mapping[str, Any]) -> FollowUpResult:
        note_type = str(fields.get("NoteType") or NOTE_TYPE_OF[followup.kind])
        allowed = _enum("NoteTypeCode")
        if note_type not in allowed:
            raise PermanentError(f"{followup.key}: NoteType {note_type!r} is not one of {', '.join(allowed)}",
                                 instance=self.name, hint="fix NoteType in the mapping's followups: section")
        text = _cut(f"{followup_mark(followup.key)} {followup.text.strip()}", NOTE_MAX)
        resp = self._call("AddServiceRequestNote", lambda: self.service.AddServiceRequestNote(
            WorkItemRef=followup.backoffice_ref, NoteText=text, NoteType=note_type), ref=followup.backoffice_ref)
        return FollowUpResult(backoffice_id=str(resp.ChangeNumber),
                              raw={"WorkItemRef": str(resp.WorkItemRef), "ChangeNumber": int(resp.ChangeNumber),
                                   "NoteType": note_type})

    def _withdraw(self, followup: FollowUp, fields: Mapping[str, Any]) -> FollowUpResult:
        reason = str(fields.get("Reason") or followup.text).strip() or "withdrawn at the customer's request"
        reason = _cut(f"{followup_mark(followup.key)} {reason}", REASON_MAX)
        item = self._call("WithdrawServiceRequest", lambda: self.service.WithdrawServiceRequest(
            WorkItemRef=followup.backoffice_ref, Reason=reason), ref=followup.backoffice_ref)
        return FollowUpResult(raw={"WorkItemRef": str(item.WorkItemRef), "StatusCode": str(item.StatusCode)})

    def _store_documents(self, followup: FollowUp, fields: Mapping[str, Any]) -> FollowUpResult:
        description = str(fields.get("Description") or followup.text).strip()
        description = _cut(f"{followup_mark(followup.key)} {description}".rstrip(), DESCRIPTION_MAX)
        uploads = [self._upload(followup, i, doc, description) for i, doc in enumerate(followup.documents, start=1)]
        if not uploads:
            raise PermanentError(f"{followup.key}: an evidence follow-up with no documents", instance=self.name)
        if len(uploads) > MAX_DOCUMENTS:
            raise PermanentError(f"{followup.key}: {len(uploads)} documents; the revenues system takes at most "
                                 f"{MAX_DOCUMENTS} at once", instance=self.name,
                                 hint="send the evidence in several follow-ups")
        resp = self._call("AddServiceRequestDocument", lambda: self.service.AddServiceRequestDocument(
            WorkItemRef=followup.backoffice_ref, Document=uploads), ref=followup.backoffice_ref)
        ids = [str(d.DocumentId) for d in (resp.Document or [])]
        return FollowUpResult(backoffice_id=",".join(ids) or None,
                              raw={"WorkItemRef": str(resp.WorkItemRef), "ChangeNumber": int(resp.ChangeNumber),
                                   "DocumentIds": ids})

    def _upload(self, followup: FollowUp, index: int, doc: Document, description: str) -> dict[str, Any]:
        # errors name the document by position and type: a file name can carry a person's name
        what = f"{followup.key}: document {index} ({doc.content_type})"
        if doc.content is None:
            raise PermanentError(
                f"{what} came as a link only; the revenues document store takes the file itself",
                instance=self.name, hint="have the Hub send the file's bytes, or route this evidence by e-mail")
        if not doc.content:
            raise PermanentError(f"{what} is empty", instance=self.name)
        if len(doc.content) > MAX_DOCUMENT_BYTES:
            raise PermanentError(f"{what} is {len(doc.content)} bytes; the revenues system takes at most "
                                 f"{MAX_DOCUMENT_BYTES}", instance=self.name,
                                 hint="send a smaller scan, or route this evidence by e-mail")
        allowed = _enum("DocumentContentType")
        if doc.content_type not in allowed:
            raise PermanentError(f"{what}: the revenues document store takes only {', '.join(allowed)}",
                                 instance=self.name, hint="convert the file, or route this evidence by e-mail")
        return {"FileName": _file_name(doc.filename or f"document-{index}"), "ContentType": doc.content_type,
                "Content": doc.content, "Description": description}

    # -- dry run -------------------------------------------------------------------------------------------
    def render(self, delivery: Delivery) -> str:
        """The SOAP envelope `create` would send (password masked); sends nothing."""
        request = self._request(delivery)
        username = self._env.get(self.instance.credentials["username"]) or f"${self.instance.credentials['username']}"
        client = Client(self.client.wsdl, wsse=UsernameToken(username, "********"),
                        transport=self.client.transport, settings=ZEEP_SETTINGS)
        service = client.create_service(BINDING, self.instance.endpoint)
        try:
            envelope = client.create_message(service, "CreateServiceRequest", ServiceRequest=request)
        except (zx.Error, TypeError, ValueError) as exc:
            raise PermanentError(f"{delivery.hub_ref}: request does not fit the WSDL: {exc}",
                                 instance=self.name) from None
        return etree.tostring(envelope, pretty_print=True, encoding="unicode")

    def close(self) -> None:
        self.http.close()

    # -- helpers -------------------------------------------------------------------------------------------
    def _request(self, delivery: Delivery) -> dict[str, Any]:
        """The ServiceRequest to send: the payload checked against the XSD, plus what the connector fills."""
        payload = dict(delivery.payload)
        clash = [k for k in CONNECTOR_FILLED if k in payload and payload[k] != delivery.hub_ref]
        if clash:
            raise PermanentError(f"{delivery.hub_ref}: payload sets {', '.join(clash)}, which the connector fills "
                                 "from the Hub reference", instance=self.name, hint="remove it from the mapping")
        payload["ExternalReference"] = delivery.hub_ref
        if payload.get("AuthorityCode") in (None, ""):
            code = self.authority_codes.get(delivery.authority)
            if code is None:
                raise PermanentError(
                    f"{delivery.hub_ref}: no billing-authority code for authority {delivery.authority!r}",
                    instance=self.name,
                    hint="set AuthorityCode in the mapping or options.authority_codes in connectors.yaml")
            payload["AuthorityCode"] = code
        problems: list[str] = []
        ordered = self._check(payload, self._request_fields, "", problems)
        if problems:
            raise PermanentError(f"{delivery.hub_ref}: payload does not fit the revenues WSDL: {'; '.join(problems)}",
                                 instance=self.name, hint="fix the mapping (see `hubbridge` target fields) and replay")
        return ordered

    def _check(self, data: Mapping[str, Any], fields: Mapping[str, TargetField], prefix: str,
               problems: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in data:
            if key not in fields:
                problems.append(f"{prefix}{key}: not a field of the request (known: {', '.join(fields)})")
        for name, f in fields.items():
            path = f"{prefix}{name}"
            value = data.get(name)
            if value is None or value == "":
                if f.required:
                    problems.append(f"{path}: required")
                continue
            if f.children:
                if not isinstance(value, Mapping):
                    problems.append(f"{path}: must be a group of fields ({', '.join(f.children)})")
                    continue
                out[name] = self._check(value, f.children, path + ".", problems)
                continue
            if isinstance(value, Mapping | list):
                problems.append(f"{path}: must be a single value")
                continue
            if isinstance(value, str):
                if f.max_length is not None and len(value) > f.max_length:
                    problems.append(f"{path}: {len(value)} characters, over the {f.max_length} allowed")
                if f.enum and value not in f.enum:
                    problems.append(f"{path}: {value!r} is not one of {', '.join(f.enum)}")
                pattern = self._patterns.get(path)
                if pattern and not re.fullmatch(pattern, value):
                    problems.append(f"{path}: {value!r} does not match {pattern}")
            # zeep passes strings through unchecked, so a bad date would only be refused by the back office
            if not _fits_type(value, f.type):
                problems.append(f"{path}: {value!r} is not a valid {f.type}")
            out[name] = value
        return out

    def _serialisable(self, hub_ref: str, request: dict[str, Any]) -> None:
        # zeep checks types (dates, decimals) only when it serialises; do it before anything is sent
        try:
            self.client.create_message(self.service, "CreateServiceRequest", ServiceRequest=request)
        except (zx.Error, TypeError, ValueError) as exc:
            raise PermanentError(f"{hub_ref}: request does not fit the WSDL: {exc}", instance=self.name,
                                 hint="fix the mapping and replay") from None

    def _call(self, op: str, fn: Callable[[], T], *, hub_ref: str | None = None, ref: str | None = None) -> T:
        """A call with effects; refusals name the case or work item they were about."""
        self._sign_in()
        try:
            return call(self.name, op, fn)
        except PermanentError as exc:
            about = hub_ref or (f"work item {ref}" if ref else None)
            if about is None:
                raise
            raise PermanentError(f"{about}: {exc.message}", instance=self.name, hint=exc.hint) from None

    def _read(self, op: str, fn: Callable[[], T]) -> T:
        """A call without effects: a lost answer is merely transient, nothing needs looking up."""
        self._sign_in()
        try:
            return call(self.name, op, fn)
        except UnknownOutcomeError as exc:
            raise TransientError(exc.message, instance=self.name) from None

    def _result(self, item: Any, op: str) -> CreateResult:
        ref = getattr(item, "WorkItemRef", None)
        if not ref:
            raise BadResponseError(f"{op}: answer carries no WorkItemRef", instance=self.name)
        return CreateResult(backoffice_ref=str(ref), status_code=str(item.StatusCode),
                            raw=_plain(serialize_object(item, dict)))


__all__ = ["AUTHORITY_CODES", "STATUS_CODES", "WORK_ITEM_TYPES", "RevenuesConnector", "xsd_facets"]
