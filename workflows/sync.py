"""Sync back: pull (or take pushed) back-office updates once each, in order, and queue them for the Hub."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hubbridge.case import HubStatus
from hubbridge.connectors.base import BackOfficeUpdate, Connector
from hubbridge.errors import (
    ConnectorError,
    HubbridgeError,
    TransientError,
)
from hubbridge.store import (
    CaseRow,
    HubUpdateRow,
    LinkRow,
    SeenUpdateRow,
    SyncCursorRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.delivery import _mark_delivered
from hubbridge.workflows.outbox import set_status
from hubbridge.workflows.raised import _raised_in_back_office, raise_pending
from hubbridge.workflows.ratelimit import THROTTLE_WAIT_SECONDS, Throttle
from hubbridge.workflows.runtime import Outcome, OutcomeKind, Runtime

if TYPE_CHECKING:
    from hubbridge.sla.engine import SlaEngine
    from hubbridge.sla.tables import SlaClockRow

log = structlog.get_logger(__name__)

# built once: see delivery.py
_CURSOR = select(SyncCursorRow.cursor).where(SyncCursorRow.connector == bindparam("name"))
_CURSOR_MOVED = (
    update(SyncCursorRow.__table__)
    .where(SyncCursorRow.__table__.c.connector == bindparam("name"))
    .values(cursor=bindparam("cursor"), polled_at=bindparam("polled_at"), lease_until=None)
)


def poll_connector(rt: Runtime, name: str) -> Outcome:
    """Pull one page of updates from a back office since its cursor and turn them into Hub updates."""
    conn = rt.connector(name)
    with session_scope(rt.url) as s:
        cursor = s.scalar(_CURSOR, {"name": name})
    throttle = Throttle(rt.url, rt.config.connectors[name])
    try:
        with throttle.slot():
            throttle.pace(THROTTLE_WAIT_SECONDS)
            page = conn.updates_since(cursor, rt.settings.sync_page_size)
    except TransientError as exc:
        _release_lease(rt, name)
        log.warning("sync.retry", connector=name, error=str(exc)[:200])
        return Outcome(OutcomeKind.RETRY, str(exc))
    except ConnectorError as exc:
        _release_lease(rt, name)
        with session_scope(rt.url) as s:
            dead_letter(s, stage="sync", reason="refused", detail=str(exc), payload={"cursor": cursor}, connector=name)
        return Outcome(OutcomeKind.DEAD, str(exc))

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
        return Outcome(OutcomeKind.RETRY, "another poller took this page")
    if page.updates:
        log.info("sync.page", connector=name, updates=len(page.updates), more=page.has_more)
    # the page is committed (with any newly raised jobs in the outbox): now send those to the Hub
    touched.extend(raise_pending(rt, name))
    return Outcome(OutcomeKind.DONE, f"{len(page.updates)} updates", push=sorted(set(touched)), more=page.has_more)


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
    clocks: dict[str, list[SlaClockRow]] = field(default_factory=dict)  # Hub ref -> its SLA clocks

    @classmethod
    def read(cls, s: Session, connector: str, updates: Sequence[BackOfficeUpdate],
             sla: SlaEngine | None = None) -> _PageLookups:
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
        """`set_status`'s `last_sequence` and `clocks` for a case, when the page read them up front."""
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


def _own_followup(note: str | None, hub_ref: str) -> bool:
    """Whether a back-office note is one of our follow-ups read back: connectors head them with their key."""
    return bool(note) and (note.startswith(f"[{hub_ref}/") or note.startswith(f"[Hub {hub_ref}/"))  # type: ignore[union-attr]


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
    if _own_followup(upd.note, hub_ref) and (tr.status is None or tr.status.value == row.status):
        # our own follow-up (its key heads the note) read back from the back office: the Hub said it first
        record_event(s, hub_ref, "backoffice.update.own_followup", update_id=upd.update_id)
        return None
    # Only a back office's own earlier news is stale. Our statuses (routed, delivered) carry our clock, and a
    # job can live through several of its steps before a slow or retried delivery records `delivered`.
    if (row.status_at and row.status not in _OUR_STATUSES and upd.occurred_at < row.status_at
            and tr.status is not None):
        record_event(s, hub_ref, "backoffice.update.stale", update_id=upd.update_id)
        return None
    status = tr.status or HubStatus(row.status)
    # the page read its cases' sequences and clocks up front: no query here, so the page's writes go out together
    outbox = set_status(
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



def take_update(rt: Runtime, connector_name: str, update: BackOfficeUpdate) -> str | None:
    """Take one pushed back-office update through the same once-only, ordered path as polled ones.

    Returns the Hub ref whose outbox grew, if any; raises IntegrityError if a poller took it meanwhile.
    """
    conn = rt.connector(connector_name)
    with session_scope(rt.url) as s:
        return _take_update(rt, s, conn, update)
