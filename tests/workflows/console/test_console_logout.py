"""Logout ends a console session for good: a cookie copied before logout is refused afterwards."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from hubbridge.store import RevokedSessionRow, session_scope
from hubbridge.workflows.console.sessions import COOKIE_NAME

from ..conftest import Rig
from .test_console import app, client_for, csrf_of, login

__all__ = ["app"]  # the fixture, imported to be used here


def test_a_cookie_copied_before_logout_is_refused_after_it(app: Any, rig: Rig) -> None:
    client = login(app, "olive")
    page = client.get("/console/cases")
    assert page.status_code == 200
    stolen = client.cookies.get(COOKIE_NAME)
    assert stolen
    assert client.post("/console/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    thief = client_for(app)
    thief.cookies.set(COOKIE_NAME, stolen)
    resp = thief.get("/console/cases")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/login")
    with session_scope(rig.url) as s:
        assert s.scalars(select(RevokedSessionRow.user)).all() == ["olive"]


def test_logging_in_again_after_logout_works(app: Any) -> None:
    client = login(app, "olive")
    page = client.get("/console/cases")
    assert client.post("/console/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    again = login(app, "olive")
    assert again.get("/console/cases").status_code == 200
