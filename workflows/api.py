"""The intake API: the Hub CRM posts cases here; operators read case status and metrics.

Intake is signed with HMAC (X-Hubbridge-Timestamp / X-Hubbridge-Signature) using the secret in the
environment variable named by settings.intake_secret_env; back offices push updates to
POST /webhooks/{connector}, signed the same way with the instance's `webhook_secret_env`; status
endpoints need the API token.
"""

from __future__ import annotations

import functools
import hmac
import os
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from hubbridge.connectors.base import Connector, connector_class
from hubbridge.errors import CaseValidationError, ConnectorError, SecurityError
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
    limit = rt.settings.max_body_bytes
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


async def require_token(request: Request, rt: Rt) -> None:
    """Refuse a request without the API bearer token (503 while no token is configured)."""
    expected = os.environ.get(rt.settings.api_token_env)
    if not expected:
        raise HTTPException(503, f"admin endpoints are disabled: set {rt.settings.api_token_env}")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


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
        except Exception as exc:  # the case is stored; reconcile will queue it
            log.warning("intake.enqueue_failed", hub_ref=accepted.hub_ref, error=str(exc)[:200])
    INTAKE.labels("duplicate" if accepted.duplicate else "accepted").inc()
    return JSONResponse(
        status_code=202,
        content={"ref": accepted.hub_ref, "status": "duplicate" if accepted.duplicate else "accepted"},
    )


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
    # storing and queueing block on PostgreSQL and RabbitMQ: in the threadpool, not on the event loop,
    # so one slow commit or publisher confirm does not hold up every other request
    return await run_in_threadpool(take_case, rt, body, enqueue)


@router.get("/cases/{ref}", dependencies=[Depends(require_token)])
def case_status(ref: str, rt: Rt) -> dict[str, Any]:
    from hubbridge.workflows.trail import case_trail

    trail = case_trail(rt.url, ref)
    if trail is None:
        raise HTTPException(404, f"no case {ref}")
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
            except Exception as exc:  # the outbox row is stored; reconcile will push it
                log.warning("webhook.enqueue_failed", hub_ref=ref, error=str(exc)[:200])
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


@router.get("/metrics")
def metrics(rt: Rt) -> PlainTextResponse:
    # the SLA gauges are set by the sweep in a worker process: this process reads them from the store
    from hubbridge.sla.metrics import scrape_registry

    body = generate_latest(scrape_registry(rt.url)).decode()
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


def create_app(rt: Runtime | None = None, *, enqueue: bool = True) -> FastAPI:
    """Build the intake app; `enqueue=False` stores cases without queueing (reconcile picks them up)."""
    api = FastAPI(title="hubbridge intake", version="0.1.0", docs_url="/docs", redoc_url=None)
    api.state.rt = rt
    api.state.enqueue = enqueue
    api.include_router(router)
    from hubbridge.workflows.console.routes import console_router  # the console pages and /track

    api.include_router(console_router(functools.partial(app_runtime, api)))
    return api
