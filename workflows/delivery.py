"""Delivery: translate one case and hand it to its back office exactly once, then tell the Hub."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from hubbridge.case import CaseUpdate, HubCase, HubStatus
from hubbridge.connectors.base import CreateResult, Delivery
from hubbridge.errors import (
    ConnectorError,
    HubbridgeError,
    MappingError,
    OutcomeUnknown,
    RoutingError,
    StoreError,
    TransientError,
)
from hubbridge.log import bind_case
from hubbridge.store import (
    CaseRow,
    HubUpdateRow,
    LinkRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows import metrics, retry
from hubbridge.workflows.circuit import CallFailed, CircuitBreaker, call_back_office
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.outbox import hub_refused, set_status
from hubbridge.workflows.ratelimit import Throttle
from hubbridge.workflows.runtime import Outcome, OutcomeKind, Runtime

log = structlog.get_logger(__name__)

# The hot path's statements are built once, here: building a SQLAlchemy statement (and its cache key) costs more
# CPU than PostgreSQL spends running it. Updates go to the tables, not through the ORM's bulk-update machinery,
# which synchronises the session's objects these sessions never hold.
_CASES = CaseRow.__table__

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

def deliver_case(rt: Runtime, hub_ref: str, *, tell_hub: bool = True) -> Outcome:
    """Translate and deliver one case to its back office, exactly once, and tell the Hub its back-office reference.

    With `tell_hub`, the Hub's `delivered` update is sent as soon as the back office answers and recorded in the
    delivery's own commit; otherwise (or when the Hub cannot take it now) it is left in the outbox for a push.
    """
    now = utcnow()
    with session_scope(rt.url) as s:
        found = s.execute(_CASE_TO_CLAIM, {"ref": hub_ref}).first()
        if found is None:
            return Outcome(OutcomeKind.SKIPPED, "unknown case")
        # unknown_outcome still set means an earlier claim's worker never reported back (killed mid-call)
        case_id, stage, attempts, unknown, payload, connector, last_sequence = found
        if stage != "received":
            return Outcome(OutcomeKind.SKIPPED, f"already {stage}")
        case = HubCase.model_validate(payload)
        bind_case(hub_ref, payload)  # its customer values are redacted in every line below, mapping errors too
        # Claim the case atomically: a second copy of the message (a redelivery, a reconcile) backs off.
        claimed = s.execute(_CLAIM, {
            "case_id": case_id,
            "now": now,
            "until": now + timedelta(seconds=_claim_seconds(rt, connector)),
            "next": now + timedelta(seconds=rt.settings.reconcile_after_seconds),
        }).rowcount
        if not claimed:
            return Outcome(OutcomeKind.SKIPPED, "claimed by another worker")

    log.debug("deliver.start", hub_ref=hub_ref)
    try:
        route, conn, mapping = rt.mapping_for(case.authority, case.service)
        translation = mapping.outbound(case)
    except (RoutingError, MappingError) as exc:
        return _give_up(rt, case, "translate", type(exc).__name__, str(exc))
    except HubbridgeError as exc:  # a mapping file that never loaded (ConfigErrors)
        return _give_up(rt, case, "translate", "mapping_invalid", str(exc))

    delivery = Delivery(
        hub_ref=case.ref,
        authority=case.authority,
        service=case.service,
        payload=translation.payload,
        mapping_version=mapping.version,
        known_new=True,  # created only once the claim's bookkeeping, or find, says there is no job yet
    )
    took: list[float] = []

    def calls(pace: Callable[[], None]) -> CreateResult:
        began = time.perf_counter()
        result = None
        if unknown or attempts > 0:
            pace()
            result = conn.find(case.ref, delivery)  # an earlier attempt may have landed: never create twice
        if result is None:
            # a refusal here leaves nothing half done: there is no job yet
            pace()
            result = conn.create(delivery)
        took.append(time.perf_counter() - began)
        return result

    got = call_back_office(CircuitBreaker(rt.url, route.connector), Throttle(rt.url, route.connector), calls)
    if isinstance(got, CallFailed):
        exc = got.exc
        if got.retry:
            return _retry_later(rt, case, cast(TransientError, exc), route.connector, unknown=got.unknown,
                                count_attempt=got.count_attempt)
        if isinstance(exc, OutcomeUnknown):
            listed = ", ".join(exc.candidates) or "none found"
            return _give_up(rt, case, "deliver", got.reason, f"{exc} (candidate back-office jobs: {listed})",
                            connector=route.connector.name)
        return _give_up(rt, case, "deliver", got.reason, str(exc), connector=route.connector.name)
    result, call_seconds = got, took[0]

    now = utcnow()
    told: _Told | None = None
    if tell_hub and not last_sequence:
        # Tell the Hub now, before the commit that records the delivery (not after it, recorded in a third
        # transaction): a crash in between leaves the case claimed, and its retry finds the job and sends the same
        # (ref, sequence), which the Hub already has. A case with earlier updates leaves this one to the push,
        # which sends them in order.
        told = _tell_hub(rt, _delivered_update(hub_ref, 1, conn.name, result.backoffice_ref, now),
                         (conn.name, case.service, case.authority))
    with session_scope(rt.url) as s:
        found = s.execute(_CASE_DELIVERED, {"ref": hub_ref, "connector": conn.name}).first()
        if found is None or found[0].stage != "received":
            return Outcome(OutcomeKind.SKIPPED, "delivered concurrently")
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
    metrics.delivered(conn.name, case.service, case.authority, call_seconds, row.received_at)
    if told is not None:
        # sent (or dead-lettered) with the delivery; a Hub that failed gets a push task, which backs off
        return Outcome(OutcomeKind.DONE, result.backoffice_ref, push=[] if told.settled else [hub_ref])
    # the case's first update is all it has to push: hand it over so the push need not read it back
    first = [outbox] if outbox.sequence == 1 else []
    return Outcome(OutcomeKind.DONE, result.backoffice_ref, push=[hub_ref], updates=first)


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
            for column, value in hub_refused(s, outbox, self.error, now).items():
                setattr(outbox, column, value)
        else:
            retry_after = self.error.retry_after if isinstance(self.error, TransientError) else None
            outbox.attempts = 1
            outbox.last_error = str(self.error)[:2000]
            outbox.next_attempt_at = now + timedelta(seconds=retry.hub_backoff(1, retry_after))




def _tell_hub(rt: Runtime, upd: CaseUpdate, labels: tuple[str, str, str]) -> _Told:
    try:
        metrics.push_observed(rt.hub.push_update, upd, labels)
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
    outbox = set_status(
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
    if row is None:
        raise StoreError(f"case {hub_ref} vanished while claimed")
    return row


def _retry_later(
    rt: Runtime, case: HubCase, exc: TransientError, instance: Any, *, unknown: bool = False, count_attempt: bool = True
) -> Outcome:
    with session_scope(rt.url) as s:
        row = _claimed_case(s, case.ref)
        if row.stage != "received":
            return Outcome(OutcomeKind.SKIPPED, f"already {row.stage}")
        if count_attempt:
            row.attempts += 1
        # A refused connection sent nothing; any other fault may have reached the back office.
        row.unknown_outcome = unknown or (row.unknown_outcome and count_attempt)
        row.claimed_until = None
        row.last_error = str(exc)[:2000]
        if count_attempt and retry.exhausted(instance.retry, row.attempts):
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
            return Outcome(OutcomeKind.DEAD, str(exc))
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
    metrics.DELIVERY_RETRIES.labels(instance.name, case.service, case.authority).inc()
    return Outcome(OutcomeKind.RETRY, str(exc), retry_in=delay)


def _claim_seconds(rt: Runtime, connector: str | None) -> float:
    inst = rt.config.connectors.get(connector or "")
    per_call = (inst.timeouts.connect + inst.timeouts.read) if inst else 60.0
    return 2 * per_call + 30.0


def _give_up(rt: Runtime, case: HubCase, stage: str, reason: str, detail: str, connector: str | None = None) -> Outcome:
    with session_scope(rt.url) as s:
        row = _claimed_case(s, case.ref)
        if row.stage != "received":
            return Outcome(OutcomeKind.SKIPPED, f"already {row.stage}")
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
    return Outcome(OutcomeKind.DEAD, detail)
