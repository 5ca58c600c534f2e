"""Planning connector: district councils' planning back offices over REST/JSON (Idox Uniform / planning.data style).

The interface is the project's own, shaped on public material (see `hubbridge.connectors.planning.models`):
Uniform's service-request submission as mySociety's open311-adapter drives it (caller's reference as an
alternative reference, type code, site easting/northing, nature of complaint, customer) and
planning.data.gov.uk's planning-application fields (`reference`, `uprn`, `address-text`, `organisation`).

    POST /api/v1/enquiries                       Idempotency-Key: <hub ref>, body has external_reference
    GET  /api/v1/enquiries?external_reference=   look-up by the Hub reference
    GET  /api/v1/enquiries/{id}
    GET  /api/v1/changes?since_sequence=&limit=  gap-free, ordered changes feed
    POST /api/v1/enquiries/{id}/notes            note and amendment follow-ups (typed notes)
    POST /api/v1/enquiries/{id}/documents        evidence follow-ups (all files of one follow-up in one call)
    POST /api/v1/enquiries/{id}/withdraw         cancel follow-ups

Authentication is a bearer token read from the environment variable the instance's `credentials.token`
names. The back office can also push changes as webhooks signed with `hubbridge.signing` (HMAC-SHA256 over
timestamp + body, five-minute window); `PlanningConnector.parse_webhook` verifies and parses them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import structlog
from pydantic import BaseModel, ValidationError

from hubbridge import signing
from hubbridge.case import FollowUpKind
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
from hubbridge.connectors.http import HttpClient
from hubbridge.connectors.planning.models import (
    MAX_DOCUMENTS,
    Change,
    ChangesPage,
    DocumentsRequest,
    DocumentsStored,
    Enquiry,
    EnquiryList,
    EnquiryPayload,
    EnquiryRequest,
    ErrorBody,
    NoteCategory,
    NoteRequest,
    WebhookEnvelope,
    WithdrawRequest,
)
from hubbridge.errors import BadResponseError, ConfigError, NotSupported, PermanentError, SecurityError

if TYPE_CHECKING:
    from hubbridge.config.models import ConnectorInstance

log = structlog.get_logger(__name__)

API = "api/v1/"
MAX_PAGE = 500
"""The largest page the changes feed serves; bigger `limit`s are clamped."""
MAX_WEBHOOK_BYTES = 1024 * 1024
NOTE_MAX = 4000
REASON_MAX = 500
DESCRIPTION_MAX = 500
MAX_REQUEST_BYTES = 5 * 1000 * 1000
"""The largest request body the back office takes (a documents upload is the only one that comes near)."""
CUT_MARK = " [cut: full text in the Hub]"
CATEGORY_OF = {FollowUpKind.NOTE: NoteCategory.GENERAL, FollowUpKind.AMENDMENT: NoteCategory.AMENDMENT}
"""The note category a follow-up's note gets unless the mapping's `followups:` fields give one."""
FOLLOWUP_FIELDS = {
    FollowUpKind.NOTE: ("author", "category"), FollowUpKind.AMENDMENT: ("author", "category"),
    FollowUpKind.CANCEL: ("reason",), FollowUpKind.EVIDENCE: ("description",),
}
"""The request fields a mapping may set per follow-up kind (`FollowUp.fields`); the connector fills the rest."""


def followup_mark(key: str) -> str:
    """What starts every note, reason and document description a follow-up makes, so a read finds it again."""
    return f"[Hub {key}]"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(CUT_MARK)] + CUT_MARK


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(dotted field path, message) for each problem pydantic found."""
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        out.append((path, err["msg"]))
    return out


def _describe(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path}: {msg}" for path, msg in problems)


def request_body(hub_ref: str, payload: Mapping[str, Any], *, where: str | None = None) -> bytes:
    """The exact bytes `create` sends for a payload: validated, defaults filled, `external_reference` set."""
    if "external_reference" in payload:
        raise PermanentError(
            "payload must not set external_reference: the connector fills it with the Hub reference",
            instance=where, hint=f"{hub_ref}: remove external_reference from the mapping",
        )
    try:
        req = EnquiryRequest.model_validate({**payload, "external_reference": hub_ref})
    except ValidationError as exc:
        raise PermanentError(
            f"{hub_ref}: payload is not a valid planning enquiry: {_describe(field_errors(exc))}",
            instance=where, hint="fix the mapping for these fields and replay the case",
        ) from None
    return json.dumps(req.model_dump(mode="json", exclude_none=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json_type(schema: Mapping[str, Any]) -> str:
    if schema.get("format") == "date-time":
        return "datetime"
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
            "object": "object", "array": "array"}.get(str(schema.get("type")), "string")


def _fields_from_schema(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, TargetField]:
    """Walk a pydantic JSON schema object into TargetFields (constraints come from the Field declarations)."""

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        if "$ref" in node:
            return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
        options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            return resolve(options[0])
        return node

    required = set(schema.get("required", []))
    out: dict[str, TargetField] = {}
    for name, raw in schema.get("properties", {}).items():
        node = resolve(raw)
        repeated = node.get("type") == "array"
        item = resolve(node["items"]) if repeated else node
        children = _fields_from_schema(item, defs) if item.get("type") == "object" else {}
        out[name] = TargetField(
            name=name,
            type="object" if children else _json_type(item),
            max_length=item.get("maxLength"),
            required=name in required,
            repeated=repeated,
            enum=tuple(str(v) for v in item.get("enum", ())),
            children=children,
        )
    return out


def model_target_fields(model: type[BaseModel]) -> dict[str, TargetField]:
    """Target fields of a request model, with max lengths, enums and nesting from its Field constraints."""
    schema = model.model_json_schema()
    return _fields_from_schema(schema, schema.get("$defs", {}))


class PlanningConnector(Connector):
    """A district council's planning back office (planning enquiries, breach reports, pre-application advice)."""

    plugin: ClassVar[str] = "planning"
    supports_cancel: ClassVar[bool] = True
    supports_notes: ClassVar[bool] = True
    supports_webhooks: ClassVar[bool] = True
    # No priority (planning officers triage enquiries themselves) and no reopen (a closed enquiry stays closed;
    # the customer makes a new one): the route's fallback handles those kinds.
    followup_kinds: ClassVar[frozenset[FollowUpKind]] = frozenset(
        {FollowUpKind.NOTE, FollowUpKind.AMENDMENT, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL})

    def __init__(self, instance: ConnectorInstance, env: Mapping[str, str] | None = None) -> None:
        super().__init__(instance, env)
        if "token" not in instance.credentials:
            raise ConfigError(
                "planning connector needs credentials.token (the environment variable holding the bearer token)",
                key=f"connectors.{self.name}.credentials",
                hint="add `credentials: {token: PLANNING_<DISTRICT>_TOKEN}` to the instance",
            )
        self.base_url = instance.endpoint.rstrip("/") + "/"
        self.http = HttpClient(instance)
        self._token: str | None = None

    # -- plumbing --------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return self.base_url + API + path

    def _headers(self, **extra: str) -> dict[str, str]:
        if self._token is None:
            self._token = self.secret(self.instance.credentials["token"])
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json", **extra}

    def _fail(self, resp: Any, what: str) -> None:
        """Raise the right error for a non-2xx answer, naming the back office's field errors on 422."""
        if resp.status_code < 400:
            return
        detail = None
        if "json" in resp.headers.get("Content-Type", ""):
            try:
                err = ErrorBody.model_validate(resp.json())
                detail = err.error
                if err.errors:
                    detail += ": " + "; ".join(f"{e.field}: {e.message}" for e in err.errors)
            except (ValueError, ValidationError):
                detail = None
        if resp.status_code in (401, 403):
            raise PermanentError(f"{what}: back office refused the token (HTTP {resp.status_code})",
                                 instance=self.name,
                                 hint=f"check {self.instance.credentials['token']} holds this district's token")
        HttpClient.raise_for_status(resp, self.name, f"{what}: {detail}" if detail else None)

    def _parse(self, resp: Any, url: str, model: type[BaseModel], what: str) -> Any:
        data = self.http.json(resp, url)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise BadResponseError(f"{what}: answer from {url} is not a valid {model.__name__}: "
                                   f"{_describe(field_errors(exc))[:300]}", instance=self.name) from None

    @staticmethod
    def _result(enq: Enquiry) -> CreateResult:
        return CreateResult(backoffice_ref=enq.id, status_code=enq.status, raw=enq.model_dump(mode="json"))

    # -- Connector -------------------------------------------------------------------------------
    def target_fields(self) -> Mapping[str, TargetField]:
        return model_target_fields(EnquiryPayload)

    def render(self, delivery: Delivery) -> str:
        body = request_body(delivery.hub_ref, delivery.payload, where=self.name)
        lines = [
            f"POST {self._url('enquiries')}",
            "Authorization: Bearer <token from ${}>".format(self.instance.credentials["token"]),
            "Accept: application/json",
            "Content-Type: application/json",
            f"Idempotency-Key: {delivery.hub_ref}",
            "",
            body.decode("utf-8"),
        ]
        return "\n".join(lines)

    def create(self, delivery: Delivery) -> CreateResult:
        bound = log.bind(hub_ref=delivery.hub_ref, instance=self.name)
        body = request_body(delivery.hub_ref, delivery.payload, where=self.name)
        # Look first: a previous attempt may have been done with no answer; the key below covers races.
        existing = None if delivery.known_new else self.find(delivery.hub_ref)
        if existing is not None:
            bound.info("planning.create.exists", backoffice_ref=existing.backoffice_ref)
            return existing
        url = self._url("enquiries")
        headers = self._headers(**{"Content-Type": "application/json", "Idempotency-Key": delivery.hub_ref})
        resp = self.http.request("POST", url, sending=True, data=body, headers=headers)
        if resp.status_code == 409:
            raise PermanentError(
                f"{delivery.hub_ref}: back office holds a different enquiry under this Idempotency-Key",
                instance=self.name, hint="the case was changed after it was first sent; look it up by reference",
            )
        self._fail(resp, f"{delivery.hub_ref}: create enquiry")
        enq = self._parse(resp, url, Enquiry, f"{delivery.hub_ref}: create enquiry")
        if enq.external_reference != delivery.hub_ref:
            raise BadResponseError(
                f"{delivery.hub_ref}: back office answered with enquiry {enq.id} for "
                f"{enq.external_reference!r}", instance=self.name)
        bound.info("planning.create.done", backoffice_ref=enq.id, replayed=resp.status_code == 200)
        return self._result(enq)

    def find(self, hub_ref: str, delivery: Delivery | None = None) -> CreateResult | None:
        url = self._url("enquiries")
        resp = self.http.request("GET", url, params={"external_reference": hub_ref}, headers=self._headers())
        self._fail(resp, f"{hub_ref}: look up enquiry")
        found: EnquiryList = self._parse(resp, url, EnquiryList, f"{hub_ref}: look up enquiry")
        mine = [e for e in found.enquiries if e.external_reference == hub_ref]
        if not mine:
            return None
        if len(mine) > 1:
            log.warning("planning.find.duplicates", hub_ref=hub_ref, instance=self.name,
                        backoffice_refs=[e.id for e in mine])
        return self._result(min(mine, key=lambda e: (e.created_at, e.id)))

    def updates_since(self, cursor: str | None, limit: int = 100) -> UpdatePage:
        since = self._cursor(cursor)
        limit = max(1, min(int(limit), MAX_PAGE))
        url = self._url("changes")
        resp = self.http.request("GET", url, params={"since_sequence": since, "limit": limit},
                                 headers=self._headers())
        self._fail(resp, f"changes since {since}")
        page: ChangesPage = self._parse(resp, url, ChangesPage, f"changes since {since}")
        last = since
        for change in page.changes:
            # A sequence that does not move forward would make sync skip or repeat: refuse the page.
            if change.sequence <= last:
                raise BadResponseError(
                    f"changes feed out of order: sequence {change.sequence} after {last}", instance=self.name)
            last = change.sequence
        if len(page.changes) > limit:
            raise BadResponseError(f"changes feed sent {len(page.changes)} changes, asked for {limit}",
                                   instance=self.name)
        updates = [self.to_update(c) for c in page.changes]
        return UpdatePage(updates=updates, cursor=str(last), has_more=page.has_more and bool(updates))

    def _cursor(self, cursor: str | None) -> int:
        if cursor in (None, ""):
            return 0
        assert cursor is not None
        if not cursor.isdigit():
            raise PermanentError(f"sync cursor {cursor[:40]!r} is not a planning change sequence",
                                 instance=self.name, hint="reset this instance's sync cursor")
        return int(cursor)

    @staticmethod
    def to_update(change: Change) -> BackOfficeUpdate:
        """One feed (or webhook) change in the connector's update shape."""
        return BackOfficeUpdate(
            backoffice_ref=change.enquiry_id,
            update_id=str(change.sequence),
            occurred_at=change.occurred_at,
            status_code=change.status,
            note=change.note,
            hub_ref=change.external_reference or None,
            service_code=change.enquiry_type,
            raw=change.model_dump(mode="json"),
        )

    def add_note(self, backoffice_ref: str, note: str) -> None:
        body = self._small_body(NoteRequest, {"text": note}, backoffice_ref, "note")
        # The same note sent twice (a retried task) must land once: key it on enquiry + text.
        key = "note-" + hashlib.sha256(f"{backoffice_ref}\n{note}".encode()).hexdigest()[:32]
        url = self._url(f"enquiries/{quote(backoffice_ref, safe='')}/notes")
        resp = self.http.request("POST", url, sending=True, data=body, headers=self._headers(
            **{"Content-Type": "application/json", "Idempotency-Key": key}))
        self._fail(resp, f"{backoffice_ref}: add note")

    def cancel(self, backoffice_ref: str, reason: str) -> None:
        body = self._small_body(WithdrawRequest, {"reason": reason[:500]}, backoffice_ref, "withdrawal")
        url = self._url(f"enquiries/{quote(backoffice_ref, safe='')}/withdraw")
        resp = self.http.request("POST", url, sending=True, data=body,
                                 headers=self._headers(**{"Content-Type": "application/json"}))
        if resp.status_code == 409:
            raise PermanentError(f"{backoffice_ref}: enquiry is already closed and cannot be withdrawn",
                                 instance=self.name, hint="tell the customer the enquiry was already closed")
        self._fail(resp, f"{backoffice_ref}: withdraw")

    # -- follow-ups ------------------------------------------------------------------------------
    def follow_up(self, followup: FollowUp) -> FollowUpResult:
        """A note or amendment as a typed note, evidence as documents, a cancel as a withdrawal.

        No `Idempotency-Key` is sent: a Uniform-style back office has none, so a follow-up is kept from landing
        twice only by reading the enquiry back (`find_follow_up`), first unless `known_new`.
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
        log.info("planning.followup.done", key=followup.key, kind=followup.kind.value,
                 backoffice_ref=followup.backoffice_ref, backoffice_id=result.backoffice_id, instance=self.name)
        return result

    def find_follow_up(self, followup: FollowUp) -> FollowUpResult | None:
        """The note, documents or withdrawal a follow-up made, from `GET .../enquiries/{id}`; None if absent.

        Notes and documents are ours when their text starts with the follow-up's mark; a withdrawn enquiry
        counts as withdrawn by this follow-up, whoever did it.
        """
        if followup.kind not in self.followup_kinds:
            raise NotSupported(f"planning takes no {followup.kind.value} follow-ups", instance=self.name)
        ref = followup.backoffice_ref
        url = self._url(f"enquiries/{quote(ref, safe='')}")
        resp = self.http.request("GET", url, headers=self._headers())
        if resp.status_code == 404:
            return None
        self._fail(resp, f"{ref}: read enquiry")
        enq: Enquiry = self._parse(resp, url, Enquiry, f"{ref}: read enquiry")
        mark = followup_mark(followup.key)
        if followup.kind == FollowUpKind.CANCEL:
            if enq.status != "WITHDRAWN":
                return None
            return FollowUpResult(raw={"id": enq.id, "status": enq.status})
        if followup.kind == FollowUpKind.EVIDENCE:
            ids = [d.document_id for d in enq.documents if (d.description or "").startswith(mark)]
            return FollowUpResult(backoffice_id=",".join(ids), raw={"id": enq.id, "document_ids": ids}) if ids else None
        for note in enq.notes:
            if note.text.startswith(mark):
                return FollowUpResult(backoffice_id=str(note.note_id),
                                      raw={"id": enq.id, "note_id": note.note_id, "category": note.category})
        return None

    def _followup_fields(self, followup: FollowUp) -> dict[str, Any]:
        if followup.kind not in self.followup_kinds:
            raise NotSupported(f"planning takes no {followup.kind.value} follow-ups", instance=self.name)
        # One `followups:` section fills the fields of every kind: a field of another kind's request is left out,
        # a name no follow-up request has (a misspelling) is refused rather than silently dropped.
        known = {name for names in FOLLOWUP_FIELDS.values() for name in names}
        unknown = sorted(set(followup.fields) - known)
        if unknown:
            raise PermanentError(
                f"{followup.key}: the mapping's follow-up fields {', '.join(unknown)} are not fields of any planning "
                f"follow-up request", instance=self.name,
                hint=f"planning follow-ups take {', '.join(sorted(known))}; fix the mapping's followups: section")
        return {k: v for k, v in followup.fields.items() if k in FOLLOWUP_FIELDS[followup.kind]}

    def _post(self, path: str, body: bytes) -> tuple[str, Any]:
        url = self._url(path)
        resp = self.http.request("POST", url, sending=True, data=body,
                                 headers=self._headers(**{"Content-Type": "application/json"}))
        return url, resp

    def _note(self, followup: FollowUp, fields: Mapping[str, Any]) -> FollowUpResult:
        ref = followup.backoffice_ref
        data = {"text": _cut(f"{followup_mark(followup.key)} {followup.text.strip()}", NOTE_MAX),
                "author": fields.get("author") or "hubbridge",
                "category": fields.get("category") or CATEGORY_OF[followup.kind].value}
        body = self._small_body(NoteRequest, data, ref, "note")
        url, resp = self._post(f"enquiries/{quote(ref, safe='')}/notes", body)
        self._fail(resp, f"{ref}: add note")
        answer = self.http.json(resp, url)
        note_id = answer.get("note_id") if isinstance(answer, dict) else None
        if not isinstance(note_id, int):
            raise BadResponseError(f"{ref}: add note: answer from {url} carries no note_id", instance=self.name)
        return FollowUpResult(backoffice_id=str(note_id), raw={"id": ref, "note_id": note_id,
                                                               "category": data["category"]})

    def _withdraw(self, followup: FollowUp, fields: Mapping[str, Any]) -> FollowUpResult:
        ref = followup.backoffice_ref
        reason = str(fields.get("reason") or followup.text).strip() or "withdrawn at the customer's request"
        body = self._small_body(WithdrawRequest, {"reason": _cut(f"{followup_mark(followup.key)} {reason}",
                                                                 REASON_MAX)}, ref, "withdrawal")
        url, resp = self._post(f"enquiries/{quote(ref, safe='')}/withdraw", body)
        if resp.status_code == 409:
            raise PermanentError(f"{ref}: enquiry is already closed and cannot be withdrawn",
                                 instance=self.name, hint="tell the customer the enquiry was already closed")
        self._fail(resp, f"{ref}: withdraw")
        enq: Enquiry = self._parse(resp, url, Enquiry, f"{ref}: withdraw")
        return FollowUpResult(raw={"id": enq.id, "status": enq.status})

    def _store_documents(self, followup: FollowUp, fields: Mapping[str, Any]) -> FollowUpResult:
        ref = followup.backoffice_ref
        if not followup.documents:
            raise PermanentError(f"{followup.key}: an evidence follow-up with no documents", instance=self.name)
        if len(followup.documents) > MAX_DOCUMENTS:
            raise PermanentError(f"{followup.key}: {len(followup.documents)} documents; the planning back office "
                                 f"takes at most {MAX_DOCUMENTS} at once", instance=self.name,
                                 hint="send the evidence in several follow-ups")
        text = str(fields.get("description") or followup.text).strip()
        description = _cut(f"{followup_mark(followup.key)} {text}".rstrip(), DESCRIPTION_MAX)
        uploads = [self._upload(followup, i, doc, description) for i, doc in enumerate(followup.documents, start=1)]
        body = self._small_body(DocumentsRequest, {"documents": uploads}, ref, "documents")
        if len(body) > MAX_REQUEST_BYTES:
            raise PermanentError(f"{followup.key}: the documents come to {len(body)} bytes encoded; the planning "
                                 f"back office takes requests of at most {MAX_REQUEST_BYTES}", instance=self.name,
                                 hint="send the files in several follow-ups, or as links")
        url, resp = self._post(f"enquiries/{quote(ref, safe='')}/documents", body)
        self._fail(resp, f"{ref}: add documents")
        stored: DocumentsStored = self._parse(resp, url, DocumentsStored, f"{ref}: add documents")
        ids = [d.document_id for d in stored.documents]
        return FollowUpResult(backoffice_id=",".join(ids), raw={"id": ref, "document_ids": ids})

    @staticmethod
    def _upload(followup: FollowUp, index: int, doc: Document, description: str) -> dict[str, Any]:
        # The file itself when the Hub sent it (a link can expire before an officer opens it), else the link.
        upload: dict[str, Any] = {"filename": doc.filename[:200] or f"document-{index}",
                                  "content_type": doc.content_type, "description": description}
        if doc.content is not None:
            upload["content_base64"] = base64.b64encode(doc.content).decode("ascii")
        elif doc.url is not None:
            upload["url"] = doc.url
        return upload

    def _small_body(self, model: type[BaseModel], data: dict[str, Any], ref: str, what: str) -> bytes:
        try:
            obj = model.model_validate(data)
        except ValidationError as exc:
            raise PermanentError(f"{ref}: invalid {what}: {_describe(field_errors(exc))}", instance=self.name) from None
        return json.dumps(obj.model_dump(mode="json"), separators=(",", ":")).encode("utf-8")

    def close(self) -> None:
        self.http.close()

    # -- pushed changes --------------------------------------------------------------------------
    @staticmethod
    def parse_webhook(headers: Mapping[str, str], body: bytes, secret: str, *,
                      now: float | None = None) -> list[BackOfficeUpdate]:
        """Verify a pushed change notification (HMAC-SHA256 over timestamp + body, 5-minute window) and parse it.

        Raises `SecurityError` when it is unsigned, stale, from the future or its signature does not match;
        `BadResponseError` when a correctly signed body is not a valid notification.
        """
        if not isinstance(body, bytes | bytearray):
            raise SecurityError("webhook body must be the raw bytes received, as signed")
        if len(body) > MAX_WEBHOOK_BYTES:
            raise SecurityError(f"webhook body of {len(body)} bytes is over the {MAX_WEBHOOK_BYTES} limit")
        signing.verify(headers, bytes(body), secret, now=now)
        try:
            envelope = WebhookEnvelope.model_validate_json(body)
        except ValidationError as exc:
            raise BadResponseError(f"signed planning webhook is not a valid notification: "
                                   f"{_describe(field_errors(exc))[:300]}", instance="planning-webhook") from None
        changes = sorted(envelope.changes, key=lambda c: c.sequence)
        return [PlanningConnector.to_update(c) for c in changes]
