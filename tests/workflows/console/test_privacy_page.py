"""The console's privacy page: retention periods and what is due, for operators and admins only."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import APIRouter, Depends
from sqlalchemy import update

from hubbridge.store import CaseRow, session_scope, utcnow
from hubbridge.workflows.api import app_runtime, create_app
from hubbridge.workflows.console import privacy_page
from hubbridge.workflows.console.visits import Console
from hubbridge.workflows.intake import accept_case

from ..conftest import Rig
from .conftest import cases_of, write_console_yaml
from .test_console import login


@pytest.fixture
def app(rig: Rig, console_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    hashes = write_console_yaml(rig.rt.settings.config_dir)
    monkeypatch.setenv("TEST_OLIVE_HASH", hashes["olive"])
    monkeypatch.setenv("TEST_RUFUS_HASH", hashes["rufus"])
    api = create_app(rig.rt, enqueue=False)
    # mounted as console_router would mount it (routes.py registers it with one include_router line)
    console = Console(functools.partial(app_runtime, api))
    router = APIRouter(include_in_schema=False, dependencies=[Depends(console.attach)])
    router.include_router(privacy_page.router)
    api.include_router(router)
    yield api


def test_operators_see_each_services_period_and_the_closed_cases_due(app: Any, rig: Rig) -> None:
    case = cases_of("refuse.missed-collection")[0]
    ref = accept_case(rig.rt, json.dumps(case)).hub_ref
    with session_scope(rig.url) as s:
        s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(
            status="closed", status_at=utcnow() - timedelta(days=400)))
    page = login(app, "olive").get("/console/privacy")
    assert page.status_code == 200, page.text
    assert '<dd id="due-cases">1</dd>' in page.text
    assert "<code>refuse.missed-collection</code></td><td class=\"num\">180</td>" in page.text
    assert "(default)" in page.text  # a service privacy.yaml does not list gets the default period


def test_a_service_area_user_may_not_see_it(app: Any) -> None:
    assert login(app, "rufus").get("/console/privacy").status_code == 403
    assert login(app, "ada").get("/console/privacy").status_code == 200
