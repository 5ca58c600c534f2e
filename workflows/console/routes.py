"""The operations console and the public tracking page, as one FastAPI router mounted on the intake API.

Console pages (`/console/...`) need a login from `console.yaml`; service-area users see only their
services. Every POST carries the session's CSRF token. `/track` is public: a Hub reference and postcode
give the status and expected resolution date of that one case, and nothing else.
"""

from __future__ import annotations

import functools
import hmac
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from hubbridge.case import HUB_REF_PATTERN, LONDON, HubStatus
from hubbridge.errors import DeadLetterClosed, DeadLetterNotFound, DeadLetterReplayError
from hubbridge.workflows.console.passwords import dummy_hash, verify_password
from hubbridge.workflows.console.sessions import (
    COOKIE_NAME,
    MIN_SECRET_CHARS,
    AttemptLimiter,
    Session,
    SessionCodec,
    hash_fingerprint,
)
from hubbridge.workflows.console.settings import ConsoleSettings, ConsoleUser, Role, load_console_settings

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_FILES = {"console.css": "text/css"}
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))

MAX_REPORT_DAYS = 366
MAX_CHART_DAYS = 62
RESOLVE_CLOCK = "resolve"
LOGIN_WINDOW_SECONDS = 600

SECURITY_HEADERS = {
    # no inline script or style anywhere, so the policy can be strict
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

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


# -- refusals a page can end in -------------------------------------------------------------------


class Refusal(Exception):
    """A page that cannot be shown: rendered as an error page with this status and message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class LoginNeeded(Exception):
    """No logged-in user: the browser is sent to the login page, coming back to `next` afterwards."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass
class Visit:
    """One request's view of the console: its config, session (new or from the cookie) and user."""

    settings: ConsoleSettings
    codec: SessionCodec
    session: Session
    user: ConsoleUser | None
    fresh: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def replace_session(self, session: Session) -> None:
        self.session, self.fresh = session, True


# -- formatting for templates ---------------------------------------------------------------------


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def local_time(value: Any) -> str:
    """An instant as Europe/London wall-clock time, e.g. `Mon 02 Mar 2026 09:00`."""
    when = _as_datetime(value)
    if when is None:
        return "–"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(LONDON).strftime("%a %d %b %Y %H:%M")


def hours(seconds: Any) -> str:
    return "–" if seconds is None else f"{int(seconds) / 3600:.1f} h"


def detail_text(detail: Any) -> str:
    """An audit event's detail as short `key=value` pairs."""
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for key, value in detail.items():
        if value is None or value == [] or value == {}:
            continue
        text = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        parts.append(f"{key}={text[:160]}")
    return "; ".join(parts)


TEMPLATES.env.filters["local"] = local_time
TEMPLATES.env.filters["hours"] = hours
TEMPLATES.env.filters["detail"] = detail_text


# -- the SVG chart --------------------------------------------------------------------------------


@dataclass
class ChartDay:
    day: date
    volume: int
    breached: int


def chart_geometry(days: list[ChartDay], width: int = 720, height: int = 240) -> dict[str, Any]:
    """Bar positions for the daily volume / breaches chart, drawn as inline SVG by the template."""
    left, bottom, top = 36, 28, 12
    plot_h = height - bottom - top
    top_value = max([1, *(d.volume for d in days), *(d.breached for d in days)])
    slot = (width - left - 8) / max(len(days), 1)
    bar = max(slot * 0.38, 1.0)
    bars = []
    label_every = max(1, len(days) // 10)
    for i, d in enumerate(days):
        x = left + i * slot + slot * 0.1
        vh = plot_h * d.volume / top_value
        bh = plot_h * d.breached / top_value
        bars.append({
            "day": d.day, "volume": d.volume, "breached": d.breached,
            "vx": round(x, 1), "vy": round(top + plot_h - vh, 1), "vh": round(vh, 1),
            "bx": round(x + bar, 1), "by": round(top + plot_h - bh, 1), "bh": round(bh, 1),
            "w": round(bar, 1), "label": d.day.strftime("%d %b") if i % label_every == 0 else None,
            "lx": round(x + bar, 1),
        })
    return {"width": width, "height": height, "left": left, "top": top, "base": top + plot_h,
            "max": top_value, "bars": bars, "label_y": height - 8}


# -- the router -----------------------------------------------------------------------------------


def console_router(runtime: Callable[[], Any]) -> APIRouter:
    """The console and tracking routes; `runtime` gives the process's `pipeline.Runtime` when first needed."""
    router = APIRouter(include_in_schema=False)
    lock = threading.Lock()
    cache: dict[str, Any] = {}

    def settings() -> ConsoleSettings:
        with lock:
            if "settings" not in cache:
                cache["settings"] = load_console_settings(runtime().settings.config_dir)
            return cache["settings"]

    def limiter(name: str, attempts: int, window: float) -> AttemptLimiter:
        with lock:
            if name not in cache:
                cache[name] = AttemptLimiter(attempts, window)
            return cache[name]

    # ---------------------------------------------------------------- request plumbing

    def client_address(request: Request) -> str:
        # behind a proxy run uvicorn with --proxy-headers so this is the customer's address, not the proxy's
        return request.client.host if request.client else "unknown"

    def visit(request: Request) -> Visit:
        conf = settings()
        secret = conf.session_secret()
        if not secret or len(secret) < MIN_SECRET_CHARS:
            raise Refusal(503, "The console is switched off",
                          f"Set the environment variable {conf.session_secret_env} to a random secret of at least "
                          f"{MIN_SECRET_CHARS} characters to switch the console on.")
        codec = SessionCodec(secret, conf.session_hours * 3600)
        session = codec.loads(request.cookies.get(COOKIE_NAME))
        v = Visit(conf, codec, session or Session.anonymous(), None, fresh=session is None)
        if v.session.user:
            user = conf.user(v.session.user)
            stored = user.stored_hash() if user else None
            if user is not None and stored and v.session.fingerprint == hash_fingerprint(stored):
                v.user = user
            else:  # user removed, password changed or hash variable unset: the session ends
                v.replace_session(Session.anonymous())
        return v

    def need(v: Visit, request: Request, *roles: Role) -> ConsoleUser:
        if v.user is None:
            raise LoginNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        if roles and v.user.role not in roles:
            raise Refusal(403, "Not allowed", f"Your role ({v.user.role.value}) cannot do this. "
                          f"It needs: {', '.join(r.value for r in roles)}.")
        return v.user

    def check_csrf(v: Visit, token: str | None) -> None:
        if v.fresh or not v.session.csrf_matches(token):
            raise Refusal(403, "Form expired", "This form has expired or did not come from this console. "
                          "Go back, reload the page and try again.")

    def finish(request: Request, response: Response, v: Visit | None) -> Response:
        for k, val in SECURITY_HEADERS.items():
            response.headers.setdefault(k, val)
        if v is not None and v.fresh:
            secure = {"always": True, "never": False}.get(v.settings.cookie_secure, request.url.scheme == "https")
            response.set_cookie(COOKIE_NAME, v.codec.dumps(v.session), max_age=int(v.settings.session_hours * 3600),
                                path="/", httponly=True, secure=secure, samesite=v.settings.same_site)
        return response

    def render(request: Request, v: Visit | None, name: str, status: int = 200, **ctx: Any) -> Response:
        user = v.user if v else None
        context = {"user": user, "csrf": v.session.csrf if v else None, "public": v is None,
                   "can_replay": bool(user and user.role in (Role.OPERATOR, Role.ADMIN)),
                   "can_discard": bool(user and user.role is Role.ADMIN), **ctx}
        return finish(request, TEMPLATES.TemplateResponse(request, name, context, status_code=status), v)

    def page(handler: Callable[..., Response]) -> Callable[..., Response]:
        """Turn refusals raised by a page into the error page or the login redirect."""

        @functools.wraps(handler)
        def wrapped(*args: Any, **kwargs: Any) -> Response:
            request: Request = kwargs["request"]
            try:
                return handler(*args, **kwargs)
            except LoginNeeded as exc:
                target = "/console/login"
                if exc.next_path.startswith("/console/") and exc.next_path != "/console/login":
                    target += "?next=" + quote(exc.next_path, safe="")
                return finish(request, RedirectResponse(target, status_code=303), None)
            except Refusal as exc:
                try:
                    v = visit(request)
                except Refusal:
                    v = None
                return render(request, v, "error.html", status=exc.status, title=exc.title, message=exc.message)

        return wrapped

    def rt() -> Any:
        return runtime()

    # ---------------------------------------------------------------- static files

    @router.get("/console/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return Response(status_code=404)
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name],
                            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    # ---------------------------------------------------------------- login

    @router.get("/console", response_class=HTMLResponse)
    @router.get("/console/", response_class=HTMLResponse)
    @page
    def home(request: Request) -> Response:
        v = visit(request)
        need(v, request)
        return finish(request, RedirectResponse("/console/cases", status_code=303), v)

    def safe_next(target: str | None) -> str:
        if target and target.startswith("/console/") and "//" not in target and "\\" not in target:
            return target
        return "/console/cases"

    @router.get("/console/login", response_class=HTMLResponse)
    @page
    def login_form(request: Request, next: str | None = None) -> Response:
        v = visit(request)
        if v.user is not None:
            return finish(request, RedirectResponse(safe_next(next), status_code=303), v)
        return render(request, v, "login.html", next=safe_next(next), error=None)

    @router.post("/console/login", response_class=HTMLResponse)
    @page
    def login(request: Request, name: str = Form(""), password: str = Form(""), csrf: str = Form(""),
              next: str = Form("/console/cases")) -> Response:
        v = visit(request)
        check_csrf(v, csrf)
        failures = limiter("login", v.settings.login_attempts, LOGIN_WINDOW_SECONDS)
        address = client_address(request)
        wait = failures.blocked(address)
        if wait is not None:
            resp = render(request, v, "login.html", status=429, next=safe_next(next),
                          error=f"Too many failed attempts. Try again in {int(wait // 60) + 1} minutes.")
            resp.headers["Retry-After"] = str(int(wait))
            return resp
        user = v.settings.user(name.strip().lower())
        stored = user.stored_hash() if user else None
        # the same scrypt work whether or not the name exists, so timing does not tell names apart
        matched = verify_password(password, stored or dummy_hash())
        if user is None or stored is None or not matched:
            failures.hit(address)
            log.warning("console.login_failed", user=name[:64], client=address)
            return render(request, v, "login.html", status=401, next=safe_next(next),
                          error="That name and password do not match a console user.")
        v.replace_session(Session.for_user(user.name, hash_fingerprint(stored)))
        log.info("console.login", user=user.name, role=user.role.value)
        return finish(request, RedirectResponse(safe_next(next), status_code=303), v)

    @router.post("/console/logout", response_class=HTMLResponse)
    @page
    def logout(request: Request, csrf: str = Form("")) -> Response:
        v = visit(request)
        check_csrf(v, csrf)
        if v.user is not None:
            log.info("console.logout", user=v.user.name)
        v.replace_session(Session.anonymous())
        return finish(request, RedirectResponse("/console/login", status_code=303), v)

    # ---------------------------------------------------------------- case lookup

    @router.get("/console/cases", response_class=HTMLResponse)
    @page
    def cases(request: Request, ref: str | None = None) -> Response:
        v = visit(request)
        user = need(v, request)
        ref = (ref or "").strip()
        if not ref:
            return render(request, v, "cases.html", ref="", trail=None, clocks=[], not_found=False)
        from hubbridge.store import session_scope
        from hubbridge.workflows.trail import case_trail

        runtime_ = rt()
        trail = case_trail(runtime_.url, ref[:128])
        if trail is None or not user.sees(trail["service"]):
            # a case outside the user's services looks exactly like one that does not exist
            return render(request, v, "cases.html", status=404, ref=ref, trail=None, clocks=[], not_found=True)
        with session_scope(runtime_.url) as s:
            clocks = runtime_.sla.show(s, trail["ref"], datetime.now(UTC))
        return render(request, v, "cases.html", ref=ref, trail=trail, clocks=clocks, not_found=False)

    # ---------------------------------------------------------------- SLA dashboard

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
    @page
    def sla(request: Request, start: str | None = None, end: str | None = None, at: str | None = None) -> Response:
        v = visit(request)
        user = need(v, request)
        from hubbridge.sla.report import build_report
        from hubbridge.store import session_scope

        today = datetime.now(LONDON).date()
        last = parse_day(end, today, "To")
        first = parse_day(start, last - timedelta(days=6), "From")
        if last < first:
            raise Refusal(400, "Bad period", f"To ({last}) is before From ({first}).")
        if (last - first).days >= MAX_REPORT_DAYS:
            raise Refusal(400, "Period too long", f"Choose at most {MAX_REPORT_DAYS} days.")
        now = parse_at(at) or datetime.now(UTC)
        with session_scope(rt().url) as s:
            # the same report, with the same definitions, as `hubbridge sla report`
            rows = [r for r in build_report(s, first, last, ("service", "authority"), now=now)
                    if user.sees(r.group["service"])]
            days: list[ChartDay] = []
            if (last - first).days < MAX_CHART_DAYS:
                day = first
                while day <= last:
                    per = [r for r in build_report(s, day, day, ("service", "policy"), now=now)
                           if user.sees(r.group["service"])]
                    # cases: every case of a policy has each of its clocks, so the busiest clock counts them
                    groups: dict[tuple[str, str], int] = {}
                    for r in per:
                        key = (r.group["service"], r.group["policy"])
                        groups[key] = max(groups.get(key, 0), r.volume)
                    days.append(ChartDay(day, sum(groups.values()), sum(r.breached for r in per)))
                    day += timedelta(days=1)
        totals: dict[str, dict[str, int]] = {}
        for r in rows:
            t = totals.setdefault(r.clock, {"volume": 0, "met": 0, "at_risk": 0, "breached": 0, "open": 0})
            for k in t:
                t[k] += getattr(r, k)
        return render(request, v, "sla.html", rows=rows, totals=totals, first=first, last=last,
                      at=at or "", now=now, chart=chart_geometry(days) if days else None,
                      chart_days=days, max_chart_days=MAX_CHART_DAYS)

    # ---------------------------------------------------------------- queues, connectors, dead letters

    def connector_health(user: ConsoleUser) -> list[dict[str, Any]]:
        from hubbridge.store import ConnectorHealthRow, SyncCursorRow, session_scope

        runtime_ = rt()
        out = []
        with session_scope(runtime_.url) as s:
            health = {h.connector: h for h in s.scalars(select(ConnectorHealthRow))}
            cursors = {c.connector: c for c in s.scalars(select(SyncCursorRow))}
        for name, inst in sorted(runtime_.config.connectors.items()):
            services = sorted({r.service for r in runtime_.config.routes_for_connector(name)})
            if user.role is Role.SERVICE and not any(user.sees(svc) for svc in services):
                continue
            h = health.get(name)
            calls = (h.successes or 0) + (h.failures or 0) if h else 0
            out.append({
                "name": name, "plugin": inst.plugin, "services": services,
                "state": h.state if h else "closed", "opened_until": h.opened_until if h else None,
                "last_success": h.last_success_at if h else None, "last_failure": h.last_failure_at if h else None,
                "error_rate": round(100.0 * (h.failures or 0) / calls, 1) if h and calls else None,
                "calls": calls, "consecutive": h.consecutive_failures if h else 0,
                "last_error": (h.last_error or "")[:240] if h else "",
                "polled": cursors[name].polled_at if name in cursors else None,
            })
        return out

    @router.get("/console/queues", response_class=HTMLResponse)
    @page
    def queues(request: Request, service: str | None = None, authority: str | None = None,
               reason: str | None = None) -> Response:
        v = visit(request)
        user = need(v, request)
        from hubbridge.store import session_scope
        from hubbridge.workflows import deadletters
        from hubbridge.workflows.console.queues import queue_depths

        runtime_ = rt()
        service, authority, reason = service or None, authority or None, reason or None
        with session_scope(runtime_.url) as s:
            dead = [d for d in deadletters.list_dead(s, service=service, authority=authority, reason=reason)
                    if user.sees(d.service)]
            if user.role is Role.SERVICE:
                mine = [d for d in deadletters.list_dead(s, limit=10_000) if user.sees(d.service)]
                reasons: dict[str, int] = {}
                for d in mine:
                    reasons[d.reason] = reasons.get(d.reason, 0) + 1
            else:
                reasons = deadletters.counts_by_reason(s)
            dead_rows = [deadletters.as_dict(d) for d in dead]
        depths = queue_depths(runtime_.settings.resolved_broker_url) if user.role is not Role.SERVICE else []
        services = sorted(k for k in runtime_.config.services if user.sees(k))
        return render(request, v, "queues.html", depths=depths, connectors=connector_health(user),
                      dead=dead_rows, reasons=reasons, services=services,
                      authorities=sorted(runtime_.config.authorities),
                      chosen={"service": service or "", "authority": authority or "", "reason": reason or ""})

    def dead_letter_for(v: Visit, request: Request, dead_id: int, *roles: Role) -> dict[str, Any]:
        user = need(v, request, *roles)
        from hubbridge.store import session_scope
        from hubbridge.workflows import deadletters

        with session_scope(rt().url) as s:
            try:
                row = deadletters.get_dead(s, dead_id)
            except DeadLetterNotFound:
                row = None
            if row is None or not user.sees(row.service):
                raise Refusal(404, "No such dead letter", f"There is no dead letter {dead_id}.")
            return deadletters.as_dict(row)

    @router.get("/console/dead/{dead_id}/{action}", response_class=HTMLResponse)
    @page
    def confirm(request: Request, dead_id: int, action: str) -> Response:
        v = visit(request)
        if action not in ("replay", "discard"):
            raise Refusal(404, "Not found", "There is no such page.")
        roles = (Role.OPERATOR, Role.ADMIN) if action == "replay" else (Role.ADMIN,)
        dead = dead_letter_for(v, request, dead_id, *roles)
        return render(request, v, "confirm.html", dead=dead, action=action, error=None)

    @router.post("/console/dead/{dead_id}/replay", response_class=HTMLResponse)
    @page
    def do_replay(request: Request, dead_id: int, csrf: str = Form("")) -> Response:
        v = visit(request)
        check_csrf(v, csrf)
        dead = dead_letter_for(v, request, dead_id, Role.OPERATOR, Role.ADMIN)
        from hubbridge.workflows import deadletters

        assert v.user is not None
        try:
            message = deadletters.replay(rt(), dead_id, by=f"console:{v.user.name}")
        except (DeadLetterClosed, DeadLetterReplayError, DeadLetterNotFound) as exc:
            return render(request, v, "confirm.html", status=409, dead=dead, action="replay", error=str(exc))
        return render(request, v, "done.html", dead=dead, action="replay", message=message)

    @router.post("/console/dead/{dead_id}/discard", response_class=HTMLResponse)
    @page
    def do_discard(request: Request, dead_id: int, csrf: str = Form(""), note: str = Form("")) -> Response:
        v = visit(request)
        check_csrf(v, csrf)
        dead = dead_letter_for(v, request, dead_id, Role.ADMIN)
        from hubbridge.workflows import deadletters

        assert v.user is not None
        if not note.strip():
            return render(request, v, "confirm.html", status=400, dead=dead, action="discard",
                          error="Say why it is discarded: the note goes into the case's audit trail.")
        try:
            deadletters.discard(rt(), dead_id, by=f"console:{v.user.name}", note=note[:1000])
        except (DeadLetterClosed, DeadLetterReplayError, DeadLetterNotFound) as exc:
            return render(request, v, "confirm.html", status=409, dead=dead, action="discard", error=str(exc))
        return render(request, v, "done.html", dead=dead, action="discard",
                      message=f"Dead letter {dead_id} discarded; the note is in the audit trail.")

    # ---------------------------------------------------------------- public tracking

    @router.get("/track", response_class=HTMLResponse)
    def track_form(request: Request) -> Response:
        return render(request, None, "track.html", result=None, refused=False)

    @router.post("/track", response_class=HTMLResponse)
    def track(request: Request, ref: str = Form(""), postcode: str = Form("")) -> Response:
        conf = settings()
        attempts = limiter("track", conf.tracking.attempts, conf.tracking.window_seconds)
        wait = attempts.hit(client_address(request))
        if wait is not None:
            resp = render(request, None, "track.html", status=429, result=None, refused=False,
                          wait_minutes=int(wait // 60) + 1)
            resp.headers["Retry-After"] = str(int(wait))
            return resp
        result = track_case(rt(), ref, postcode)
        if result is None:
            # one answer for a wrong reference, a wrong postcode, or a case with no postcode
            return render(request, None, "track.html", status=404, result=None, refused=True)
        return render(request, None, "track.html", result=result, refused=False)

    return router


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
