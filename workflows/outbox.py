"""The Hub outbox: a status change queues its update in the same transaction, and pushes send them in order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from hubbridge.case import CaseUpdate, HubStatus
from hubbridge.errors import (
    ConnectorError,
    TransientError,
)
from hubbridge.store import (
    CaseRow,
    HubUpdateRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows import metrics, retry
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.runtime import Outcome, OutcomeKind, Runtime

log = structlog.get_logger(__name__)

# built once: see delivery.py
_CASES = CaseRow.__table__
_OUTBOX = HubUpdateRow.__table__

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


def set_status(
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


def hub_refused(s: Session, outbox: HubUpdateRow, exc: Exception, now: datetime) -> dict[str, Any]:
    """Dead-letter an update the Hub refused for good; returns what its outbox row becomes (done, with the reason)."""
    dead_letter(s, stage="push", reason="hub_refused", detail=str(exc), payload=outbox.payload, hub_ref=outbox.hub_ref)
    return {"pushed_at": now, "last_error": f"dead-lettered: {exc}"[:2000]}


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
    took: list[metrics.PushTiming] = []
    for ref, rows in by_ref.items():
        if failed is not None:
            untried = f"not tried: the Hub failed on {failed[0].hub_ref}"
            outcomes[ref] = Outcome(OutcomeKind.RETRY, untried, retry_in=failed[2])
            continue
        count = 0
        for row in rows:
            upd = CaseUpdate.model_validate(row.payload)
            try:
                metrics.timed_push(rt.hub.push_update, upd, took)
            except TransientError as exc:
                failed = (row, exc, retry.hub_backoff(row.attempts + 1, exc.retry_after))
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
        outcomes[ref] = (Outcome(OutcomeKind.RETRY, str(failed[1]), retry_in=failed[2]) if failed is not None
                         else Outcome(OutcomeKind.DONE, f"{count} sent"))
    if not (sent or refused or failed):
        return outcomes
    now = utcnow()
    with session_scope(rt.url) as s:
        metrics.observe_pushes(took, metrics.case_labels(s, took))
        if sent:
            s.execute(_PUSHED, {"ids": sent, "now": now})
        for row, exc in refused:
            s.execute(update(HubUpdateRow).where(HubUpdateRow.id == row.id).values(**hub_refused(s, row, exc, now)))
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
