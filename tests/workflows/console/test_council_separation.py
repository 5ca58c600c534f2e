"""Separation between councils: a user or API client of council A never sees council B's cases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from hubbridge.errors import ConfigErrors
from hubbridge.signing import sign
from hubbridge.store import CaseRow, DeadLetterRow, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.console.case_views import views_of
from hubbridge.workflows.console.passwords import hash_password
from hubbridge.workflows.console.settings import load_console_settings
from hubbridge.workflows.delivery import deliver_case

from ..conftest import Rig
from .conftest import PASSWORDS, cases_of, take_in, write_console_yaml
from .test_console import csrf_of, login

INTAKE_SECRET = "separation-intake-secret"
WENDY = "wendy-refuse-password-1"
TOKENS = {"TEST_ALPHA_TOKEN": "alpha-token-" + "a" * 20, "TEST_BETA_TOKEN": "beta-token-" + "b" * 20}


@dataclass
class Council:
    """One council's cases in the store: delivered refs and one refused (dead-lettered) case."""

    code: str
    refs: list[str]
    dead_ref: str
    dead_id: int
    spare: dict[str, Any]


def two_councils() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Missed-bin cases of two different councils, three of each (casegen spreads them over the districts)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for case in cases_of("refuse.missed-collection", 60):
        by.setdefault(case["authority"], []).append(case)
    a, b = sorted((k for k, v in by.items() if len(v) >= 3), key=lambda k: -len(by[k]))[:2]
    return by[a][:3], by[b][:3]


def stored_council(rig: Rig, cases: list[dict[str, Any]]) -> Council:
    """A delivered case, a dead-lettered case (unknown UPRN) and one left unsent, of one council."""
    delivered = take_in(rig.rt, cases[0])
    bad = sorted(rig.backoffice.unknown_uprns)[0]
    refused = cases[1]
    refused["location"]["uprn"] = refused["customer"]["address"]["uprn"] = bad
    dead_ref = take_in(rig.rt, refused, deliver=False)
    assert deliver_case(rig.rt, dead_ref).kind == "dead"
    with session_scope(rig.url) as s:
        dead_id = s.scalar(select(DeadLetterRow.id).where(DeadLetterRow.hub_ref == dead_ref))
    assert dead_id is not None
    return Council(cases[0]["authority"], [delivered, dead_ref], dead_ref, dead_id, cases[2])


def write_api_yaml(config_dir: Path, a: str, b: str, *, extra: str = "") -> None:
    (config_dir / "api.yaml").write_text(
        f"clients:\n"
        f"  - {{name: alpha, token_env: TEST_ALPHA_TOKEN, authorities: [{a}]}}\n"
        f"  - {{name: beta, token_env: TEST_BETA_TOKEN, authorities: [{b}]}}\n{extra}"
    )


@pytest.fixture
def councils(rig: Rig, console_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Council, Council]]:
    cases_a, cases_b = two_councils()
    a, b = cases_a[0]["authority"], cases_b[0]["authority"]
    config_dir = rig.rt.settings.config_dir
    hashes = write_console_yaml(config_dir, extra=(
        f"  - {{name: wendy, role: service, services: ['refuse.*'], authorities: [{a}], "
        f"password_hash: \"{hash_password(WENDY, log2_n=12)}\"}}\n"))
    monkeypatch.setenv("TEST_OLIVE_HASH", hashes["olive"])
    monkeypatch.setenv("TEST_RUFUS_HASH", hashes["rufus"])
    monkeypatch.setenv("HUBBRIDGE_INTAKE_SECRET", INTAKE_SECRET)
    for name, token in TOKENS.items():
        monkeypatch.setenv(name, token)
    write_api_yaml(config_dir, a, b)
    yield create_app(rig.rt, enqueue=False), stored_council(rig, cases_a), stored_council(rig, cases_b)


def route_paths(routes: Any, prefix: str = "") -> Iterator[str]:
    """Every API route's path, through the included routers (FastAPI keeps those as routers of their own)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path
        elif hasattr(route, "original_router"):
            yield from route_paths(route.original_router.routes, prefix + (route.include_context.prefix or ""))


def bearer(env: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[env]}"}


def signed(case: dict[str, Any], **headers: str) -> dict[str, Any]:
    body = json.dumps(case).encode()
    return {"content": body, "headers": {"Content-Type": "application/json", **sign(body, INTAKE_SECRET), **headers}}


def without_asked(text: str, ref: str) -> str:
    """The page without the echo of the reference the user typed in (the form keeps what was asked)."""
    return text.replace(f'value="{ref}"', "").replace(f"reference {ref}", "")


def test_every_page_and_endpoint_as_council_a_shows_none_of_council_bs_cases(councils: Any, rig: Rig) -> None:
    app, a, b = councils
    wendy = login(app, "wendy", WENDY)
    api = TestClient(app, follow_redirects=False)
    a_id, b_id = a.dead_id, b.dead_id
    # every route of the app, each driven as council A's user or client; a new route must be added here
    calls: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
        "/console": [("GET", "/console", {})],
        "/console/": [("GET", "/console/", {})],
        "/console/login": [("GET", "/console/login", {})],
        "/console/logout": [],  # driven last, below
        "/console/cases": [("GET", "/console/cases", {})]
        + [("GET", "/console/cases", {"params": {"ref": r}}) for r in a.refs + b.refs],
        "/console/sla": [("GET", "/console/sla", {})],
        "/console/queues": [("GET", "/console/queues", {}),
                            ("GET", "/console/queues", {"params": {"authority": b.code}}),
                            ("GET", "/console/queues", {"params": {"service": "refuse.missed-collection"}})],
        "/console/dead/{dead_id}/{action}": [("GET", f"/console/dead/{i}/{act}", {})
                                             for i in (a_id, b_id) for act in ("replay", "discard")],
        "/console/dead/{dead_id}/replay": [("POST", f"/console/dead/{i}/replay", {}) for i in (a_id, b_id)],
        "/console/dead/{dead_id}/discard": [("POST", f"/console/dead/{i}/discard", {}) for i in (a_id, b_id)],
        "/console/privacy": [("GET", "/console/privacy", {})],
        "/console/static/{name}": [("GET", "/console/static/console.css", {})],
        "/track": [("GET", "/track", {}), ("POST", "/track", {"data": {"ref": b.refs[0], "postcode": "WR1 1AA"}})],
        "/cases": [("POST", "/cases", signed(a.spare, **bearer("TEST_ALPHA_TOKEN"))),
                   ("POST", "/cases", signed(b.spare, **bearer("TEST_ALPHA_TOKEN")))],
        "/cases/{ref}": [("GET", f"/cases/{r}", {"headers": bearer("TEST_ALPHA_TOKEN")}) for r in a.refs + b.refs],
        "/cases/{ref}/events": [("POST", f"/cases/{r}/events", signed(
            {"ref": r, "kind": "note", "note": "rang back", "occurred_at": "2026-12-08T09:00:00+00:00"},
            **bearer("TEST_ALPHA_TOKEN"))) for r in a.refs + b.refs],
        # the Open311 door: its own clients (config/open311.yaml); none has its key here, so each is refused
        "/open311/v2/{name}": [("GET", "/open311/v2/requests.json", {}),
                               ("GET", "/open311/v2/servicerequestupdates.json", {}),
                               ("POST", "/open311/v2/requests.json", {"data": {"service_code": "x"}})],
        "/open311/v2/{kind}/{name}": [("GET", f"/open311/v2/requests/{r}.json", {}) for r in b.refs],
        "/webhooks/{connector}": [("POST", "/webhooks/bartec", {"content": b"{}"})],
        "/healthz": [("GET", "/healthz", {})],
        "/metrics": [("GET", "/metrics", {"headers": bearer("TEST_ALPHA_TOKEN")})],
        "/openapi.json": [("GET", "/openapi.json", {})],
        "/docs": [("GET", "/docs", {})],
        "/redoc": [("GET", "/redoc", {})],
    }
    routes = set(route_paths(app.routes))
    assert "/cases/{ref}" in routes, "the route walk found nothing: it would check nothing"
    assert routes <= set(calls), f"routes not driven by this test: {sorted(routes - set(calls))}"

    csrf = csrf_of(wendy.get("/console/cases").text)
    seen: dict[str, int] = {}
    for driven in calls.values():
        for method, url, kw in driven:
            client = wendy if url.startswith("/console") else api
            if method == "POST" and url.startswith("/console"):
                kw = {"data": {"csrf": csrf, "note": "test"}}
            resp = client.request(method, url, **kw)
            seen[f"{method} {url}"] = resp.status_code
            text = resp.text
            for ref in [*b.refs, b.spare["ref"]]:
                # a refusal may name the case the client itself sent; nothing else may
                if ref.encode() in kw.get("content", b""):
                    text = text.replace(f'"ref":"{ref}"', "")
                asked = url.endswith(ref) or kw.get("params", {}).get("ref") == ref
                body = without_asked(text, ref) if asked else text
                assert ref not in body, f"{method} {url} shows council {b.code}'s case {ref}"
    # and the pages did work for council A: its cases are there
    assert seen[f"GET /cases/{a.refs[0]}"] == 200 and seen[f"GET /cases/{b.refs[0]}"] == 403
    assert seen[f"POST /cases/{a.refs[0]}/events"] == 202 and seen[f"POST /cases/{b.refs[0]}/events"] == 403
    assert a.dead_ref in wendy.get("/console/queues").text
    for ref in a.refs:
        assert wendy.get("/console/cases", params={"ref": ref}).status_code == 200
    for ref in b.refs:
        assert wendy.get("/console/cases", params={"ref": ref}).status_code == 404
    assert b.code not in wendy.get("/console/sla").text
    assert wendy.post("/console/logout", data={"csrf": csrf}).status_code == 303


def test_operators_still_see_every_council(councils: Any) -> None:
    app, a, b = councils
    olive = login(app, "olive")
    page = olive.get("/console/queues").text
    assert a.dead_ref in page and b.dead_ref in page
    for ref in a.refs + b.refs:
        assert olive.get("/console/cases", params={"ref": ref}).status_code == 200
    sla = olive.get("/console/sla").text
    assert a.code in sla and b.code in sla
    assert olive.get(f"/console/dead/{b.dead_id}/replay").status_code == 200


def test_a_client_sends_only_its_councils_cases_and_a_refused_one_is_kept(councils: Any, rig: Rig) -> None:
    app, _, b = councils
    api = TestClient(app)
    refused = api.post("/cases", **signed(b.spare, **bearer("TEST_ALPHA_TOKEN")))
    assert refused.status_code == 403
    assert "alpha" in refused.json()["error"] and b.code in refused.json()["error"]
    assert api.post("/cases", **signed(b.spare)).status_code == 401, "api.yaml lists clients: a token is needed"
    with session_scope(rig.url) as s:
        assert s.get(CaseRow, b.spare["ref"]) is None
        kept = s.scalars(select(DeadLetterRow).where(DeadLetterRow.reason == "authority_not_allowed")).all()
        assert [d.authority for d in kept] == [b.code]
    taken = api.post("/cases", **signed(b.spare, **bearer("TEST_BETA_TOKEN")))
    assert taken.status_code == 202 and taken.json()["ref"] == b.spare["ref"]
    assert api.get(f"/cases/{b.spare['ref']}", headers=bearer("TEST_BETA_TOKEN")).status_code == 200
    assert api.get(f"/cases/{b.spare['ref']}", headers=bearer("TEST_ALPHA_TOKEN")).status_code == 403
    assert api.get(f"/cases/{b.spare['ref']}", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_single_token_setup_still_serves_every_council(councils: Any, rig: Rig,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, a, b = councils
    (rig.rt.settings.config_dir / "api.yaml").unlink()
    monkeypatch.setenv("HUBBRIDGE_API_TOKEN", "the-one-admin-token")
    api = TestClient(create_app(rig.rt, enqueue=False))
    token = {"Authorization": "Bearer the-one-admin-token"}
    for ref in a.refs + b.refs:
        assert api.get(f"/cases/{ref}", headers=token).status_code == 200
    assert api.get(f"/cases/{a.refs[0]}").status_code == 401
    assert api.post("/cases", **signed(b.spare)).status_code == 202, "intake is authorised by its signature"


def test_metrics_and_docs_are_closed_unless_api_yaml_opens_them(councils: Any, rig: Rig) -> None:
    app, a, b = councils
    api = TestClient(app)
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=bearer("TEST_BETA_TOKEN")).status_code == 200
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert api.get(path).status_code == 404
        assert api.get(path, headers=bearer("TEST_ALPHA_TOKEN")).status_code == 404
    write_api_yaml(rig.rt.settings.config_dir, a.code, b.code, extra="open_docs: true\nopen_metrics: true\n")
    opened = TestClient(create_app(rig.rt, enqueue=False))
    assert opened.get("/metrics").status_code == 200
    assert "hubbridge intake" in opened.get("/docs").text
    assert "/cases/{ref}" in opened.get("/openapi.json").json()["paths"]
    assert opened.get("/redoc").status_code == 200


def test_the_console_records_who_viewed_which_case(councils: Any, rig: Rig) -> None:
    app, a, b = councils
    login(app, "wendy", WENDY).get("/console/cases", params={"ref": a.refs[0]})
    login(app, "wendy", WENDY).get("/console/cases", params={"ref": b.refs[0]})  # refused: not a view
    login(app, "olive").get(f"/console/dead/{b.dead_id}/replay")
    with session_scope(rig.url) as s:
        mine = views_of(s, a.refs[0])
        assert [(v.user, v.role, v.page) for v in mine] == [("wendy", "service", "case")]
        assert mine[0].viewed_at is not None
        assert [(v.user, v.page) for v in views_of(s, b.dead_ref)] == [("olive", "dead-letter")]
        assert views_of(s, b.refs[0]) == []


def test_a_service_user_must_name_their_councils(tmp_path: Path) -> None:
    (tmp_path / "console.yaml").write_text(
        "users:\n  - {name: eve, role: service, services: ['refuse.*'], password_hash_env: EVE_HASH}\n")
    with pytest.raises(ConfigErrors, match="authorities"):
        load_console_settings(tmp_path)
    (tmp_path / "console.yaml").write_text(
        "users:\n  - {name: eve, role: operator, authorities: [worcester], password_hash_env: EVE_HASH}\n")
    with pytest.raises(ConfigErrors, match="authorities"):
        load_console_settings(tmp_path)
    write_console_yaml(tmp_path, extra="  - {name: wyn, role: service, services: ['refuse.*'], "
                                       "authorities: [worcester], password_hash_env: WYN_HASH}\n")
    wyn = load_console_settings(tmp_path).user("wyn")
    assert wyn is not None and PASSWORDS
    assert wyn.sees_case("refuse.bulky-waste", "worcester")
    assert not wyn.sees_case("refuse.bulky-waste", "wychavon") and not wyn.sees_case("refuse.bulky-waste", None)
    assert not wyn.sees_case("highways.pothole", "worcester")
