"""FixMyStreet's servicerequestupdates: GET reads the Hub updates of a client's requests, POST makes follow-ups."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from hubbridge.case import FollowUpKind, HubStatus
from hubbridge.store import CaseRow, EventRow, HubUpdateRow, session_scope, utcnow
from hubbridge.workflows.open311_door.catalogue import DoorConfig, client_of
from hubbridge.workflows.open311_door.service_requests import _CLOSED, _attachment, _name
from hubbridge.workflows.open311_door.tables import Open311RequestRow
from hubbridge.workflows.open311_door.wire import MAX_LIST, GeoReportError, parse_w3c, w3c

if TYPE_CHECKING:
    from hubbridge.workflows.runtime import Runtime

log = structlog.get_logger(__name__)

FMS_STATUS = {
    HubStatus.RECEIVED: "open", HubStatus.ROUTED: "open", HubStatus.DELIVERED: "open",
    HubStatus.ACKNOWLEDGED: "open", HubStatus.IN_PROGRESS: "in_progress",
    HubStatus.AWAITING_CUSTOMER: "investigating", HubStatus.RESOLVED: "fixed", HubStatus.CLOSED: "closed",
    HubStatus.REJECTED: "not_councils_responsibility", HubStatus.CANCELLED: "closed",
}
"""Hub status -> FixMyStreet's extended update status (what its `map_state` reads)."""


def _status_codes(s: Session, rows: list[HubUpdateRow]) -> dict[int, str]:
    """Each outbox row's back-office status code, from the `backoffice.update` event written with it."""
    refs = list({r.hub_ref for r in rows})
    events: dict[str, list[EventRow]] = {}
    for ev in s.scalars(select(EventRow).where(EventRow.hub_ref.in_(refs), EventRow.kind == "backoffice.update")
                        .order_by(EventRow.id)):
        events.setdefault(ev.hub_ref or "", []).append(ev)
    out: dict[int, str] = {}
    used: set[int] = set()
    for row in sorted(rows, key=lambda r: r.id):
        # the event is recorded just before the outbox row, in the same transaction
        fits = [e for e in events.get(row.hub_ref, []) if e.id not in used and e.at <= row.created_at
                and (e.detail or {}).get("hub_status") == row.status]
        if fits and (fits[-1].detail or {}).get("status_code"):
            used.add(fits[-1].id)
            out[row.id] = str(fits[-1].detail["status_code"])
    return out


def get_updates(rt: Runtime, conf: DoorConfig, params: dict[str, str]) -> list[dict[str, Any]]:
    """The Hub updates of this client's requests learned in [start_date, end_date], in the order they came."""
    reader = client_of(conf, params)
    assert reader is not None
    end = parse_w3c(params["end_date"], "end_date") if params.get("end_date") else utcnow()
    start = parse_w3c(params["start_date"], "start_date") if params.get("start_date") else end - timedelta(days=1)
    # windowed on when hubbridge learned of each update, not on its back-office time: an update learned late
    # still falls in the next window, where a window on its own time would skip it
    mine = select(Open311RequestRow.hub_ref).where(Open311RequestRow.client == reader.name)
    q = (select(HubUpdateRow).where(HubUpdateRow.hub_ref.in_(mine), HubUpdateRow.created_at >= start,
                                    HubUpdateRow.created_at <= end + timedelta(seconds=1))
         .order_by(HubUpdateRow.id).limit(MAX_LIST))
    with session_scope(rt.url) as s:
        rows = list(s.scalars(q))
        codes = _status_codes(s, rows) if rows else {}
    out = []
    for row in rows:
        p = row.payload
        item: dict[str, Any] = {
            "update_id": f"{row.hub_ref}.{row.sequence}",
            "service_request_id": row.hub_ref,
            "status": FMS_STATUS.get(HubStatus(row.status), "open"),
            "updated_datetime": w3c(datetime.fromisoformat(p["occurred_at"])) if p.get("occurred_at") else
            w3c(row.created_at),
            "description": p.get("resolution") or p.get("note") or "",
            "media_url": "",
        }
        if row.id in codes:
            item["external_status_code"] = codes[row.id]
        out.append(item)
    return out


def post_update(rt: Runtime, conf: DoorConfig, params: dict[str, str], enqueue: bool = False) -> list[dict[str, Any]]:
    """A client's own update on its request becomes a Hub follow-up (note, evidence, cancel or reopen)."""
    client = client_of(conf, params)
    assert client is not None
    for name in ("service_request_id", "update_id", "status", "updated_datetime", "description"):
        if not params.get(name, "").strip():
            raise GeoReportError(400, f"{name} was not provided")
    ref = params["service_request_id"].strip()
    with session_scope(rt.url) as s:
        mine = s.scalar(select(Open311RequestRow.id).where(Open311RequestRow.client == client.name,
                                                           Open311RequestRow.hub_ref == ref))
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref)) if mine else None
    if case is None:
        raise GeoReportError(404, f"service_request_id {ref} was not found")
    status = params["status"].strip().upper()
    closed = case.status in _CLOSED
    occurred = parse_w3c(params["updated_datetime"], "updated_datetime")
    raw: dict[str, Any] = {"id": f"{client.name}:{params['update_id'].strip()}"[:64], "ref": ref,
                           "note": params["description"], "occurred_at": occurred.isoformat(),
                           "author": _name(params) if params.get("first_name") or params.get("last_name") else None}
    # FixMyStreet sends CLOSED (or FIXED) when the reporter marks an open report fixed: the customer no longer
    # needs the job, which is the Hub's cancel; OPEN on a closed report is the reporter saying it is not fixed
    if status in ("CLOSED", "FIXED") and not closed:
        raw["kind"] = FollowUpKind.CANCEL.value
    elif status in ("OPEN", "REOPEN") and closed:
        raw["kind"] = FollowUpKind.REOPEN.value
    elif params.get("media_url"):
        raw |= {"kind": FollowUpKind.EVIDENCE.value, "attachments": [_attachment(params["media_url"])]}
    else:
        raw["kind"] = FollowUpKind.NOTE.value
    raw = {k: v for k, v in raw.items() if v is not None}
    from hubbridge.errors import FollowUpValidationError
    from hubbridge.workflows.api import queue_followups
    from hubbridge.workflows.followups import accept_followup

    try:
        accepted = accept_followup(rt, raw, ref=ref, channel="open311")
    except FollowUpValidationError as exc:
        if exc.unknown_case:
            raise GeoReportError(404, f"service_request_id {ref} was not found") from None
        raise GeoReportError(400, "the update is not a valid follow-up: "
                             + "; ".join(f"{k}: {v}" for k, v in exc.fields.items())) from None
    if not accepted.duplicate:
        queue_followups(rt, ref, enqueue, push=accepted.push)
    log.info("open311.update_accepted", client=client.name, hub_ref=ref, kind=raw["kind"],
             duplicate=getattr(accepted, "duplicate", None))
    return [{"update_id": f"{accepted.hub_ref}.F{accepted.sequence}"}]
