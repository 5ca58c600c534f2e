"""Follow-ups: what the Hub tells a back office about a case it already has, delivered once each and in order.

A follow-up is taken in (API, file, a re-posted case whose content changed, the SLA chase), stored with its
files, and delivered by `deliver_followups` once its case has reached the back office: through the back office's
own operation for its kind, or, where it has none, as the route's config says (a note, an e-mail to the service
area, or a dead letter for an operator). Never silently nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, undefer

from hubbridge.case import FollowUpKind, HubCase, HubFollowUp, HubStatus, Priority
from hubbridge.config.models import FollowUpAction
from hubbridge.connectors.base import Connector, Document, FollowUp, FollowUpResult
from hubbridge.errors import (
    FollowUpValidationError,
    HubbridgeError,
    MappingError,
    OutcomeUnknown,
    PermanentError,
    RoutingError,
    TransientError,
)
from hubbridge.store import CaseRow, FollowUpFileRow, FollowUpRow, LinkRow, record_event, session_scope, utcnow
from hubbridge.workflows import retry
from hubbridge.workflows.circuit import CallFailed, CircuitBreaker, call_back_office
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.ratelimit import Throttle
from hubbridge.workflows.runtime import Outcome, OutcomeKind, Runtime

log = structlog.get_logger(__name__)

STAGE = "followup"
"""The dead-letter stage of every follow-up that could not be taken in or delivered."""

AMENDABLE = ("description", "customer", "location", "attributes", "attachments")
"""Case fields an amendment may change; ref, authority and service are the case's identity and route."""

WAIT_SECONDS = 10.0
"""How soon a follow-up whose case has not reached its back office yet looks again."""

PER_TASK = 50
"""Most follow-ups one task delivers for a case before handing the rest to another task."""

_MAGIC = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "application/pdf": (b"%PDF-",),
    "image/webp": (b"RIFF",),
}
"""How each type's files begin: a file whose bytes are not what its type says is refused, not stored."""

DELIVERED_STAGES = ("delivered", "acknowledged")
_ENDED = tuple(s.value for s in (HubStatus.RESOLVED, HubStatus.CLOSED, HubStatus.REJECTED, HubStatus.CANCELLED))


@dataclass
class AcceptedFollowUp:
    hub_ref: str
    sequence: int
    duplicate: bool
    push: bool = False
    """True when taking it in queued a Hub update (evidence resumed a clock that waited on the customer)."""


@dataclass
class _Files:
    rows: list[dict[str, Any]] = field(default_factory=list)


# -- taking follow-ups in ---------------------------------------------------------------------------------------


def accept_followup(
    rt: Runtime, raw: bytes | str | dict[str, Any], *, ref: str | None = None, channel: str = "api"
) -> AcceptedFollowUp:
    """Validate and store one follow-up for a known case; a refused one is kept as a dead letter and raised.

    `ref` is the case reference the caller addressed (the URL's); a body naming another case is refused.
    """
    from hubbridge.workflows.intake import _field_errors, _parse, _screen

    text = raw if isinstance(raw, str | bytes) else None
    try:
        data = _parse(raw) if isinstance(raw, str | bytes) else raw
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        err = FollowUpValidationError({"(body)": f"not valid JSON: {exc}"[:300]}, ref=ref)
        _keep_refused(rt, err, text, ref, "invalid_followup")
        raise err from None
    if not isinstance(data, dict):
        err = FollowUpValidationError({"(body)": "a follow-up is a JSON object"}, ref=ref)
        _keep_refused(rt, err, text if text is not None else data, ref, "invalid_followup")
        raise err
    screened: dict[str, str] = {}
    data = _screen(data, "", screened, set())
    if ref is not None:
        if data.get("ref") not in (None, ref):
            screened["ref"] = f"the body names case {data.get('ref')!r} but was sent for case {ref}"
        data = {**data, "ref": ref}
    body_ref = data.get("ref") if isinstance(data.get("ref"), str) else ref
    if not screened:
        try:
            followup = HubFollowUp.model_validate(data)
        except ValidationError as exc:
            screened = _field_errors(exc)
    if screened:
        err = FollowUpValidationError(screened, ref=body_ref)
        # the body as received, but a file's bytes: a dead letter is no place to keep a customer's photos
        kept = _without_content(data) if isinstance(data.get("attachments"), list) or text is None else text
        _keep_refused(rt, err, kept, body_ref, "invalid_followup")
        raise err
    problems, files = _check_files(rt, followup)
    if problems:
        err = FollowUpValidationError(problems, ref=followup.ref)
        _keep_refused(rt, err, _without_content(data), followup.ref, "invalid_followup")
        raise err
    with session_scope(rt.url) as s:
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == followup.ref).with_for_update())
        if case is None:
            err = FollowUpValidationError({"ref": f"hubbridge holds no case {followup.ref}"}, ref=followup.ref,
                                          unknown_case=True)
            problems = {}
        else:
            problems = _check_amendment(case, followup)
            err = None
        if err is None and not problems:
            return _store(rt, s, case, followup, files, channel)
    if err is None:
        err = FollowUpValidationError(problems, ref=followup.ref)
    _keep_refused(rt, err, _without_content(data), followup.ref,
                  "unknown_case" if err.unknown_case else "invalid_followup")
    raise err


def add_followup(
    rt: Runtime, s: Session, hub_ref: str, kind: FollowUpKind | str, *, note: str, priority: str | None = None,
    channel: str = "sla", followup_id: str | None = None,
) -> int | None:
    """Add a follow-up hubbridge itself raises (an SLA chase) inside the caller's transaction; returns its
    sequence, or None when one with `followup_id` is there already."""
    case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref).with_for_update())
    if case is None:
        raise FollowUpValidationError({"ref": f"hubbridge holds no case {hub_ref}"}, ref=hub_ref, unknown_case=True)
    if followup_id is not None and s.scalar(select(FollowUpRow.id).where(
            FollowUpRow.hub_ref == hub_ref, FollowUpRow.client_id == followup_id)) is not None:
        return None  # made already (its time differs, so its content would not match): once is enough
    followup = HubFollowUp(id=followup_id, ref=hub_ref, kind=FollowUpKind(kind), note=note,
                           priority=Priority(priority) if priority else None, author="hubbridge",
                           occurred_at=utcnow())
    accepted = _store(rt, s, case, followup, _Files(), channel)
    return None if accepted.duplicate else accepted.sequence


def amend_from_repost(rt: Runtime, s: Session, case: HubCase, channel: str) -> list[int]:
    """A case posted again: what changed since the Hub last told us becomes follow-ups (an amendment of the
    changed fields, a priority change); nothing changed, nothing added. Returns the new follow-ups' sequences."""
    row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == case.ref).with_for_update())
    if row is None:
        return []
    posted = case.dump()
    current = current_content(s, row)
    changes = {k: posted.get(k) for k in AMENDABLE if posted.get(k) != current.get(k)}
    changes = {k: (v if v is not None else _EMPTY.get(k)) for k, v in changes.items()}
    at = case.updated_at or utcnow()
    made: list[int] = []
    if changes:
        followup = HubFollowUp(ref=case.ref, kind=FollowUpKind.AMENDMENT, changes=changes, occurred_at=at,
                               note="The Hub re-sent the case with changed details")
        made.append(_store(rt, s, row, followup, _Files(), channel).sequence)
    if case.priority.value != row.priority:
        followup = HubFollowUp(ref=case.ref, kind=FollowUpKind.PRIORITY, priority=case.priority, occurred_at=at)
        made.append(_store(rt, s, row, followup, _Files(), channel).sequence)
    return made


_EMPTY: dict[str, Any] = {"attributes": {}, "attachments": [], "location": {}}


def current_content(s: Session, row: CaseRow) -> dict[str, Any]:
    """The case as the Hub last described it: as first posted, with every amendment since applied in order."""
    content = dict(row.payload)
    for changes in s.scalars(
        select(FollowUpRow.payload).where(FollowUpRow.hub_ref == row.hub_ref, FollowUpRow.kind == "amendment")
        .order_by(FollowUpRow.sequence)
    ):
        content.update(changes.get("changes") or {})
    return content


def _check_amendment(case: CaseRow, followup: HubFollowUp) -> dict[str, str]:
    if followup.kind != FollowUpKind.AMENDMENT or not followup.changes:
        return {}
    problems = {f"changes.{k}": f"an amendment may change only {', '.join(AMENDABLE)}"
                for k in followup.changes if k not in AMENDABLE}
    if problems:
        return problems
    try:
        HubCase.model_validate({**case.payload, **followup.changes})
    except ValidationError as exc:
        return {f"changes.{'.'.join(str(p) for p in e['loc'])}": e["msg"] for e in exc.errors(include_url=False)}
    return {}


def _check_files(rt: Runtime, followup: HubFollowUp) -> tuple[dict[str, str], _Files]:
    """Size and type limits of evidence files, and their decoded bytes; problems by field, never a file's bytes."""
    problems: dict[str, str] = {}
    files = _Files()
    allowed = rt.settings.evidence_types
    limit = rt.settings.evidence_max_bytes
    for i, f in enumerate(followup.attachments):
        where = f"attachments.{i}"
        if f.content_type not in allowed:
            problems[f"{where}.content_type"] = (f"{f.content_type} is not taken; send one of {', '.join(allowed)}")
            continue
        content: bytes | None = None
        if f.content is not None:
            if len(f.content) > (limit * 4) // 3 + 8:
                problems[f"{where}.content"] = f"the file is over the {limit}-byte limit"
                continue
            try:
                content = base64.b64decode(f.content, validate=False)
            except (binascii.Error, ValueError):
                problems[f"{where}.content"] = "not valid base64"
                continue
            if len(content) > limit:
                problems[f"{where}.content"] = f"the file is {len(content)} bytes, over the {limit}-byte limit"
                continue
            if not content:
                problems[f"{where}.content"] = "the file is empty"
                continue
            magic = _MAGIC.get(f.content_type)
            if magic and not content.startswith(magic):
                problems[f"{where}.content"] = f"the bytes are not a {f.content_type} file"
                continue
        files.rows.append({
            "position": i, "filename": f.filename, "content_type": f.content_type, "url": f.url,
            "content": content, "size": len(content) if content is not None else None,
            "sha256": hashlib.sha256(content).hexdigest() if content is not None else None,
        })
    return problems, files


def _without_content(data: Any) -> Any:
    """The follow-up as a dead letter keeps it: file bytes left out (they are personal data, and large)."""
    if not isinstance(data, dict) or not isinstance(data.get("attachments"), list):
        return data
    kept = [{k: v for k, v in a.items() if k != "content"} | ({"content": "(left out)"} if "content" in a else {})
            if isinstance(a, dict) else a for a in data["attachments"]]
    return {**data, "attachments": kept}


def _digest(followup: HubFollowUp) -> str:
    return hashlib.sha256(json.dumps(followup.dump(), sort_keys=True).encode()).hexdigest()


def _store(rt: Runtime, s: Session, case: CaseRow, followup: HubFollowUp, files: _Files,
           channel: str) -> AcceptedFollowUp:
    """Write one checked follow-up with its files, and what it does to the case now (priority, SLA clocks)."""
    digest = _digest(followup)
    if followup.id is not None:
        known = s.execute(select(FollowUpRow.sequence, FollowUpRow.digest).where(
            FollowUpRow.hub_ref == case.hub_ref, FollowUpRow.client_id == followup.id)).first()
        if known is not None:
            if known.digest != digest:
                raise FollowUpValidationError(
                    {"id": f"follow-up id {followup.id} was already used for other content on this case"},
                    ref=case.hub_ref)
            record_event(s, case.hub_ref, "followup.duplicate", sequence=known.sequence, channel=channel)
            return AcceptedFollowUp(case.hub_ref, known.sequence, duplicate=True)
    now = utcnow()
    sequence = (s.scalar(select(func.max(FollowUpRow.sequence)).where(FollowUpRow.hub_ref == case.hub_ref)) or 0) + 1
    payload = followup.dump()
    if followup.kind == FollowUpKind.PRIORITY and channel != "sla":
        payload["previous_priority"] = case.priority  # the note says from what to what
    if payload.get("attachments"):
        payload["attachments"] = [{k: v for k, v in a.items() if k != "content"} for a in payload["attachments"]]
    row = FollowUpRow(
        hub_ref=case.hub_ref, sequence=sequence, client_id=followup.id, kind=followup.kind.value, channel=channel,
        payload=payload, digest=digest, state="pending", attempts=0, unknown_outcome=False, created_at=now,
        next_attempt_at=now if case.stage in DELIVERED_STAGES else now + timedelta(seconds=_wait(rt)),
    )
    s.add(row)
    s.flush()
    for f in files.rows:
        s.add(FollowUpFileRow(followup_id=row.id, **f))
    record_event(s, case.hub_ref, "followup.received", sequence=sequence, followup_kind=followup.kind.value,
                 channel=channel, files=len(files.rows))
    # hubbridge's own chase raises the job's priority in the back office; the promise to the customer stays
    pushed = _on_taken_in(rt, s, case, followup, now) if channel != "sla" else False
    log.info("followup.accepted", hub_ref=case.hub_ref, sequence=sequence, kind=followup.kind.value)
    return AcceptedFollowUp(case.hub_ref, sequence, duplicate=False, push=pushed)


def _on_taken_in(rt: Runtime, s: Session, case: CaseRow, followup: HubFollowUp, now: datetime) -> bool:
    """What a follow-up changes as soon as the Hub has said it: the promise to the customer moves then, not
    when the back office hears of it. Returns True when a Hub update was queued."""
    from hubbridge.workflows.outbox import set_status

    if followup.kind == FollowUpKind.PRIORITY and followup.priority is not None:
        if case.priority != followup.priority.value:
            case.priority = followup.priority.value
            rt.sla.on_priority(s, case.hub_ref, followup.priority, now)  # keeps the time already spent
    elif followup.kind == FollowUpKind.CANCEL:
        rt.sla.on_status(s, case.hub_ref, HubStatus.CANCELLED, now)  # the customer withdrew: the clocks stop
    elif followup.kind == FollowUpKind.EVIDENCE and case.status == HubStatus.AWAITING_CUSTOMER.value:
        # what the service area waited for has come: the case is back with it, and its clock runs again
        set_status(rt, s, case, HubStatus.IN_PROGRESS, now, note="The customer sent the evidence asked for",
                   source="hub")
        return True
    return False


def _keep_refused(rt: Runtime, err: FollowUpValidationError, raw: Any, ref: str | None, reason: str) -> None:
    with session_scope(rt.url) as s:
        dead_letter(s, stage=STAGE, reason=reason, detail=str(err), payload=raw, hub_ref=ref,
                    once_per_body=True)


def _wait(rt: Runtime) -> float:
    return min(WAIT_SECONDS, rt.settings.reconcile_after_seconds)


# -- delivering them --------------------------------------------------------------------------------------------


def wording(kind: FollowUpKind, payload: dict[str, Any], previous_priority: str | None = None) -> str:
    """What the service area reads for a follow-up: plain sentences, with the Hub's own note after them."""
    note = payload.get("note")
    author = payload.get("author")
    by = f" ({author})" if author else ""
    if kind == FollowUpKind.NOTE:
        return f"{note}{by}"
    if kind == FollowUpKind.AMENDMENT:
        changes = payload.get("changes") or {}
        parts = [f"{name}: {_plain(value)}" for name, value in changes.items()]
        head = "The Hub amended the case" + by + ". " + "; ".join(parts)
        return head + (f". {note}" if note and not note.startswith("The Hub re-sent") else "")
    if kind == FollowUpKind.EVIDENCE:
        names = ", ".join(a.get("filename", "?") for a in payload.get("attachments") or [])
        return f"The customer sent evidence: {names}" + (f". {note}" if note else "") + by
    if kind == FollowUpKind.PRIORITY:
        was = f" from {previous_priority}" if previous_priority else ""
        return f"The Hub changed the priority{was} to {payload.get('priority')}" + (f". {note}" if note else "") + by
    if kind == FollowUpKind.CANCEL:
        return "The customer withdrew the request" + (f": {note}" if note else "") + by
    return "The Hub reopened the case" + (f": {note}" if note else "") + by


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items() if v not in (None, "", {}, []))
    if isinstance(value, list):
        return "; ".join(_plain(v) for v in value)
    return str(value)


@dataclass
class _Claimed:
    row_id: int
    sequence: int
    kind: FollowUpKind
    payload: dict[str, Any]
    attempts: int
    unknown: bool
    backoffice_ref: str
    connector: str
    authority: str
    service: str
    case_payload: dict[str, Any]
    documents: tuple[Document, ...]


def deliver_followups(rt: Runtime, hub_ref: str) -> Outcome:
    """Deliver a case's pending follow-ups in sequence order, each once, stopping at the first that must wait."""
    pushes: list[str] = []
    for _ in range(PER_TASK):
        claimed, waiting = _claim_next(rt, hub_ref)
        if claimed is None:
            kind = OutcomeKind.SKIPPED if waiting else OutcomeKind.DONE
            return Outcome(kind, waiting or "no follow-ups pending", push=pushes)
        outcome = _deliver_one(rt, hub_ref, claimed)
        pushes.extend(outcome.push)
        if outcome.kind in (OutcomeKind.RETRY, OutcomeKind.SKIPPED):
            outcome.push = sorted(set(pushes))
            return outcome
    return Outcome(OutcomeKind.DONE, f"{PER_TASK} delivered; more pending", push=sorted(set(pushes)), more=True)


def _claim_next(rt: Runtime, hub_ref: str) -> tuple[_Claimed | None, str]:
    """Claim the case's lowest pending follow-up, if its case is with its back office and no worker holds it."""
    now = utcnow()
    with session_scope(rt.url) as s:
        row = s.scalars(select(FollowUpRow).where(FollowUpRow.hub_ref == hub_ref, FollowUpRow.state == "pending")
                        .order_by(FollowUpRow.sequence).limit(1)).first()
        if row is None:
            return None, ""
        if row.claimed_until is not None and row.claimed_until > now:
            return None, f"follow-up {row.sequence} is being delivered by another worker"
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref))
        assert case is not None  # a follow-up row's foreign key
        backoffice_ref = s.scalar(select(LinkRow.backoffice_ref).where(
            LinkRow.hub_ref == hub_ref, LinkRow.connector == case.connector)) if case.connector else None
        if case.stage not in DELIVERED_STAGES or backoffice_ref is None:
            dead = case.stage == "dead"
            row.next_attempt_at = now + timedelta(seconds=rt.settings.reconcile_after_seconds if dead else _wait(rt))
            why = ("waiting: its case is dead-lettered; replay the case and its follow-ups follow" if dead
                   else "waiting for its case to reach the back office")
            if row.last_error != why:
                row.last_error = why
            return None, why
        claim = float(_claim_seconds(rt, case.connector))
        row_id, sequence, kind, payload = row.id, row.sequence, FollowUpKind(row.kind), dict(row.payload)
        attempts, unknown = row.attempts, row.unknown_outcome  # as they were before this claim
        won = s.execute(
            update(FollowUpRow.__table__)
            .where(FollowUpRow.id == row_id, FollowUpRow.state == "pending",
                   FollowUpRow.claimed_until.is_(None) | (FollowUpRow.claimed_until < now))
            .values(claimed_until=now + timedelta(seconds=claim), unknown_outcome=True,
                    next_attempt_at=now + timedelta(seconds=rt.settings.reconcile_after_seconds))
        ).rowcount
        if not won:
            return None, f"follow-up {sequence} is being delivered by another worker"
        files = s.scalars(select(FollowUpFileRow).where(FollowUpFileRow.followup_id == row_id)
                          .options(undefer(FollowUpFileRow.content)).order_by(FollowUpFileRow.position)).all()
        documents = tuple(Document(filename=f.filename, content_type=f.content_type, content=f.content, url=f.url)
                          for f in files)
        return _Claimed(
            row_id=row_id, sequence=sequence, kind=kind, payload=payload,
            attempts=attempts, unknown=unknown, backoffice_ref=backoffice_ref,
            connector=case.connector or "", authority=case.authority, service=case.service,
            case_payload=dict(case.payload), documents=documents,
        ), ""


def _claim_seconds(rt: Runtime, connector: str | None) -> float:
    inst = rt.config.connectors.get(connector or "")
    per_call = (inst.timeouts.connect + inst.timeouts.read) if inst else 60.0
    return 3 * per_call + 30.0  # a follow-up may make a look-up, a read of note types and the call itself


def _deliver_one(rt: Runtime, hub_ref: str, c: _Claimed) -> Outcome:
    try:
        route, conn, mapping = rt.mapping_for(c.authority, c.service)
    except (RoutingError, MappingError, HubbridgeError) as exc:
        return _give_up(rt, c, "unroutable", str(exc))
    fields: dict[str, Any] = {}
    try:
        if getattr(mapping, "has_followups", False):
            from hubbridge.mappings.compiled import followup_context

            fields = mapping.followup(followup_context(c.payload, c.case_payload, c.backoffice_ref,
                                                       f"{hub_ref}/{c.sequence}"))
    except MappingError as exc:
        return _give_up(rt, c, "mapping_failed", str(exc))
    followup = _followup(hub_ref, c, fields)
    via, action = _how(conn, c.kind, route.followups.otherwise.get(c.kind))
    if via is None:
        listed = ", ".join(sorted(k.value for k in conn.followup_kinds)) or "none"
        return _give_up(
            rt, c, "no_followup_operation",
            f"{conn.plugin} has no operation for {c.kind.value} follow-ups (it takes: {listed}) and the route "
            f"sends them to the dead letters; pass it to the service area by hand, or set "
            f"connectors.{conn.name}.followups.otherwise.{c.kind.value} (note or email) in the config",
            connector=conn.name)
    if action == FollowUpAction.EMAIL:
        return _by_email(rt, c, followup, route.followups.inbox or "", conn.name)
    if action == FollowUpAction.NOTE:
        followup = replace(followup, kind=FollowUpKind.NOTE)
    def calls(pace: Callable[[], None]) -> FollowUpResult:
        result: FollowUpResult | None = None
        if not followup.known_new:
            pace()
            result = conn.find_follow_up(followup)  # an earlier attempt may have landed: never twice
        if result is None:
            pace()
            result = conn.follow_up(replace(followup, known_new=True))
        return result

    got = call_back_office(CircuitBreaker(rt.url, route.connector), Throttle(rt.url, route.connector), calls)
    if isinstance(got, CallFailed):
        exc = got.exc
        if got.retry:
            return _retry_later(rt, c, cast(TransientError, exc), route.connector, unknown=got.unknown,
                                count_attempt=got.count_attempt)
        if isinstance(exc, OutcomeUnknown):
            listed = ", ".join(exc.candidates) or "none found"
            return _give_up(rt, c, got.reason, f"{exc} (look in the back office for it: {listed})",
                            connector=conn.name)
        return _give_up(rt, c, got.reason, str(exc), connector=conn.name)
    result = got
    return _delivered(rt, hub_ref, c, via, result.backoffice_id, conn.name)


def _followup(hub_ref: str, c: _Claimed, fields: dict[str, Any]) -> FollowUp:
    return FollowUp(
        hub_ref=hub_ref, backoffice_ref=c.backoffice_ref, key=f"{hub_ref}/{c.sequence}", kind=c.kind,
        text=wording(c.kind, c.payload, c.payload.get("previous_priority")),
        occurred_at=datetime.fromisoformat(c.payload["occurred_at"]), priority=c.payload.get("priority"),
        documents=c.documents, fields=fields,
        # unknown_outcome is set by every claim, so only a first attempt knows nothing can have landed
        known_new=c.attempts == 0 and not c.unknown,
    )


def _how(conn: Connector, kind: FollowUpKind,
         configured: FollowUpAction | None) -> tuple[str | None, FollowUpAction | None]:
    """How a kind reaches this back office: (via, fallback action); via None means nowhere (a dead letter), and
    action None means through the back office's own operation for the kind."""
    if kind in conn.followup_kinds:
        return "operation", None
    if configured == FollowUpAction.NOTE and FollowUpKind.NOTE in conn.followup_kinds:
        return "note", FollowUpAction.NOTE
    if configured == FollowUpAction.EMAIL:
        return "email", FollowUpAction.EMAIL
    return None, FollowUpAction.DEAD_LETTER


def _by_email(rt: Runtime, c: _Claimed, followup: FollowUp, inbox: str, connector: str) -> Outcome:
    """E-mail a follow-up the back office cannot take to the service area's inbox, once: a resend after a lost
    answer carries the same Message-ID, which mail systems use to drop the copy."""
    from email.message import EmailMessage
    from email.utils import format_datetime

    from hubbridge.sla.escalate import smtp_server
    from hubbridge.workflows.mail import MailSender

    instance = rt.config.connectors[connector]
    server = smtp_server(rt.sla.config, rt.settings)
    if server is None:
        return _give_up(rt, c, "no_mail_server", f"the route e-mails {c.kind.value} follow-ups to {inbox}, but "
                        "sla.yaml has no smtp: section; add one, then replay", connector=connector)
    msg = EmailMessage()
    msg["From"] = server.sender
    msg["To"] = inbox
    msg["Subject"] = f"[{followup.hub_ref}] {c.kind.value} from the Hub for {c.service} ({c.authority})"
    msg["Message-ID"] = f"<followup.{followup.key.replace('/', '.')}@hubbridge>"
    msg["Date"] = format_datetime(utcnow())
    msg.set_content(
        f"{followup.text}\n\nHub case: {followup.hub_ref}\nBack-office reference ({connector}): "
        f"{followup.backoffice_ref}\n\n{instance.plugin} has no operation for this kind of follow-up, so hubbridge "
        "sends it here: please add it to the job by hand.\n")
    for doc in followup.documents:
        if doc.content is not None:
            maintype, _, subtype = doc.content_type.partition("/")
            msg.add_attachment(doc.content, maintype=maintype, subtype=subtype, filename=doc.filename)
    try:
        MailSender(server).send(msg)
    except TransientError as exc:
        return _retry_later(rt, c, exc, instance, unknown=True)
    except (PermanentError, HubbridgeError) as exc:
        return _give_up(rt, c, "email_refused", str(exc), connector=connector)
    return _delivered(rt, followup.hub_ref, c, "email", None, connector)


def _delivered(rt: Runtime, hub_ref: str, c: _Claimed, via: str, backoffice_id: str | None,
               connector: str) -> Outcome:
    from hubbridge.workflows.outbox import set_status

    now = utcnow()
    push: list[str] = []
    with session_scope(rt.url) as s:
        row = s.scalar(select(FollowUpRow).where(FollowUpRow.id == c.row_id).with_for_update())
        if row is None or row.state != "pending":
            return Outcome(OutcomeKind.SKIPPED, "delivered concurrently")
        row.state = "delivered"
        row.via = via
        row.backoffice_id = backoffice_id
        row.delivered_at = now
        row.claimed_until = None
        row.unknown_outcome = False
        row.next_attempt_at = None
        row.last_error = None
        row.attempts = c.attempts + 1
        # the files were kept only until the back office had them
        s.execute(update(FollowUpFileRow).where(FollowUpFileRow.followup_id == row.id, FollowUpFileRow.content
                                                .is_not(None)).values(content=None, erased_at=now))
        record_event(s, hub_ref, "followup.delivered", sequence=c.sequence, followup_kind=c.kind.value,
                     via=via, connector=connector, backoffice_id=backoffice_id)
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref).with_for_update())
        if case is not None and c.kind == FollowUpKind.CANCEL and case.status != HubStatus.CANCELLED.value:
            set_status(rt, s, case, HubStatus.CANCELLED, now, note=f"Withdrawn in {connector} at the customer's "
                       "request", source=connector)
            push.append(hub_ref)
        elif case is not None and c.kind == FollowUpKind.REOPEN and case.status in _ENDED:
            # back with the service area: the clocks restart as the policy's restart rules say
            set_status(rt, s, case, HubStatus.DELIVERED, now, note=f"Reopened in {connector}", source=connector)
            push.append(hub_ref)
    from hubbridge.workflows.metrics import FOLLOWUPS

    FOLLOWUPS.labels(connector, c.service, c.authority, c.kind.value, via).inc()
    log.info("followup.delivered", hub_ref=hub_ref, sequence=c.sequence, kind=c.kind.value, via=via)
    return Outcome(OutcomeKind.DONE, f"follow-up {c.sequence} delivered ({via})", push=push)


def _retry_later(rt: Runtime, c: _Claimed, exc: TransientError, instance: Any, *, unknown: bool = False,
                 count_attempt: bool = True) -> Outcome:
    with session_scope(rt.url) as s:
        row = s.scalar(select(FollowUpRow).where(FollowUpRow.id == c.row_id).with_for_update())
        if row is None or row.state != "pending":
            return Outcome(OutcomeKind.SKIPPED, "settled concurrently")
        if count_attempt:
            row.attempts += 1
        # a refused connection sent nothing; any other fault may have reached the back office
        row.unknown_outcome = unknown or count_attempt
        row.claimed_until = None
        row.last_error = str(exc)[:2000]
        if count_attempt and retry.exhausted(instance.retry, row.attempts):
            s.flush()
            _dead(s, row, c, "retries_exhausted", f"{row.attempts} attempts; last: {exc}", instance.name)
            return Outcome(OutcomeKind.DEAD, str(exc))
        delay = retry.backoff(instance.retry, row.attempts, exc.retry_after)
        row.next_attempt_at = utcnow() + timedelta(seconds=delay)
        record_event(s, row.hub_ref, "followup.retry", sequence=c.sequence, attempt=row.attempts,
                     in_seconds=round(delay, 1), error=str(exc)[:300])
    log.warning("followup.retry", hub_ref=row.hub_ref, sequence=c.sequence, error=str(exc)[:200])
    return Outcome(OutcomeKind.RETRY, str(exc), retry_in=delay)


def _give_up(rt: Runtime, c: _Claimed, reason: str, detail: str, connector: str | None = None) -> Outcome:
    with session_scope(rt.url) as s:
        row = s.scalar(select(FollowUpRow).where(FollowUpRow.id == c.row_id).with_for_update())
        if row is None or row.state != "pending":
            return Outcome(OutcomeKind.SKIPPED, "settled concurrently")
        _dead(s, row, c, reason, detail, connector)
    # a dead follow-up does not hold back the later ones: each is its own message to the service area
    return Outcome(OutcomeKind.DEAD, detail)


def _dead(s: Session, row: FollowUpRow, c: _Claimed, reason: str, detail: str, connector: str | None) -> None:
    row.state = "dead"
    row.claimed_until = None
    row.next_attempt_at = None
    row.last_error = detail[:2000]
    dead_letter(s, stage=STAGE, reason=reason, detail=f"follow-up {c.sequence} ({c.kind.value}): {detail}",
                payload={"followup": c.sequence, **row.payload}, hub_ref=row.hub_ref, service=c.service,
                authority=c.authority, connector=connector)


# -- the sweep, replays and what people read ----------------------------------------------------------------------


def due(s: Session, now: datetime, lease: datetime, limit: int = 5000) -> list[str]:
    """Cases with a pending follow-up whose time has come (new, retried, or a lost message); leased for the sweep."""
    refs = list(s.scalars(
        select(FollowUpRow.hub_ref).where(FollowUpRow.state == "pending", FollowUpRow.next_attempt_at <= now)
        .distinct().limit(limit)))
    if refs:
        s.execute(update(FollowUpRow).where(FollowUpRow.hub_ref.in_(refs), FollowUpRow.state == "pending",
                                            FollowUpRow.next_attempt_at <= now).values(next_attempt_at=lease))
    return refs


def rearm(s: Session, hub_ref: str | None, payload: dict[str, Any], dead_id: int) -> str:
    """Replay of a follow-up's delivery dead letter: pending again, due now, tried afresh (looked up first)."""
    from hubbridge.errors import DeadLetterReplayError

    sequence = payload.get("followup")
    row = s.scalar(select(FollowUpRow).where(FollowUpRow.hub_ref == hub_ref, FollowUpRow.sequence == sequence)
                   .with_for_update()) if hub_ref and isinstance(sequence, int) else None
    if row is None:
        raise DeadLetterReplayError(f"dead letter {dead_id} names no follow-up of ours to deliver")
    if row.state == "delivered":
        return f"dead letter {dead_id}: follow-up {sequence} of {hub_ref} was delivered already; nothing done"
    row.state = "pending"
    row.attempts = max(row.attempts, 1)  # look first: the back office may have taken it before it failed
    row.unknown_outcome = True
    row.next_attempt_at = utcnow()
    row.last_error = None
    return f"dead letter {dead_id}: follow-up {sequence} of {hub_ref} queued for delivery again"


def followups_of(s: Session, hub_ref: str) -> list[dict[str, Any]]:
    """A case's follow-ups with their delivery state, for the console, the API and `hubbridge status`."""
    rows = s.scalars(select(FollowUpRow).where(FollowUpRow.hub_ref == hub_ref).order_by(FollowUpRow.sequence))
    return [{
        "sequence": r.sequence, "kind": r.kind, "channel": r.channel, "state": r.state, "via": r.via,
        "attempts": r.attempts, "received_at": r.created_at.isoformat(),
        "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
        "backoffice_id": r.backoffice_id, "last_error": r.last_error,
        "files": len(r.payload.get("attachments") or []),
    } for r in rows]


def counts(s: Session) -> dict[str, int]:
    """Follow-ups by state, for `hubbridge status` and the demo's report."""
    return {state: n for state, n in s.execute(select(FollowUpRow.state, func.count()).group_by(FollowUpRow.state))}
