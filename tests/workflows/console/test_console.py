"""The console and the tracking page through the ASGI app: access rules, CSRF, role scoping, tracking refusals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from hubbridge.errors import ConfigError, ConfigErrors
from hubbridge.sla.report import build_report
from hubbridge.store import CaseRow, DeadLetterRow, EventRow, LinkRow, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.console.passwords import hash_password, verify_password
from hubbridge.workflows.console.queues import queue_depths
from hubbridge.workflows.console.sessions import COOKIE_NAME, AttemptLimiter, Session, SessionCodec
from hubbridge.workflows.console.settings import load_console_settings
from hubbridge.workflows.delivery import deliver_case
from tests.conftest import AMQP_URL

from ..conftest import Rig
from .conftest import PASSWORDS, cases_of, take_in, write_console_yaml


@pytest.fixture
def app(rig: Rig, console_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    hashes = write_console_yaml(rig.rt.settings.config_dir, tracking_attempts=4)
    monkeypatch.setenv("TEST_OLIVE_HASH", hashes["olive"])
    monkeypatch.setenv("TEST_RUFUS_HASH", hashes["rufus"])
    yield create_app(rig.rt, enqueue=False)


def client_for(app: Any) -> TestClient:
    return TestClient(app, follow_redirects=False)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def login(app: Any, name: str, password: str | None = None) -> TestClient:
    client = client_for(app)
    form = client.get("/console/login")
    resp = client.post("/console/login", data={"name": name, "password": password or PASSWORDS[name],
                                               "csrf": csrf_of(form.text), "next": "/console/cases"})
    assert resp.status_code == 303, resp.text
    return client


def refused_case(rig: Rig) -> tuple[str, int]:
    """A missed-bin case the back office refuses (unknown UPRN): one open dead letter."""
    case = cases_of("refuse.missed-collection")[0]
    bad = sorted(rig.backoffice.unknown_uprns)[0]
    case["location"]["uprn"] = bad
    case["customer"]["address"]["uprn"] = bad
    ref = take_in(rig.rt, case, deliver=False)
    assert deliver_case(rig.rt, ref).kind == "dead"
    with session_scope(rig.url) as s:
        dead_id = s.scalar(select(DeadLetterRow.id).where(DeadLetterRow.hub_ref == ref))
    assert dead_id is not None
    return ref, dead_id


# -- access ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/console/cases", "/console/sla", "/console/queues", "/console/dead/1/replay"])
def test_console_pages_send_a_stranger_to_the_login_page(app: Any, path: str) -> None:
    resp = client_for(app).get(path)
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/console/login?next=")


def test_actions_without_a_session_are_refused(app: Any, rig: Rig) -> None:
    _, dead_id = refused_case(rig)
    client = client_for(app)
    resp = client.post(f"/console/dead/{dead_id}/replay", data={"csrf": "anything"})
    assert resp.status_code == 403
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).replayed_at is None


def test_login_sets_a_signed_httponly_samesite_cookie_and_a_wrong_password_is_refused(app: Any) -> None:
    client = client_for(app)
    form = client.get("/console/login")
    cookie = form.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # http: auto = not secure
    token = csrf_of(form.text)
    bad = client.post("/console/login", data={"name": "olive", "password": "nope", "csrf": token})
    assert bad.status_code == 401 and "do not match" in bad.text
    unknown = client.post("/console/login", data={"name": "nobody", "password": "nope", "csrf": token})
    assert unknown.status_code == 401 and unknown.text == bad.text
    good = client.post("/console/login", data={"name": "olive", "password": PASSWORDS["olive"], "csrf": token,
                                               "next": "/console/queues"})
    assert good.status_code == 303 and good.headers["location"] == "/console/queues"
    assert "HttpOnly" in good.headers["set-cookie"]
    page = client.get("/console/queues")
    assert page.status_code == 200 and "olive" in page.text
    assert csrf_of(page.text) != token, "the CSRF token is renewed at login"


def test_secure_cookie_over_https_and_when_configured(app: Any, rig: Rig) -> None:
    resp = TestClient(app, base_url="https://console.example", follow_redirects=False).get("/console/login")
    assert "Secure" in resp.headers["set-cookie"]


def test_login_needs_the_csrf_token_of_the_session(app: Any) -> None:
    client = client_for(app)
    client.get("/console/login")
    resp = client.post("/console/login", data={"name": "olive", "password": PASSWORDS["olive"], "csrf": "forged"})
    assert resp.status_code == 403
    other = client_for(app)  # a token from another browser's session is no good either
    token = csrf_of(other.get("/console/login").text)
    assert client.post("/console/login", data={"name": "olive", "password": PASSWORDS["olive"],
                                               "csrf": token}).status_code == 403


def test_login_redirect_stays_inside_the_console(app: Any) -> None:
    client = client_for(app)
    token = csrf_of(client.get("/console/login").text)
    resp = client.post("/console/login", data={"name": "olive", "password": PASSWORDS["olive"], "csrf": token,
                                               "next": "//evil.example/console/"})
    assert resp.headers["location"] == "/console/cases"


def test_a_tampered_cookie_is_no_session(app: Any) -> None:
    client = login(app, "olive")
    value = client.cookies[COOKIE_NAME]
    body, sig = value.split(".")
    forged = SessionCodec("another-secret-of-enough-length-0123456789", 3600).dumps(
        Session(user="ada", csrf="x", issued=datetime.now(UTC).timestamp(), fingerprint=None))
    for bad in (f"{body}.{sig[:-2]}AA", forged):
        client.cookies.set(COOKIE_NAME, bad)
        assert client.get("/console/cases").status_code == 303


def test_changing_a_password_ends_that_users_sessions(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = login(app, "olive")
    assert client.get("/console/cases").status_code == 200
    monkeypatch.setenv("TEST_OLIVE_HASH", hash_password("a-new-password-123", log2_n=12))
    assert client.get("/console/cases").status_code == 303


def test_logout_needs_csrf_and_ends_the_session(app: Any) -> None:
    client = login(app, "olive")
    page = client.get("/console/cases")
    assert client.post("/console/logout", data={"csrf": "wrong"}).status_code == 403
    assert client.get("/console/cases").status_code == 200
    assert client.post("/console/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
    assert client.get("/console/cases").status_code == 303


def test_failed_logins_are_limited_per_address(app: Any) -> None:
    client = client_for(app)
    token = csrf_of(client.get("/console/login").text)
    codes = [client.post("/console/login", data={"name": "olive", "password": f"wrong{i}", "csrf": token}).status_code
             for i in range(6)]
    assert codes == [401] * 5 + [429]
    right = client.post("/console/login", data={"name": "olive", "password": PASSWORDS["olive"], "csrf": token})
    assert right.status_code == 429 and "Retry-After" in right.headers


def test_console_is_off_without_the_session_secret(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_CONSOLE_SECRET")
    resp = client_for(app).get("/console/login")
    assert resp.status_code == 503 and "TEST_CONSOLE_SECRET" in resp.text
    assert client_for(app).get("/track").status_code == 200


def test_pages_carry_security_headers_and_no_external_resources(app: Any) -> None:
    client = login(app, "olive")
    for path in ("/console/cases", "/console/sla", "/console/queues", "/track"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert "default-src 'none'" in resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"
        assert not re.search(r'(src|href)="(https?:)?//', resp.text), f"{path} loads something from elsewhere"
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/console/static/..%2Fsettings.py").status_code == 404


# -- case lookup ----------------------------------------------------------------------------------


def test_case_lookup_by_hub_or_backoffice_reference_shows_the_whole_trail(app: Any, rig: Rig) -> None:
    ref = take_in(rig.rt, cases_of("refuse.missed-collection")[0])
    with session_scope(rig.url) as s:
        link = s.scalar(select(LinkRow).where(LinkRow.hub_ref == ref))
    assert link is not None
    client = login(app, "olive")
    for query in (ref, link.backoffice_ref):
        page = client.get("/console/cases", params={"ref": query})
        assert page.status_code == 200
        html = page.text
        assert f'id="case-ref">{ref}<' in html
        assert 'id="case-status">delivered<' in html and 'id="case-stage">acknowledged<' in html
        assert link.backoffice_ref in html and (link.mapping_version or "") in html
        assert "acknowledge" in html and "resolve" in html  # both SLA clocks, with due times and standing
        assert "on track" in html or "at risk" in html
        assert "received" in html and "delivered" in html and "hub.acknowledged" in html
    missing = client.get("/console/cases", params={"ref": "WH-2026-999999"})
    assert missing.status_code == 404 and 'id="not-found"' in missing.text


def test_case_page_lists_the_followups_with_their_delivery_state(app: Any, rig: Rig) -> None:
    from hubbridge.store import utcnow
    from hubbridge.workflows.followups import accept_followup, deliver_followups

    ref = take_in(rig.rt, cases_of("refuse.missed-collection")[0])
    at = utcnow().isoformat()
    accept_followup(rig.rt, {"ref": ref, "kind": "note", "note": "Rang back", "occurred_at": at})
    assert deliver_followups(rig.rt, ref).kind == "done"
    accept_followup(rig.rt, {"ref": ref, "kind": "cancel", "occurred_at": at})
    html = login(app, "olive").get("/console/cases", params={"ref": ref}).text
    table = html.split('id="followups"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 2
    assert "note" in rows[0] and "fu-delivered" in rows[0] and "operation" in rows[0]
    assert "cancel" in rows[1] and "fu-pending" in rows[1]
    assert "Rang back" not in html  # what the Hub said of the customer is not on the page


def test_case_lookup_shows_no_customer_details(app: Any, rig: Rig) -> None:
    case = cases_of("refuse.missed-collection")[0]
    ref = take_in(rig.rt, case)
    html = login(app, "olive").get("/console/cases", params={"ref": ref}).text
    for personal in (case["customer"]["name"], case["customer"]["email"], case["customer"]["phone"]):
        assert personal not in html


# -- role scoping ---------------------------------------------------------------------------------


def test_service_user_sees_only_their_services(app: Any, rig: Rig) -> None:
    mine = take_in(rig.rt, cases_of("refuse.missed-collection")[0])
    theirs = take_in(rig.rt, cases_of("refuse.bulky-waste")[0])
    client = login(app, "rufus")
    assert client.get("/console/cases", params={"ref": mine}).status_code == 200
    other = client.get("/console/cases", params={"ref": theirs})
    nothing = client.get("/console/cases", params={"ref": "WH-2026-999998"})
    assert other.status_code == nothing.status_code == 404
    assert theirs not in other.text.replace(f'value="{theirs}"', "").replace(f"reference {theirs}", "")
    sla = client.get("/console/sla").text
    assert "refuse.missed-collection" in sla and "refuse.bulky-waste" not in sla
    ops_sla = login(app, "olive").get("/console/sla").text
    assert "refuse.bulky-waste" in ops_sla


def test_service_user_sees_their_dead_letters_read_only(app: Any, rig: Rig) -> None:
    ref, dead_id = refused_case(rig)
    client = login(app, "rufus")
    page = client.get("/console/queues").text
    assert ref in page and f"/console/dead/{dead_id}/replay" not in page
    assert 'id="queues"' not in page, "queue depths are for operators"
    assert client.get(f"/console/dead/{dead_id}/replay").status_code == 403
    resp = client.post(f"/console/dead/{dead_id}/replay", data={"csrf": csrf_of(page)})
    assert resp.status_code == 403
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).replayed_at is None


def test_service_patterns_and_roles_in_console_yaml(rig: Rig, tmp_path: Path) -> None:
    write_console_yaml(tmp_path, extra="  - {name: bins, role: service, services: ['refuse.*'], "
                                       "authorities: [worcester], password_hash_env: BINS_HASH}\n")
    conf = load_console_settings(tmp_path)
    bins, rufus, olive = conf.user("bins"), conf.user("rufus"), conf.user("olive")
    assert bins and rufus and olive
    assert bins.sees("refuse.bulky-waste") and not bins.sees("highways.pothole") and not bins.sees(None)
    assert rufus.sees("refuse.missed-collection") and not rufus.sees("refuse.bulky-waste")
    assert olive.sees("highways.pothole") and olive.sees(None)


@pytest.mark.parametrize("user, problem", [
    ("{name: eve, role: operator, password: hunter2}", "password"),
    ("{name: eve, role: operator, password_hash: hunter2}", "password_hash"),
    ("{name: eve, role: service, password_hash_env: EVE_HASH}", "services"),
    ("{name: eve, role: superuser, password_hash_env: EVE_HASH}", "role"),
])
def test_console_yaml_mistakes_are_reported_with_their_place(tmp_path: Path, user: str, problem: str) -> None:
    (tmp_path / "console.yaml").write_text(f"users:\n  - {user}\n")
    with pytest.raises((ConfigError, ConfigErrors)) as err:
        load_console_settings(tmp_path)
    text = str(err.value)
    assert "console.yaml:2" in text and problem in text


def test_shipped_console_yaml_is_valid_and_holds_no_password() -> None:
    from hubbridge.config.settings import SHIPPED_CONFIG_DIR

    conf = load_console_settings(SHIPPED_CONFIG_DIR)
    assert {u.role.value for u in conf.users} == {"operator", "admin", "service"}
    assert all(u.password_hash_env and not u.password_hash for u in conf.users)


# -- dead letters: confirmation, CSRF, roles ------------------------------------------------------


def test_replay_asks_for_confirmation_then_needs_csrf(app: Any, rig: Rig) -> None:
    ref, dead_id = refused_case(rig)
    client = login(app, "olive")
    listing = client.get("/console/queues")
    assert f'href="/console/dead/{dead_id}/replay"' in listing.text
    assert f"/console/dead/{dead_id}/discard" not in listing.text, "discarding is for admins"
    confirm = client.get(f"/console/dead/{dead_id}/replay")
    assert confirm.status_code == 200 and "Yes, replay it" in confirm.text
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).replayed_at is None, "showing the question changes nothing"
    assert client.post(f"/console/dead/{dead_id}/replay", data={"csrf": "forged"}).status_code == 403
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).replayed_at is None
    done = client.post(f"/console/dead/{dead_id}/replay", data={"csrf": csrf_of(confirm.text)})
    assert done.status_code == 200 and f"case {ref} queued for delivery again" in done.text
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).replayed_at is not None
        event = s.scalar(select(EventRow).where(EventRow.hub_ref == ref, EventRow.kind == "dead_letter.replayed"))
        assert event is not None and event.detail["by"] == "console:olive"


def test_discard_is_for_admins_and_needs_a_note(app: Any, rig: Rig) -> None:
    ref, dead_id = refused_case(rig)
    operator = login(app, "olive")
    assert operator.get(f"/console/dead/{dead_id}/discard").status_code == 403
    token = csrf_of(operator.get("/console/cases").text)
    assert operator.post(f"/console/dead/{dead_id}/discard", data={"csrf": token, "note": "x"}).status_code == 403
    admin = login(app, "ada")
    confirm = admin.get(f"/console/dead/{dead_id}/discard")
    assert confirm.status_code == 200 and "Yes, discard it" in confirm.text
    token = csrf_of(confirm.text)
    assert admin.post(f"/console/dead/{dead_id}/discard", data={"csrf": token, "note": "  "}).status_code == 400
    done = admin.post(f"/console/dead/{dead_id}/discard", data={"csrf": token, "note": "duplicate of a phone report"})
    assert done.status_code == 200
    with session_scope(rig.url) as s:
        assert s.get(DeadLetterRow, dead_id).discarded_at is not None
        event = s.scalar(select(EventRow).where(EventRow.hub_ref == ref, EventRow.kind == "dead_letter.discarded"))
        assert event is not None and event.detail["note"] == "duplicate of a phone report"
    again = admin.post(f"/console/dead/{dead_id}/replay", data={"csrf": token})
    assert again.status_code == 409 and "discarded" in again.text


def test_queues_page_lists_reasons_connectors_and_queue_depths(app: Any, rig: Rig) -> None:
    ref = take_in(rig.rt, cases_of("refuse.missed-collection")[0])
    refused_case(rig)
    html = login(app, "olive").get("/console/queues").text
    assert "refused: 1" in html
    assert 'id="queues"' in html and "hubbridge.deliver" in html
    with session_scope(rig.url) as s:
        connector = s.scalar(select(CaseRow.connector).where(CaseRow.hub_ref == ref))
    row = re.search(rf"<strong>{re.escape(str(connector))}</strong>.*?</tr>", html, re.S)
    assert row and "circuit-closed" in row.group(0) and "0.0 %" in row.group(0)


# -- SLA dashboard --------------------------------------------------------------------------------


def test_dashboard_uses_the_sla_report_and_shows_a_breach_once_the_clock_passes(app: Any, rig: Rig) -> None:
    refs = [take_in(rig.rt, c) for c in cases_of("refuse.missed-collection", 3)]
    client = login(app, "olive")
    today = datetime.now(UTC).date()
    before = client.get("/console/sla")
    assert before.status_code == 200
    with session_scope(rig.url) as s:
        report = build_report(s, today - timedelta(days=6), today, ("service", "authority"))
    assert sum(r.volume for r in report if r.clock == "resolve") >= len(refs)
    tile = re.search(r'id="tile-resolve".*?class="n-volume">(\d+)<.*?class="n-breached">(\d+)<', before.text, re.S)
    assert tile and int(tile.group(1)) == sum(r.volume for r in report if r.clock == "resolve")
    assert int(tile.group(2)) == 0
    assert "<svg" in before.text and 'id="chart"' in before.text
    # the SLA engine's sweep runs with a clock a month ahead: every open clock is breached
    with session_scope(rig.url) as s:
        rig.rt.sla.sweep(s, datetime.now(UTC) + timedelta(days=30))
    after = client.get("/console/sla").text
    tile = re.search(r'id="tile-resolve".*?class="n-breached">(\d+)<', after, re.S)
    assert tile and int(tile.group(1)) >= len(refs)
    day = re.search(rf"<td>{today.isoformat()}</td><td>(\d+)</td><td>(\d+)</td>", after)
    assert day and int(day.group(1)) >= len(refs) and int(day.group(2)) >= len(refs)


def test_dashboard_refuses_a_backwards_period(app: Any) -> None:
    resp = login(app, "olive").get("/console/sla", params={"start": "2026-03-10", "end": "2026-03-01"})
    assert resp.status_code == 400 and "before" in resp.text


# -- tracking -------------------------------------------------------------------------------------


def test_customer_tracks_a_case_with_reference_and_postcode_and_sees_nothing_else(app: Any, rig: Rig) -> None:
    case = cases_of("refuse.missed-collection")[0]
    ref = take_in(rig.rt, case)
    postcode = case["customer"]["address"]["postcode"]
    resp = client_for(app).post("/track", data={"ref": ref.lower(), "postcode": postcode.replace(" ", "").lower()})
    assert resp.status_code == 200
    html = resp.text
    assert 'id="track-status">With the service team<' in html
    expected = re.search(r'id="track-expected">([^<]+)<', html)
    assert expected and re.search(r"\d{4}$", expected.group(1).strip())
    for secret in (case["customer"]["name"], case["customer"]["email"], case["customer"]["phone"], postcode,
                   case["customer"]["address"]["line1"], case["description"], case["service"], case["authority"]):
        assert secret not in html


def test_wrong_postcode_and_wrong_reference_get_the_same_refusal(app: Any, rig: Rig) -> None:
    case = cases_of("refuse.missed-collection")[0]
    ref = take_in(rig.rt, case)
    other_postcode = "WR1 1AA" if case["customer"]["address"]["postcode"] != "WR1 1AA" else "B60 1AA"
    client = client_for(app)
    wrong_postcode = client.post("/track", data={"ref": ref, "postcode": other_postcode})
    right_postcode = case["customer"]["address"]["postcode"]
    wrong_ref = client.post("/track", data={"ref": "WH-2026-999997", "postcode": right_postcode})
    assert wrong_postcode.status_code == wrong_ref.status_code == 404
    assert wrong_postcode.text == wrong_ref.text
    assert 'id="track-refused"' in wrong_ref.text and ref not in wrong_postcode.text


def test_tracking_is_rate_limited_per_address(app: Any, rig: Rig) -> None:
    case = cases_of("refuse.missed-collection")[0]
    ref = take_in(rig.rt, case)
    client = client_for(app)
    codes = [client.post("/track", data={"ref": "WH-2026-999996", "postcode": "WR1 1AA"}).status_code
             for _ in range(4)]
    assert codes == [404] * 4
    blocked = client.post("/track", data={"ref": ref, "postcode": case["customer"]["address"]["postcode"]})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert 'id="track-result"' not in blocked.text


# -- building blocks ------------------------------------------------------------------------------


def test_password_hashes_verify_and_malformed_ones_never_match() -> None:
    stored = hash_password("correct horse", log2_n=12)
    assert verify_password("correct horse", stored) and not verify_password("correct hors", stored)
    assert not verify_password("x", "scrypt$12$8$1$bad$bad") and not verify_password("x", "plain")


def test_session_codec_refuses_expired_and_foreign_cookies() -> None:
    codec = SessionCodec("s" * 40, max_age_seconds=60)
    value = codec.dumps(Session.for_user("olive", "f" * 16))
    assert codec.loads(value).user == "olive"
    assert codec.loads(value, now=datetime.now(UTC).timestamp() + 120) is None
    assert SessionCodec("t" * 40, 60).loads(value) is None
    with pytest.raises(ValueError):
        SessionCodec("short", 60)


def test_attempt_limiter_forgets_after_the_window() -> None:
    limiter = AttemptLimiter(2, 10.0)
    assert limiter.hit("a", now=0) is None and limiter.hit("a", now=1) is None
    assert limiter.hit("a", now=2) == pytest.approx(8.0)
    assert limiter.hit("b", now=2) is None
    assert limiter.hit("a", now=10.5) is None


def test_queue_depth_on_the_embedded_broker(tmp_path: Path) -> None:
    from kombu import Connection

    import hubbridge.workflows.broker  # noqa: F401 - registers the embedded transport

    url = f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert {q.ready for q in queue_depths(url)} == {0}
    with Connection(url) as conn:
        q = conn.SimpleQueue("hubbridge.deliver")
        q.put({"n": 1})
        q.put({"n": 2})
        q.close()
    depths = {q.name: q.ready for q in queue_depths(url)}
    assert depths["hubbridge.deliver"] == 2 and depths["hubbridge.hub"] == 0


@pytest.mark.services
def test_queue_depth_on_rabbitmq() -> None:
    import uuid

    from kombu import Connection, Exchange, Queue

    name = f"hubbridge.console-test-{uuid.uuid4().hex[:8]}"
    with Connection(AMQP_URL) as conn:
        queue = Queue(name, Exchange(""), routing_key=name, durable=False, auto_delete=False)
        producer = conn.Producer()
        producer.publish({"n": 1}, routing_key=name, declare=[queue])
        producer.publish({"n": 2}, routing_key=name)
        try:
            depths = {q.name: q for q in queue_depths(AMQP_URL, names=[name, f"{name}-missing"])}
            assert depths[name].ready == 2 and depths[name].consumers == 0
            assert depths[f"{name}-missing"].ready == 0 and depths[f"{name}-missing"].note == "not declared yet"
        finally:
            queue.bind(conn.default_channel).delete()
    down = queue_depths("amqp://guest:guest@127.0.0.1:1//", timeout=1)
    assert down and all(q.ready is None and "unreachable" in (q.note or "") for q in down)
