"""The public tracking page: a Hub reference and postcode give that one case's status and expected date."""

from __future__ import annotations

import hmac
import re
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from hubbridge.case import HUB_REF_PATTERN, LONDON, HubStatus
from hubbridge.workflows.console.visits import AppConsole, PublicPage, client_address

router = APIRouter(include_in_schema=False)

RESOLVE_CLOCK = "resolve"

CUSTOMER_STATUS = {
    HubStatus.RECEIVED: "Received: we are passing your request to the right team",
    HubStatus.ROUTED: "Received: we are passing your request to the right team",
    HubStatus.DELIVERED: "With the service team",
    HubStatus.ACKNOWLEDGED: "With the service team",
    HubStatus.IN_PROGRESS: "In progress",
    HubStatus.AWAITING_CUSTOMER: "On hold: we are waiting for information from you",
    HubStatus.RESOLVED: "Resolved",
    HubStatus.CLOSED: "Closed",
    HubStatus.REJECTED: "Closed: we could not take this request forward",
    HubStatus.CANCELLED: "Cancelled",
}
"""What a customer reads for each Hub status: plain words, nothing about systems or teams."""


@router.get("/track", response_class=HTMLResponse)
def track_form(page: PublicPage) -> Response:
    return page.render("track.html", result=None, refused=False)


@router.post("/track", response_class=HTMLResponse)
def track(request: Request, page: PublicPage, console: AppConsole, ref: Annotated[str, Form()] = "",
          postcode: Annotated[str, Form()] = "") -> Response:
    conf = console.settings()
    attempts = console.limiter("track", conf.tracking.attempts, conf.tracking.window_seconds)
    wait = attempts.hit(client_address(request))
    if wait is not None:
        resp = page.render("track.html", status=429, result=None, refused=False, wait_minutes=int(wait // 60) + 1)
        resp.headers["Retry-After"] = str(int(wait))
        return resp
    result = track_case(console.runtime(), ref, postcode)
    if result is None:
        # one answer for a wrong reference, a wrong postcode, or a case with no postcode
        return page.render("track.html", status=404, result=None, refused=True)
    return page.render("track.html", result=result, refused=False)


def _postcode_key(text: str) -> str:
    return re.sub(r"\s+", "", text).upper()


def track_case(rt: Any, ref: str, postcode: str) -> dict[str, Any] | None:
    """Status and expected resolution of the case with this reference and postcode, or None for any mismatch."""
    from hubbridge.sla.tables import PAUSED, STOPPED, SlaClockRow
    from hubbridge.store import CaseRow, session_scope

    ref_key = ref.strip().upper()[:32]
    given = _postcode_key(postcode)[:10]
    with session_scope(rt.url) as s:
        row = None
        if re.match(HUB_REF_PATTERN, ref_key):
            row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref_key))
        address: dict[str, Any] = {}
        if row is not None:
            address = ((row.payload or {}).get("customer") or {}).get("address") or {}
        stored = _postcode_key(str(address.get("postcode") or ""))
        # compared in constant time against something even when the case does not exist
        same = hmac.compare_digest((stored or "-").encode(), (given or "+").encode())
        if row is None or not stored or not same:
            return None
        clock = s.scalar(select(SlaClockRow).where(SlaClockRow.hub_ref == row.hub_ref,
                                                   SlaClockRow.clock == RESOLVE_CLOCK))
        status = HubStatus(row.status)
        expected: date | None = None
        note = None
        if clock is not None and clock.state == PAUSED:
            note = "The target date is paused until we hear from you."
        elif clock is not None and clock.state != STOPPED and clock.due_at is not None:
            expected = clock.due_at.astimezone(LONDON).date()
        return {"ref": row.hub_ref, "status": CUSTOMER_STATUS.get(status, status.value), "expected": expected,
                "final": status in (HubStatus.RESOLVED, HubStatus.CLOSED, HubStatus.REJECTED, HubStatus.CANCELLED),
                "note": note}
