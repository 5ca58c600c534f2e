"""The door's FastAPI routes under /open311/v2: each resource's format, body and parameters, then its answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hubbridge.workflows.open311_door.catalogue import (
    DoorConfig,
    discovery,
    door_config,
    service_definition,
    services,
)
from hubbridge.workflows.open311_door.service_requests import get_request, get_requests, get_token, post_request
from hubbridge.workflows.open311_door.updates import get_updates, post_update
from hubbridge.workflows.open311_door.wire import FORMATS, GeoReportError, error_response, render

if TYPE_CHECKING:
    from hubbridge.workflows.runtime import Runtime

PREFIX = "/open311/v2"


def _form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise GeoReportError(400, "the body is not UTF-8 application/x-www-form-urlencoded") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        out.setdefault(k, v)  # the first of a repeated field, as most GeoReport servers take it
    return out


def _split(name: str) -> tuple[str, str]:
    stem, dot, fmt = name.rpartition(".")
    if not dot or fmt not in FORMATS:
        raise GeoReportError(404, f"unknown resource {name}: add .json or .xml")
    return stem, fmt


def _fmt_of(path: str) -> str:
    return path.rpartition(".")[2] if path.rpartition(".")[2] in FORMATS else "json"


async def _body(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" not in ctype:
        raise GeoReportError(400, "POST bodies must be application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise GeoReportError(413, f"body is over the {limit}-byte limit")
    return bytes(body)


def _keep_key_out_of_logs(request: Request) -> dict[str, str]:
    """The query's parameters; the api_key is then taken out of the request's query, which the access log prints."""
    params = dict(request.query_params)
    if "api_key" in params:
        # GeoReport puts the key in the URL of a GET: uvicorn's access line would write it to every log
        kept = [(k, v) for k, v in parse_qsl(request.scope.get("query_string", b"").decode("latin-1"),
                                             keep_blank_values=True) if k != "api_key"]
        request.scope["query_string"] = urlencode(kept).encode("latin-1")
    return params


Resource = tuple[Callable[["Runtime", DoorConfig, dict[str, str]], Any], str, str | None]
"""A resource's work (runtime, door config, parameters -> body), its XML root and its XML item element."""


def open311_router(runtime_of: Callable[[], Runtime]) -> APIRouter:
    """The door's routes under /open311/v2; `runtime_of()` gives the app's Runtime."""
    door = APIRouter(prefix=PREFIX, include_in_schema=False)

    async def answer(request: Request, params: dict[str, str], work: Any, root: str, item: str | None) -> Response:
        fmt = _fmt_of(request.url.path)
        try:
            rt = await run_in_threadpool(runtime_of)  # made when first needed: reads the config
            conf = await run_in_threadpool(door_config, rt)
            if request.method == "POST":
                params |= _form(await _body(request, rt.settings.max_body_bytes))
            body = await run_in_threadpool(work, rt, conf, params)
        except GeoReportError as exc:
            return error_response(fmt, exc.status, exc.description)
        return render(fmt, root, item, body)

    async def dispatch(request: Request, name: str, pick: Callable[[str], Resource | None], unknown: str) -> Response:
        """The answer of the resource `pick` finds for the name's stem; the spec's 404 where it finds none."""
        params = _keep_key_out_of_logs(request)
        try:
            stem, _ = _split(name)
        except GeoReportError as exc:
            return error_response(_fmt_of(name), exc.status, exc.description)
        found = pick(stem)
        if found is None:
            return error_response(_fmt_of(name), 404, f"unknown resource {unknown}")
        return await answer(request, params, *found)

    @door.get("/{name}")
    async def listing(name: str, request: Request) -> Response:
        url = f"{str(request.base_url).rstrip('/')}{PREFIX}/"
        return await dispatch(request, name, {
            "discovery": (lambda rt, conf, p: discovery(url), "discovery", None),
            "services": (services, "services", "service"),
            "requests": (get_requests, "service_requests", "request"),
            "servicerequestupdates": (get_updates, "service_requests_updates", "request_update"),
        }.get, name)

    @door.post("/{name}")
    async def posting(name: str, request: Request) -> Response:
        enqueue = bool(request.app.state.enqueue)
        return await dispatch(request, name, {
            "requests": (lambda rt, conf, p: post_request(rt, conf, p, enqueue), "service_requests", "request"),
            "servicerequestupdates": (lambda rt, conf, p: post_update(rt, conf, p, enqueue),
                                      "service_request_updates", "request_update"),
        }.get, name)

    @door.get("/{kind}/{name}")
    async def one(kind: str, name: str, request: Request) -> Response:
        def pick(key: str) -> Resource | None:
            return {
                "services": (lambda rt, conf, p: service_definition(rt, conf, key, p), "service_definition", None),
                "requests": (lambda rt, conf, p: get_request(rt, conf, key, p), "service_requests", "request"),
                "tokens": (lambda rt, conf, p: get_token(rt, conf, key, p), "service_requests", "request"),
            }.get(kind)

        return await dispatch(request, name, pick, f"{kind}/{name}")

    return door
