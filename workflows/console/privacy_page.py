"""The console's read-only privacy page: each service's retention period, what is due and what was erased."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from hubbridge.workflows.console.settings import ConsoleUser, Role
from hubbridge.workflows.console.visits import ConsolePage, ConsoleRoute, RoleCheck, Runtime

router = APIRouter(include_in_schema=False, route_class=ConsoleRoute)

# counts across every council's cases: not for a service-area user, who sees only their own services
PRIVACY_ROLES = (Role.OPERATOR, Role.ADMIN)
PrivacyViewer = Annotated[ConsoleUser, Depends(RoleCheck(*PRIVACY_ROLES))]


@router.get("/console/privacy", response_class=HTMLResponse)
def privacy(page: ConsolePage, user: PrivacyViewer, rt: Runtime) -> Response:
    from hubbridge.privacy import load_privacy, retention_status

    policy = load_privacy(rt.config.config_dir, rt.config.services)
    status = retention_status(rt.url, policy)
    services = [(key, rt.config.services[key].name if key in rt.config.services else key,
                 status.periods.get(key, status.default_days)) for key in sorted(rt.config.services)]
    return page.render("privacy.html", retention=status, services=services)
