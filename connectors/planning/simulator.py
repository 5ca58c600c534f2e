"""Loopback simulator of the district councils' planning back offices (REST/JSON, Idox Uniform / planning.data style).

One tenant per district, by first path segment (`/bromsgrove/api/v1/...`). It serves the interface
described in `hubbridge.connectors.planning.connector`, validates bodies against the same pydantic models
(422 with field errors), keeps enquiries in a `JobStore` with a lifecycle per enquiry type, exposes a
changes feed with a strictly increasing sequence, honours `Idempotency-Key` on every POST that carries one
(without it a note or document sent twice is stored twice), keeps notes and documents on the enquiry and lists
them in `GET .../enquiries/{id}`, lets tests raise enquiries directly in the back office, and can push each
change as a webhook signed with `hubbridge.signing`.
The message shapes follow the public material named in `hubbridge.connectors.planning.models`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import requests
from pydantic import BaseModel, ValidationError

from hubbridge import signing
from hubbridge.connectors.planning.connector import field_errors
from hubbridge.connectors.planning.models import (
    FINAL_STATUSES,
    DocumentsRequest,
    EnquiryPayload,
    EnquiryRequest,
    EnquiryStatus,
    EnquiryType,
    NoteCategory,
    NoteRequest,
    WithdrawRequest,
)
from hubbridge.connectors.simulator import Job, JobEvent, JobStore, Request, Response, Simulator

DISTRICTS = ("bromsgrove", "malvern-hills", "redditch", "worcester", "wychavon", "wyre-forest")
DEFAULT_TOKEN = "planning-sim-token"
MAX_PAGE = 500
UNKNOWN_UPRN_PREFIX = "999"
"""Sites whose UPRN starts with this are refused (422) as not in the district's gazetteer."""

S = EnquiryStatus
LIFECYCLES: dict[str, tuple[str, ...]] = {
    EnquiryType.APPLICATION_ENQUIRY: (S.RECEIVED, S.ALLOCATED, S.RESPONSE_SENT, S.CLOSED),
    EnquiryType.PRE_APPLICATION_ADVICE: (S.RECEIVED, S.ALLOCATED, S.AWAITING_INFORMATION, S.UNDER_ASSESSMENT,
                                         S.ADVICE_ISSUED, S.CLOSED),
}
BREACH_NOT_FOUND = (S.RECEIVED, S.ALLOCATED, S.UNDER_INVESTIGATION, S.CLOSED_NO_BREACH)
BREACH_FOUND = (S.RECEIVED, S.ALLOCATED, S.UNDER_INVESTIGATION, S.ENFORCEMENT_ACTION, S.CLOSED)


def _iso(value: datetime) -> str:
    return value.isoformat()


def _public(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document as the API shows it (the digest is the simulator's own, for tests)."""
    return {k: v for k, v in document.items() if k != "sha256" and v is not None}


class PlanningJobStore(JobStore):
    """Enquiries of every district, each moving along the lifecycle of its enquiry type."""

    def __init__(self, breach_found: Callable[[Job], bool] | None = None) -> None:
        super().__init__([S.RECEIVED.value], ref_format="PL{id:08d}", first_id=1000)
        # Which breach reports end in enforcement action: every other one, so both paths are exercised.
        self.breach_found = breach_found or (lambda job: job.id % 2 == 1)
        self.kinds: dict[int, str] = {}
        self.notes: dict[int, list[dict[str, Any]]] = {}
        self.documents: dict[int, list[dict[str, Any]]] = {}  # job id -> stored documents (no file bytes)
        self.listener: Callable[[Job, JobEvent, str], None] | None = None

    def path_for(self, job: Job) -> tuple[str, ...]:
        if job.service_code == EnquiryType.BREACH_REPORT:
            return BREACH_FOUND if self.breach_found(job) else BREACH_NOT_FOUND
        return LIFECYCLES.get(job.service_code, (S.RECEIVED,))

    def create(self, tenant: str, hub_ref: str | None, service_code: str, data: dict[str, Any]) -> Job:
        with self._lock:
            job = super().create(tenant, hub_ref, service_code, data)
            self._announce(job, job.events[-1], "created")
            return job

    def set_status(self, job: Job, status: str, note: str | None = None, *, kind: str = "status") -> JobEvent:
        with self._lock:
            ev = super().set_status(job, status, note)
            self._announce(job, ev, kind)
            return ev

    def _announce(self, job: Job, ev: JobEvent, kind: str) -> None:
        # Called under the store lock, so listeners see events in sequence order.
        self.kinds[ev.update_id] = kind
        if self.listener is not None:
            self.listener(job, ev, kind)

    def advance(self, tenant: str | None = None, note: str | None = None) -> int:
        moved = 0
        with self._lock:
            for job in list(self.jobs.values()):
                if tenant is not None and job.tenant != tenant:
                    continue
                if job.status in FINAL_STATUSES or self.stalled(job):
                    continue
                path = self.path_for(job)
                if job.status not in path:
                    continue
                i = path.index(job.status)
                if i + 1 < len(path):
                    nxt = str(path[i + 1])
                    self.set_status(job, nxt, note or f"moved to {nxt}")
                    moved += 1
        return moved


class _Problem(Exception):
    def __init__(self, status: int, error: str, errors: Iterable[tuple[str, str]] = ()) -> None:
        self.response = _json(status, {"error": error, "errors": [{"field": f, "message": m} for f, m in errors]})
        super().__init__(error)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(body, separators=(",", ":")).encode("utf-8"),
                    "application/json; charset=utf-8", headers or {})


class PlanningSimulator(Simulator):
    """The six districts' planning back offices on one loopback port."""

    name = "planning"
    xml = False

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tenants: Iterable[str] = DISTRICTS,
                 token: str = DEFAULT_TOKEN, tokens: Mapping[str, str] | None = None,
                 webhook_url: str | None = None, webhook_secret: str | None = None,
                 breach_found: Callable[[Job], bool] | None = None) -> None:
        super().__init__(host, port)
        self.tenants = tuple(tenants)
        self.tokens = {t: token for t in self.tenants} | dict(tokens or {})
        self.store = PlanningJobStore(breach_found)
        self._lock = threading.RLock()
        self._idempotency: dict[tuple[str, str, str], tuple[str, Callable[[], Response]]] = {}
        self._note_ids = 0
        self._document_ids = 0
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_log: list[tuple[int | None, str, list[int]]] = []
        """(HTTP status or None if unreachable, tenant, sequences) of every push attempt."""
        self._outbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._pusher: threading.Thread | None = None
        self.store.listener = self._on_event
        if webhook_url:
            self.configure_webhook(webhook_url, webhook_secret or "")

    # -- test / demo controls ------------------------------------------------------------------
    def advance(self, tenant: str | None = None) -> int:
        """Move every open enquiry (of one district, or all) one step along its lifecycle."""
        return self.store.advance(tenant)

    def auto_advance(self, every_seconds: float = 5.0, step: Callable[[], object] | None = None) -> None:
        """Move enquiries along every few seconds in the background (default step: `advance`)."""
        super().auto_advance(every_seconds, step or self.advance)

    def job(self, tenant: str, ref: str) -> Job:
        job = self.store.by_ref(tenant, ref)
        if job is None:
            raise KeyError(f"{tenant} has no enquiry {ref}")
        return job

    def jobs_for(self, hub_ref: str, tenant: str | None = None) -> int:
        """How many enquiries carry `hub_ref` (in one district, or all): the duplicate check."""
        return sum(1 for j in self.store.jobs.values() if j.hub_ref == hub_ref and tenant in (None, j.tenant))

    def set_status(self, tenant: str, ref: str, status: str, note: str | None = None) -> JobEvent:
        """An officer moves an enquiry to any status (e.g. AWAITING_INFORMATION or NOT_PLANNING_MATTER)."""
        return self.store.set_status(self.job(tenant, ref), EnquiryStatus(status).value, note)

    def officer_note(self, tenant: str, ref: str, note: str) -> JobEvent:
        """An officer writes a note the customer may see; it appears in the changes feed as kind `note`."""
        job = self.job(tenant, ref)
        return self.store.set_status(job, job.status, note, kind="note")

    def raise_direct(self, tenant: str, enquiry_type: str | EnquiryType = EnquiryType.BREACH_REPORT,
                     description: str = "Reported by telephone to the planning team", **fields: Any) -> Job:
        """An enquiry made straight to the district's planning team: no Hub reference."""
        self._tenant(tenant)
        data: dict[str, Any] = {
            "enquiry_type": EnquiryType(enquiry_type).value,
            "description": description,
            "customer": {"name": "Caller to planning"},
            "how_received": "TELE",
        }
        etype = EnquiryType(enquiry_type)
        if etype is EnquiryType.APPLICATION_ENQUIRY:
            data["application_reference"] = "23/00001/FUL"
        else:
            data["site"] = {"address_text": "Land adjacent to the village hall"}
            data["breach_type" if etype is EnquiryType.BREACH_REPORT else "development_scale"] = "OTHER"
        data.update(fields)
        model = EnquiryPayload.model_validate(data)
        return self.store.create(tenant, None, model.enquiry_type.value, model.model_dump(mode="json",
                                                                                         exclude_none=True))

    def configure_webhook(self, url: str, secret: str) -> None:
        """Push every change, signed with `secret`, to `url` (`{tenant}` in it is replaced by the district)."""
        if not secret:
            raise ValueError("a webhook secret is needed: unsigned pushes are refused by hubbridge")
        self.webhook_url, self.webhook_secret = url, secret
        if self._pusher is None:
            self._pusher = threading.Thread(target=self._push_loop, name="planning-webhooks", daemon=True)
            self._pusher.start()

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until every queued push was attempted; True if the queue drained in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._outbox.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    # -- webhooks ------------------------------------------------------------------------------
    def _on_event(self, job: Job, ev: JobEvent, kind: str) -> None:
        if self.webhook_url:
            self._outbox.put((job.tenant, self._change(job, ev, kind)))

    def _push_loop(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                tenant, change = self._outbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._push(session, tenant, [change])
            finally:
                self._outbox.task_done()
        session.close()

    def _push(self, session: requests.Session, tenant: str, changes: list[dict[str, Any]]) -> None:
        url, secret = self.webhook_url, self.webhook_secret
        if not url or not secret:
            return
        body = json.dumps({"event": "enquiry.changed", "organisation": tenant, "changes": changes},
                          separators=(",", ":")).encode("utf-8")
        seqs = [c["sequence"] for c in changes]
        for attempt in range(3):
            # Signed per attempt so a retried push carries a fresh timestamp.
            headers = {"Content-Type": "application/json", **signing.sign(body, secret)}
            status: int | None
            try:
                target = url.replace("{tenant}", tenant)
                status = session.post(target, data=body, headers=headers, timeout=5).status_code
            except requests.RequestException:
                status = None
            self.webhook_log.append((status, tenant, seqs))
            if status is not None and status < 500:
                return
            if self._stop.wait(0.2 * (attempt + 1)):
                return

    # -- HTTP ----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        try:
            self._tenant(request.tenant)
            self._authorise(request)
            return self._route(request)
        except _Problem as problem:
            return problem.response

    def _tenant(self, tenant: str) -> None:
        if tenant not in self.tenants:
            raise _Problem(404, f"no planning service for {tenant!r}; districts: {', '.join(self.tenants)}")

    def _authorise(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        expected = self.tokens.get(request.tenant, "")
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.encode(), expected.encode()):
            raise _Problem(401, "missing or invalid bearer token")

    def _route(self, r: Request) -> Response:
        parts = [p for p in r.path.split("/") if p]
        if parts[:2] != ["api", "v1"] or len(parts) < 3:
            raise _Problem(404, f"no such resource {r.path}")
        rest = parts[2:]
        if rest == ["enquiries"]:
            if r.method == "POST":
                return self._idempotent(r, "create", EnquiryRequest, lambda body: self._create(r, body))
            if r.method == "GET":
                return self._list(r)
        elif rest == ["changes"] and r.method == "GET":
            return self._changes(r)
        elif len(rest) == 2 and rest[0] == "enquiries" and r.method == "GET":
            return _json(200, self._enquiry(self._job(r, rest[1])))
        elif len(rest) == 3 and rest[0] == "enquiries" and r.method == "POST":
            job = self._job(r, rest[1])
            if rest[2] == "notes":
                return self._idempotent(r, f"notes/{job.ref}", NoteRequest, lambda body: self._note(job, body))
            if rest[2] == "documents":
                return self._idempotent(r, f"documents/{job.ref}", DocumentsRequest,
                                        lambda body: self._documents(job, body))
            if rest[2] == "withdraw":
                return self._idempotent(r, f"withdraw/{job.ref}", WithdrawRequest,
                                        lambda body: self._withdraw(job, body))
        else:
            raise _Problem(404, f"no such resource {r.path}")
        raise _Problem(405, f"{r.method} is not allowed on {r.path}")

    def _job(self, r: Request, ref: str) -> Job:
        job = self.store.by_ref(r.tenant, ref)
        if job is None:
            raise _Problem(404, f"no enquiry {ref} in {r.tenant}")
        return job

    @staticmethod
    def _body(r: Request, model: type[BaseModel]) -> BaseModel:
        if "json" not in r.headers.get("content-type", ""):
            raise _Problem(415, "send the body as application/json")
        try:
            data = json.loads(r.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Problem(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _Problem(400, "body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _Problem(422, "validation failed", field_errors(exc)) from None

    def _idempotent(self, r: Request, route: str, model: type[BaseModel],
                    action: Callable[[BaseModel], Response]) -> Response:
        """Run a POST once per Idempotency-Key; a replay with the same body gets the current result again."""
        body = self._body(r, model)
        key = r.headers.get("idempotency-key")
        if key is None:
            return action(body)
        if not key or len(key) > 200:
            raise _Problem(400, "Idempotency-Key must be 1 to 200 characters")
        digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        with self._lock:
            seen = self._idempotency.get((r.tenant, route, key))
            if seen is not None:
                if seen[0] != digest:
                    raise _Problem(409, f"Idempotency-Key {key} was used with a different request body")
                resp = seen[1]()
                return Response(200 if resp.status == 201 else resp.status, resp.body, resp.content_type,
                                {**resp.headers, "Idempotent-Replayed": "true"})
            resp = action(body)
            if resp.status < 300:
                replay = self._replayer(r, route, resp)
                self._idempotency[(r.tenant, route, key)] = (digest, replay)
            return resp

    def _replayer(self, r: Request, route: str, first: Response) -> Callable[[], Response]:
        if route == "create":
            ref = json.loads(first.body)["id"]
            return lambda: _json(201, self._enquiry(self.store.by_ref(r.tenant, ref)))  # type: ignore[arg-type]
        return lambda: first

    def _create(self, r: Request, body: BaseModel) -> Response:
        assert isinstance(body, EnquiryRequest)
        if body.site and body.site.uprn and body.site.uprn.startswith(UNKNOWN_UPRN_PREFIX):
            raise _Problem(422, "validation failed",
                           [("site.uprn", f"UPRN {body.site.uprn} is not in the {r.tenant} gazetteer")])
        data = body.model_dump(mode="json", exclude_none=True)
        hub_ref = data.pop("external_reference")
        job = self.store.create(r.tenant, hub_ref, body.enquiry_type.value, data)
        return _json(201, self._enquiry(job), {"Location": f"/{r.tenant}/api/v1/enquiries/{job.ref}"})

    def _list(self, r: Request) -> Response:
        ext = r.param("external_reference")
        jobs = self.store.tenant_jobs(r.tenant) if ext is None else self.store.by_hub_ref(r.tenant, ext)
        if (etype := r.param("enquiry_type")) is not None:
            jobs = [j for j in jobs if j.service_code == etype]
        jobs.sort(key=lambda j: j.id)
        limit = self._int(r, "limit", 100, 1, MAX_PAGE)
        return _json(200, {"enquiries": [self._enquiry(j) for j in jobs[:limit]], "total": len(jobs)})

    def _note(self, job: Job, body: BaseModel) -> Response:
        assert isinstance(body, NoteRequest)
        with self._lock:
            self._note_ids += 1
            note = {"note_id": self._note_ids, "enquiry_id": job.ref, "text": body.text, "author": body.author,
                    "created_at": _iso(self.store.clock())}
            note["category"] = body.category.value
            # Notes from the caller are kept on the enquiry, not echoed into the changes feed (no loops).
            self.store.notes.setdefault(job.id, []).append(note)
            kind = "amendment" if body.category is NoteCategory.AMENDMENT else "note"
            self.store.record_followup(job, kind, body.text, note_id=note["note_id"])
        return _json(201, note)

    def _documents(self, job: Job, body: BaseModel) -> Response:
        assert isinstance(body, DocumentsRequest)  # the model has checked types, sizes and base64 of every file
        with self._lock:
            now = _iso(self.store.clock())
            stored = []
            for upload in body.documents:
                self._document_ids += 1
                doc: dict[str, Any] = {"document_id": f"DOC{self._document_ids:08d}", "filename": upload.filename,
                                       "content_type": upload.content_type, "description": upload.description,
                                       "created_at": now}
                if upload.content_base64 is not None:
                    content = base64.b64decode(upload.content_base64)
                    doc |= {"size_bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
                else:
                    doc["url"] = upload.url  # fetched into the document store later, as create's attachments are
                stored.append(doc)
            self.store.documents.setdefault(job.id, []).extend(stored)
            self.store.record_followup(job, "evidence", body.documents[0].description or "",
                                       documents=[d["filename"] for d in stored],
                                       document_ids=[d["document_id"] for d in stored])
        return _json(201, {"enquiry_id": job.ref, "documents": [_public(d) for d in stored]})

    def _withdraw(self, job: Job, body: BaseModel) -> Response:
        assert isinstance(body, WithdrawRequest)
        with self.store._lock:
            if job.status == S.WITHDRAWN:
                return _json(200, self._enquiry(job))
            if job.status in FINAL_STATUSES:
                raise _Problem(409, f"enquiry {job.ref} is already {job.status} and cannot be withdrawn")
            ev = self.store.set_status(job, S.WITHDRAWN.value, f"withdrawn: {body.reason}")
            self.store.record_followup(job, "cancel", body.reason, sequence=ev.update_id)
        return _json(200, self._enquiry(job))

    def _changes(self, r: Request) -> Response:
        since = self._int(r, "since_sequence", 0, 0, None)
        limit = self._int(r, "limit", 100, 1, MAX_PAGE)
        found = self.store.events_after(r.tenant, since, limit + 1)
        page = found[:limit]
        changes = [self._change(job, ev, self.store.kinds.get(ev.update_id, "status")) for job, ev in page]
        return _json(200, {"changes": changes, "since_sequence": since,
                           "next_sequence": changes[-1]["sequence"] if changes else since,
                           "has_more": len(found) > limit})

    @staticmethod
    def _int(r: Request, name: str, default: int, low: int, high: int | None) -> int:
        raw = r.param(name)
        if raw is None or raw == "":
            return default
        if not raw.isdigit():
            raise _Problem(400, f"{name} must be a whole number", [(name, "not a whole number")])
        value = int(raw)
        if value < low:
            raise _Problem(400, f"{name} must be at least {low}", [(name, f"below {low}")])
        return min(value, high) if high is not None else value

    def _enquiry(self, job: Job) -> dict[str, Any]:
        with self.store._lock:
            return {
                "id": job.ref,
                "external_reference": job.hub_ref,
                "enquiry_type": job.service_code,
                "status": job.status,
                "organisation": job.tenant,
                "created_at": _iso(job.created_at),
                "updated_at": _iso(job.changed_at),
                "sequence": job.events[-1].update_id if job.events else None,
                "details": {k: v for k, v in job.data.items() if k != "followups"},  # the records tests count
                "notes": list(self.store.notes.get(job.id, [])),
                "documents": [_public(d) for d in self.store.documents.get(job.id, [])],
            }

    @staticmethod
    def _change(job: Job, ev: JobEvent, kind: str) -> dict[str, Any]:
        return {
            "sequence": ev.update_id,
            "enquiry_id": job.ref,
            "external_reference": job.hub_ref,
            "enquiry_type": job.service_code,
            "status": ev.status,
            "note": ev.note,
            "kind": kind,
            "occurred_at": _iso(ev.at),
        }

    def stop(self) -> None:
        super().stop()
        if self._pusher is not None:
            with contextlib.suppress(RuntimeError):
                self._pusher.join(timeout=2)
            self._pusher = None
