"""The intake API: the Hub CRM posts cases here; operators read case status and metrics.

Intake is signed with HMAC (X-Hubbridge-Timestamp / X-Hubbridge-Signature) using the secret in the
environment variable named by settings.intake_secret_env; back offices push updates to
POST /webhooks/{connector}, signed the same way with the instance's `webhook_secret_env`; status
endpoints need the API token.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from hubbridge.connectors.base import connector_class
from hubbridge.errors import CaseValidationError, ConnectorError, SecurityError
from hubbridge.workflows import pipeline

log = structlog.get_logger(__name__)

INTAKE = Counter("hubbridge_intake_total", "Hub cases posted to the intake API", ["outcome"])
WEBHOOKS = Counter("hubbridge_webhooks_total", "Back-office updates pushed to POST /webhooks", ["outcome"])


def create_app(rt: pipeline.Runtime | None = None, *, enqueue: bool = True) -> FastAPI:
    """Build the intake app; `enqueue=False` stores cases without queueing (reconcile picks them up)."""
    api = FastAPI(title="hubbridge intake", version="0.1.0", docs_url="/docs", redoc_url=None)
    state: dict[str, Any] = {"rt": rt}

    def runtime() -> pipeline.Runtime:
        if state["rt"] is None:
            state["rt"] = pipeline.runtime()
        return state["rt"]

    async def read_body(request: Request) -> bytes:
        limit = runtime().settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"body of {declared} bytes is over the {limit}-byte limit")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPException(413, f"body is over the {limit}-byte limit")
        return bytes(body)

    def require_token(request: Request) -> None:
        expected = os.environ.get(runtime().settings.api_token_env)
        if not expected:
            raise HTTPException(503, f"admin endpoints are disabled: set {runtime().settings.api_token_env}")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    def take_case(body: bytes) -> JSONResponse:
        """Store, route and queue one verified case."""
        rt = runtime()
        try:
            accepted = pipeline.accept_case(rt, body, channel="api")
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

    @api.post("/cases", status_code=202)
    async def intake(request: Request) -> JSONResponse:
        body = await read_body(request)
        secret = os.environ.get(runtime().settings.intake_secret_env)
        if not secret:
            INTAKE.labels("refused").inc()
            raise HTTPException(503, f"intake is disabled until {runtime().settings.intake_secret_env} is set")
        from hubbridge.signing import verify

        try:
            verify(request.headers, body, secret)
        except SecurityError as exc:
            INTAKE.labels("unsigned").inc()
            log.warning("intake.refused", reason=str(exc))
            raise HTTPException(401, str(exc)) from None
        # storing and queueing block on PostgreSQL and RabbitMQ: in the threadpool, not on the event loop,
        # so one slow commit or publisher confirm does not hold up every other request
        return await run_in_threadpool(take_case, body)

    @api.get("/cases/{ref}")
    def case_status(ref: str, request: Request) -> dict[str, Any]:
        require_token(request)
        from hubbridge.workflows.trail import case_trail

        trail = case_trail(runtime().url, ref)
        if trail is None:
            raise HTTPException(404, f"no case {ref}")
        return trail

    def take_updates(connector: str, updates: list[Any]) -> JSONResponse:
        """Take a verified webhook's updates through the same once-only path as polled ones and queue the pushes."""
        rt = runtime()
        touched: set[str] = set()
        for upd in updates:
            try:
                ref = pipeline.take_update(rt, connector, upd)
            except IntegrityError:  # the poller (or a concurrent delivery of this webhook) took it first
                continue
            if ref:
                touched.add(ref)
        touched.update(pipeline.raise_pending(rt, connector))
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

    @api.post("/webhooks/{connector}")
    async def webhook(connector: str, request: Request) -> JSONResponse:
        """A back office pushes its updates here, signed like intake with the instance's own webhook secret."""
        rt = runtime()
        instance = rt.config.connectors.get(connector)
        if instance is None:
            WEBHOOKS.labels("unknown").inc()
            raise HTTPException(404, f"no connector instance {connector!r}")
        parse = getattr(connector_class(instance.plugin), "parse_webhook", None)
        if instance.webhook_secret_env is None or parse is None:
            WEBHOOKS.labels("unknown").inc()
            why = "set its webhook_secret_env in connectors.yaml" if parse else f"the {instance.plugin} plugin has none"
            raise HTTPException(404, f"connector {connector!r} does not take pushed updates ({why})")
        body = await read_body(request)
        secret = os.environ.get(instance.webhook_secret_env)
        if not secret:
            WEBHOOKS.labels("refused").inc()
            env = instance.webhook_secret_env
            raise HTTPException(503, f"webhooks for {connector} are disabled until {env} is set")
        try:
            updates = parse(request.headers, body, secret)
        except SecurityError as exc:
            WEBHOOKS.labels("unsigned").inc()
            log.warning("webhook.refused", connector=connector, reason=str(exc))
            raise HTTPException(401, str(exc)) from None
        except ConnectorError as exc:
            WEBHOOKS.labels("invalid").inc()
            raise HTTPException(422, str(exc)) from None
        return await run_in_threadpool(take_updates, connector, updates)

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/metrics")
    def metrics() -> PlainTextResponse:
        # the SLA gauges are set by the sweep in a worker process: this process reads them from the store
        from hubbridge.sla.metrics import scrape_registry

        body = generate_latest(scrape_registry(runtime().url)).decode()
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    from hubbridge.workflows.console.routes import console_router  # the console pages and /track

    api.include_router(console_router(runtime))
    return api
