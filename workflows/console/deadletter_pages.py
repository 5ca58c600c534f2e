"""The console's queue page (queue depths, connector health, open dead letters) and the replay and discard forms."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from hubbridge.errors import DeadLetterClosed, DeadLetterNotFound, DeadLetterReplayError
from hubbridge.workflows.console.settings import ConsoleUser, Role
from hubbridge.workflows.console.visits import (
    ConsolePage,
    ConsoleRoute,
    CsrfChecked,
    Refusal,
    RoleCheck,
    Runtime,
    SignedIn,
    need,
)

router = APIRouter(include_in_schema=False, route_class=ConsoleRoute)

REPLAY_ROLES = (Role.OPERATOR, Role.ADMIN)
DISCARD_ROLES = (Role.ADMIN,)
Replayer = Annotated[ConsoleUser, Depends(RoleCheck(*REPLAY_ROLES))]
Discarder = Annotated[ConsoleUser, Depends(RoleCheck(*DISCARD_ROLES))]


def connector_health(rt: Any, user: ConsoleUser) -> list[dict[str, Any]]:
    """Each connector instance the user may see, with its circuit state, error rate and last poll."""
    from hubbridge.store import ConnectorHealthRow, SyncCursorRow, session_scope

    out = []
    with session_scope(rt.url) as s:
        health = {h.connector: h for h in s.scalars(select(ConnectorHealthRow))}
        cursors = {c.connector: c for c in s.scalars(select(SyncCursorRow))}
    for name, inst in sorted(rt.config.connectors.items()):
        routes = rt.config.routes_for_connector(name)
        services = sorted({r.service for r in routes if user.sees_case(r.service, r.authority)})
        if user.role is Role.SERVICE and not services:
            continue
        h = health.get(name)
        calls = (h.successes or 0) + (h.failures or 0) if h else 0
        out.append({
            "name": name, "plugin": inst.plugin, "services": services,
            "state": h.state if h else "closed", "opened_until": h.opened_until if h else None,
            "last_success": h.last_success_at if h else None, "last_failure": h.last_failure_at if h else None,
            "error_rate": round(100.0 * (h.failures or 0) / calls, 1) if h and calls else None,
            "calls": calls, "consecutive": h.consecutive_failures if h else 0,
            # a back office's error text can quote any council's case: operators only
            "last_error": (h.last_error or "")[:240] if h and user.role is not Role.SERVICE else "",
            "polled": cursors[name].polled_at if name in cursors else None,
        })
    return out


@router.get("/console/queues", response_class=HTMLResponse)
def queues(page: ConsolePage, user: SignedIn, rt: Runtime, service: str | None = None,
           authority: str | None = None, reason: str | None = None) -> Response:
    from hubbridge.store import session_scope
    from hubbridge.workflows import deadletters
    from hubbridge.workflows.console.queues import queue_depths

    service, authority, reason = service or None, authority or None, reason or None
    with session_scope(rt.url) as s:
        dead = [d for d in deadletters.list_dead(s, service=service, authority=authority, reason=reason)
                if user.sees_case(d.service, d.authority)]
        if user.role is Role.SERVICE:
            mine = [d for d in deadletters.list_dead(s, limit=10_000) if user.sees_case(d.service, d.authority)]
            reasons: dict[str, int] = {}
            for d in mine:
                reasons[d.reason] = reasons.get(d.reason, 0) + 1
        else:
            reasons = deadletters.counts_by_reason(s)
        dead_rows = [deadletters.as_dict(d) for d in dead]
    depths = queue_depths(rt.settings.resolved_broker_url) if user.role is not Role.SERVICE else []
    services = sorted(k for k in rt.config.services if user.sees(k))
    return page.render("queues.html", depths=depths, connectors=connector_health(rt, user),
                       dead=dead_rows, reasons=reasons, services=services,
                       authorities=sorted(a for a in rt.config.authorities if user.sees_authority(a)),
                       chosen={"service": service or "", "authority": authority or "", "reason": reason or ""})


def dead_letter_for(rt: Any, user: ConsoleUser, dead_id: int) -> dict[str, Any]:
    """The dead letter as a dict, or a 404 page when it does not exist or is outside the user's services."""
    from hubbridge.store import session_scope
    from hubbridge.workflows import deadletters

    with session_scope(rt.url) as s:
        try:
            row = deadletters.get_dead(s, dead_id)
        except DeadLetterNotFound:
            row = None
        if row is None or not user.sees_case(row.service, row.authority):
            raise Refusal(404, "No such dead letter", f"There is no dead letter {dead_id}.")
        return deadletters.as_dict(row)


@router.get("/console/dead/{dead_id}/{action}", response_class=HTMLResponse)
def confirm(request: Request, page: ConsolePage, rt: Runtime, dead_id: int, action: str) -> Response:
    if action not in ("replay", "discard"):
        raise Refusal(404, "Not found", "There is no such page.")
    assert page.visit is not None
    # the roles depend on the action, so they are checked here rather than by a dependency
    user = need(page.visit, request, *(REPLAY_ROLES if action == "replay" else DISCARD_ROLES))
    dead = dead_letter_for(rt, user, dead_id)
    if dead.get("hub_ref"):
        from hubbridge.store import session_scope
        from hubbridge.workflows.console.case_views import record_case_view

        with session_scope(rt.url) as s:
            record_case_view(s, user.name, dead["hub_ref"], user.role.value, page="dead-letter")
    return page.render("confirm.html", dead=dead, action=action, error=None)


@router.post("/console/dead/{dead_id}/replay", response_class=HTMLResponse, dependencies=[CsrfChecked])
def do_replay(page: ConsolePage, user: Replayer, rt: Runtime, dead_id: int) -> Response:
    dead = dead_letter_for(rt, user, dead_id)
    from hubbridge.workflows import deadletters

    try:
        message = deadletters.replay(rt, dead_id, by=f"console:{user.name}")
    except (DeadLetterClosed, DeadLetterReplayError, DeadLetterNotFound) as exc:
        return page.render("confirm.html", status=409, dead=dead, action="replay", error=str(exc))
    return page.render("done.html", dead=dead, action="replay", message=message)


@router.post("/console/dead/{dead_id}/discard", response_class=HTMLResponse, dependencies=[CsrfChecked])
def do_discard(page: ConsolePage, user: Discarder, rt: Runtime, dead_id: int,
               note: Annotated[str, Form()] = "") -> Response:
    dead = dead_letter_for(rt, user, dead_id)
    from hubbridge.workflows import deadletters

    if not note.strip():
        return page.render("confirm.html", status=400, dead=dead, action="discard",
                           error="Say why it is discarded: the note goes into the case's audit trail.")
    try:
        deadletters.discard(rt, dead_id, by=f"console:{user.name}", note=note[:1000])
    except (DeadLetterClosed, DeadLetterReplayError, DeadLetterNotFound) as exc:
        return page.render("confirm.html", status=409, dead=dead, action="discard", error=str(exc))
    return page.render("done.html", dead=dead, action="discard",
                       message=f"Dead letter {dead_id} discarded; the note is in the audit trail.")
