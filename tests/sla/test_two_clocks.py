"""Two promises, two sets of clocks: the customer's SLA from routing, the service area's own level from delivery.

Both move with the case's Hub status, priority changes and cancellations; a reopen restarts every clock of
both; their breaches escalate and chase saying which promise; the report and the CLI put them side by side
with who holds the delay.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from hubbridge.case import HubStatus
from hubbridge.config.settings import SHIPPED_CONFIG_DIR, Settings
from hubbridge.errors import ConfigErrors
from hubbridge.sla.cli import sla_app
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.escalate import send_escalations
from hubbridge.sla.policy import CUSTOMER, REQUIRED_CLOCKS, SERVICE_AREA, load_sla_config
from hubbridge.sla.report import build_promises, build_report
from hubbridge.sla.tables import SlaClockRow, SlaEscalationSendRow
from hubbridge.store import CaseRow, EventRow, HubUpdateRow
from tests.sla.conftest import add_case, fresh_engine, utc
from tests.sla.test_escalations import (  # noqa: F401  (smtp, hooks: the loopback SMTP and webhook fixtures)
    SETTINGS,
    Hooks,
    Inbox,
    configured,
    env,
    hooks,
    smtp,
    url_of,
)

H = timedelta(hours=1)
# refuse.missed-collection, depot calendar Mon-Fri 07:00-15:00 (8 h days): customer acknowledge 4 working
# hours and resolve 3 working days from routing; the service area's 3 working hours and 3 days from delivery
MON = utc(2026, 3, 2, 7, 0)
REF = "WH-2026-000001"
SA_CLOCKS = ("backoffice-acknowledge", "backoffice-resolve")


def by_clock(sla: SlaEngine, s: Session, ref: str = REF) -> dict[str, SlaClockRow]:
    return {c.clock: c for c in sla.clocks_of(s, ref)}


# -- the policy --------------------------------------------------------------------------------------------


def test_every_shipped_policy_times_both_promises_with_its_own_targets(sla: SlaEngine) -> None:
    config = sla.config
    assert config.promises == {"acknowledge": CUSTOMER, "resolve": CUSTOMER,
                               "backoffice-acknowledge": SERVICE_AREA, "backoffice-resolve": SERVICE_AREA}
    for key in config.file.policies:
        for prio in ("low", "normal", "high", "emergency"):
            specs = sla.specs(key, prio)
            assert {n for n, s in specs.items() if s.promise == CUSTOMER} == set(REQUIRED_CLOCKS), key
            assert {n for n, s in specs.items() if s.promise == SERVICE_AREA} == set(SA_CLOCKS), key
            for name in SA_CLOCKS:
                rules = specs[name].rules
                # the Hub holds a routed case: the service area's time starts at the delivery
                assert HubStatus.ROUTED not in rules.start_on and HubStatus.DELIVERED in rules.start_on
                assert HubStatus.DELIVERED in rules.restart_on
            # the back office's first action fits inside the customer's acknowledge target
            assert specs["backoffice-acknowledge"].target <= specs["acknowledge"].target, (key, prio)
    high = sla.specs("refuse.missed-collection", "high")
    assert high["backoffice-resolve"].target_text == "2 working days"
    assert sla.specs("highways.pothole", "emergency")["backoffice-acknowledge"].calendar.name == "24x7"
    assert sla.specs("refuse.missed-collection", "normal")["backoffice-acknowledge"].target == 3 * H


def test_a_service_area_clock_started_on_routed_is_refused(tmp_path: Path) -> None:
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    old = "    promise: service_area\n    start_on: [delivered]      #"
    assert old in text
    (tmp_path / "sla.yaml").write_text(text.replace(old, "    promise: service_area\n    start_on: [routed]      #"))
    with pytest.raises(ConfigErrors, match="service-area clock 'backoffice-acknowledge' starts on routed"):
        load_sla_config(tmp_path)


def test_due_gives_the_customers_clocks_unless_asked_for_all(sla: SlaEngine) -> None:
    assert set(sla.due("refuse.missed-collection", "normal", MON)) == set(REQUIRED_CLOCKS)
    every = sla.due("refuse.missed-collection", "normal", MON, promise=None)
    assert every["backoffice-acknowledge"] == MON + 3 * H
    assert set(sla.due("refuse.missed-collection", "normal", MON, promise=SERVICE_AREA)) == set(SA_CLOCKS)


# -- the clocks --------------------------------------------------------------------------------------------


def test_the_service_areas_clocks_run_from_delivery(sla: SlaEngine, session: Session) -> None:
    add_case(session, REF)
    sla.start(session, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
    c = by_clock(sla, session)
    assert (c["backoffice-acknowledge"].state, c["backoffice-acknowledge"].due_at) == ("pending", None)
    sla.on_status(session, REF, HubStatus.DELIVERED, MON + 2 * H)  # the Hub held it two hours
    assert c["backoffice-acknowledge"].state == "running" and c["backoffice-acknowledge"].started_at == MON + 2 * H
    assert c["backoffice-acknowledge"].due_at == MON + 5 * H  # 3 working hours from delivery
    assert c["acknowledge"].due_at == MON + 4 * H  # 4 from routing: the customer's falls due first
    assert c["backoffice-resolve"].due_at == utc(2026, 3, 5, 9, 0)  # 24 working hours from Mon 09:00
    sla.on_status(session, REF, HubStatus.ACKNOWLEDGED, MON + 4 * H + 30 * timedelta(minutes=1))
    # 4.5 h after routing: the customer's acknowledge is over; 2.5 h after delivery: the service area met its own
    assert sla.standing(c["acknowledge"], MON + 5 * H) == "breached"
    assert sla.standing(c["backoffice-acknowledge"], MON + 5 * H) == "met"
    assert c["backoffice-acknowledge"].spent_s == int(2.5 * 3600)
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, MON + 6 * H)
    assert c["resolve"].state == c["backoffice-resolve"].state == "paused"
    sla.on_status(session, REF, HubStatus.IN_PROGRESS, utc(2026, 3, 3, 7, 0))
    sla.on_status(session, REF, HubStatus.RESOLVED, utc(2026, 3, 3, 9, 0))
    assert (c["resolve"].spent_s, c["backoffice-resolve"].spent_s) == (8 * 3600, 6 * 3600)
    assert {x.state for x in c.values()} == {"stopped"}
    views = {v.clock: v for v in sla.show(session, REF, utc(2026, 3, 3, 10, 0))}
    assert views["backoffice-resolve"].promise == SERVICE_AREA and views["resolve"].promise == CUSTOMER


def test_priority_change_moves_both_promises_keeping_time_spent(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.DELIVERED, MON + H)
    sla.on_priority(session, REF, "high", MON + 7 * H)  # 6 working hours into the service area's clock
    c = by_clock(sla, session)
    sa = c["backoffice-resolve"]
    assert sa.priority == "high" and sa.target_s == 16 * 3600 and sa.spent_s == 6 * 3600
    assert sa.due_at == utc(2026, 3, 4, 8, 0)  # 10 h left from Mon 14:00: 1 h Mon, 8 h Tue, 1 h Wed
    # the customer's, from routing an hour earlier: 7 h spent, 9 h left
    assert c["resolve"].target_s == 16 * 3600 and c["resolve"].due_at == utc(2026, 3, 3, 15, 0)


def test_a_cancellation_stops_every_clock_of_both_promises(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.DELIVERED, MON + H)
    sla.on_status(session, REF, HubStatus.CANCELLED, MON + 2 * H)  # what a cancel follow-up does
    c = by_clock(sla, session)
    assert {x.state for x in c.values()} == {"stopped"}
    assert {sla.standing(x, MON + 100 * H) for x in c.values()} == {"withdrawn"}


def test_a_reopen_restarts_every_clock_of_both_promises(sla: SlaEngine, store: Engine, tmp_path: Path) -> None:
    """The reopen follow-up's own step: `set_status(..., DELIVERED)` on an ended case, as followups does."""
    from hubbridge.workflows.outbox import set_status
    from hubbridge.workflows.runtime import Runtime

    rt = Runtime(Settings(database_url=url_of(store), data_dir=tmp_path / "var"))
    try:
        with Session(store) as s:
            add_case(s, REF)
            rt.sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
            case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == REF))
            assert case is not None
            for status, at in ((HubStatus.DELIVERED, MON + H), (HubStatus.ACKNOWLEDGED, MON + 2 * H),
                               (HubStatus.RESOLVED, MON + 5 * H)):
                set_status(rt, s, case, status, at)
            s.commit()
            assert {c.state for c in by_clock(rt.sla, s).values()} == {"stopped"}
            reopened = utc(2026, 3, 4, 8, 0)
            set_status(rt, s, case, HubStatus.DELIVERED, reopened, note="Reopened in bartec-bromsgrove")
            s.commit()
            c = by_clock(rt.sla, s)
            assert set(c) == {"acknowledge", "resolve", *SA_CLOCKS}
            for name, row in c.items():
                assert (row.state, row.restarts, row.spent_s, row.started_at) == ("running", 1, 0, reopened), name
                assert not row.breached and not row.warned
            assert c["backoffice-acknowledge"].due_at == reopened + 3 * H
            assert c["acknowledge"].due_at == reopened + 4 * H
            # and the back office works the reopened case: its own clocks stop again
            set_status(rt, s, case, HubStatus.IN_PROGRESS, reopened + H)
            assert c["backoffice-acknowledge"].state == "stopped" and c["backoffice-resolve"].state == "running"
    finally:
        rt.close()


def test_a_case_raised_in_the_back_office_starts_both_promises(sla: SlaEngine, session: Session) -> None:
    add_case(session, REF, status="delivered")  # raised there: delivered from the start
    rows = sla.start(session, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
    assert {r.clock: r.state for r in rows} == dict.fromkeys(("acknowledge", "resolve", *SA_CLOCKS), "running")


def test_a_case_in_flight_without_the_service_areas_clocks_gets_them_at_delivery(
        sla: SlaEngine, session: Session) -> None:
    # clocks written before the policy had a service area's promise: only the customer's two
    for name, spec in sla.specs("refuse.missed-collection", "normal").items():
        if spec.promise == CUSTOMER:
            session.add(SlaClockRow(hub_ref=REF, clock=name, service="refuse.missed-collection", authority="bromsgrove",
                                    policy="refuse.missed-collection", priority="normal", calendar="depot",
                                    escalation="refuse-supervisors", state="running", target_s=int(
                                        spec.target.total_seconds()), warn_s=int(spec.warn_after.total_seconds()),
                                    spent_s=0, since=MON, started_at=MON, due_at=MON + spec.target, warned=False,
                                    breached=False, pauses=0, restarts=0))
    session.flush()
    sla.on_status(session, REF, HubStatus.DELIVERED, MON + H)
    c = by_clock(sla, session)
    assert set(c) == {"acknowledge", "resolve", *SA_CLOCKS}
    assert c["backoffice-acknowledge"].state == "running" and c["backoffice-acknowledge"].started_at == MON + H
    assert c["backoffice-resolve"].escalation == "refuse-supervisors"


# -- enforcement ---------------------------------------------------------------------------------------------


def test_a_service_area_breach_escalates_saying_so_and_chases_the_back_office(
        sla: SlaEngine, store: Engine, smtp: tuple[Inbox, int], hooks: tuple[Hooks, int]) -> None:  # noqa: F811
    inbox, sport = smtp
    hook, hport = hooks
    config = configured(sla.config, sport)
    with Session(store) as s:
        add_case(s, REF)
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == REF))
        assert case is not None
        case.stage, case.connector = "delivered", "bartec-bromsgrove"
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
        sla.on_status(s, REF, HubStatus.DELIVERED, MON)
        sla.on_status(s, REF, HubStatus.ACKNOWLEDGED, MON + H)  # both acknowledge clocks met
        s.commit()
        # Thu 07:00: 24 working hours since routing and delivery: both resolve clocks breach together
        result = sla.sweep(s, utc(2026, 3, 5, 7, 0))
        s.commit()
        assert result.breaches == 2 and result.chases == 2
        fired = {r.clock: r for r in s.scalars(select(SlaEscalationSendRow).where(
            SlaEscalationSendRow.kind == "breach", SlaEscalationSendRow.channel == "chase"))}
        assert set(fired) == {"resolve", "backoffice-resolve"}
        events = [e.detail for e in s.scalars(select(EventRow).where(EventRow.kind == "sla.breach"))]
        assert {(e["clock"], e["promise"]) for e in events} == {("resolve", CUSTOMER),
                                                               ("backoffice-resolve", SERVICE_AREA)}
        notes = {u.payload["note"] for u in s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == REF))}
        assert any(n.startswith("SLA breach: the service area's backoffice-resolve clock was due") for n in notes)
        assert any(n.startswith("SLA breach: the customer's resolve clock was due") for n in notes)
        report = send_escalations(url_of(store), config, SETTINGS, now=lambda: utc(2026, 3, 5, 7, 1),
                                  environ=env(hport))
        assert (report.sent, report.dead) == (4, 0)  # e-mail and Teams for each breach (chases wait for a chaser)
    bodies = {msg["Subject"]: msg.get_content() for _, msg in inbox.messages}
    sa_body = next(b for subject, b in bodies.items() if "backoffice-resolve clock" in subject)
    assert "Promise: the service area's own operational level (from delivery to its back office)" in sa_body
    cu_body = next(b for subject, b in bodies.items() if " resolve clock" in subject and "backoffice" not in subject)
    assert "Promise: the customer's SLA (from the Hub routing the case)" in cu_body
    facts = [{f["title"]: f["value"] for f in body["attachments"][0]["content"]["body"][1]["facts"]}
             for _, body in hook.received]
    assert {f["Clock"]: f["Promise"].split(" (")[0] for f in facts} == {
        "resolve": "the customer's SLA", "backoffice-resolve": "the service area's own operational level"}


def test_a_chase_can_be_kept_to_the_service_areas_breaches(sla: SlaEngine, sqlite_store: Engine,
                                                           tmp_path: Path) -> None:
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    old = "    queue: sla.escalations.refuse\n    hub_team: Hub refuse & recycling team\n    chase: {}"
    assert old in text
    (tmp_path / "sla.yaml").write_text(text.replace(old, old.replace("chase: {}", "chase: {promises: [service_area]}")))
    engine = SlaEngine.from_config(tmp_path)
    with Session(sqlite_store) as s:
        add_case(s, REF)
        case = s.scalar(select(CaseRow).where(CaseRow.hub_ref == REF))
        assert case is not None
        case.stage = "delivered"
        engine.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", MON)
        engine.on_status(s, REF, HubStatus.DELIVERED, MON)
        result = engine.sweep(s, MON + 7 * H)  # both acknowledge clocks over
        assert result.breaches == 2 and result.chases == 1
        chased = s.scalars(select(SlaEscalationSendRow.clock).where(SlaEscalationSendRow.channel == "chase")).all()
        assert chased == ["backoffice-acknowledge"]


# -- the report ----------------------------------------------------------------------------------------------


def load_four(sla: SlaEngine, s: Session) -> None:
    """A: the back office late; B: the Hub late to deliver; C: never delivered; D: waiting on the customer."""
    refs = {k: f"WH-2026-00000{i}" for i, k in enumerate("ABCD", 1)}
    for ref in refs.values():
        sla.start(s, ref, "refuse.missed-collection", "bromsgrove", "normal", MON)
    sla.on_status(s, refs["A"], HubStatus.DELIVERED, MON + timedelta(minutes=1))
    sla.on_status(s, refs["A"], HubStatus.ACKNOWLEDGED, utc(2026, 3, 3, 7, 0))  # 8 working hours on
    sla.on_status(s, refs["B"], HubStatus.DELIVERED, MON + 3 * H)
    sla.on_status(s, refs["B"], HubStatus.ACKNOWLEDGED, MON + 5 * H)  # 2 h of its 3, 5 h of the customer's 4
    sla.on_status(s, refs["D"], HubStatus.DELIVERED, MON)
    sla.on_status(s, refs["D"], HubStatus.ACKNOWLEDGED, MON + H)
    sla.on_status(s, refs["D"], HubStatus.AWAITING_CUSTOMER, MON + 2 * H)
    s.commit()


def test_the_report_puts_both_promises_side_by_side_with_who_holds_the_delay(sla: SlaEngine,
                                                                            store: Engine) -> None:
    now = utc(2026, 3, 3, 8, 0)
    with Session(store) as s:
        load_four(sla, s)
        rows = {r.clock: r for r in build_report(s, date(2026, 3, 1), date(2026, 3, 31), now=now,
                                                 promises=sla.config.promises)}
        [side] = build_promises(s, date(2026, 3, 1), date(2026, 3, 31), sla.config.promises, now=now)
    assert rows["backoffice-acknowledge"].promise == SERVICE_AREA and rows["acknowledge"].promise == CUSTOMER
    assert (rows["acknowledge"].volume, rows["acknowledge"].breached) == (4, 3)  # A, B, C
    assert (rows["backoffice-acknowledge"].volume, rows["backoffice-acknowledge"].breached) == (3, 1)  # C: none
    assert side.group == {"service": "refuse.missed-collection", "authority": "bromsgrove"}
    assert side.cases == 4
    assert side.customer == {"met": 0, "at_risk": 0, "breached": 3, "open": 1, "withdrawn": 0}
    assert side.service_area == {"met": 0, "at_risk": 0, "breached": 1, "open": 2, "withdrawn": 0,
                                 "not_started": 1, "untimed": 0}
    assert side.held_by == {"hub": 1, "service_area": 2, "customer": 1, "untimed": 0}
    # A's breach is the back office's (its own level breached too); B's and C's the Hub's
    assert side.breaches_held_by == {"hub": 2, "service_area": 1, "untimed": 0}
    assert side.handover == {"delivered": 3, "mean_h": round((60 + 3 * 3600) / 3 / 3600, 2), "max_h": 3.0}


def test_sla_report_json_and_table_show_both_promises(sla: SlaEngine, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    engine = fresh_engine(url)
    with Session(engine) as s:
        load_four(sla, s)
    engine.dispose()
    args = ["report", "--from", "2026-03-01", "--to", "2026-03-31", "--database-url", url,
            "--now", "2026-03-03T08:00Z", "--config-dir", str(SHIPPED_CONFIG_DIR)]
    result = CliRunner().invoke(sla_app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    assert set(data) == {"from", "to", "by", "rows", "promises"}
    assert {(r["clock"], r["promise"]) for r in data["rows"]} == {
        ("acknowledge", CUSTOMER), ("resolve", CUSTOMER), ("backoffice-acknowledge", SERVICE_AREA),
        ("backoffice-resolve", SERVICE_AREA)}
    [side] = data["promises"]
    assert set(side) == {"service", "authority", "cases", "customer", "service_area", "held_by",
                         "breaches_held_by", "handover"}
    assert side["customer"]["breached"] == 3 and side["service_area"]["breached"] == 1
    assert side["held_by"]["hub"] == 1 and side["breaches_held_by"]["service_area"] == 1
    table = CliRunner().invoke(sla_app, args)
    assert table.exit_code == 0, table.output
    assert "backoffice-resolve" in table.stdout and "service_area" in table.stdout
    assert "Both promises" in table.stdout and "who holds the delay" in table.stdout
    # customer: 3 breached; open cases held by the Hub 1, the service area 2, the customer 1
    assert "0 / 0 / 3" in table.stdout and "1 / 2 / 1" in table.stdout
