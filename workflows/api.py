"""The intake API: the Hub CRM posts cases here; operators read case status and metrics.

Intake is signed with HMAC (X-Hubbridge-Timestamp / X-Hubbridge-Signature) using the secret in the
environment variable named by settings.intake_secret_env; back offices push updates to
POST /webhooks/{connector}, signed the same way with the instance's `webhook_secret_env`; status
endpoints need the API token.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool

from hubbridge.config.models import ApiClient, ApiFile
from hubbridge.connectors.base import Connector, connector_class
from hubbridge.errors import CaseValidationError, ConnectorError, FollowUpValidationError, SecurityError
from hubbridge.workflows.api_clients import case_ref_and_authority, client_for, load_api_file, token_clients
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.raised import raise_pending
from hubbridge.workflows.runtime import Runtime, runtime
from hubbridge.workflows.sync import take_update

log = structlog.get_logger(__name__)

INTAKE = Counter("hubbridge_intake_total", "Hub cases posted to the intake API", ["outcome"])
WEBHOOKS = Counter("hubbridge_webhooks_total", "Back-office updates pushed to POST /webhooks", ["outcome"])


router = APIRouter()


def app_runtime(app: FastAPI) -> Runtime:
    """The app's Runtime: the one given to `create_app`, else the process's, made when first needed."""
    if app.state.rt is None:
        app.state.rt = runtime()
    return app.state.rt


async def current_runtime(request: Request) -> Runtime:
    # async: a plain def dependency costs every request a hop through the threadpool
    return app_runtime(request.app)


async def enqueues(request: Request) -> bool:
    """Whether this app queues work itself (`enqueue=False` leaves it to reconcile)."""
    return bool(request.app.state.enqueue)


Rt = Annotated[Runtime, Depends(current_runtime)]
Enqueue = Annotated[bool, Depends(enqueues)]


async def request_body(request: Request, rt: Rt) -> bytes:
    """The request body, refused with 413 once it is over the configured limit."""
    return await read_body(request, rt.settings.max_body_bytes)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is over `limit` bytes (declared or read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPException(413, f"body is over the {limit}-byte limit")
    return bytes(body)


Body = Annotated[bytes, Depends(request_body)]


def api_file(app: FastAPI) -> ApiFile:
    """The app's `api.yaml` (clients, open docs and metrics), read once when first needed."""
    if app.state.api_file is None:
        app.state.api_file = load_api_file(app_runtime(app).settings.config_dir)
    return app.state.api_file


async def require_token(request: Request, rt: Rt) -> ApiClient:
    """The API client whose bearer token the request carries; 401 without one, 503 while none is configured."""
    clients = token_clients(api_file(request.app), rt.settings.api_token_env)
    if not clients:
        raise HTTPException(503, f"admin endpoints are disabled: set {rt.settings.api_token_env} "
                            "or the token variables of the clients in api.yaml")
    client = client_for(request.headers.get("authorization", ""), clients)
    if client is None:
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return client


Client = Annotated[ApiClient, Depends(require_token)]


def outside_scope(client: ApiClient, authority: str | None, ref: str) -> JSONResponse:
    """The 403 for a case of a council this client does not act for."""
    return JSONResponse(status_code=403, content={
        "error": f"client {client.name!r} may not act for authority {authority!r}",
        "ref": ref,
        "hint": f"this client's token covers {', '.join(client.authorities)}; send the case with the token "
                "of a client for that council, or add the council to this client in api.yaml",
    })


def scope_refusal(rt: Runtime, request: Request, body: bytes) -> JSONResponse | None:
    """Once api.yaml lists clients, intake needs a client's token and a case of one of its councils."""
    conf = api_file(request.app)
    if not conf.clients:
        return None  # the single-token setup: intake is authorised by its signature alone, as before
    client = client_for(request.headers.get("authorization", ""), token_clients(conf, rt.settings.api_token_env))
    if client is None:
        INTAKE.labels("unauthorised").inc()
        raise HTTPException(401, "a valid bearer token of an api.yaml client is required",
                            headers={"WWW-Authenticate": "Bearer"})
    ref, authority = case_ref_and_authority(body)
    if authority is None or client.serves(authority):
        return None  # no authority to check: validation refuses the case and keeps it as a dead letter
    from hubbridge.store import session_scope
    from hubbridge.workflows.deadletters import dead_letter

    INTAKE.labels("forbidden").inc()
    with session_scope(rt.url) as s:
        dead_letter(s, stage="intake", reason="authority_not_allowed",
                    detail=f"client {client.name} may not send cases for authority {authority}",
                    payload=body, hub_ref=ref, authority=authority)
    log.warning("intake.authority_refused", client=client.name, authority=authority, hub_ref=ref)
    return outside_scope(client, authority, ref or "")


def take_case(rt: Runtime, body: bytes, enqueue: bool) -> JSONResponse:
    """Store, route and queue one verified case."""
    try:
        accepted = accept_case(rt, body, channel="api")
    except CaseValidationError as exc:
        INTAKE.labels("invalid").inc()
        return JSONResponse(
            status_code=422,
            content={
                "error": "invalid Hub case",
                "ref": exc.where,
                "fields": exc.fields,
                "hint": "the case was recorded as rejected; correct the named fields and resend",
            },
        )
    if enqueue and not accepted.duplicate:
        from hubbridge.workflows.tasks import enqueue_delivery

        try:
            enqueue_delivery(accepted.hub_ref)
        except Exception as exc:  # the case is stored: mark it due, so beat's next sweep publishes it
            log.warning("intake.enqueue_failed", hub_ref=accepted.hub_ref, error=str(exc)[:200])
            from hubbridge.workflows.schedule import mark_unpublished

            mark_unpublished(rt, deliver=[accepted.hub_ref])
    if accepted.amended:
        queue_followups(rt, accepted.hub_ref, enqueue)
        INTAKE.labels("amended").inc()
        return JSONResponse(status_code=202, content={"ref": accepted.hub_ref, "status": "amended",
                                                      "followups": accepted.amended})
    INTAKE.labels("duplicate" if accepted.duplicate else "accepted").inc()
    return JSONResponse(
        status_code=202,
        content={"ref": accepted.hub_ref, "status": "duplicate" if accepted.duplicate else "accepted"},
    )


def queue_followups(rt: Runtime, hub_ref: str, enqueue: bool, *, push: bool = False) -> None:
    """Queue delivery of a case's new follow-ups (and its Hub push); a broker that fails leaves them to the sweep."""
    if not enqueue:
        return
    from hubbridge.workflows.tasks import enqueue_followups, enqueue_push

    try:
        enqueue_followups(hub_ref)
        if push:
            enqueue_push(hub_ref)
    except Exception as exc:
        log.warning("followup.enqueue_failed", hub_ref=hub_ref, error=str(exc)[:200])
        from hubbridge.workflows.schedule import mark_unpublished

        mark_unpublished(rt, followup=[hub_ref], push=[hub_ref] if push else [])


FOLLOWUPS = Counter("hubbridge_followups_posted_total", "Follow-ups posted to the intake API", ["outcome"])


def take_followup(rt: Runtime, ref: str, body: bytes, enqueue: bool, client: ApiClient | None) -> JSONResponse:
    """Store and queue one verified follow-up for case `ref`."""
    from hubbridge.workflows.followups import accept_followup

    if client is not None:
        from sqlalchemy import select

        from hubbridge.store import CaseRow, session_scope

        with session_scope(rt.url) as s:
            authority = s.scalar(select(CaseRow.authority).where(CaseRow.hub_ref == ref))
        if authority is not None and not client.serves(authority):
            FOLLOWUPS.labels("forbidden").inc()
            # which council a case belongs to is that council's business: not named here
            return JSONResponse(status_code=403, content={
                "error": f"client {client.name!r} may not follow this case up: it is not for one of its councils",
                "ref": ref,
                "hint": f"this client's token covers {', '.join(client.authorities)}; send the follow-up with the "
                        "token of a client for the case's council"})
    try:
        accepted = accept_followup(rt, body, ref=ref, channel="api")
    except FollowUpValidationError as exc:
        FOLLOWUPS.labels("unknown_case" if exc.unknown_case else "invalid").inc()
        return JSONResponse(
            status_code=404 if exc.unknown_case else 422,
            content={"error": f"no case {ref}" if exc.unknown_case else "invalid follow-up", "ref": ref,
                     "fields": exc.fields, "hint": exc.hint},
        )
    if not accepted.duplicate:
        queue_followups(rt, ref, enqueue, push=accepted.push)
    FOLLOWUPS.labels("duplicate" if accepted.duplicate else "accepted").inc()
    return JSONResponse(status_code=202, content={
        "ref": ref, "sequence": accepted.sequence, "status": "duplicate" if accepted.duplicate else "accepted"})


async def followup_body(request: Request, rt: Rt) -> bytes:
    """A follow-up's body, which may carry up to ten evidence files: its limit allows for them (in base64)."""
    files = (rt.settings.evidence_max_bytes * 4 // 3 + 1024) * 10
    return await read_body(request, rt.settings.max_body_bytes + files)


@router.post("/cases/{ref}/events", status_code=202)
async def case_event(ref: str, request: Request, rt: Rt, enqueue: Enqueue,
                     body: Annotated[bytes, Depends(followup_body)]) -> JSONResponse:
    """A follow-up from the Hub for a case it sent (amendment, note, evidence, priority, cancel, reopen)."""
    secret = os.environ.get(rt.settings.intake_secret_env)
    if not secret:
        FOLLOWUPS.labels("refused").inc()
        raise HTTPException(503, f"intake is disabled until {rt.settings.intake_secret_env} is set")
    from hubbridge.signing import verify

    try:
        verify(request.headers, body, secret)
    except SecurityError as exc:
        FOLLOWUPS.labels("unsigned").inc()
        raise HTTPException(401, str(exc)) from None
    conf = api_file(request.app)
    client = None
    if conf.clients:
        client = client_for(request.headers.get("authorization", ""), token_clients(conf, rt.settings.api_token_env))
        if client is None:
            FOLLOWUPS.labels("unauthorised").inc()
            raise HTTPException(401, "a valid bearer token of an api.yaml client is required",
                                headers={"WWW-Authenticate": "Bearer"})
    return await run_in_threadpool(take_followup, rt, ref, body, enqueue, client)


@router.post("/cases", status_code=202)
async def intake(request: Request, rt: Rt, enqueue: Enqueue, body: Body) -> JSONResponse:
    secret = os.environ.get(rt.settings.intake_secret_env)
    if not secret:
        INTAKE.labels("refused").inc()
        raise HTTPException(503, f"intake is disabled until {rt.settings.intake_secret_env} is set")
    from hubbridge.signing import verify

    try:
        verify(request.headers, body, secret)
    except SecurityError as exc:
        INTAKE.labels("unsigned").inc()
        log.warning("intake.refused", reason=str(exc))
        raise HTTPException(401, str(exc)) from None
    refusal = await run_in_threadpool(scope_refusal, rt, request, body)
    if refusal is not None:
        return refusal
    # storing and queueing block on PostgreSQL and RabbitMQ: in the threadpool, not on the event loop,
    # so one slow commit or publisher confirm does not hold up every other request
    return await run_in_threadpool(take_case, rt, body, enqueue)


@router.get("/cases/{ref}", response_model=None)
def case_status(ref: str, rt: Rt, client: Client) -> dict[str, Any] | JSONResponse:
    from hubbridge.workflows.trail import case_trail

    trail = case_trail(rt.url, ref)
    if trail is None:
        raise HTTPException(404, f"no case {ref}")
    if not client.serves(trail["authority"]):
        # which council a case belongs to is itself that council's business: not named here
        return JSONResponse(status_code=403, content={
            "error": f"client {client.name!r} may not read this case: it is not for one of its councils",
            "hint": f"this client's token covers {', '.join(client.authorities)}; ask with the token of a "
                    "client for the case's council",
        })
    return trail


def take_updates(rt: Runtime, connector: str, updates: list[Any], enqueue: bool) -> JSONResponse:
    """Take a verified webhook's updates through the same once-only path as polled ones and queue the pushes."""
    touched: set[str] = set()
    for upd in updates:
        try:
            ref = take_update(rt, connector, upd)
        except IntegrityError:  # the poller (or a concurrent delivery of this webhook) took it first
            continue
        if ref:
            touched.add(ref)
    touched.update(raise_pending(rt, connector))
    if enqueue and touched:
        from hubbridge.workflows.tasks import enqueue_push

        for ref in sorted(touched):
            try:
                enqueue_push(ref)
            except Exception as exc:  # the outbox row is stored: mark it due, so beat's next sweep pushes it
                log.warning("webhook.enqueue_failed", hub_ref=ref, error=str(exc)[:200])
                from hubbridge.workflows.schedule import mark_unpublished

                mark_unpublished(rt, push=[ref])
    WEBHOOKS.labels("accepted").inc()
    log.info("webhook.taken", connector=connector, updates=len(updates), hub_updates=len(touched))
    return JSONResponse(status_code=200, content={"received": len(updates), "cases": sorted(touched)})


def webhook_plugin(connector: str, rt: Rt) -> type[Connector]:
    """The plugin class of a connector instance that takes pushed updates; 404 for any other."""
    instance = rt.config.connectors.get(connector)
    if instance is None:
        WEBHOOKS.labels("unknown").inc()
        raise HTTPException(404, f"no connector instance {connector!r}")
    cls = connector_class(instance.plugin)
    if instance.webhook_secret_env is None or not cls.supports_webhooks:
        WEBHOOKS.labels("unknown").inc()
        why = (
            "set its webhook_secret_env in connectors.yaml"
            if cls.supports_webhooks
            else f"the {instance.plugin} plugin has none"
        )
        raise HTTPException(404, f"connector {connector!r} does not take pushed updates ({why})")
    return cls


@router.post("/webhooks/{connector}")
async def webhook(
    connector: str,
    request: Request,
    rt: Rt,
    enqueue: Enqueue,
    plugin: Annotated[type[Connector], Depends(webhook_plugin)],
    body: Body,
) -> JSONResponse:
    """A back office pushes its updates here, signed like intake with the instance's own webhook secret."""
    env = rt.config.connectors[connector].webhook_secret_env
    assert env is not None  # webhook_plugin refused the instance otherwise
    secret = os.environ.get(env)
    if not secret:
        WEBHOOKS.labels("refused").inc()
        raise HTTPException(503, f"webhooks for {connector} are disabled until {env} is set")
    try:
        updates = plugin.parse_webhook(request.headers, body, secret)
    except SecurityError as exc:
        WEBHOOKS.labels("unsigned").inc()
        log.warning("webhook.refused", connector=connector, reason=str(exc))
        raise HTTPException(401, str(exc)) from None
    except ConnectorError as exc:
        WEBHOOKS.labels("invalid").inc()
        raise HTTPException(422, str(exc)) from None
    return await run_in_threadpool(take_updates, rt, connector, updates, enqueue)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def metrics_access(request: Request, rt: Rt) -> None:
    """/metrics needs an API token unless api.yaml opens it (open_metrics: true)."""
    if not api_file(request.app).open_metrics:
        await require_token(request, rt)


async def docs_access(request: Request) -> None:
    """/docs, /redoc and /openapi.json are not served unless api.yaml opens them (open_docs: true)."""
    if not api_file(request.app).open_docs:
        raise HTTPException(404, "API docs are off: set open_docs: true in api.yaml to serve them")


@router.get("/metrics", dependencies=[Depends(metrics_access)])
def metrics(rt: Rt) -> PlainTextResponse:
    # workers' counts from the shared metrics directory; states (SLA standing, circuits, queues) read now
    from hubbridge.workflows.metrics import scrape_registry

    body = generate_latest(scrape_registry(rt.url, rt.settings.resolved_broker_url)).decode()
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


STORE_RETRY_AFTER_SECONDS = 10
"""What a client is told to wait while the store is unreachable (a PostgreSQL restart takes seconds)."""


def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with Retry-After while the store cannot be reached, so the Hub retries; never a traceback."""
    if not isinstance(exc, OperationalError) and not getattr(exc, "connection_invalidated", False):
        # a statement the store refused (not an outage): a bug, but still no traceback to the client
        log.error("api.store_error", path=request.url.path, error=type(exc).__name__)
        return JSONResponse(status_code=500, content={"error": "internal error; the operators have been told"})
    if request.url.path == "/cases":
        INTAKE.labels("store_down").inc()
    # the driver's own message (no SQL, no parameters): statements can carry case values
    log.warning("api.store_unavailable", path=request.url.path, error=str(getattr(exc, "orig", exc))[:200])
    return JSONResponse(
        status_code=503,
        headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
        content={"error": "the store is unavailable", "hint": f"nothing was taken in; retry in "
                 f"{STORE_RETRY_AFTER_SECONDS} seconds"},
    )


def docs_router(api: FastAPI) -> APIRouter:
    """/openapi.json, /docs and /redoc, served only when api.yaml opens them."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    docs = APIRouter(include_in_schema=False, dependencies=[Depends(docs_access)])

    @docs.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(api.openapi())

    @docs.get("/docs")
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{api.title} - docs")

    @docs.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{api.title} - ReDoc")

    return docs


def create_app(rt: Runtime | None = None, *, enqueue: bool = True) -> FastAPI:
    """Build the intake app; `enqueue=False` stores cases without queueing (reconcile picks them up)."""
    # the docs routes are added below, behind docs_access, rather than left open by FastAPI
    api = FastAPI(title="hubbridge intake", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.rt = rt
    api.state.enqueue = enqueue
    api.state.api_file = None
    api.include_router(router)
    api.include_router(docs_router(api))
    api.add_exception_handler(DBAPIError, store_unavailable)
    from hubbridge.workflows.console.routes import console_router  # the console pages and /track

    api.include_router(console_router(functools.partial(app_runtime, api)))
    from hubbridge.workflows.open311_door import open311_router  # GeoReport v2 clients (FixMyStreet)

    api.include_router(open311_router(functools.partial(app_runtime, api)))
    return api
