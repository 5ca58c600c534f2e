"""The refuse connector: Bartec Collective over SOAP (zeep), with look-up-before-create idempotency."""

from __future__ import annotations

import json
import mimetypes
import re
import threading
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from cachetools import LRUCache
from lxml import etree
from pydantic import ValidationError

from hubbridge.case import LONDON, FollowUpKind
from hubbridge.connectors.bartec.options import BartecOptions
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
from hubbridge.connectors.soap import call, make_client, target_fields_of
from hubbridge.errors import BadResponseError, ConfigError, OutcomeUnknown, PermanentError, TransientError

log = structlog.get_logger(__name__)

WSDL = Path(__file__).with_name("bartec.wsdl")
TNS = "http://bartec-systems.com/"
BINDING = f"{{{TNS}}}CollectiveAPISoap"
CREATE_ELEMENT = f"{{{TNS}}}ServiceRequest_Create"
SAFE_OPERATIONS = frozenset({
    "Authenticate", "ServiceRequests_Get", "ServiceRequests_Updates_Get", "ServiceRequests_History_Get",
    "ServiceRequests_Statuses_Get", "ServiceRequests_Notes_Types_Get", "Premises_Get", "ServiceRequests_Detail_Get",
})
"""Read-only operations: a timeout on them is a plain transient error, not an unknown outcome."""
CONNECTOR_FILLED = ("token", "ExternalReference")
"""Request fields the connector sets itself (the session token, and the Hub reference for look-ups)."""
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
REQUEST_DATE_MARGIN = timedelta(days=1)
"""How far either side of the case's DateRequested `find` searches (Bartec may store it rounded or shifted)."""
HISTORY_FROM = datetime(1753, 1, 1, tzinfo=UTC)
"""Sent as ServiceRequests_History_Get's Date, as open311-adapter does (commit 11e47701): Bartec ignores the
filter (all of a request's history or none, by whether Date is before the request was made) and refuses an
omitted Date with "SqlDateTime overflow", so ask for everything and de-duplicate."""
INVALID_TOKEN = "Invalid Token"
TYPE_CACHE_SIZE = 10_000
NOTE_KINDS = frozenset({FollowUpKind.NOTE, FollowUpKind.AMENDMENT})
"""Follow-ups Bartec takes as a note (ServiceRequest_Note_Create), under the note type the options give each."""
NOTE_MAX = 2000
COMMENTS_MAX = 500
DOCUMENT_NAME_MAX = 255
EXTENSION = re.compile(r"^[A-Za-z0-9]{1,10}$")
UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")
CANCELLED = "CANCELLED"
"""Jobs whose service type is remembered per connector instance and process (one SOAP call saved per update)."""


def _local(at: datetime) -> datetime:
    """Bartec reads and writes UK local time without an offset."""
    return at.astimezone(LONDON).replace(tzinfo=None)


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=LONDON) if at.tzinfo is None else at


class _Cursor:
    """The sync position: the newest change time Bartec listed, and the history ids already passed per request.

    `ServiceRequests_History_Get` ignores its Date filter (it returns all of a request's history or none), and
    Bartec lists a request as changed up to days after its history entries' own times; so history is read whole
    and de-duplicated by id here, never filtered by time. Requests not listed for `retention` are forgotten
    (sync also drops update ids it has already seen, so one coming back then is harmless).
    """

    def __init__(self, at: datetime | None = None, done: dict[int, tuple[float, set[int]]] | None = None) -> None:
        self.at = at
        self.done = done or {}

    @classmethod
    def parse(cls, text: str | None, instance: str) -> _Cursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            at = datetime.fromisoformat(data["t"]) if data.get("t") else None
            done = {int(k): (float(v[0]), {int(i) for i in v[1]}) for k, v in data.get("done", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            raise PermanentError(f"invalid Bartec sync cursor {text[:80]!r}", instance=instance,
                                 hint="reset the instance's sync cursor (None reads from the start)") from None
        if at is not None and at.tzinfo is None:
            raise PermanentError("invalid Bartec sync cursor: time without zone", instance=instance)
        return cls(at, done)

    def passed(self, request_id: int, history_id: int) -> bool:
        entry = self.done.get(request_id)
        return entry is not None and history_id in entry[1]

    def dump(self) -> str:
        data = {"v": 2, "t": self.at.astimezone(UTC).isoformat() if self.at else None,
                "done": {str(k): [t, sorted(ids)] for k, (t, ids) in sorted(self.done.items())}}
        return json.dumps(data, separators=(",", ":"))


class BartecConnector(Connector):
    """Bartec Collective (refuse and street scene): jobs are service requests with a ServiceCode reference.

    `Delivery.payload` holds the `ServiceRequest_Create` request fields by their SOAP element names
    (see `target_fields()`); the connector adds the session token and `ExternalReference` (the Hub ref).
    Options are `BartecOptions` (connectors/bartec/options.py): the district's own service types, a fallback
    LandTypeID, and the look-up and sync windows. Bartec has no look-up by our reference, so `find` searches and
    matches the ExternalReference Bartec echoes, raising OutcomeUnknown when it cannot be sure.
    """

    plugin = "bartec"
    supports_cancel = True
    supports_notes = True
    followup_kinds = frozenset({FollowUpKind.NOTE, FollowUpKind.AMENDMENT, FollowUpKind.EVIDENCE,
                                FollowUpKind.CANCEL})
    """Notes and amendments as notes, evidence as stored documents, cancel as the type's CANCELLED status. Not
    PRIORITY: a Bartec request's urgency is its SLA (SLAID, from the service type's DefaultSLA at create), which no
    public client changes afterwards, and a note would leave the SLA clock as it was. Not REOPEN: no public source
    shows Bartec taking an open status on a closed or cancelled request. The route's config handles those two."""

    def __init__(self, instance: Any, env: Mapping[str, str] | None = None) -> None:
        super().__init__(instance, env)
        self.http = HttpClient(instance)
        self._client, self._service = make_client(WSDL, self.http, instance.endpoint, BINDING, SAFE_OPERATIONS)
        try:
            self.options = BartecOptions.model_validate(instance.options)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise ConfigError(f"invalid Bartec option {where}: {problem['msg']}", key=f"connectors.{self.name}.options",
                              hint="see connectors/bartec/options.py for what a Bartec instance may set") from None
        opts = self.options
        self._auth_service = self._client.create_service(BINDING, opts.auth_endpoint or instance.endpoint)
        self.lookback = timedelta(seconds=opts.lookback_seconds)
        self.retention = timedelta(days=opts.history_retention_days)
        self.find_window = timedelta(hours=opts.find_window_hours)
        self.fallback_land_type = opts.fallback_land_type_id
        # a convenience only the simulator offers (real Bartec has no such criterion): config must declare it
        self.external_reference_lookup = opts.external_reference_lookup
        self.note_type = opts.note_type
        self._type_to_local = dict(opts.service_types)
        self._type_to_shipped = {v: k for k, v in opts.service_types.items()}
        self._token: str | None = None
        self._token_lock = threading.Lock()
        # ServiceCode -> ServiceTypeID (a job's type never changes), for the jobs with updates in flight
        self._type_of: LRUCache[str, str] = LRUCache(maxsize=TYPE_CACHE_SIZE)
        self._statuses: dict[tuple[str, str], int] = {}  # (ServiceTypeID, status name) -> status ID
        self._note_type_id: int | None = None
        self._note_types: dict[str, int] | None = None  # note type description -> ID, per installation
        self._fields: dict[str, TargetField] | None = None

    @property
    def log(self) -> Any:
        # bound per use, not once here: a worker builds its connectors before logging is configured, and a
        # logger bound then would keep structlog's defaults (no redaction, no JSON) for the process's life
        return log.bind(instance=self.name)

    # -- plumbing ----------------------------------------------------------------------------------
    def _authenticate(self) -> str:
        creds = self.instance.credentials
        user = self.secret(creds.get("username")) or ""
        password = self.secret(creds.get("password")) or ""
        result = call(self.name, "Authenticate", lambda: self._auth_service.Authenticate(user=user, password=password))
        if result is None:
            raise BadResponseError("Authenticate: empty answer", instance=self.name)
        errors = result.Errors.Error if result.Errors is not None else []
        if errors and errors[0].Result:
            raise PermanentError(f"Authenticate refused: {errors[0].Message or 'no reason given'}", instance=self.name,
                                 hint="check the Bartec user and password in the environment variables named "
                                      f"in connectors.{self.name}.credentials")
        if result.Token is None or not result.Token.TokenString:
            raise BadResponseError("Authenticate: answer carries no token", instance=self.name)
        return str(result.Token.TokenString)

    def _session_token(self, renew: bool = False) -> str:
        with self._token_lock:
            if renew or self._token is None:
                self._token = self._authenticate()
            return self._token

    def _invoke(self, op: str, ref: str | None = None, **params: Any) -> Any:
        """Call one operation with a session token; a refused token is renewed once; in-body errors raise."""
        for attempt in (1, 2):
            token = self._session_token(renew=attempt == 2)
            result = call(self.name, op, lambda token=token: getattr(self._service, op)(token=token, **params))
            if result is None:
                raise BadResponseError(f"{op}: the answer carries no result", instance=self.name,
                                       hint="the back office or a proxy sent an empty SOAP body")
            errors = getattr(result, "Errors", None)
            code = getattr(errors, "Result", 0) if errors is not None else 0
            if not code:
                return result
            message = (getattr(errors, "Message", None) or "no message").strip()
            if message == INVALID_TOKEN and attempt == 1:
                self.log.info("bartec.token_renewed", op=op)
                continue
            about = f" for {ref}" if ref else ""
            raise PermanentError(f"{op}{about}: Bartec refused the request: {message}", instance=self.name,
                                 hint="fix the case or the mapping (UPRN, service type, status) and replay")
        raise AssertionError("unreachable")

    def _request(self, delivery: Delivery) -> dict[str, Any]:
        """The create parameters: the payload checked against the WSDL, with the Hub ref as ExternalReference."""
        params = {k: v for k, v in delivery.payload.items() if k != "token"}
        given = params.get("ExternalReference")
        if given not in (None, delivery.hub_ref):
            self.log.warning("bartec.external_reference_replaced", hub_ref=delivery.hub_ref, given=given)
        params["ExternalReference"] = delivery.hub_ref
        if params.get("ServiceTypeID") is not None:
            params["ServiceTypeID"] = self._local_type(params["ServiceTypeID"])
        if params.get("LandTypeID") is None and self.fallback_land_type is not None:
            # some service types have no default land type, yet Bartec refuses a create without one
            # (open311-adapter commit 906f2725)
            params["LandTypeID"] = self.fallback_land_type
        problems = _check(params, self._create_fields(), "")
        if problems:
            raise PermanentError(f"{delivery.hub_ref}: payload does not fit ServiceRequest_Create: "
                                 + "; ".join(problems), instance=self.name,
                                 hint="fix the refuse mapping (field names and lengths are in bartec.wsdl)")
        return params

    def _message(self, params: dict[str, Any], token: str, hub_ref: str) -> etree._Element:
        try:
            return self._client.create_message(self._service, "ServiceRequest_Create", token=token, **params)
        except (TypeError, ValueError, LookupError, AttributeError) as exc:
            raise PermanentError(f"{hub_ref}: payload does not fit ServiceRequest_Create: {exc}", instance=self.name,
                                 hint="fix the refuse mapping (field names and nesting are in bartec.wsdl)") from None
        except Exception as exc:  # zeep's own validation errors
            if exc.__class__.__module__.startswith("zeep"):
                raise PermanentError(f"{hub_ref}: payload does not fit ServiceRequest_Create: {exc}",
                                     instance=self.name, hint="fix the refuse mapping") from None
            raise

    def _create_fields(self) -> dict[str, TargetField]:
        if self._fields is None:
            self._fields = target_fields_of(self._client, CREATE_ELEMENT)
        return self._fields

    # -- the Connector interface -------------------------------------------------------------------
    def target_fields(self) -> Mapping[str, TargetField]:
        return {k: v for k, v in self._create_fields().items() if k not in CONNECTOR_FILLED}

    def render(self, delivery: Delivery) -> str:
        params = self._request(delivery)
        message = self._message(params, "(session token)", delivery.hub_ref)
        return etree.tostring(message, pretty_print=True, encoding="unicode")

    def find(self, hub_ref: str, delivery: Delivery | None = None) -> CreateResult | None:
        """Bartec has no look-up by our reference: search what it offers and match the ExternalReference it echoes.

        With the delivery, `ServiceRequests_Get` by its UPRN, service type and a window around its DateRequested;
        without, the requests changed in the last `find_window_hours` (`ServiceRequests_Updates_Get`, whose
        JobReference echoes the ExternalReference). A job that might be ours but does not say raises OutcomeUnknown.
        """
        if self.external_reference_lookup:
            result = self._invoke("ServiceRequests_Get", ref=hub_ref, ExternalReference=hub_ref)
            return self._matched(hub_ref, list(result.ServiceRequest or []), [])
        if delivery is None:
            since = datetime.now(UTC) - self.find_window
            changed = self._invoke("ServiceRequests_Updates_Get", ref=hub_ref, LastUpdated=_local(since))
            codes = sorted({j.ServiceCode for j in changed.ServiceRequest_Updates or []
                            if (j.JobReference or "").strip() == hub_ref})
            if not codes:
                return None
            return self._matched(hub_ref, [self._job(code) for code in codes], [])
        payload = delivery.payload
        requested = payload.get("DateRequested")
        if payload.get("UPRN") in (None, "") or payload.get("ServiceTypeID") in (None, "") or requested is None:
            raise OutcomeUnknown(f"{hub_ref}: cannot search Bartec without the case's UPRN, ServiceTypeID and "
                                 "DateRequested", instance=self.name)
        at = requested if isinstance(requested, datetime) else datetime.fromisoformat(str(requested))
        at = _aware(at)
        result = self._invoke(
            "ServiceRequests_Get", ref=hub_ref, UPRNs={"decimal": [payload["UPRN"]]},
            ServiceTypes={"int": [self._local_type(payload["ServiceTypeID"])]},
            RequestDate={"MinimumDate": _local(at - REQUEST_DATE_MARGIN),
                         "MaximumDate": _local(at + REQUEST_DATE_MARGIN)})
        jobs = list(result.ServiceRequest or [])
        # a job there that carries no reference at all may be ours with the reference lost; one with another
        # reference is someone else's
        unsure = [sr for sr in jobs if not (sr.ExternalReference or "").strip()]
        return self._matched(hub_ref, jobs, unsure)

    def _matched(self, hub_ref: str, jobs: list[Any], unsure: list[Any]) -> CreateResult | None:
        found = [sr for sr in jobs if (sr.ExternalReference or "").strip() == hub_ref]
        if not found:
            if unsure:
                raise OutcomeUnknown(f"{hub_ref}: Bartec holds jobs at the case's UPRN, of its service type and "
                                     "date, that do not say whose they are", instance=self.name,
                                     candidates=sorted(sr.ServiceCode for sr in unsure))
            return None
        found.sort(key=lambda sr: sr.id)
        if len(found) > 1:
            self.log.warning("bartec.duplicate_jobs", hub_ref=hub_ref, codes=[sr.ServiceCode for sr in found])
        first = found[0]
        if first.ServiceType is not None:
            self._type_of[first.ServiceCode] = str(first.ServiceType.ID)
        status = first.ServiceStatus.Status if first.ServiceStatus is not None else None
        return CreateResult(backoffice_ref=first.ServiceCode, status_code=status,
                            raw={"id": first.id, "ServiceCode": first.ServiceCode, "found": True})

    def create(self, delivery: Delivery) -> CreateResult:
        bound = self.log.bind(hub_ref=delivery.hub_ref)
        params = self._request(delivery)
        self._message(params, "(check)", delivery.hub_ref)  # refuse a bad payload before touching Bartec
        existing = None if delivery.known_new else self.find(delivery.hub_ref, delivery)
        if existing is not None:
            bound.info("bartec.create.exists", backoffice_ref=existing.backoffice_ref)
            return existing
        result = self._invoke("ServiceRequest_Create", ref=delivery.hub_ref, **params)
        code = (result.ServiceCode or "").strip()
        if not code:
            raise BadResponseError(f"ServiceRequest_Create for {delivery.hub_ref}: answer carries no ServiceCode",
                                   instance=self.name, hint="the job may exist; it is looked up before any retry")
        if "ServiceTypeID" in params:
            self._type_of[code] = str(params["ServiceTypeID"])
        bound.info("bartec.create.done", backoffice_ref=code)
        return CreateResult(backoffice_ref=code, raw={"ServiceCode": code})

    def updates_since(self, cursor: str | None, limit: int = 100) -> UpdatePage:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        state = _Cursor.parse(cursor, self.name)
        since = state.at - self.lookback if state.at else EPOCH
        changed = self._invoke("ServiceRequests_Updates_Get", LastUpdated=_local(since))
        found: list[tuple[datetime, int, int, Any]] = []
        listed: dict[int, datetime] = {}
        partial = False
        for job in changed.ServiceRequest_Updates or []:
            if job.DateChanged is None or _aware(job.DateChanged) < since:
                continue
            try:
                history = self._invoke("ServiceRequests_History_Get", ref=job.ServiceCode,
                                       ServiceRequestID=job.ServiceRequestID, Date=HISTORY_FROM)
            except TransientError:
                # One history call per changed job: on a flaky back office a whole page would almost never
                # succeed. Hand over the jobs read so far (each job's history is complete) and keep the
                # cursor's time where it was, so the unread jobs are asked for again next time.
                if not found:
                    raise
                partial = True
                break
            listed[job.ServiceRequestID] = _aware(job.DateChanged)
            for h in history.ServiceRequest_History or []:
                # never dropped for being dated before the cursor: Bartec lists a request as changed days
                # after its history entry's own time
                if not state.passed(job.ServiceRequestID, h.id):
                    found.append((_aware(h.DateChanged), h.id, job.ServiceRequestID, h))
        found.sort(key=lambda f: (f[0], f[1]))
        page = found[:limit]
        updates = [self._update(at, h) for at, _, _, h in page]
        done = {k: (t, set(ids)) for k, (t, ids) in state.done.items()}
        for _, hid, sr_id, _ in page:
            stamp = listed[sr_id].timestamp()
            entry = done.setdefault(sr_id, (stamp, set()))
            done[sr_id] = (max(entry[0], stamp), entry[1] | {hid})
        more = partial or len(found) > limit
        at = state.at
        if not more and listed:
            # every listed request's history is passed: move on, keeping the lookback for late commits
            at = max([state.at or EPOCH, *listed.values()])
        if at is not None:
            horizon = (at - self.retention).timestamp()
            done = {k: v for k, v in done.items() if v[0] >= horizon}
        return UpdatePage(updates=updates, cursor=_Cursor(at, done).dump(), has_more=more)

    def _update(self, at: datetime, h: Any) -> BackOfficeUpdate:
        code = h.ServiceCode
        if not code or not h.ServiceStatusName:
            raise BadResponseError(f"ServiceRequests_History_Get: record {h.id} lacks ServiceCode or status",
                                   instance=self.name)
        note = None
        if h.RecordStamp is not None and h.RecordStamp.Comments:
            note = h.RecordStamp.Comments.strip() or None
        closing = (h.ClosingCode or "").strip() or None
        if closing:
            # the closing code is the outcome the customer cares about ("JUSTIFIED" vs "NOT JUSTIFIED");
            # open311-adapter passes it back as the external status (commit 0fe83bf6)
            note = f"Closing code: {closing}" + (f". {note}" if note else "")
        hub_ref = (h.ExternalReference or "").strip() or None
        return BackOfficeUpdate(
            backoffice_ref=code, update_id=str(h.id), occurred_at=at.astimezone(UTC),
            status_code=h.ServiceStatusName.strip(), note=note, hub_ref=hub_ref,
            # the service type routes a job raised in Bartec; one the Hub sent (it names its case) needs no
            # extra ServiceRequests_Get per job to find it
            service_code=self._shipped_type(self._service_type(code) if hub_ref is None else self._type_of.get(code)),
            raw={"ServiceTypeName": h.ServiceTypeName, "ServiceClassName": h.ServiceClassName,
                 "ClosingCode": closing},
        )

    def _local_type(self, shipped: Any) -> Any:
        """This district's ServiceTypeID for the one the shared mapping gave (unchanged when not configured)."""
        try:
            return self._type_to_local.get(int(shipped), shipped)
        except (TypeError, ValueError):
            return shipped

    def _shipped_type(self, local: str | None) -> str | None:
        """The shared mappings' ServiceTypeID for this district's, so inbound routing reads one table."""
        if local is None or not local.isdigit():
            return local
        return str(self._type_to_shipped.get(int(local), int(local)))

    def _service_type(self, code: str) -> str | None:
        if code not in self._type_of:
            result = self._invoke("ServiceRequests_Get", ref=code, ServiceCode=code)
            for sr in result.ServiceRequest or []:
                if sr.ServiceCode == code and sr.ServiceType is not None:
                    self._type_of[code] = str(sr.ServiceType.ID)
        return self._type_of.get(code)

    def _job(self, code: str) -> Any:
        result = self._invoke("ServiceRequests_Get", ref=code, ServiceCode=code)
        for sr in result.ServiceRequest or []:
            if sr.ServiceCode == code:
                return sr
        raise PermanentError(f"Bartec has no service request {code}", instance=self.name,
                             hint="check the back-office reference linked to the case")

    def cancel(self, backoffice_ref: str, reason: str) -> None:
        job = self._job(backoffice_ref)
        current = job.ServiceStatus.Status if job.ServiceStatus is not None else None
        if current == "CANCELLED":
            return  # already done: cancelling is idempotent
        type_id = str(job.ServiceType.ID)
        if (type_id, "CANCELLED") not in self._statuses:
            result = self._invoke("ServiceRequests_Statuses_Get", ref=backoffice_ref, ServiceTypeID=int(type_id))
            for st in result.ServiceStatus or []:
                self._statuses[(str(st.ServiceTypeID), st.Status.strip())] = st.ID
        status = self._statuses.get((type_id, "CANCELLED"))
        if status is None:
            raise PermanentError(f"Bartec service type {type_id} has no CANCELLED status; cannot cancel "
                                 f"{backoffice_ref}", instance=self.name, hint="cancel it in Bartec by hand")
        self._invoke("ServiceRequest_Status_Set", ref=backoffice_ref, ServiceCode=backoffice_ref, StatusID=status,
                     Comments=(reason or "Cancelled from the Hub")[:500])

    def add_note(self, backoffice_ref: str, note: str) -> None:
        if self._note_type_id is None:
            types = self._installation_note_types()
            self._note_type_id = types.get(self.note_type, next(iter(types.values())))
        self._invoke("ServiceRequest_Note_Create", ref=backoffice_ref, ServiceCode=backoffice_ref,
                     NoteTypeID=self._note_type_id, Note=_bounded(note, NOTE_MAX), Comment="Note added by hubbridge")

    def _installation_note_types(self) -> dict[str, int]:
        """This installation's note types by description (each council sets up its own)."""
        if self._note_types is None:
            result = self._invoke("ServiceRequests_Notes_Types_Get")
            types = {t.Description.strip(): t.ID for t in result.ServiceNoteType or [] if t.Description}
            if not types:
                raise BadResponseError("ServiceRequests_Notes_Types_Get: no note types", instance=self.name)
            self._note_types = types
        return self._note_types

    # -- follow-ups (issue 22) ---------------------------------------------------------------------
    def follow_up(self, followup: FollowUp) -> FollowUpResult:
        """Send one follow-up: a note (note, amendment), documents (evidence) or the CANCELLED status (cancel).

        Bartec is not idempotent (a second call makes a second note or document), so the follow-up's key goes
        where `find_follow_up` reads it back, and a follow-up not `known_new` is looked for before it is sent.
        """
        if followup.kind not in self.followup_kinds:
            return super().follow_up(followup)
        bound = self.log.bind(backoffice_ref=followup.backoffice_ref, key=followup.key, kind=followup.kind.value)
        if followup.kind == FollowUpKind.EVIDENCE:
            # reads the request anyway (Document_Create wants its numeric id), so it skips what is there itself
            return self._send_evidence(followup, bound)
        found = self.landed_before(followup)
        if found is not None:
            return found
        if followup.kind == FollowUpKind.CANCEL:
            self.cancel(followup.backoffice_ref, f"{_note_tag(followup.key)} {followup.text}")
            bound.info("bartec.followup.done")
            return FollowUpResult(raw={"status": CANCELLED})
        result = self._invoke("ServiceRequest_Note_Create", ref=followup.backoffice_ref,
                              ServiceCode=followup.backoffice_ref, NoteTypeID=self._followup_note_type(followup),
                              Note=_bounded(f"{_note_tag(followup.key)} {followup.text}", NOTE_MAX),
                              Comment=_bounded(str(followup.fields.get("Comment") or "Note added by hubbridge"),
                                               COMMENTS_MAX))
        note_id = getattr(result, "NoteID", None)
        bound.info("bartec.followup.done", note_id=note_id)
        return FollowUpResult(backoffice_id=None if note_id is None else str(note_id), raw={"NoteID": note_id})

    def find_follow_up(self, followup: FollowUp) -> FollowUpResult | None:
        """Bartec's own record of the follow-up: a note on the request that starts with the key, every document
        named for it (both read with `ServiceRequests_Detail_Get`), or, for cancel, the request being CANCELLED."""
        if followup.kind not in self.followup_kinds:
            return super().find_follow_up(followup)
        code = followup.backoffice_ref
        if followup.kind == FollowUpKind.CANCEL:
            job = self._job(code)
            status = job.ServiceStatus.Status.strip() if job.ServiceStatus is not None else None
            # cancelled by anyone counts: there is nothing left for the Hub's cancel to do
            return FollowUpResult(raw={"status": CANCELLED, "found": True}) if status == CANCELLED else None
        detail = self._detail(code)
        if followup.kind == FollowUpKind.EVIDENCE:
            wanted = [name for name, _ in self._documents(followup)]
            present = _document_names(detail)
            if all(name in present for name in wanted):
                return FollowUpResult(raw={"documents": wanted, "found": True})
            # none, or only some (the answer to a later one was lost): send again, and `follow_up` skips those
            # Bartec already holds
            return None
        tag = _note_tag(followup.key)
        notes = detail.Notes.Note if detail.Notes is not None else []
        for note in notes or []:
            if (note.Note or "").startswith(tag):
                return FollowUpResult(backoffice_id=None if note.ID is None else str(note.ID),
                                      raw={"NoteID": note.ID, "found": True})
        return None

    def _followup_note_type(self, followup: FollowUp) -> int:
        types = self._installation_note_types()
        given = followup.fields.get("NoteType")
        if given:
            if str(given) not in types:
                raise PermanentError(f"{followup.key}: Bartec has no note type {given!r}", instance=self.name,
                                     hint="fix the refuse mapping's followups: NoteType (the installation's types "
                                          "are in ServiceRequests_Notes_Types_Get)")
            return types[str(given)]
        filed: dict[str, str] = dict(self.options.followup_note_types)
        wanted = filed.get(followup.kind.value, self.note_type)
        if wanted not in types:
            self.log.warning("bartec.followup.note_type_missing", note_type=wanted, kind=followup.kind.value)
            wanted = self.note_type
        return types.get(wanted, next(iter(types.values())))

    def _detail(self, code: str) -> Any:
        result = self._invoke("ServiceRequests_Detail_Get", ref=code, ServiceCodes={"string": [code]})
        for sr in result.ServiceRequest or []:
            if sr.ServiceCode == code:
                if sr.ServiceType is not None:
                    self._type_of[code] = str(sr.ServiceType.ID)
                return sr
        raise PermanentError(f"Bartec has no service request {code}", instance=self.name,
                             hint="check the back-office reference linked to the case")

    def _documents(self, followup: FollowUp) -> list[tuple[str, dict[str, Any]]]:
        """Each document's Bartec name (made from the key, so a later read can tell it) and AttachedDocument."""
        if not followup.documents:
            raise PermanentError(f"{followup.key}: an evidence follow-up without documents", instance=self.name)
        tag = _file_tag(followup.key)
        several = len(followup.documents) > 1
        planned = []
        for i, document in enumerate(followup.documents, start=1):
            given = followup.fields.get("Name") if not several else None
            base, extension = _file_name(str(given or document.filename), document)
            if extension is None:
                raise PermanentError(f"{followup.key}: document {i} has no file extension and an unknown type",
                                     instance=self.name, hint="Bartec stores a FileExtension with every document")
            if document.content is None:
                raise PermanentError(f"{followup.key}: document {i} comes only as a URL; Bartec stores the file "
                                     "itself", instance=self.name,
                                     hint="have the Hub send the evidence's bytes with the follow-up")
            if not document.content:
                raise PermanentError(f"{followup.key}: document {i} is empty", instance=self.name)
            prefix = f"{tag}-{i}_" if several else f"{tag}_"
            name = prefix + base[-(DOCUMENT_NAME_MAX - len(prefix)):]
            planned.append((name, {
                # Bartec takes the caller's number (open311-adapter: report id and photo number): a stable one
                "ID": zlib.crc32(name.encode()) & 0x7FFFFFFF,
                "Name": name, "Document": document.content, "FileExtension": extension,
            }))
        return planned

    def _send_evidence(self, followup: FollowUp, bound: Any) -> FollowUpResult:
        planned = self._documents(followup)  # refuse a bad document before touching Bartec
        detail = self._detail(followup.backoffice_ref)
        present = _document_names(detail)
        public = followup.fields.get("Public")
        comment = _bounded(str(followup.fields.get("Comment") or followup.text), COMMENTS_MAX)
        sent = []
        for name, attached in planned:
            if name in present:
                continue
            self._invoke("ServiceRequest_Document_Create", ref=followup.backoffice_ref, ServiceRequestID=detail.id,
                         Public=self.options.document_public if public is None else bool(public),
                         DateTaken=_local(followup.occurred_at), Comment=comment, AttachedDocument=attached)
            sent.append(name)
        bound.info("bartec.followup.done", documents=len(planned), sent=len(sent),
                   size=sum(len(a["Document"]) for _, a in planned))
        return FollowUpResult(raw={"documents": [name for name, _ in planned], "sent": sent})

    def close(self) -> None:
        self.http.close()


def _bounded(text: str, limit: int) -> str:
    """Text cut to a Bartec field's length, keeping the start (where the follow-up key is) and saying so."""
    return text if len(text) <= limit else text[:limit - 15] + " … (truncated)"


def _note_tag(key: str) -> str:
    """What starts a follow-up's note, so `find_follow_up` finds it again (the closing bracket keeps /3 from /30)."""
    return f"[{key}]"


def _file_tag(key: str) -> str:
    """The key as file-name characters (a slash is no file name's): what starts a follow-up's document names."""
    return UNSAFE_IN_NAME.sub("-", key)


def _file_name(filename: str, document: Document) -> tuple[str, str | None]:
    """The last path part of `filename`, made safe, with its extension (from the name or else the content type)."""
    base = UNSAFE_IN_NAME.sub("-", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip(".-") or "document"
    stem, dot, ext = base.rpartition(".")
    if dot and stem and EXTENSION.match(ext):
        return base, ext.lower()
    guessed = mimetypes.guess_extension(document.content_type.split(";")[0].strip().lower() or "", strict=False)
    if guessed and EXTENSION.match(guessed.lstrip(".")):
        return f"{base}{guessed}", guessed.lstrip(".")
    return base, None


def _document_names(detail: Any) -> set[str]:
    documents = detail.AttachedDocuments.AttachedDocument if detail.AttachedDocuments is not None else []
    return {(d.DocumentName or "").strip() for d in documents or []}


def _check(value: Any, fields: Mapping[str, TargetField], path: str) -> list[str]:
    """Names and lengths of a payload against the WSDL, so a too-long field is refused with its name."""
    problems: list[str] = []
    if not isinstance(value, Mapping):
        return [f"{path or 'payload'} must be a mapping of element names"]
    for key, item in value.items():
        where = f"{path}{key}"
        field = fields.get(key)
        if field is None:
            problems.append(f"{where} is not a ServiceRequest_Create element")
            continue
        items = item if field.repeated and isinstance(item, list) else [item]
        for one in items:
            if field.children:
                if one is not None:
                    problems.extend(_check(one, field.children, f"{where}."))
            elif isinstance(one, str):
                if field.max_length is not None and len(one) > field.max_length:
                    problems.append(f"{where} is {len(one)} characters, over Bartec's limit of {field.max_length}")
                if field.enum and one not in field.enum:
                    problems.append(f"{where} {one!r} is not one of {', '.join(field.enum)}")
    return problems


__all__ = ["BartecConnector"]
