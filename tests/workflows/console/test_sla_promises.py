"""The SLA dashboard shows both promises side by side (the customer's, the service area's) and who holds the delay."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hubbridge.sla.report import build_promises
from hubbridge.store import session_scope

from ..conftest import Rig
from .conftest import cases_of, take_in
from .test_console import app, login  # noqa: F401  (the console app fixture and its sign-in)


def promise_rows(html: str) -> dict[tuple[str, str], dict[str, int]]:
    """The dashboard's promise table as {(service, authority): {cell class: number}}."""
    out = {}
    for service, authority, body in re.findall(
            r'<tr class="promise-row" data-service="([^"]+)" data-authority="([^"]+)">(.*?)</tr>', html, re.S):
        cells = dict(re.findall(r'class="num ([a-z-]+)[^"]*">(\d+)<', body))
        out[(service, authority)] = {k: int(v) for k, v in cells.items()}
    return out


def test_dashboard_puts_both_promises_side_by_side_and_says_who_holds_the_delay(
        app: Any, rig: Rig) -> None:  # noqa: F811
    delivered = [take_in(rig.rt, c) for c in cases_of("refuse.missed-collection", 2)]
    waiting = take_in(rig.rt, cases_of("refuse.missed-collection")[0], deliver=False)
    client = login(app, "olive")
    html = client.get("/console/sla").text
    assert 'id="promise-table"' in html and "Customer SLA" in html
    assert 'id="tile-backoffice-resolve"' in html and "service area</span>" in html
    rows = promise_rows(html)
    mine = [r for (service, _), r in rows.items() if service == "refuse.missed-collection"]
    total = {k: sum(r.get(k, 0) for r in mine) for k in ("n-cases", "s-waiting", "held-hub", "held-area")}
    assert total == {"n-cases": 3, "s-waiting": 1, "held-hub": 1, "held-area": 2}
    # the same figures as the report the CLI prints
    today = datetime.now(UTC).date()
    with session_scope(rig.url) as s:
        report = build_promises(s, today - timedelta(days=6), today, rig.rt.sla.config.promises)
    assert sum(p.cases for p in report if p.group["service"] == "refuse.missed-collection") == 3
    # a month on, every open clock has breached: the delivered cases' delay is the service area's, the other the Hub's
    with session_scope(rig.url) as s:
        rig.rt.sla.sweep(s, datetime.now(UTC) + timedelta(days=30))
    later = client.get("/console/sla").text
    mine = [r for (service, _), r in promise_rows(later).items() if service == "refuse.missed-collection"]
    total = {k: sum(r.get(k, 0) for r in mine) for k in ("c-breached", "s-breached", "blame-hub", "blame-area")}
    assert total == {"c-breached": 3, "s-breached": 2, "blame-hub": 1, "blame-area": 2}
    assert waiting not in later and all(ref not in later for ref in delivered)  # counts, never case refs
