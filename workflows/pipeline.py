"""What each queued step does: intake, deliver, push to the Hub, pull updates, reconcile.

The Celery tasks in `tasks.py` are thin wrappers over these functions. Every function is idempotent:
a redelivered message runs it again and the store decides whether anything is left to do.
"""

from __future__ import annotations

import json
import math
import re
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hubbridge.case import CaseUpdate, Channel, Customer, HubCase, HubStatus, Location
from hubbridge.config.loader import Config, load_config
from hubbridge.config.settings import Settings, get_settings
from hubbridge.connectors.base import BackOfficeUpdate, Connector, Delivery, connector_class
from hubbridge.errors import (
    BackOfficeUnavailable,
    CaseValidationError,
    ConnectorError,
    HubbridgeError,
    MappingError,
    PermanentError,
    RoutingError,
    TransientError,
    UnknownOutcomeError,
)
from hubbridge.store import (
    CaseRow,
    DeadLetterRow,
    HubUpdateRow,
    LinkRow,
    RaisedCaseRow,
    SeenUpdateRow,
    SyncCursorRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows import retry

log = structlog.get_logger(__name__)

# How a Hub status may move: an update from the back office never takes a case backwards.
STATUS_RANK = {s: i for i, s in enumerate(HubStatus)}

THROTTLE_WAIT_SECONDS = 1.0
"""A worker sleeps this long at most for a rate-limit permit; a longer wait goes back to the queue."""

RAISE_BATCH = 20
"""Back-office-raised jobs sent to the Hub per poll of their connector instance."""

# The hot path's statements are built once, here: building a SQLAlchemy statement (and its cache key) costs more
# CPU than PostgreSQL spends running it. Updates go to the tables, not through the ORM's bulk-update machinery,
# which synchronises the session's objects these sessions never hold.
_CASES = CaseRow.__table__
_OUTBOX = HubUpdateRow.__table__

_NEW_CASE = insert(_CASES)
_NEW_LINK = insert(LinkRow.__table__)
_CASE_TO_CLAIM = select(
    CaseRow.id, CaseRow.stage, CaseRow.attempts, CaseRow.unknown_outcome, CaseRow.payload, CaseRow.connector,
    select(func.max(HubUpdateRow.sequence)).where(HubUpdateRow.hub_ref == CaseRow.hub_ref).scalar_subquery(),
).where(CaseRow.hub_ref == bindparam("ref"))
_CLAIM = (
    update(_CASES)
    .where(
        _CASES.c.id == bindparam("case_id"),
        _CASES.c.stage == "received",
        _CASES.c.claimed_until.is_(None) | (_CASES.c.claimed_until < bindparam("now")),
    )
    .values(claimed_until=bindparam("until"), unknown_outcome=True, next_attempt_at=bindparam("next"))
)
# the case, its last outbox sequence and whether it is linked to the instance yet, in one round trip
_CASE_DELIVERED = (
    select(
        CaseRow,
        select(func.max(HubUpdateRow.sequence)).where(HubUpdateRow.hub_ref == CaseRow.hub_ref).scalar_subquery(),
        select(LinkRow.id).where(LinkRow.hub_ref == CaseRow.hub_ref, LinkRow.connector == bindparam("connector"))
        .exists(),
    )
    .where(CaseRow.hub_ref == bindparam("ref"))
    .with_for_update(of=CaseRow)
)
_CURSOR = select(SyncCursorRow.cursor).where(SyncCursorRow.connector == bindparam("name"))
_CURSOR_MOVED = (
    update(SyncCursorRow.__table__)
    .where(SyncCursorRow.__table__.c.connector == bindparam("name"))
    .values(cursor=bindparam("cursor"), polled_at=bindparam("polled_at"), lease_until=None)
)
_PUSHED = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(pushed_at=bindparam("now"), last_error=None)
)
_ACKNOWLEDGED = (
    update(_CASES)
    .where(_CASES.c.hub_ref.in_(bindparam("refs", expanding=True)), _CASES.c.stage == "delivered")
    .values(stage="acknowledged")
    .returning(_CASES.c.hub_ref)
)


@dataclass
class Outcome:
    """What a step did, for the caller (a task) to act on."""

    kind: str  # done | skipped | retry | dead
    detail: str = ""
    retry_in: float | None = None
    push: list[str] = field(default_factory=list)
    more: bool = False
    updates: list[Any] = field(default_factory=list)  # outbox rows just written, when they are all the case has pending


class Runtime:
    """Per-process state: config, connector instances, mapping cache, Hub connector, SLA engine."""

    def __init__(self, settings: Settings | None = None, config: Config | None = None) -> None:
        self.settings = settings or get_settings()
        self.config = config or load_config(self.settings.config_dir, self.settings)
        self.url = self.settings.resolved_database_url
        self._connectors: dict[str, Connector] = {}
        self._targets: dict[str, Any] = {}
        self._lock = threading.Lock()

    @cached_property
    def mappings(self) -> Any:
        from hubbridge.mappings import MappingCache

        return MappingCache()

    @cached_property
    def hub(self) -> Any:
        from hubbridge.connectors.hub import HubConnector

        return HubConnector(self.config.hub)

    @cached_property
    def sla(self) -> Any:
        from hubbridge.sla.engine import SlaEngine

        return SlaEngine.from_config(self.config.config_dir)

    def connector(self, name: str) -> Connector:
        with self._lock:
            conn = self._connectors.get(name)
            if conn is None:
                instance = self.config.connectors[name]
                conn = self._connectors[name] = connector_class(instance.plugin)(instance)
            return conn

    def mapping_for(self, authority: str, service: str) -> Any:
        route = self.config.route(authority, service)
        conn = self.connector(route.connector.name)
        targets = self._targets.get(conn.name)
        if targets is None:  # a connector's fields do not change while it lives; some build them per call
            targets = self._targets[conn.name] = conn.target_fields()
        return route, conn, self.mappings.get(route.mapping_path, targets)

    def warm(self) -> int:
        """Load the SLA policies, every connector and every route's mapping now; returns the routes loaded.

        A worker does this once before it forks its pool, so no process pays for it on its first cases. A
        route that cannot load is left for its cases to dead-letter with the reason, and a Hub connector that
        cannot start (a missing token) for the tasks to report, as before the warm start.
        """
        try:
            _ = self.sla, self.hub
        except Exception as exc:
            log.warning("runtime.not_loaded", error=str(exc)[:300])
        loaded = 0
        for authority, service in self.config.routes:
            try:
                self.mapping_for(authority, service)
                loaded += 1
            except Exception as exc:  # one broken route must not keep the worker from starting
                log.warning("runtime.route_not_loaded", authority=authority, service=service, error=str(exc)[:300])
        return loaded

    def close(self) -> None:
        for conn in self._connectors.values():
            conn.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


def reset_runtime(rt: Runtime | None = None) -> None:
    global _runtime
    if _runtime is not None and _runtime is not rt:
        _runtime.close()
    _runtime = rt


# -- intake ---------------------------------------------------------------------------------------


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
) -> DeadLetterRow:
    if isinstance(payload, bytes):
        raw = payload.decode("utf-8", "replace")
    else:
        raw = payload if isinstance(payload, str) else json.dumps(payload, default=str, sort_keys=True)
    # PostgreSQL text cannot hold NUL: a hostile body must not make its own dead letter fail to save
    hub_ref, service, authority = (_no_nul(v) for v in (hub_ref, service, authority))
    row = DeadLetterRow(
        hub_ref=hub_ref,
        stage=stage,
        reason=reason,
        detail=_no_nul(detail[:4000]),
        payload=_no_nul(raw),
        service=service,
        authority=authority,
        connector=connector,
    )
    session.add(row)
    record_event(session, hub_ref, "dead_lettered", stage=stage, reason=reason, detail=row.detail[:500])
    log.warning("dead_lettered", stage=stage, reason=reason, detail=detail[:300], hub_ref=hub_ref)
    return row


def _no_nul(text: str | None) -> str | None:
    return text.replace("\x00", "\ufffd") if text else text


def _field_errors(exc: ValidationError) -> dict[str, str]:
    out: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        out[loc] = err["msg"]
    return out


@dataclass
class Accepted:
    hub_ref: str
    duplicate: bool


def accept_case(rt: Runtime, raw: bytes | str | dict[str, Any], *, channel: str = "api") -> Accepted:
    """Validate, route and store one Hub case; failures are kept as dead letters and raised with every field."""
    text = raw if isinstance(raw, str | bytes) else None
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else raw
        if not isinstance(data, dict):
            raise CaseValidationError({"(body)": "a Hub case is a JSON object"})
        case = HubCase.model_validate(data)
        route = rt.config.route(case.authority, case.service)
    except json.JSONDecodeError as exc:
        err = CaseValidationError({"(body)": f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"})
        _keep_rejected(rt, err, text, None, reason="invalid_json", channel=channel)
        raise err from None
    except (UnicodeDecodeError, RecursionError) as exc:
        # json.loads raises these (not JSONDecodeError) for bytes that are not UTF-8 and for absurd nesting
        problem = (f"not UTF-8 text: {exc.reason} at byte {exc.start}" if isinstance(exc, UnicodeDecodeError)
                   else "not valid JSON: nested too deeply")
        err = CaseValidationError({"(body)": problem})
        _keep_rejected(rt, err, text, None, reason="invalid_json", channel=channel)
        raise err from None
    except ValidationError as exc:
        ref = data.get("ref") if isinstance(data.get("ref"), str) else None
        err = CaseValidationError(_field_errors(exc), ref=ref)
        _keep_rejected(rt, err, text if text is not None else data, data, reason="invalid_case", channel=channel)
        raise err from None
    except RoutingError as exc:
        field_name = "authority" if "authority" in exc.message else "service"
        err = CaseValidationError({field_name: str(exc)}, ref=case.ref)
        _keep_rejected(rt, err, text if text is not None else data, data, reason="unroutable", channel=channel)
        raise err from None
    except CaseValidationError as err:
        _keep_rejected(rt, err, text if text is not None else data, None, reason="invalid_case", channel=channel)
        raise

    now = utcnow()
    with session_scope(rt.url) as s:
        record_event(s, case.ref, "received", channel=channel)
        record_event(
            s,
            case.ref,
            "routed",
            connector=route.connector.name,
            mapping=str(route.mapping_path.name),
            sla_policy=route.sla_policy,
        )
        try:
            # A case the store already holds fails here, on the unique hub_ref: no look-up first, since a
            # duplicate is rare and the look-up was a round trip on every case.
            s.execute(_NEW_CASE, {
                "hub_ref": case.ref,
                "authority": case.authority,
                "service": case.service,
                "priority": case.priority.value,
                "origin": "hub",
                "status": HubStatus.ROUTED.value,
                "status_at": now,
                "stage": "received",
                "payload": case.dump(),
                "connector": route.connector.name,
                "next_attempt_at": now + timedelta(seconds=rt.settings.reconcile_after_seconds),
                "received_at": now,
                "updated_at": now,
            })
            rt.sla.start(s, case.ref, case.service, case.authority, case.priority.value, now,
                         policy=route.sla_policy, escalation=route.escalation, new=True)
        except IntegrityError:
            s.rollback()
            if s.scalar(select(CaseRow.id).where(CaseRow.hub_ref == case.ref)) is None:
                raise  # some other constraint: not a duplicate
            record_event(s, case.ref, "intake.duplicate", channel=channel)
            return Accepted(case.ref, duplicate=True)
    log.info("case.accepted", hub_ref=case.ref, service=case.service, authority=case.authority)
    return Accepted(case.ref, duplicate=False)


def _keep_rejected(
    rt: Runtime, err: CaseValidationError, raw: Any, data: dict[str, Any] | None, *, reason: str, channel: str
) -> None:
    data = data or {}
    with session_scope(rt.url) as s:
        dead_letter(
            s,
            stage="intake",
            reason=reason,
            detail=str(err),
            payload=raw,
            hub_ref=data.get("ref") if isinstance(data.get("ref"), str) else None,
            service=data.get("service") if isinstance(data.get("service"), str) else None,
            authority=data.get("authority") if isinstance(data.get("authority"), str) else None,
        )


# -- deliver --------------------------------------------------------------------------------------


def deliver_case(rt: Runtime, hub_ref: str, *, tell_hub: bool = True) -> Outcome:
    """Translate and deliver one case to its back office, exactly once, and tell the Hub its back-office reference.

    With `tell_hub`, the Hub's `delivered` update is sent as soon as the back office answers and recorded in the
    delivery's own commit; otherwise (or when the Hub cannot take it now) it is left in the outbox for a push.
    """
    now = utcnow()
    with session_scope(rt.url) as s:
        found = s.execute(_CASE_TO_CLAIM, {"ref": hub_ref}).first()
        if found is None:
            return Outcome("skipped", "unknown case")
        # unknown_outcome still set means an earlier claim's worker never reported back (killed mid-call)
        case_id, stage, attempts, unknown, payload, connector, last_sequence = found
        if stage != "received":
            return Outcome("skipped", f"already {stage}")
        case = HubCase.model_validate(payload)
        # Claim the case atomically: a second copy of the message (a redelivery, a reconcile) backs off.
        claimed = s.execute(_CLAIM, {
            "case_id": case_id,
            "now": now,
            "until": now + timedelta(seconds=_claim_seconds(rt, connector)),
            "next": now + timedelta(seconds=rt.settings.reconcile_after_seconds),
        }).rowcount
        if not claimed:
            return Outcome("skipped", "claimed by another worker")

    log.debug("deliver.start", hub_ref=hub_ref)
    try:
        route, conn, mapping = rt.mapping_for(case.authority, case.service)
        translation = mapping.outbound(case)
    except (RoutingError, MappingError) as exc:
        return _give_up(rt, case, "translate", type(exc).__name__, str(exc))
    except HubbridgeError as exc:  # a mapping file that never loaded (ConfigErrors)
        return _give_up(rt, case, "translate", "mapping_invalid", str(exc))

    breaker = retry.CircuitBreaker(rt.url, route.connector)
    throttle = retry.Throttle(rt.url, route.connector)
    try:
        breaker.before_call()
        delivery = Delivery(
            hub_ref=case.ref,
            authority=case.authority,
            service=case.service,
            payload=translation.payload,
            mapping_version=mapping.version,
            known_new=True,  # created only once the claim's bookkeeping, or find, says there is no job yet
        )
        result = None
        with throttle.slot():
            if unknown or attempts > 0:
                throttle.pace(THROTTLE_WAIT_SECONDS)
                result = conn.find(case.ref)  # an earlier attempt may have landed: never create twice
            if result is None:
                # a refusal here leaves nothing half done: there is no job yet
                throttle.pace(THROTTLE_WAIT_SECONDS)
                result = conn.create(delivery)
        breaker.success()
    except BackOfficeUnavailable as exc:
        return _retry_later(rt, case, exc, route.connector, count_attempt=False)
    except UnknownOutcomeError as exc:
        breaker.failure(str(exc))
        return _retry_later(rt, case, exc, route.connector, unknown=True)
    except TransientError as exc:
        breaker.failure(str(exc))
        return _retry_later(rt, case, exc, route.connector)
    except (PermanentError, ConnectorError) as exc:
        breaker.success()  # the back office answered: it is up
        return _give_up(rt, case, "deliver", "refused", str(exc), connector=route.connector.name)

    now = utcnow()
    told: _Told | None = None
    if tell_hub and not last_sequence:
        # Tell the Hub now, before the commit that records the delivery (not after it, recorded in a third
        # transaction): a crash in between leaves the case claimed, and its retry finds the job and sends the same
        # (ref, sequence), which the Hub already has. A case with earlier updates leaves this one to the push,
        # which sends them in order.
        told = _tell_hub(rt, _delivered_update(hub_ref, 1, conn.name, result.backoffice_ref, now))
    with session_scope(rt.url) as s:
        found = s.execute(_CASE_DELIVERED, {"ref": hub_ref, "connector": conn.name}).first()
        if found is None or found[0].stage != "received":
            return Outcome("skipped", "delivered concurrently")
        row, sequence, exists = found
        # read before anything is written, so the session flushes once, at the commit
        clocks = rt.sla.clocks_of(s, hub_ref)
        if not exists:
            s.execute(_NEW_LINK, {"hub_ref": hub_ref, "connector": conn.name, "backoffice_ref": result.backoffice_ref,
                                  "mapping_version": mapping.version, "created_at": now})
        outbox = _mark_delivered(
            rt,
            s,
            row,
            connector=conn.name,
            backoffice_ref=result.backoffice_ref,
            mapping_version=mapping.version,
            attempts=attempts + 1,
            at=now,
            last_sequence=sequence or 0,
            clocks=clocks,
            mapping=mapping.name,
            warnings=translation.warnings,
        )
        if told is not None and outbox.sequence != 1:
            told = None  # not the update the Hub was told: this one goes by the push, after the earlier ones
        if told is not None:
            told.record(s, row, outbox)
    log.info("case.delivered", hub_ref=hub_ref, connector=conn.name, backoffice_ref=result.backoffice_ref)
    if told is not None:
        # sent (or dead-lettered) with the delivery; a Hub that failed gets a push task, which backs off
        return Outcome("done", result.backoffice_ref, push=[] if told.settled else [hub_ref])
    # the case's first update is all it has to push: hand it over so the push need not read it back
    return Outcome("done", result.backoffice_ref, push=[hub_ref], updates=[outbox] if outbox.sequence == 1 else [])


def _delivered_note(connector: str, backoffice_ref: str) -> str:
    return f"Sent to {connector}; reference {backoffice_ref}"


def _delivered_update(hub_ref: str, sequence: int, connector: str, backoffice_ref: str, at: datetime) -> CaseUpdate:
    """The Hub's `delivered` update, as `_mark_delivered` writes it to the outbox."""
    return CaseUpdate(ref=hub_ref, status=HubStatus.DELIVERED, sequence=sequence, backoffice_ref=backoffice_ref,
                      note=_delivered_note(connector, backoffice_ref), source=connector, occurred_at=at)


@dataclass
class _Told:
    """How the Hub took a delivery's `delivered` update, sent before the delivery's commit."""

    update: CaseUpdate
    error: Exception | None = None  # None: the Hub has it

    @property
    def settled(self) -> bool:
        """Sent, or refused for good: nothing is left for a push to try."""
        return self.error is None or (isinstance(self.error, ConnectorError)
                                      and not isinstance(self.error, TransientError))

    def record(self, s: Session, row: CaseRow, outbox: HubUpdateRow) -> None:
        """Write the outcome into the delivery's transaction, as `push_cases` would have after its own."""
        now = utcnow()
        if self.error is None:
            outbox.pushed_at = now
            row.stage = "acknowledged"
            record_event(s, row.hub_ref, "hub.acknowledged", sequence=outbox.sequence,
                         backoffice_ref=self.update.backoffice_ref)
        elif self.settled:
            for column, value in _hub_refused(s, outbox, self.error, now).items():
                setattr(outbox, column, value)
        else:
            retry_after = self.error.retry_after if isinstance(self.error, TransientError) else None
            outbox.attempts = 1
            outbox.last_error = str(self.error)[:2000]
            outbox.next_attempt_at = now + timedelta(seconds=retry.backoff(retry.HUB_RETRY, 1, retry_after))


def _hub_refused(s: Session, outbox: HubUpdateRow, exc: Exception, now: datetime) -> dict[str, Any]:
    """Dead-letter an update the Hub refused for good; returns what its outbox row becomes (done, with the reason)."""
    dead_letter(s, stage="push", reason="hub_refused", detail=str(exc), payload=outbox.payload, hub_ref=outbox.hub_ref)
    return {"pushed_at": now, "last_error": f"dead-lettered: {exc}"[:2000]}


def _tell_hub(rt: Runtime, upd: CaseUpdate) -> _Told:
    try:
        rt.hub.push_update(upd)
    except Exception as exc:  # whatever it was, the delivery must still be recorded: the back office has the job
        log.warning("deliver.hub_not_told", hub_ref=upd.ref, error=str(exc)[:200])
        return _Told(upd, exc)
    return _Told(upd)


def _mark_delivered(
    rt: Runtime,
    s: Session,
    row: CaseRow,
    *,
    connector: str,
    backoffice_ref: str,
    mapping_version: str | None,
    attempts: int,
    at: datetime,
    last_sequence: int | None = None,
    clocks: list[Any] | None = None,
    **event: Any,
) -> HubUpdateRow:
    """What a finished delivery writes: the case's stage with its claim cleared, the Hub's `delivered` update
    and the audit event (with `event` added to it). Returns the outbox row."""
    row.stage = "delivered"
    row.mapping_version = mapping_version
    row.unknown_outcome = False
    row.claimed_until = None
    row.last_error = None
    row.next_attempt_at = None
    row.attempts = attempts
    outbox = _set_status(
        rt,
        s,
        row,
        HubStatus.DELIVERED,
        at,
        backoffice_ref=backoffice_ref,
        note=_delivered_note(connector, backoffice_ref),
        source=connector,
        last_sequence=last_sequence,
        clocks=clocks,
    )
    record_event(s, row.hub_ref, "delivered", connector=connector, backoffice_ref=backoffice_ref,
                 mapping_version=mapping_version, **event)
    return outbox


def _claimed_case(s: Session, hub_ref: str) -> CaseRow:
    """The case a delivery claimed, locked for its outcome; no longer `received` if the sync found the job in
    the back office meanwhile and recorded the delivery itself."""
    row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref).with_for_update())
    assert row is not None
    return row


def _retry_later(
    rt: Runtime, case: HubCase, exc: TransientError, instance: Any, *, unknown: bool = False, count_attempt: bool = True
) -> Outcome:
    with session_scope(rt.url) as s:
        row = _claimed_case(s, case.ref)
        if row.stage != "received":
            return Outcome("skipped", f"already {row.stage}")
        if count_attempt:
            row.attempts += 1
        # A refused connection sent nothing; any other fault may have reached the back office.
        row.unknown_outcome = unknown or (row.unknown_outcome and count_attempt)
        row.claimed_until = None
        row.last_error = str(exc)[:2000]
        if count_attempt and row.attempts >= instance.retry.max_attempts:
            s.flush()
            row.stage = "dead"
            row.next_attempt_at = None
            dead_letter(
                s,
                stage="deliver",
                reason="retries_exhausted",
                detail=f"{row.attempts} attempts; last: {exc}",
                payload=row.payload,
                hub_ref=case.ref,
                service=case.service,
                authority=case.authority,
                connector=instance.name,
            )
            return Outcome("dead", str(exc))
        delay = retry.backoff(instance.retry, row.attempts, exc.retry_after)
        row.next_attempt_at = utcnow() + timedelta(seconds=delay)
        record_event(
            s,
            case.ref,
            "deliver.retry",
            attempt=row.attempts,
            in_seconds=round(delay, 1),
            error=str(exc)[:300],
            unknown_outcome=row.unknown_outcome,
        )
    log.warning("deliver.retry", hub_ref=case.ref, error=str(exc)[:200], in_seconds=round(delay, 1))
    return Outcome("retry", str(exc), retry_in=delay)


def _claim_seconds(rt: Runtime, connector: str | None) -> float:
    inst = rt.config.connectors.get(connector or "")
    per_call = (inst.timeouts.connect + inst.timeouts.read) if inst else 60.0
    return 2 * per_call + 30.0


def _give_up(rt: Runtime, case: HubCase, stage: str, reason: str, detail: str, connector: str | None = None) -> Outcome:
    with session_scope(rt.url) as s:
        row = _claimed_case(s, case.ref)
        if row.stage != "received":
            return Outcome("skipped", f"already {row.stage}")
        row.stage = "dead"
        row.next_attempt_at = None
        row.claimed_until = None
        row.last_error = detail[:2000]
        dead_letter(
            s,
            stage=stage,
            reason=reason,
            detail=detail,
            payload=row.payload,
            hub_ref=case.ref,
            service=case.service,
            authority=case.authority,
            connector=connector,
        )
    return Outcome("dead", detail)


# -- status and the Hub outbox --------------------------------------------------------------------


def _set_status(
    rt: Runtime,
    s: Session,
    row: CaseRow,
    status: HubStatus,
    at: datetime,
    *,
    backoffice_ref: str | None = None,
    note: str | None = None,
    resolution: str | None = None,
    source: str | None = None,
    last_sequence: int | None = None,
    clocks: list[Any] | None = None,
) -> HubUpdateRow:
    """Change a case's Hub status and queue the update for the Hub in the same transaction; returns the outbox row.

    `last_sequence` is the case's highest outbox sequence and `clocks` its SLA clocks, when the caller has read
    them already (a page of updates reads them for all its cases at once).
    """
    if last_sequence is None:
        last_sequence = s.scalar(select(func.max(HubUpdateRow.sequence)).where(HubUpdateRow.hub_ref == row.hub_ref))
    seq = (last_sequence or 0) + 1
    update_ = CaseUpdate(
        ref=row.hub_ref,
        status=status,
        sequence=seq,
        backoffice_ref=backoffice_ref,
        note=note,
        resolution=resolution,
        source=source,
        occurred_at=at,
    )
    outbox = HubUpdateRow(
        hub_ref=row.hub_ref,
        sequence=seq,
        status=status.value,
        payload=update_.model_dump(mode="json", exclude_none=True),
        created_at=utcnow(),
        attempts=0,
    )
    s.add(outbox)
    previous = row.status
    row.status = status.value
    row.status_at = at
    if previous != status.value:
        rt.sla.on_status(s, row.hub_ref, status, at, clocks=clocks)
    return outbox


def push_hub(rt: Runtime, hub_ref: str, pending: Sequence[HubUpdateRow] | None = None) -> Outcome:
    """Send a case's pending updates to the Hub in sequence order, stopping at the first that fails.

    `pending` is the case's unpushed outbox rows when the caller has just written them (so they need no read).
    """
    return push_cases(rt, [hub_ref], pending)[hub_ref]


def push_cases(
    rt: Runtime, hub_refs: Sequence[str], pending: Sequence[HubUpdateRow] | None = None
) -> dict[str, Outcome]:
    """Push several cases' pending updates, each case in sequence order, and record them in one transaction.

    A transient Hub failure stops the batch: that case and the untried ones come back as `retry`. A refused
    update is dead-lettered and the case's later updates still go. The Hub is idempotent on (ref, sequence),
    so updates pushed but not recorded (a crash before the commit) are simply sent again.
    """
    refs = list(dict.fromkeys(hub_refs))
    if pending is None:
        with session_scope(rt.url) as s:
            pending = s.scalars(
                select(HubUpdateRow)
                .where(HubUpdateRow.hub_ref.in_(refs), HubUpdateRow.pushed_at.is_(None))
                .order_by(HubUpdateRow.hub_ref, HubUpdateRow.sequence)
            ).all()
    by_ref: dict[str, list[HubUpdateRow]] = {ref: [] for ref in refs}
    for row in pending:
        by_ref.setdefault(row.hub_ref, []).append(row)
    outcomes: dict[str, Outcome] = {}
    sent: list[int] = []
    acks: dict[str, CaseUpdate] = {}  # ref -> its first pushed update carrying the back-office reference
    refused: list[tuple[HubUpdateRow, ConnectorError]] = []
    failed: tuple[HubUpdateRow, TransientError, float] | None = None
    for ref, rows in by_ref.items():
        if failed is not None:
            outcomes[ref] = Outcome("retry", f"not tried: the Hub failed on {failed[0].hub_ref}", retry_in=failed[2])
            continue
        count = 0
        for row in rows:
            upd = CaseUpdate.model_validate(row.payload)
            try:
                rt.hub.push_update(upd)
            except TransientError as exc:
                failed = (row, exc, retry.backoff(retry.HUB_RETRY, row.attempts + 1, exc.retry_after))
                log.warning("hub.push.retry", hub_ref=ref, sequence=row.sequence, error=str(exc)[:200])
                break
            except ConnectorError as exc:
                refused.append((row, exc))
                continue
            sent.append(row.id)
            count += 1
            # Any update carrying the back-office ref acknowledges it, not only DELIVERED: when a worker dies
            # between the back office taking a case and our link commit, the sync mends the link and the
            # first update the Hub gets is the back office's own (acknowledged, in progress...).
            if upd.backoffice_ref and ref not in acks:
                acks[ref] = upd
        # `failed` was None when this case started, so if it is set now, this case is the one that failed
        outcomes[ref] = (Outcome("retry", str(failed[1]), retry_in=failed[2]) if failed is not None
                         else Outcome("done", f"{count} sent"))
    if not (sent or refused or failed):
        return outcomes
    now = utcnow()
    with session_scope(rt.url) as s:
        if sent:
            s.execute(_PUSHED, {"ids": sent, "now": now})
        for row, exc in refused:
            s.execute(update(HubUpdateRow).where(HubUpdateRow.id == row.id).values(**_hub_refused(s, row, exc, now)))
        if failed is not None:
            row, exc, delay = failed
            s.execute(
                update(HubUpdateRow)
                .where(HubUpdateRow.id == row.id)
                .values(attempts=HubUpdateRow.attempts + 1, last_error=str(exc)[:2000],
                        next_attempt_at=now + timedelta(seconds=delay))
            )
        if acks:
            acked = s.scalars(_ACKNOWLEDGED, {"refs": list(acks)}).all()
            for ref in acked:
                upd = acks[ref]
                record_event(s, ref, "hub.acknowledged", sequence=upd.sequence, backoffice_ref=upd.backoffice_ref)
    return outcomes


# -- sync back ------------------------------------------------------------------------------------


def poll_connector(rt: Runtime, name: str) -> Outcome:
    """Pull one page of updates from a back office since its cursor and turn them into Hub updates."""
    conn = rt.connector(name)
    with session_scope(rt.url) as s:
        cursor = s.scalar(_CURSOR, {"name": name})
    throttle = retry.Throttle(rt.url, rt.config.connectors[name])
    try:
        with throttle.slot():
            throttle.pace(THROTTLE_WAIT_SECONDS)
            page = conn.updates_since(cursor, rt.settings.sync_page_size)
    except TransientError as exc:
        _release_lease(rt, name)
        log.warning("sync.retry", connector=name, error=str(exc)[:200])
        return Outcome("retry", str(exc))
    except ConnectorError as exc:
        _release_lease(rt, name)
        with session_scope(rt.url) as s:
            dead_letter(s, stage="sync", reason="refused", detail=str(exc), payload={"cursor": cursor}, connector=name)
        return Outcome("dead", str(exc))

    touched: list[str] = []
    try:
        with session_scope(rt.url) as s:
            known = _PageLookups.read(s, conn.name, page.updates, rt.sla)
            for upd in page.updates:
                ref = _take_update(rt, s, conn, upd, known)
                if ref:
                    touched.append(ref)
            # a statement, not the row's object: reading the object would flush the page's writes a first time
            moved = {"name": name, "cursor": page.cursor, "polled_at": utcnow()}
            if not s.execute(_CURSOR_MOVED, moved).rowcount:
                s.add(SyncCursorRow(connector=name, cursor=page.cursor, polled_at=moved["polled_at"]))
    except IntegrityError as exc:
        # a second poller took the same page first (a redelivered poll), or a delivery committed the link the page
        # was about to mend: nothing was applied twice, and the page is read again
        _release_lease(rt, name)
        log.warning("sync.concurrent", connector=name, error=str(exc.orig)[:200])
        return Outcome("retry", "another poller took this page")
    if page.updates:
        log.info("sync.page", connector=name, updates=len(page.updates), more=page.has_more)
    # the page is committed (with any newly raised jobs in the outbox): now send those to the Hub
    touched.extend(raise_pending(rt, name))
    return Outcome("done", f"{len(page.updates)} updates", push=sorted(set(touched)), more=page.has_more)


def _release_lease(rt: Runtime, name: str) -> None:
    with session_scope(rt.url) as s:
        s.execute(
            update(SyncCursorRow).where(SyncCursorRow.connector == name).values(lease_until=None, polled_at=utcnow())
        )


@dataclass
class _PageLookups:
    """What a page of updates needs from the store, read in three queries instead of three per update."""

    seen: set[str]  # update ids already taken
    links: dict[str, str]  # back-office ref -> Hub ref
    cases: dict[str, CaseRow]  # Hub ref -> case, for the linked jobs and the Hub refs the updates name
    sequences: dict[str, int] = field(default_factory=dict)  # Hub ref -> its last outbox sequence (0: none yet)
    clocks: dict[str, list[Any]] = field(default_factory=dict)  # Hub ref -> its SLA clocks

    @classmethod
    def read(cls, s: Session, connector: str, updates: Sequence[BackOfficeUpdate], sla: Any = None) -> _PageLookups:
        """The page's lookups; with the SLA engine, also its cases' outbox sequences and SLA clocks."""
        if not updates:
            return cls(set(), {}, {})
        ids = list({u.update_id for u in updates})
        seen = set(s.scalars(select(SeenUpdateRow.update_id).where(
            SeenUpdateRow.connector == connector, SeenUpdateRow.update_id.in_(ids))))
        bo_refs = list({u.backoffice_ref for u in updates})
        links = {bo: ref for bo, ref in s.execute(select(LinkRow.backoffice_ref, LinkRow.hub_ref).where(
            LinkRow.connector == connector, LinkRow.backoffice_ref.in_(bo_refs)))}
        refs = list({*links.values(), *(u.hub_ref for u in updates if u.hub_ref)})
        cases = {row.hub_ref: row for row in s.scalars(select(CaseRow).where(CaseRow.hub_ref.in_(refs)))}
        if sla is None or not cases:
            return cls(seen, links, cases)
        sequences = dict.fromkeys(cases, 0)
        for ref, last in s.execute(select(HubUpdateRow.hub_ref, func.max(HubUpdateRow.sequence))
                                   .where(HubUpdateRow.hub_ref.in_(list(cases))).group_by(HubUpdateRow.hub_ref)):
            sequences[ref] = last
        return cls(seen, links, cases, sequences, sla.clocks_for(s, list(cases)))

    def preloaded(self, hub_ref: str) -> dict[str, Any]:
        """`_set_status`'s `last_sequence` and `clocks` for a case, when the page read them up front."""
        if hub_ref not in self.sequences:
            return {}
        return {"last_sequence": self.sequences[hub_ref], "clocks": self.clocks.get(hub_ref, [])}

    def wrote(self, outbox: HubUpdateRow) -> None:
        """Note an update queued for a case, so the page's next one for it follows in sequence."""
        if outbox.hub_ref in self.sequences:
            self.sequences[outbox.hub_ref] = outbox.sequence


def _take_update(
    rt: Runtime, s: Session, conn: Connector, upd: BackOfficeUpdate, known: _PageLookups | None = None
) -> str | None:
    """Apply one back-office update once; returns the Hub ref whose outbox grew, if any.

    `known` is the page's lookups; each update taken is added to it, so a later update of the same page sees it.
    """
    if known is None:
        known = _PageLookups.read(s, conn.name, [upd])
    if upd.update_id in known.seen:
        return None
    hub_ref = known.links.get(upd.backoffice_ref)
    if hub_ref is None and upd.hub_ref:
        # The back office has the job but we hold no link: our delivery is still between the back office's
        # answer and its commit, or its worker died there. Record the delivery now, so the Hub hears
        # `delivered` before the job's own news; the delivery, when it gets there, finds it done.
        row = known.cases.get(upd.hub_ref)
        # only the instance the case was routed to can hold our delivery; a job elsewhere naming it is not ours
        if row is not None and row.connector in (None, conn.name):
            hub_ref = row.hub_ref
            s.add(LinkRow(hub_ref=hub_ref, connector=conn.name, backoffice_ref=upd.backoffice_ref))
            known.links[upd.backoffice_ref] = hub_ref
            if row.stage == "received":
                _record_found_delivery(rt, s, conn, row, upd, known)
    s.add(SeenUpdateRow(connector=conn.name, update_id=upd.update_id, hub_ref=hub_ref))
    known.seen.add(upd.update_id)
    if hub_ref is None:
        hub_ref = _raised_in_back_office(rt, s, conn, upd)
        if hub_ref is None:
            return None
    return _apply_update(rt, s, conn, hub_ref, upd, known.cases.get(hub_ref), known)


def _record_found_delivery(
    rt: Runtime, s: Session, conn: Connector, row: CaseRow, upd: BackOfficeUpdate, known: _PageLookups
) -> None:
    """Write what a finished delivery writes, for a case the sync found in the back office first."""
    try:
        version: str | None = rt.mapping_for(row.authority, row.service)[2].version
    except HubbridgeError:
        version = None  # the update's own translation will dead-letter with the reason
    outbox = _mark_delivered(
        rt,
        s,
        row,
        connector=conn.name,
        backoffice_ref=upd.backoffice_ref,
        mapping_version=version,
        attempts=row.attempts + 1,
        at=min(upd.occurred_at, utcnow()),
        found_by="sync",
        **known.preloaded(row.hub_ref),
    )
    known.wrote(outbox)


_OUR_STATUSES = frozenset({HubStatus.RECEIVED.value, HubStatus.ROUTED.value, HubStatus.DELIVERED.value})


def _apply_update(
    rt: Runtime,
    s: Session,
    conn: Connector,
    hub_ref: str,
    upd: BackOfficeUpdate,
    row: CaseRow | None = None,
    known: _PageLookups | None = None,
) -> str | None:
    """Translate one update of a linked job and queue it for the Hub after the case's earlier ones."""
    if row is None:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref))
    if row is None:
        return None
    try:
        _, _, mapping = rt.mapping_for(row.authority, row.service)
        tr = mapping.inbound(upd)
    except HubbridgeError as exc:
        dead_letter(
            s,
            stage="sync",
            reason=type(exc).__name__,
            detail=str(exc),
            hub_ref=hub_ref,
            payload={"update_id": upd.update_id, "status_code": upd.status_code, "backoffice_ref": upd.backoffice_ref},
            connector=conn.name,
        )
        return None
    record_event(
        s,
        hub_ref,
        "backoffice.update",
        connector=conn.name,
        update_id=upd.update_id,
        status_code=upd.status_code,
        hub_status=tr.status.value if tr.status else None,
    )
    if tr.status is None and not tr.note:
        return None
    # Only a back office's own earlier news is stale. Our statuses (routed, delivered) carry our clock, and a
    # job can live through several of its steps before a slow or retried delivery records `delivered`.
    if (row.status_at and row.status not in _OUR_STATUSES and upd.occurred_at < row.status_at
            and tr.status is not None):
        record_event(s, hub_ref, "backoffice.update.stale", update_id=upd.update_id)
        return None
    status = tr.status or HubStatus(row.status)
    # the page read its cases' sequences and clocks up front: no query here, so the page's writes go out together
    outbox = _set_status(
        rt,
        s,
        row,
        status,
        upd.occurred_at,
        backoffice_ref=upd.backoffice_ref,
        note=tr.note,
        resolution=tr.resolution,
        source=conn.name,
        **(known.preloaded(hub_ref) if known is not None else {}),
    )
    if known is not None:
        known.wrote(outbox)
    return hub_ref


# -- jobs raised in a back office ------------------------------------------------------------------
#
# A resident phoned the service area, so the back office has a job the Hub never sent. Its first
# update writes a row in the `raised_cases` outbox, in the same transaction as the update (and the
# sync cursor); later updates of the job queue on that row, in order. `raise_pending` then asks the
# Hub for a case, keyed on (connector instance, back-office ref) so that a retry or a second worker
# gets the same Hub case back, and in one transaction writes the case, its link and the queued
# updates into the Hub outbox. Connectors may offer `raised_details(update) -> dict` (partial Hub
# case fields: authority, customer, location, description, attributes) when their update feed does
# not carry the job's details; otherwise what the update's `raw` holds is used.


def _raised_in_back_office(rt: Runtime, s: Session, conn: Connector, upd: BackOfficeUpdate) -> str | None:
    """Keep an update of a job the Hub never sent; returns its Hub ref if the job is already a Hub case."""
    if upd.hub_ref:
        # it names a Hub case we never had (another system's, or typed by hand): not ours to raise again
        record_event(
            s,
            None,
            "backoffice.unlinked",
            connector=conn.name,
            backoffice_ref=upd.backoffice_ref,
            update_id=upd.update_id,
            names_hub_ref=upd.hub_ref,
        )
        return None
    now = utcnow()
    key = (RaisedCaseRow.connector == conn.name) & (RaisedCaseRow.backoffice_ref == upd.backoffice_ref)
    # An UPDATE first: it takes the row's lock (PostgreSQL) or the write lock (SQLite), so a raiser
    # finishing the row at the same moment cannot miss the update appended here.
    touched = s.execute(
        update(RaisedCaseRow).where(key).values(seen_at=now).execution_options(synchronize_session=False)
    ).rowcount
    if not touched:
        s.add(
            RaisedCaseRow(
                connector=conn.name,
                backoffice_ref=upd.backoffice_ref,
                state="pending",
                service_code=upd.service_code,
                updates=[_dump_update(upd)],
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                seen_at=now,
            )
        )
        record_event(
            s,
            None,
            "backoffice.raised",
            connector=conn.name,
            backoffice_ref=upd.backoffice_ref,
            update_id=upd.update_id,
            service_code=upd.service_code,
        )
        return None
    raised = s.scalar(select(RaisedCaseRow).where(key).execution_options(populate_existing=True))
    assert raised is not None
    if raised.state == "raised" and raised.hub_ref:
        return raised.hub_ref  # raised (and linked) since this poll began
    raised.updates = [*raised.updates, _dump_update(upd)]
    raised.service_code = raised.service_code or upd.service_code
    return None


def raise_pending(rt: Runtime, name: str, now: datetime | None = None, limit: int = RAISE_BATCH) -> list[str]:
    """Send the due back-office-raised jobs of one connector instance to the Hub; returns the new Hub refs."""
    now = now or utcnow()
    with session_scope(rt.url) as s:
        ids = s.scalars(
            select(RaisedCaseRow.id)
            .where(
                RaisedCaseRow.connector == name,
                RaisedCaseRow.state == "pending",
                RaisedCaseRow.next_attempt_at <= now,
            )
            .order_by(RaisedCaseRow.id)
            .limit(limit)
        ).all()
    refs: list[str] = []
    for rid in ids:
        out = raise_case(rt, rid, now)
        refs.extend(out.push)
        if out.kind == "retry":
            break  # the Hub is not answering: the others wait for the next poll too
    return refs


def raise_case(rt: Runtime, raised_id: int, now: datetime | None = None) -> Outcome:
    """Make one back-office-raised job a Hub case, exactly once, and queue its updates for it in order."""
    now = now or utcnow()
    with session_scope(rt.url) as s:
        claimed = s.execute(
            update(RaisedCaseRow)
            .where(
                RaisedCaseRow.id == raised_id,
                RaisedCaseRow.state == "pending",
                RaisedCaseRow.next_attempt_at <= now,
            )
            # a second raiser backs off while this one talks to the Hub (the Hub is idempotent anyway)
            .values(next_attempt_at=now + timedelta(seconds=_hub_call_seconds(rt)))
            .execution_options(synchronize_session=False)
        ).rowcount
        if not claimed:
            return Outcome("skipped", "raised by another worker or not due")
        raised = s.get(RaisedCaseRow, raised_id)
        assert raised is not None
        name, bo_ref, attempts = raised.connector, raised.backoffice_ref, raised.attempts
        first = _load_update(raised.updates[0]) if raised.updates else None
        service_code = raised.service_code
    if first is None:
        return _raise_failed(rt, raised_id, "no_update", "the outbox row holds no back-office update", bo_ref, name)
    conn = rt.connector(name)
    bound = log.bind(connector=name, backoffice_ref=bo_ref)
    try:
        route, case = _raised_case(rt, conn, first, service_code)
        hub_ref = rt.hub.create_case(case, bo_ref, name)
    except TransientError as exc:
        delay = retry.backoff(retry.HUB_RETRY, attempts + 1, exc.retry_after)
        with session_scope(rt.url) as s:
            s.execute(
                update(RaisedCaseRow)
                .where(RaisedCaseRow.id == raised_id, RaisedCaseRow.state == "pending")
                .values(
                    attempts=RaisedCaseRow.attempts + 1,
                    last_error=str(exc)[:2000],
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
                .execution_options(synchronize_session=False)
            )
        bound.warning("raise.retry", error=str(exc)[:200], in_seconds=round(delay, 1))
        return Outcome("retry", str(exc), retry_in=delay)
    except (RoutingError, MappingError) as exc:
        return _raise_failed(rt, raised_id, "unroutable", str(exc), bo_ref, name)
    except ConnectorError as exc:
        return _raise_failed(rt, raised_id, "hub_refused", str(exc), bo_ref, name)
    except HubbridgeError as exc:  # a mapping file that never loaded
        return _raise_failed(rt, raised_id, "mapping_invalid", str(exc), bo_ref, name)

    with session_scope(rt.url) as s:
        # the write first, again, so an update appended by a concurrent poll is either in the list read
        # below or arrives after the link exists
        done = s.execute(
            update(RaisedCaseRow)
            .where(RaisedCaseRow.id == raised_id, RaisedCaseRow.state == "pending")
            .values(state="raised", hub_ref=hub_ref, raised_at=utcnow(), next_attempt_at=None, last_error=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not done:
            return Outcome("skipped", "raised concurrently")
        raised = s.scalar(
            select(RaisedCaseRow).where(RaisedCaseRow.id == raised_id).execution_options(populate_existing=True)
        )
        assert raised is not None
        if s.scalar(select(CaseRow.id).where(CaseRow.hub_ref == hub_ref)) is not None:
            # the Hub answered with a ref we already hold for another case: never merge two cases
            s.rollback()
            return _raise_failed(
                rt, raised_id, "hub_ref_clash", f"the Hub gave {hub_ref}, a ref already in the store", bo_ref, name
            )
        pending = [_load_update(d) for d in raised.updates]
        created = case.created_at
        s.add(
            CaseRow(
                hub_ref=hub_ref,
                authority=case.authority,
                service=case.service,
                priority=case.priority.value,
                origin="backoffice",
                # the back office has had the job since it was raised; its updates take it on from there
                status=HubStatus.DELIVERED.value,
                status_at=created,
                stage="acknowledged",
                payload=case.model_copy(update={"ref": hub_ref}).dump(),
                connector=name,
                received_at=now,
                updated_at=now,
            )
        )
        s.flush()
        s.add(LinkRow(hub_ref=hub_ref, connector=name, backoffice_ref=bo_ref, created_at=now))
        record_event(s, hub_ref, "raised_on_hub", connector=name, backoffice_ref=bo_ref, updates=len(pending))
        rt.sla.start(
            s,
            hub_ref,
            case.service,
            case.authority,
            case.priority.value,
            created,
            policy=route.sla_policy,
            escalation=route.escalation,
        )
        raised.updates = []
        for upd in pending:
            _apply_update(rt, s, conn, hub_ref, upd)
            s.execute(
                update(SeenUpdateRow)
                .where(SeenUpdateRow.connector == name, SeenUpdateRow.update_id == upd.update_id)
                .values(hub_ref=hub_ref)
                .execution_options(synchronize_session=False)
            )
    bound.info("case.raised_on_hub", hub_ref=hub_ref, updates=len(pending))
    return Outcome("done", hub_ref, push=[hub_ref])


def _hub_call_seconds(rt: Runtime) -> float:
    t = rt.config.hub.timeouts
    return 2 * (t.connect + t.read) + 30.0


def _raise_failed(rt: Runtime, raised_id: int, reason: str, detail: str, bo_ref: str, name: str) -> Outcome:
    with session_scope(rt.url) as s:
        raised = s.get(RaisedCaseRow, raised_id)
        assert raised is not None
        raised.state = "dead"
        raised.next_attempt_at = None
        raised.last_error = detail[:2000]
        dead_letter(
            s,
            stage="raise",
            reason=reason,
            detail=detail,
            payload={"connector": name, "backoffice_ref": bo_ref, "updates": raised.updates},
            connector=name,
        )
    return Outcome("dead", detail)


def _raised_case(
    rt: Runtime, conn: Connector, first: BackOfficeUpdate, service_code: str | None
) -> tuple[Any, HubCase]:
    """The Hub case for a job raised in `conn`'s back office, and the route its service takes there."""
    details_of = getattr(conn, "raised_details", None)
    details: dict[str, Any] = dict(details_of(first) or {}) if callable(details_of) else {}
    found = _details_from_raw(first.raw)
    route = _raised_route(rt, conn, service_code, details.get("authority"), first.backoffice_ref)
    # the Hub needs a name to file the case under; the back office may not have passed one on
    fallback = {"name": f"Caller to {conn.name} (no name passed on)"}
    customer = (
        _valid(Customer, details.get("customer"), fallback)
        or _valid(Customer, found["customer"], fallback)
        or Customer(**fallback)
    )
    location = _valid(Location, details.get("location")) or _valid(Location, found["location"]) or Location()
    what = details.get("description") or found["description"] or first.note or "no description passed on"
    attributes = {
        **{k: v for k, v in (details.get("attributes") or {}).items() if isinstance(v, str | int | float | bool)},
        "raised_in": conn.name,
        "backoffice_ref": first.backoffice_ref,
        "backoffice_service_code": service_code,
    }
    case = HubCase(
        ref=f"{rt.config.hub.ref_prefix}-{first.occurred_at.year:04d}-000000",  # the Hub gives the real one
        authority=route.authority,
        service=route.service,
        channel=Channel.BACK_OFFICE,
        customer=customer,
        location=location,
        description=f"{what} (raised in {conn.name} as {first.backoffice_ref})"[:4000],
        attributes=attributes,
        created_at=first.occurred_at,
    )
    return route, case


def _raised_route(rt: Runtime, conn: Connector, service_code: str | None, authority: str | None, bo_ref: str) -> Any:
    """The one route of `conn` whose mapping covers the job's back-office service code (and authority, if known)."""
    candidates = []
    for route in rt.config.routes_for_connector(conn.name):
        mapping = rt.mappings.get(route.mapping_path, conn.target_fields())
        if service_code is not None and service_code in mapping.service_codes:
            candidates.append(route)
    if not candidates:
        raise RoutingError(
            f"job {bo_ref} raised in {conn.name} has back-office service code {service_code!r}, "
            "which no mapping routed to this instance covers",
            where=str(rt.config.config_dir / "routes.yaml"),
            hint="add the code to inbound.service_codes of the service's mapping, then replay the dead letter",
        )
    if authority:
        candidates = [r for r in candidates if r.authority == authority]
    if len(candidates) != 1:
        pairs = ", ".join(sorted(f"{r.authority}/{r.service}" for r in candidates)) or "none"
        raise RoutingError(
            f"job {bo_ref} raised in {conn.name} (code {service_code}) cannot be told apart between: {pairs}",
            where=conn.name,
            hint="the connector should give the job's authority through raised_details(); then replay",
        )
    return candidates[0]


_KEY_CHARS = re.compile(r"[^a-z]")
_NAME_KEYS = ("customername", "reportername", "callername", "contactname", "customerfullname")
_FIRST_KEYS = ("firstname", "forename")
_LAST_KEYS = ("lastname", "surname")


def _details_from_raw(raw: Any) -> dict[str, Any]:
    """Customer, location and description found in an update's raw record, by the usual field names."""
    flat: dict[str, Any] = {}

    def walk(obj: Any, prefix: str, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                key = _KEY_CHARS.sub("", str(k).lower())
                if isinstance(v, dict | list):
                    walk(v, prefix + key, depth + 1)
                elif v not in (None, ""):
                    flat.setdefault(prefix + key, v)
                    flat.setdefault(key, v)
        elif isinstance(obj, list):
            for item in obj[:20]:
                walk(item, prefix, depth + 1)

    walk(raw, "", 0)

    def first(*keys: str) -> Any:
        return next((flat[k] for k in keys if k in flat), None)

    name = first(*_NAME_KEYS)
    if name is None:
        parts = [first(*_FIRST_KEYS), first(*_LAST_KEYS)]
        name = " ".join(str(p) for p in parts if p) or None
    customer: dict[str, Any] = {
        "name": str(name) if name else None,
        "phone": first("phone", "telephone", "customerphone"),
        "email": first("email", "customeremail", "emailaddress"),
    }
    location: dict[str, Any] = {
        "uprn": first("uprn"),
        "usrn": first("usrn"),
        "lat": first("lat", "latitude"),
        "lon": first("long", "lon", "longitude"),
        "description": first("addressstring", "addresstext", "sitedescription", "locationdescription"),
    }
    return {
        "customer": {k: (str(v) if k != "name" else v) for k, v in customer.items() if v is not None},
        "location": {k: str(v) for k, v in location.items() if v is not None},
        "description": first("description", "notes", "details"),
    }


def _valid(model: Any, data: Any, defaults: dict[str, Any] | None = None) -> Any:
    """`model` from `data` over `defaults`, dropping fields that fail; None if nothing of `data` is left."""
    if not isinstance(data, dict) or not data:
        return None
    merged = {**(defaults or {}), **data}
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors(include_url=False) if e["loc"]}
    kept = {k: v for k, v in data.items() if k not in bad}
    if not kept:
        return None
    try:
        return model.model_validate({**(defaults or {}), **kept})
    except ValidationError:
        return None


def _dump_update(upd: BackOfficeUpdate) -> dict[str, Any]:
    data = {
        "backoffice_ref": upd.backoffice_ref,
        "update_id": upd.update_id,
        "occurred_at": upd.occurred_at.isoformat(),
        "status_code": upd.status_code,
        "note": upd.note,
        "hub_ref": upd.hub_ref,
        "service_code": upd.service_code,
        "raw": upd.raw,
    }
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def _load_update(data: dict[str, Any]) -> BackOfficeUpdate:
    return BackOfficeUpdate(
        backoffice_ref=data["backoffice_ref"],
        update_id=data["update_id"],
        occurred_at=datetime.fromisoformat(data["occurred_at"]),
        status_code=data.get("status_code"),
        note=data.get("note"),
        hub_ref=data.get("hub_ref"),
        service_code=data.get("service_code"),
        raw=data.get("raw") or {},
    )


# -- beat: reconcile ------------------------------------------------------------------------------


@dataclass
class Sweep:
    deliver: list[str] = field(default_factory=list)
    push: list[str] = field(default_factory=list)
    poll: list[str] = field(default_factory=list)
    sla: Any = None


def reconcile(rt: Runtime, now: datetime | None = None, limit: int = 5000) -> Sweep:
    """Find work whose message was lost or whose retry time has come, and hand it back to the queues."""
    now = now or utcnow()
    lease = now + timedelta(seconds=rt.settings.reconcile_after_seconds)
    out = Sweep()
    with session_scope(rt.url) as s:
        refs = s.scalars(
            select(CaseRow.hub_ref)
            .where(CaseRow.stage == "received", CaseRow.next_attempt_at <= now)
            .order_by(CaseRow.queue_priority.desc(), CaseRow.next_attempt_at)
            .limit(limit)
        ).all()
        if refs:
            s.execute(update(CaseRow).where(CaseRow.hub_ref.in_(refs)).values(next_attempt_at=lease))
        out.deliver = list(refs)
        stale = now - timedelta(seconds=rt.settings.reconcile_after_seconds)
        prefs = s.scalars(
            select(HubUpdateRow.hub_ref)
            .where(
                HubUpdateRow.pushed_at.is_(None),
                (
                    (HubUpdateRow.next_attempt_at.is_(None) & (HubUpdateRow.created_at <= stale))
                    | (HubUpdateRow.next_attempt_at <= now)
                ),
            )
            .distinct()
            .limit(limit)
        ).all()
        if prefs:
            s.execute(
                update(HubUpdateRow)
                .where(HubUpdateRow.hub_ref.in_(prefs), HubUpdateRow.pushed_at.is_(None))
                .values(next_attempt_at=lease)
            )
        out.push = list(prefs)
        out.sla = rt.sla.sweep(s, now)
        out.push = sorted(set(out.push) | set(getattr(out.sla, "hub_refs", []) or []))
    return out


def _phase(name: str, every: float) -> float:
    return zlib.crc32(name.encode()) / 2**32 * every


def poll_slot(name: str, at: datetime, every: float) -> int:
    """Which of an instance's poll intervals `at` falls in.

    Each instance's intervals start at its own offset (from its name), so instances polled every 60 s do not
    all land on the workers on the same beat tick: measured, that herd stalled every case arriving while it ran.
    """
    return math.floor((at.timestamp() - _phase(name, every)) / every)


POLL_SLACK_SECONDS = 0.05
"""A poll planned ahead runs this long after its interval starts, so a timer firing a hair early still lands in it."""


def due_polls(rt: Runtime, now: datetime | None = None, within: float = 0.0) -> dict[str, float]:
    """Connector instances to poll (one poll per interval, at the instance's own offset) that no poller holds.

    Each maps to the seconds until its poll should run: 0 for an instance already due, or, for one whose next
    interval starts within `within` seconds (the beat's period), the wait until then. So the polls that fall
    between two beat ticks run spread out at their own offsets rather than together on the tick.
    """
    now = now or utcnow()
    names = sorted({r.connector.name for r in rt.config.routes.values()})
    due: dict[str, float] = {}
    with session_scope(rt.url) as s:
        cursors = {c.connector: c for c in s.scalars(select(SyncCursorRow).where(SyncCursorRow.connector.in_(names)))}
        for name in names:
            inst = rt.config.connectors[name]
            every = inst.poll_seconds
            cur = cursors.get(name)
            if cur is None:
                cur = SyncCursorRow(connector=name)
                s.add(cur)
            if cur.lease_until and cur.lease_until > now:
                continue
            done = poll_slot(name, cur.polled_at, every) if cur.polled_at else None
            if done is None or done < poll_slot(name, now, every):
                wait = 0.0
            else:
                upcoming = done + 1
                starts = upcoming * every + _phase(name, every) + POLL_SLACK_SECONDS - now.timestamp()
                if starts >= within:
                    continue
                wait = max(starts, 0.0)
            cur.lease_until = now + timedelta(seconds=wait + max(60.0, inst.timeouts.read * 2))
            due[name] = round(wait, 3)
    return due


# -- pushed updates (webhooks) --------------------------------------------------------------------


def take_update(rt: Runtime, connector_name: str, update: BackOfficeUpdate) -> str | None:
    """Take one pushed back-office update through the same once-only, ordered path as polled ones.

    Returns the Hub ref whose outbox grew, if any; raises IntegrityError if a poller took it meanwhile.
    """
    conn = rt.connector(connector_name)
    with session_scope(rt.url) as s:
        return _take_update(rt, s, conn, update)
