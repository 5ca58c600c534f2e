"""The console's own pages: static files, login and logout, case lookup and the SLA dashboard."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import structlog
from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from hubbridge.case import LONDON
from hubbridge.workflows.console.case_views import record_case_view
from hubbridge.workflows.console.passwords import dummy_hash, verify_password
from hubbridge.workflows.console.sessions import Session, hash_fingerprint
from hubbridge.workflows.console.views import STATIC_DIR, STATIC_FILES, ChartDay, chart_geometry
from hubbridge.workflows.console.visits import (
    AppConsole,
    ConsolePage,
    ConsoleRoute,
    CsrfChecked,
    Refusal,
    Runtime,
    SignedIn,
    client_address,
)

log = structlog.get_logger(__name__)

router = APIRouter(include_in_schema=False, route_class=ConsoleRoute)

MAX_REPORT_DAYS = 366
MAX_CHART_DAYS = 62
LOGIN_WINDOW_SECONDS = 600


# -- static files ---------------------------------------------------------------------------------


@router.get("/console/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        return Response(status_code=404)
    return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


# -- login ----------------------------------------------------------------------------------------


@router.get("/console", response_class=HTMLResponse)
@router.get("/console/", response_class=HTMLResponse)
def home(page: ConsolePage, user: SignedIn) -> Response:
    return page.redirect("/console/cases")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a console page, never another site."""
    if target and target.startswith("/console/") and "//" not in target and "\\" not in target:
        return target
    return "/console/cases"


@router.get("/console/login", response_class=HTMLResponse)
def login_form(page: ConsolePage, next: str | None = None) -> Response:
    assert page.visit is not None
    if page.visit.user is not None:
        return page.redirect(safe_next(next))
    return page.render("login.html", next=safe_next(next), error=None)


@router.post("/console/login", response_class=HTMLResponse, dependencies=[CsrfChecked])
def login(request: Request, page: ConsolePage, console: AppConsole, name: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/console/cases") -> Response:
    v = page.visit
    assert v is not None
    failures = console.limiter("login", v.settings.login_attempts, LOGIN_WINDOW_SECONDS)
    # per name too: guessing one user's password from many addresses is held up as well
    per_user = console.limiter("login-user", v.settings.login_attempts_per_user, LOGIN_WINDOW_SECONDS)
    address = client_address(request)
    user_key = name.strip().lower()[:64]
    wait = failures.blocked(address) or per_user.blocked(user_key)
    if wait is not None:
        resp = page.render("login.html", status=429, next=safe_next(next),
                           error=f"Too many failed attempts. Try again in {int(wait // 60) + 1} minutes.")
        resp.headers["Retry-After"] = str(int(wait))
        return resp
    user = v.settings.user(name.strip().lower())
    stored = user.stored_hash() if user else None
    # the same scrypt work whether or not the name exists, so timing does not tell names apart
    matched = verify_password(password, stored or dummy_hash())
    if user is None or stored is None or not matched:
        failures.hit(address)
        per_user.hit(user_key)
        log.warning("console.login_failed", user=name[:64], client=address)
        return page.render("login.html", status=401, next=safe_next(next),
                           error="That name and password do not match a console user.")
    v.replace_session(Session.for_user(user.name, hash_fingerprint(stored)))
    log.info("console.login", user=user.name, role=user.role.value)
    return page.redirect(safe_next(next))


@router.post("/console/logout", response_class=HTMLResponse, dependencies=[CsrfChecked])
def logout(page: ConsolePage) -> Response:
    v = page.visit
    assert v is not None
    if v.user is not None:
        log.info("console.logout", user=v.user.name)
    v.replace_session(Session.anonymous())
    return page.redirect("/console/login")


# -- case lookup ----------------------------------------------------------------------------------


@router.get("/console/cases", response_class=HTMLResponse)
def cases(page: ConsolePage, user: SignedIn, rt: Runtime, ref: str | None = None) -> Response:
    ref = (ref or "").strip()
    if not ref:
        return page.render("cases.html", ref="", trail=None, clocks=[], not_found=False)
    from hubbridge.store import session_scope
    from hubbridge.workflows.trail import case_trail

    trail = case_trail(rt.url, ref[:128])
    if trail is None or not user.sees_case(trail["service"], trail["authority"]):
        # a case outside the user's services or councils looks exactly like one that does not exist
        return page.render("cases.html", status=404, ref=ref, trail=None, clocks=[], not_found=True)
    with session_scope(rt.url) as s:
        clocks = rt.sla.show(s, trail["ref"], datetime.now(UTC))
        record_case_view(s, user.name, trail["ref"], user.role.value)
    return page.render("cases.html", ref=ref, trail=trail, clocks=clocks, not_found=False)


# -- SLA dashboard --------------------------------------------------------------------------------


def parse_day(text: str | None, default: date, what: str) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refusal(400, "Bad date", f"{what} must be a date like 2026-03-01; got {text[:40]!r}.") from None


def parse_at(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Refusal(400, "Bad time", f"'As at' must be a date and time like 2026-03-02T09:00; "
                      f"got {text[:40]!r}.") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=LONDON)  # what a person types is London wall-clock time
    return value.astimezone(UTC)


@router.get("/console/sla", response_class=HTMLResponse)
def sla(page: ConsolePage, user: SignedIn, rt: Runtime, start: str | None = None, end: str | None = None,
        at: str | None = None) -> Response:
    from hubbridge.sla.report import build_promises, build_report
    from hubbridge.store import session_scope

    today = datetime.now(LONDON).date()
    last = parse_day(end, today, "To")
    first = parse_day(start, last - timedelta(days=6), "From")
    if last < first:
        raise Refusal(400, "Bad period", f"To ({last}) is before From ({first}).")
    if (last - first).days >= MAX_REPORT_DAYS:
        raise Refusal(400, "Period too long", f"Choose at most {MAX_REPORT_DAYS} days.")
    now = parse_at(at) or datetime.now(UTC)
    promises = rt.sla.config.promises
    with session_scope(rt.url) as s:
        # the same report, with the same definitions, as `hubbridge sla report`
        rows = [r for r in build_report(s, first, last, ("service", "authority"), now=now, promises=promises)
                if user.sees_case(r.group["service"], r.group["authority"])]
        sides = [p for p in build_promises(s, first, last, promises, ("service", "authority"), now=now)
                 if user.sees_case(p.group["service"], p.group["authority"])]
        days: list[ChartDay] = []
        if (last - first).days < MAX_CHART_DAYS:
            day = first
            while day <= last:
                per = [r for r in build_report(s, day, day, ("service", "authority", "policy"), now=now)
                       if user.sees_case(r.group["service"], r.group["authority"])]
                # cases: every case of a policy has each of its clocks, so the busiest clock counts them
                groups: dict[tuple[str, str, str], int] = {}
                for r in per:
                    key = (r.group["service"], r.group["authority"], r.group["policy"])
                    groups[key] = max(groups.get(key, 0), r.volume)
                days.append(ChartDay(day, sum(groups.values()), sum(r.breached for r in per)))
                day += timedelta(days=1)
    totals: dict[str, dict[str, int]] = {}
    for r in rows:
        t = totals.setdefault(r.clock, {"volume": 0, "met": 0, "at_risk": 0, "breached": 0, "open": 0})
        for k in t:
            t[k] += getattr(r, k)
    return page.render("sla.html", rows=rows, totals=totals, sides=sides, promises=promises, first=first,
                       last=last, at=at or "", now=now, chart=chart_geometry(days) if days else None,
                       chart_days=days, max_chart_days=MAX_CHART_DAYS)
