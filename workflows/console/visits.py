"""One console request: its app's console state, its visit (session and user), and the dependencies pages use.

Pages declare what they need (`ConsolePage`, `SignedIn`, `CsrfChecked`, a `RoleCheck`) and a `ConsoleRoute`
turns a refusal or a missing login, raised in a page or in any of its dependencies, into the error page or
the login redirect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from hubbridge.workflows.console.sessions import (
    COOKIE_NAME,
    MIN_SECRET_CHARS,
    AttemptLimiter,
    Session,
    SessionCodec,
    hash_fingerprint,
    is_revoked,
    revoke_session,
)
from hubbridge.workflows.console.settings import ConsoleSettings, ConsoleUser, Role, load_console_settings
from hubbridge.workflows.console.views import SECURITY_HEADERS, TEMPLATES

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


# -- per-app state --------------------------------------------------------------------------------


class Console:
    """One app's console: how to reach the runtime, `console.yaml` once loaded, and the attempt limiters."""

    def __init__(self, runtime: Callable[[], Any]) -> None:
        self.runtime = runtime
        self._lock = threading.Lock()
        self._settings: ConsoleSettings | None = None
        self._limiters: dict[str, AttemptLimiter] = {}

    def settings(self) -> ConsoleSettings:
        with self._lock:
            if self._settings is None:
                self._settings = load_console_settings(self.runtime().settings.config_dir)
            return self._settings

    def limiter(self, name: str, attempts: int, window: float) -> AttemptLimiter:
        with self._lock:
            if name not in self._limiters:
                self._limiters[name] = AttemptLimiter(attempts, window)
            return self._limiters[name]

    async def attach(self, request: Request) -> None:
        """The router-wide dependency that makes this console the one its requests' dependencies find."""
        request.state.console = self


def console_of(request: Request) -> Console:
    """The console state of the router that took this request."""
    return request.state.console


def console_runtime(console: Annotated[Console, Depends(console_of)]) -> Any:
    """The process's `Runtime`, made when first needed."""
    return console.runtime()


def client_address(request: Request) -> str:
    # behind a proxy run uvicorn with --proxy-headers so this is the customer's address, not the proxy's
    return request.client.host if request.client else "unknown"


# -- the visit ------------------------------------------------------------------------------------


@dataclass
class Visit:
    """One request's view of the console: its config, session (new or from the cookie) and user."""

    settings: ConsoleSettings
    codec: SessionCodec
    session: Session
    user: ConsoleUser | None
    fresh: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    store_url: str | None = None

    def replace_session(self, session: Session) -> None:
        """Give the browser a new session; a logged-in one it replaces (logout, login again) is revoked."""
        if self.session.user is not None and self.store_url is not None and session.csrf != self.session.csrf:
            revoke_session(self.store_url, self.session, self.codec.max_age)
        self.session, self.fresh = session, True


def read_visit(console: Console, request: Request) -> Visit:
    """The visit from the session cookie, or a new anonymous one; refused while the console has no secret."""
    conf = console.settings()
    secret = conf.session_secret()
    if not secret or len(secret) < MIN_SECRET_CHARS:
        raise Refusal(503, "The console is switched off",
                      f"Set the environment variable {conf.session_secret_env} to a random secret of at least "
                      f"{MIN_SECRET_CHARS} characters to switch the console on.")
    codec = SessionCodec(secret, conf.session_hours * 3600)
    session = codec.loads(request.cookies.get(COOKIE_NAME))
    url = console.runtime().url
    v = Visit(conf, codec, session or Session.anonymous(), None, fresh=session is None, store_url=url)
    if v.session.user:
        user = conf.user(v.session.user)
        stored = user.stored_hash() if user else None
        if user is not None and stored and v.session.fingerprint == hash_fingerprint(stored) \
                and not is_revoked(url, v.session):
            v.user = user
        else:  # user removed, password changed, hash variable unset or logged out: the session ends
            v.session, v.fresh = Session.anonymous(), True
    return v


def need(v: Visit, request: Request, *roles: Role) -> ConsoleUser:
    """The logged-in user, if there is one and (when roles are given) it has one of them."""
    if v.user is None:
        raise LoginNeeded(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    if roles and v.user.role not in roles:
        raise Refusal(403, "Not allowed", f"Your role ({v.user.role.value}) cannot do this. "
                      f"It needs: {', '.join(r.value for r in roles)}.")
    return v.user


# -- responses ------------------------------------------------------------------------------------


def finish(request: Request, response: Response, v: Visit | None) -> Response:
    """Add the security headers, and the session cookie when the visit's session is new."""
    for k, val in SECURITY_HEADERS.items():
        response.headers.setdefault(k, val)
    if v is not None and v.fresh:
        secure = {"always": True, "never": False}.get(v.settings.cookie_secure, request.url.scheme == "https")
        response.set_cookie(COOKIE_NAME, v.codec.dumps(v.session), max_age=int(v.settings.session_hours * 3600),
                            path="/", httponly=True, secure=secure, samesite=v.settings.same_site)
    return response


def render(request: Request, v: Visit | None, name: str, status: int = 200, **ctx: Any) -> Response:
    """A template rendered for this visit (None for the public pages)."""
    user = v.user if v else None
    context = {"user": user, "csrf": v.session.csrf if v else None, "public": v is None,
               "can_replay": bool(user and user.role in (Role.OPERATOR, Role.ADMIN)),
               "can_discard": bool(user and user.role is Role.ADMIN), **ctx}
    return finish(request, TEMPLATES.TemplateResponse(request, name, context, status_code=status), v)


@dataclass
class Page:
    """What a handler answers with: templates and redirects for this request and visit."""

    request: Request
    visit: Visit | None

    def render(self, name: str, status: int = 200, **ctx: Any) -> Response:
        return render(self.request, self.visit, name, status, **ctx)

    def redirect(self, target: str) -> Response:
        return finish(self.request, RedirectResponse(target, status_code=303), self.visit)


# -- dependencies ---------------------------------------------------------------------------------


def current_visit(request: Request, console: Annotated[Console, Depends(console_of)]) -> Visit:
    """This request's visit; the same object for every dependency of one request."""
    return read_visit(console, request)


def console_page(request: Request, v: Annotated[Visit, Depends(current_visit)]) -> Page:
    return Page(request, v)


def public_page(request: Request) -> Page:
    return Page(request, None)


def signed_in(request: Request, v: Annotated[Visit, Depends(current_visit)]) -> ConsoleUser:
    """The logged-in user, or the login redirect."""
    return need(v, request)


class RoleCheck:
    """A dependency giving the logged-in user when it has one of these roles, else the 403 page."""

    def __init__(self, *roles: Role) -> None:
        self.roles = roles

    def __call__(self, request: Request, v: Annotated[Visit, Depends(current_visit)]) -> ConsoleUser:
        return need(v, request, *self.roles)


def checked_csrf(v: Annotated[Visit, Depends(current_visit)], csrf: Annotated[str, Form()] = "") -> None:
    """Refuse a POST whose form does not carry this session's CSRF token."""
    if v.fresh or not v.session.csrf_matches(csrf):
        raise Refusal(403, "Form expired", "This form has expired or did not come from this console. "
                      "Go back, reload the page and try again.")


ConsolePage = Annotated[Page, Depends(console_page)]
PublicPage = Annotated[Page, Depends(public_page)]
SignedIn = Annotated[ConsoleUser, Depends(signed_in)]
CsrfChecked = Depends(checked_csrf)
Runtime = Annotated[Any, Depends(console_runtime)]
AppConsole = Annotated[Console, Depends(console_of)]


# -- the route class ------------------------------------------------------------------------------


def error_page(request: Request, exc: Refusal) -> Response:
    """The error page for a refusal, shown with the visitor's session when the console can read one."""
    try:
        v: Visit | None = read_visit(console_of(request), request)
    except Refusal:
        v = None
    return render(request, v, "error.html", status=exc.status, title=exc.title, message=exc.message)


def login_redirect(request: Request, exc: LoginNeeded) -> Response:
    target = "/console/login"
    if exc.next_path.startswith("/console/") and exc.next_path != "/console/login":
        target += "?next=" + quote(exc.next_path, safe="")
    return finish(request, RedirectResponse(target, status_code=303), None)


class ConsoleRoute(APIRoute):
    """A console page: a refusal or missing login, in the handler or its dependencies, becomes a page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginNeeded as exc:
                return login_redirect(request, exc)
            except Refusal as exc:
                # reading console.yaml and rendering block: off the event loop, as the pages themselves are
                return await run_in_threadpool(error_page, request, exc)

        return handle
