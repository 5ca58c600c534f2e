"""The SLA report: one definition of volume, met %, breached, at risk, open and percentiles everywhere."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from hubbridge.case import HubStatus
from hubbridge.errors import HubbridgeError
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.report import build_report, period, to_csv, to_json
from tests.sla.conftest import utc

H = timedelta(hours=1)
START = utc(2026, 3, 2, 7, 0)  # Monday; depot calendar 07:00-15:00, ack 4 h, resolve 24 h (3 days)
NOW = utc(2026, 3, 4, 15, 0)  # Wed 15:00: 24 business hours after START


def load(sla: SlaEngine, s: Session) -> None:
    """Ten bromsgrove cases acknowledged after 1..10 business hours; six resolved; one in redditch."""
    for i in range(1, 11):
        ref = f"WH-2026-{i:06d}"
        sla.start(s, ref, "refuse.missed-collection", "bromsgrove", "normal", START)
        sla.on_status(s, ref, HubStatus.ACKNOWLEDGED, START + i * H if i <= 8 else utc(2026, 3, 3, 7 + i - 8))
        if i <= 5:
            sla.on_status(s, ref, HubStatus.RESOLVED, utc(2026, 3, 3, 7 + i))  # 8 + i business hours
        elif i == 6:
            sla.on_status(s, ref, HubStatus.CANCELLED, utc(2026, 3, 3, 8))
    sla.start(s, "WH-2026-000099", "refuse.missed-collection", "redditch", "normal", START + 14 * H)  # Tue 07:00
    sla.start(s, "WH-2026-000098", "refuse.missed-collection", "redditch", "normal", utc(2026, 4, 1, 9))  # April
    s.commit()


def test_report_figures(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        load(sla, s)
        rows = {(r.group["authority"], r.clock): r for r in build_report(s, date(2026, 3, 1), date(2026, 3, 31),
                                                                        now=NOW)}
    ack = rows[("bromsgrove", "acknowledge")]
    # acknowledged after 1..8 h, then 9 and 10 h (Tue 08:00, 09:00): 4 met of 10
    assert (ack.volume, ack.completed, ack.met, ack.breached, ack.open, ack.at_risk) == (10, 10, 4, 6, 0, 0)
    assert ack.met_pct == 40.0
    assert (ack.median_h, ack.p90_h) == (5.0, 9.0)
    res = rows[("bromsgrove", "resolve")]
    # 5 resolved after 9..13 h, 1 cancelled (withdrawn, not completed), 4 open at 24 h: breached
    assert (res.volume, res.completed, res.met, res.open, res.breached) == (10, 5, 5, 4, 4)
    assert res.met_pct == 100.0
    assert (res.median_h, res.p90_h) == (11.0, 13.0)
    red = rows[("redditch", "resolve")]
    # started Tue 07:00: 16 of 24 business hours used by Wed 15:00, past the 18 h warning? no: on track
    assert (red.volume, red.open, red.at_risk, red.breached, red.met_pct, red.median_h) == (1, 1, 0, 0, None, None)
    assert rows[("redditch", "acknowledge")].breached == 1


def test_report_at_risk_and_grouping(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        load(sla, s)
        rows = build_report(s, date(2026, 3, 1), date(2026, 3, 31), by=["service"], now=utc(2026, 3, 5, 9, 0))
        by_clock = {r.clock: r for r in rows}
        # the service area's clocks too: these cases were acknowledged without a `delivered` first
        assert set(by_clock) == {"acknowledge", "resolve", "backoffice-acknowledge", "backoffice-resolve"}
        assert by_clock["resolve"].volume == 11
        assert by_clock["resolve"].at_risk == 1  # redditch: 18 h of 24 by Thu 09:00
        april = build_report(s, date(2026, 4, 1), date(2026, 4, 1), by=["authority"], now=NOW)
        assert [(r.group, r.clock, r.volume) for r in april] == [
            ({"authority": "redditch"}, "acknowledge", 1), ({"authority": "redditch"}, "resolve", 1)]


def test_formats(sla: SlaEngine, sqlite_store: Engine) -> None:
    with Session(sqlite_store) as s:
        load(sla, s)
        rows = build_report(s, date(2026, 3, 1), date(2026, 3, 31), now=NOW)
    table = list(csv.DictReader(io.StringIO(to_csv(rows, ["service", "authority"]))))
    assert table[0]["service"] == "refuse.missed-collection" and table[0]["met_pct"] == "40.0"
    data = json.loads(to_json(rows, date(2026, 3, 1), date(2026, 3, 31), ["service", "authority"]))
    resolve = next(r for r in data["rows"] if r["clock"] == "resolve" and r["authority"] == "bromsgrove")
    assert resolve["median_h"] == 11.0 and data["from"] == "2026-03-01"


def test_period_is_london_days() -> None:
    lo, hi = period(date(2026, 3, 29), date(2026, 6, 30))
    assert lo == utc(2026, 3, 29, 0, 0)  # midnight GMT, before the change that night
    assert hi == utc(2026, 6, 30, 23, 0)  # midnight BST at the end of 30 June
    with pytest.raises(HubbridgeError):
        period(date(2026, 3, 2), date(2026, 3, 1))


def test_bad_group(sla: SlaEngine, sqlite_store: Engine) -> None:
    with Session(sqlite_store) as s, pytest.raises(HubbridgeError, match="cannot group by 'colour'"):
        build_report(s, date(2026, 3, 1), date(2026, 3, 2), by=["colour"])
