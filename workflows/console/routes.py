"""The operations console and the public tracking page, as one FastAPI router mounted on the intake API.

Console pages (`/console/...`) need a login from `console.yaml`; service-area users see only their
services. Every POST carries the session's CSRF token. `/track` is public: a Hub reference and postcode
give the status and expected resolution date of that one case, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends

from hubbridge.workflows.console import deadletter_pages, pages, privacy_page, track
from hubbridge.workflows.console.track import track_case
from hubbridge.workflows.console.visits import Console

__all__ = ["console_router", "track_case"]


def console_router(runtime: Callable[[], Any]) -> APIRouter:
    """The console and tracking routes; `runtime` gives the process's `Runtime` when first needed."""
    console = Console(runtime)
    router = APIRouter(include_in_schema=False, dependencies=[Depends(console.attach)])
    router.include_router(pages.router)
    router.include_router(deadletter_pages.router)
    router.include_router(privacy_page.router)  # operators and admins only: counts across every council
    router.include_router(track.router)
    return router
