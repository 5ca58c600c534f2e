"""Dead-letter operations: list, inspect, replay and discard work that could not be done.

Every dead letter stays in the store until an operator replays or discards it; both are recorded as
audit events. Replay never makes a second back-office job: a revived case is marked `unknown_outcome`,
so delivery looks the case up in the back office before creating anything, and a case that already
reached its back office is left alone. RabbitMQ's own dead-letter queue (`hubbridge.dead`, fed by the
quorum queues' delivery limit) is drained into the same store with reason `poison_message`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hubbridge.case import HubCase
from hubbridge.errors import (
    CaseValidationError,
    DeadLetterClosed,
    DeadLetterNotFound,
    DeadLetterReplayError,
    HubbridgeError,
    RoutingError,
    UsageError,
)
from hubbridge.store import (
    CaseRow,
    DeadLetterRow,
    HubUpdateRow,
    LinkRow,
    SyncCursorRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows import metrics

if TYPE_CHECKING:
    from hubbridge.workflows.runtime import Runtime

log = structlog.get_logger(__name__)

POISON_STAGE = "queue"
POISON_REASON = "poison_message"
CASE_STAGES = ("route", "translate", "deliver")
"""Stages whose dead letter means 'this case never reached its back office': replay re-queues delivery."""


def dead_letter(
    session: Session,
    *,
    stage: str,
    reason: str,
    detail: str,
    payload: Any,
    hub_ref: str | None = None,
    service: str | None = None,
    authority: str | None = None,
    connector: str | None = None,
    once_per_body: bool = False,
) -> DeadLetterRow:
    """Keep work that could not be done; with `once_per_body` the same raw body seen again counts on its first."""
    if isinstance(payload, bytes):
        raw = payload.decode("utf-8", "replace")
    else:
        raw = payload if isinstance(payload, str) else json.dumps(payload, default=str, sort_keys=True)
    # PostgreSQL text cannot hold NUL: a hostile body must not make its own dead letter fail to save
    hub_ref, service, authority = (_no_nul(v) for v in (hub_ref, service, authority))
    stored = _no_nul(raw) or ""
    digest = hashlib.sha256(stored.encode()).hexdigest() if once_per_body else None
    if digest is not None:
        # the same rejected body again (a client retrying, a captured request replayed) is one dead letter
        known = session.scalars(select(DeadLetterRow).where(DeadLetterRow.body_digest == digest,
                                                            DeadLetterRow.stage == stage).limit(1)).first()
        if known is not None:
            known.seen_count = (known.seen_count or 1) + 1
            known.last_seen_at = utcnow()
            record_event(session, known.hub_ref, "dead_letter.seen_again", dead_letter_id=known.id,
                         seen_count=known.seen_count)
            log.warning("dead_letter.seen_again", stage=stage, reason=reason, dead_letter_id=known.id,
                        seen_count=known.seen_count)
            return known
    row = DeadLetterRow(
        hub_ref=hub_ref,
        stage=stage,
        reason=reason,
        detail=_no_nul(detail[:4000]),
        payload=stored,
        service=service,
        authority=authority,
        connector=connector,
        body_digest=digest,
        seen_count=1,
        last_seen_at=utcnow(),
    )
    session.add(row)
    metrics.dead_lettered_on_commit(session, stage, reason)
    record_event(session, hub_ref, "dead_lettered", stage=stage, reason=reason, detail=row.detail[:500])
    log.warning("dead_lettered", stage=stage, reason=reason, detail=detail[:300], hub_ref=hub_ref)
    return row


def _no_nul(text: str | None) -> str | None:
    # NUL and lone surrogates (json.loads makes them from "\\ud800") cannot be stored as PostgreSQL text
    if not text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _open() -> Any:
    return DeadLetterRow.replayed_at.is_(None) & DeadLetterRow.discarded_at.is_(None)


def list_dead(
    session: Session,
    *,
    service: str | None = None,
    authority: str | None = None,
    reason: str | None = None,
    older_than: timedelta | None = None,
    include_closed: bool = False,
    limit: int = 200,
) -> list[DeadLetterRow]:
    """Dead letters matching every filter given, oldest first; open ones only unless `include_closed`."""
    query = select(DeadLetterRow)
    if not include_closed:
        query = query.where(_open())
    if service is not None:
        query = query.where(DeadLetterRow.service == service)
    if authority is not None:
        query = query.where(DeadLetterRow.authority == authority)
    if reason is not None:
        query = query.where(DeadLetterRow.reason == reason)
    if older_than is not None:
        query = query.where(DeadLetterRow.created_at < utcnow() - older_than)
    return list(session.scalars(query.order_by(DeadLetterRow.created_at, DeadLetterRow.id).limit(limit)).all())


def get_dead(session: Session, dead_id: int) -> DeadLetterRow:
    """One dead letter by id, or `DeadLetterNotFound`."""
    row = session.get(DeadLetterRow, dead_id)
    if row is None:
        raise DeadLetterNotFound(
            f"no dead letter with id {dead_id}", hint="list the open ones with `hubbridge dlq list`"
        )
    return row


def counts_by_reason(session: Session) -> dict[str, int]:
    """How many open dead letters there are for each reason."""
    rows = session.execute(
        select(DeadLetterRow.reason, func.count()).where(_open()).group_by(DeadLetterRow.reason)
    ).all()
    return {reason: int(n) for reason, n in sorted(rows)}


def state_of(row: DeadLetterRow) -> str:
    """open, replayed or discarded."""
    if row.discarded_at is not None:
        return "discarded"
    if row.replayed_at is not None:
        return "replayed"
    return "open"


# -- replay ---------------------------------------------------------------------------------------


def replay(rt: Runtime, dead_id: int, *, by: str) -> str:
    """Re-run the work a dead letter holds, at most once; returns a one-line message of what happened.

    Raises `DeadLetterNotFound`, `DeadLetterClosed` (it was discarded) or `DeadLetterReplayError`
    (still failing; the dead letter stays open). Replaying one already replayed does nothing.
    """
    with session_scope(rt.url) as s:
        row = get_dead(s, dead_id)
        if row.discarded_at is not None:
            raise DeadLetterClosed(
                f"dead letter {dead_id} was discarded at {row.discarded_at:%Y-%m-%d %H:%M} UTC and cannot be replayed",
                hint="a discarded dead letter is kept only for the audit trail",
            )
        if row.replayed_at is not None:
            return f"dead letter {dead_id} was already replayed at {row.replayed_at:%Y-%m-%d %H:%M} UTC; nothing done"
        stage, hub_ref = row.stage, row.hub_ref
        # Claim it: of two replays racing, only the one whose update matched carries on.
        claimed = s.execute(
            update(DeadLetterRow)
            .where(DeadLetterRow.id == dead_id, _open())
            .values(replayed_at=utcnow(), replay_count=DeadLetterRow.replay_count + 1)
        ).rowcount
        if not claimed:
            return f"dead letter {dead_id} is being replayed or was just closed by someone else; nothing done"
        refused_at_door = stage == "followup" and row.reason in FOLLOWUP_INTAKE_REASONS
        if stage != "intake" and not refused_at_door:
            # Everything but intake only touches the store, so it commits with the claim or not at all.
            try:
                message = _replay_in_store(rt, s, row)
            except DeadLetterReplayError as exc:
                s.rollback()
                _replay_failed(rt, dead_id, hub_ref, by, exc)
                raise
            record_event(s, hub_ref, "dead_letter.replayed", dead_letter_id=dead_id, by=by, result=message)
            log.info("dead_letter.replayed", dead_letter_id=dead_id, by=by, stage=stage, hub_ref=hub_ref)
            return message
        payload = row.payload
    # Intake writes through accept_case's own transactions; the claim above is undone if it fails.
    try:
        message = (_replay_followup_intake(rt, dead_id, payload) if refused_at_door
                   else _replay_intake(rt, dead_id, payload))
    except DeadLetterReplayError as exc:
        _replay_failed(rt, dead_id, hub_ref, by, exc, unclaim=True)
        raise
    with session_scope(rt.url) as s:
        record_event(s, hub_ref, "dead_letter.replayed", dead_letter_id=dead_id, by=by, result=message)
    log.info("dead_letter.replayed", dead_letter_id=dead_id, by=by, stage="intake", hub_ref=hub_ref)
    return message


def _replay_failed(
    rt: Runtime, dead_id: int, hub_ref: str | None, by: str, exc: HubbridgeError, *, unclaim: bool = False
) -> None:
    with session_scope(rt.url) as s:
        values: dict[str, Any] = {"replay_count": DeadLetterRow.replay_count + 1}
        if unclaim:
            # the claim already counted this attempt
            values = {"replayed_at": None}
        s.execute(update(DeadLetterRow).where(DeadLetterRow.id == dead_id).values(**values))
        record_event(s, hub_ref, "dead_letter.replay_failed", dead_letter_id=dead_id, by=by, error=str(exc)[:500])
    log.warning("dead_letter.replay_failed", dead_letter_id=dead_id, by=by, error=str(exc)[:300])


def _replay_intake(rt: Runtime, dead_id: int, payload: str) -> str:
    from hubbridge.workflows import intake

    # Checked here first because accept_case keeps every rejected input as a new dead letter, and a
    # replay that fails again must leave just the one it started from.
    problem = _intake_problem(rt, payload)
    if problem:
        raise DeadLetterReplayError(
            f"dead letter {dead_id} is still not a valid, routable Hub case: {problem}",
            hint="fix the config or mapping it needs, or have the Hub resend a corrected case and discard this one",
        )
    try:
        accepted = intake.accept_case(rt, payload, channel="replay")
    except CaseValidationError as exc:  # config changed between the check and the intake
        raise DeadLetterReplayError(f"dead letter {dead_id} was rejected again: {exc}") from None
    if accepted.duplicate:
        return f"dead letter {dead_id}: case {accepted.hub_ref} was already taken in; nothing done"
    with session_scope(rt.url) as s:
        # Due now, so the next reconcile sweep queues it rather than waiting for the lost-message lease.
        s.execute(update(CaseRow).where(CaseRow.hub_ref == accepted.hub_ref).values(next_attempt_at=utcnow()))
    return f"dead letter {dead_id}: case {accepted.hub_ref} taken in and queued for delivery"


FOLLOWUP_INTAKE_REASONS = ("unknown_case", "invalid_followup")
"""Reasons a follow-up was refused at the door (not taken in): replay takes it in again."""


def _replay_followup_intake(rt: Runtime, dead_id: int, payload: str) -> str:
    from hubbridge.workflows.followups import accept_followup

    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise DeadLetterReplayError(f"dead letter {dead_id} is not a JSON follow-up") from None
    if isinstance(data, dict) and any(isinstance(a, dict) and a.get("content") == "(left out)"
                                      for a in data.get("attachments") or []):
        raise DeadLetterReplayError(f"dead letter {dead_id}: its files were not kept",
                                    hint="ask the Hub to send the evidence again")
    # the refusal's own dead letter is this one: a check first, so a replay failing again adds none
    from hubbridge.case import HubFollowUp
    from hubbridge.store import CaseRow as _Case

    try:
        followup = HubFollowUp.model_validate(data)
    except ValidationError as exc:
        raise DeadLetterReplayError(f"dead letter {dead_id} is still not a valid follow-up: "
                                    f"{exc.errors()[0]['msg']}") from None
    with session_scope(rt.url) as s:
        if s.scalar(select(_Case.id).where(_Case.hub_ref == followup.ref)) is None:
            raise DeadLetterReplayError(f"dead letter {dead_id}: case {followup.ref} is still not in the store",
                                        hint="replay the case first, or discard this follow-up")
    try:
        accepted = accept_followup(rt, data, channel="replay")
    except CaseValidationError as exc:
        raise DeadLetterReplayError(f"dead letter {dead_id} was refused again: {exc}") from None
    if accepted.duplicate:
        return f"dead letter {dead_id}: follow-up {accepted.sequence} of {accepted.hub_ref} was already taken in"
    return f"dead letter {dead_id}: follow-up {accepted.sequence} of {accepted.hub_ref} taken in and queued"


def _intake_problem(rt: Runtime, payload: str) -> str | None:
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (ValueError, RecursionError):  # a number past Python's 4,300-digit limit, absurd nesting
        return "not valid JSON (a number too long or nesting too deep)"
    if not isinstance(data, dict):
        return "not a JSON object"
    try:
        case = HubCase.model_validate(data)
        rt.config.route(case.authority, case.service)
    except ValidationError as exc:
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in exc.errors())[:500]
    except RoutingError as exc:
        return str(exc)
    return None


def _replay_in_store(rt: Runtime, s: Session, row: DeadLetterRow) -> str:
    if row.stage in CASE_STAGES:
        return _requeue_case(s, row.id, row.hub_ref)
    if row.stage == "push":
        return _requeue_push(s, row)
    if row.stage == "sync":
        return _resync(s, row)
    if row.stage == POISON_STAGE:
        return _replay_poison(s, row)
    from hubbridge.sla.escalate import ESCALATE_STAGE, replay_escalation

    if row.stage == ESCALATE_STAGE:
        return replay_escalation(s, row)
    if row.stage == "followup":
        from hubbridge.workflows.followups import rearm

        try:
            data = json.loads(row.payload)
        except ValueError:
            data = {}
        return rearm(s, row.hub_ref, data if isinstance(data, dict) else {}, row.id)
    raise DeadLetterReplayError(f"dead letter {row.id} is from stage {row.stage!r}, which has no replay")


def _requeue_case(s: Session, dead_id: int, hub_ref: str | None) -> str:
    if hub_ref is None:
        raise DeadLetterReplayError(f"dead letter {dead_id} names no case to deliver")
    case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref).with_for_update())
    if case is None:
        raise DeadLetterReplayError(f"dead letter {dead_id}: case {hub_ref} is not in the store")
    linked = s.scalar(select(LinkRow.backoffice_ref).where(LinkRow.hub_ref == hub_ref))
    if linked is not None or case.stage in ("delivered", "acknowledged"):
        where = linked or case.stage
        return f"dead letter {dead_id}: case {hub_ref} already reached its back office ({where}); nothing done"
    now = utcnow()
    if case.stage == "received":
        case.next_attempt_at = now
        return f"dead letter {dead_id}: case {hub_ref} was already waiting for delivery; made due now"
    case.stage = "received"
    case.attempts = 0
    # The earlier attempt may have reached the back office: delivery looks the case up before creating.
    case.unknown_outcome = True
    case.claimed_until = None
    case.next_attempt_at = now
    record_event(s, hub_ref, "requeued", dead_letter_id=dead_id)
    return f"dead letter {dead_id}: case {hub_ref} queued for delivery again (looked up in the back office first)"


def _requeue_push(s: Session, row: DeadLetterRow) -> str:
    try:
        sequence = int(json.loads(row.payload)["sequence"])
    except (ValueError, KeyError, TypeError):
        raise DeadLetterReplayError(f"dead letter {row.id} holds no Hub update sequence to push again") from None
    upd = s.scalar(select(HubUpdateRow).where(HubUpdateRow.hub_ref == row.hub_ref, HubUpdateRow.sequence == sequence))
    if upd is None:
        raise DeadLetterReplayError(f"dead letter {row.id}: update {sequence} of {row.hub_ref} is not in the outbox")
    if upd.pushed_at is not None and not (upd.last_error or "").startswith("dead-lettered"):
        return f"dead letter {row.id}: update {sequence} of {row.hub_ref} already reached the Hub; nothing done"
    upd.pushed_at = None
    upd.attempts = 0
    upd.last_error = None
    upd.next_attempt_at = utcnow()
    return f"dead letter {row.id}: update {sequence} of {row.hub_ref} queued for the Hub again"


def _resync(s: Session, row: DeadLetterRow) -> str:
    if row.connector is None:
        raise DeadLetterReplayError(f"dead letter {row.id} names no connector to poll")
    if row.reason != "refused":
        raise DeadLetterReplayError(
            f"dead letter {row.id}: update from {row.connector} could not be applied ({row.reason}) and sync has"
            " read past it",
            hint="fix the inbound mapping (later updates will apply), tell the Hub by hand if needed, then discard",
        )
    s.execute(
        update(SyncCursorRow).where(SyncCursorRow.connector == row.connector).values(polled_at=None, lease_until=None)
    )
    return f"dead letter {row.id}: {row.connector} will be polled again on the next sweep"


def _replay_poison(s: Session, row: DeadLetterRow) -> str:
    try:
        message = json.loads(row.payload)
        task = str(message.get("task") or "")
        args = message.get("args") or []
    except (ValueError, AttributeError):
        raise DeadLetterReplayError(f"dead letter {row.id} holds a broker message that cannot be read") from None
    ref = args[0] if args and isinstance(args[0], str) else None
    if task == "hubbridge.deliver_case" and ref:
        case_stage = s.scalar(select(CaseRow.stage).where(CaseRow.hub_ref == ref))
        if case_stage == "received":
            s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(next_attempt_at=utcnow()))
            return f"dead letter {row.id}: case {ref} made due for delivery now"
        return _requeue_case(s, row.id, ref)
    if task == "hubbridge.push_hub" and ref:
        n = s.execute(
            update(HubUpdateRow)
            .where(HubUpdateRow.hub_ref == ref, HubUpdateRow.pushed_at.is_(None))
            .values(next_attempt_at=utcnow())
        ).rowcount
        return f"dead letter {row.id}: {n} pending Hub update(s) of {ref} made due now"
    return f"dead letter {row.id}: {task or 'unknown task'} is periodic and beat runs it again; nothing to re-run"


# -- discard --------------------------------------------------------------------------------------


def discard(rt: Runtime, dead_id: int, *, by: str, note: str) -> None:
    """Close a dead letter without re-running it, recording who and why; discarding twice does nothing more."""
    if not note or not note.strip():
        raise UsageError(f"discarding dead letter {dead_id} needs a note saying why", hint="pass --note '...'")
    with session_scope(rt.url) as s:
        row = get_dead(s, dead_id)
        if row.discarded_at is not None:
            return
        if row.replayed_at is not None:
            raise DeadLetterClosed(
                f"dead letter {dead_id} was replayed at {row.replayed_at:%Y-%m-%d %H:%M} UTC; nothing to discard"
            )
        done = s.execute(
            update(DeadLetterRow).where(DeadLetterRow.id == dead_id, _open()).values(discarded_at=utcnow())
        ).rowcount
        if not done:
            return
        record_event(s, row.hub_ref, "dead_letter.discarded", dead_letter_id=dead_id, by=by, note=note.strip()[:1000])
    log.info("dead_letter.discarded", dead_letter_id=dead_id, by=by)


# -- RabbitMQ's dead-letter queue -----------------------------------------------------------------


def poison_payload(body: bytes, headers: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """What is kept of a dead-lettered broker message: the task, its arguments and RabbitMQ's x-death record."""
    text = body.decode("utf-8", "replace")
    args: Any = None
    kwargs: Any = None
    try:
        decoded = json.loads(text)
        # Celery message protocol 2: the body is [args, kwargs, embed].
        if isinstance(decoded, list) and len(decoded) >= 2:
            args, kwargs = decoded[0], decoded[1]
    except ValueError:
        decoded = None
    deaths = headers.get("x-death") or []
    first = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    return {
        "task": headers.get("task"),
        "id": headers.get("id") or properties.get("correlation_id"),
        "args": args,
        "kwargs": kwargs,
        "queue": first.get("queue") or headers.get("x-first-death-queue"),
        "death_reason": first.get("reason") or headers.get("x-first-death-reason"),
        "delivery_count": headers.get("x-delivery-count"),
        "body": None if decoded is not None else text[:20000],
    }


def drain_broker_dead(url: str, broker_url: str, *, limit: int = 500, queue_name: str | None = None) -> int:
    """Move up to `limit` messages from RabbitMQ's dead-letter queue into the store; returns how many.

    Each message is acknowledged only after its dead letter is committed, so a crash in between leaves
    it on the queue; a message already stored (same task id and body) is not stored twice.
    """
    from kombu import Connection

    from hubbridge.config.settings import Settings
    from hubbridge.workflows.broker import DEAD_LETTER_QUEUE, queue_declarations

    wanted = queue_name or DEAD_LETTER_QUEUE
    declared = {q.name: q for q in queue_declarations(Settings(broker_url=broker_url))}
    moved = 0
    with Connection(broker_url, connect_timeout=10) as conn:
        # Declared as the workers declare it, so draining before any worker ran still finds the queue.
        queue = declared[wanted](conn.default_channel) if wanted in declared else None
        if queue is None:
            from kombu import Queue

            queue = Queue(wanted, no_declare=True)(conn.default_channel)
        else:
            queue.declare()
        while moved < limit:
            message = queue.get(no_ack=False)
            if message is None:
                break
            raw = message.body.encode("utf-8") if isinstance(message.body, str) else bytes(message.body)
            payload = poison_payload(raw, dict(message.headers or {}), dict(message.properties or {}))
            _store_poison(url, payload)
            message.ack()
            moved += 1
    if moved:
        log.warning("dead_letter.drained", count=moved)
    return moved


def _store_poison(url: str, payload: dict[str, Any]) -> None:
    raw = json.dumps(payload, default=str, sort_keys=True)
    args = payload.get("args") or []
    ref = args[0] if isinstance(args, list) and args and isinstance(args[0], str) and args[0][:2].isalpha() else None
    with session_scope(url) as s:
        exists = s.scalar(
            select(DeadLetterRow.id).where(
                DeadLetterRow.stage == POISON_STAGE, DeadLetterRow.reason == POISON_REASON, DeadLetterRow.payload == raw
            )
        )
        if exists is not None:
            return
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref)) if ref else None
        dead_letter(
            s,
            stage=POISON_STAGE,
            reason=POISON_REASON,
            detail=(
                f"{payload.get('task') or 'a message'} was dead-lettered by RabbitMQ from {payload.get('queue')}"
                f" ({payload.get('death_reason') or 'unknown reason'}) after repeated failed deliveries"
            ),
            payload=raw,
            hub_ref=ref if case is not None else None,
            service=case.service if case else None,
            authority=case.authority if case else None,
            connector=case.connector if case else None,
        )


def parse_age(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `3d` or `1w` as a timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    if len(value) < 2 or value[-1] not in units or not value[:-1].isdigit():
        raise ValueError(f"{text!r} is not an age like 90s, 30m, 2h, 3d or 1w")
    return timedelta(seconds=int(value[:-1]) * units[value[-1]])


def as_dict(row: DeadLetterRow, *, payload: bool = False) -> dict[str, Any]:
    """A dead letter as plain JSON-able data (the payload, which may hold personal data, only if asked)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    out: dict[str, Any] = {
        "id": row.id,
        "state": state_of(row),
        "hub_ref": row.hub_ref,
        "stage": row.stage,
        "reason": row.reason,
        "service": row.service,
        "authority": row.authority,
        "connector": row.connector,
        "detail": row.detail,
        "created_at": iso(row.created_at),
        "replayed_at": iso(row.replayed_at),
        "discarded_at": iso(row.discarded_at),
        "replay_count": row.replay_count,
    }
    if payload:
        out["payload"] = row.payload
    return out
