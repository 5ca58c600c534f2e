"""The warning/breach sweep with a controllable `now`: fires once per clock and does every action."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from kombu import Connection
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from hubbridge.case import CaseUpdate, HubStatus
from hubbridge.sla.enforce import FALLBACK_QUEUE, publish_escalations
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.tables import SlaClockRow, SlaEscalationRow, SlaSweepRow
from hubbridge.store import CaseRow, EventRow, HubUpdateRow
from tests.conftest import AMQP_URL
from tests.sla.conftest import add_case, utc

H = timedelta(hours=1)
# missed bin on the depot calendar 07:00-15:00: acknowledge 4 working hours (warn at 3), resolve 24 (warn 18)
START = utc(2026, 3, 2, 7, 0)
REF = "WH-2026-000001"


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def events(s: Session, kind: str) -> list[EventRow]:
    return list(s.scalars(select(EventRow).where(EventRow.kind == kind).order_by(EventRow.id)))


def updates(s: Session, ref: str = REF) -> list[HubUpdateRow]:
    return list(s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref).order_by(HubUpdateRow.sequence)))


def test_warning_then_breach_each_once(sla: SlaEngine, store: Engine) -> None:
    labels = {"service": "refuse.missed-collection", "authority": "bromsgrove", "clock": "acknowledge"}
    warned_before = counter("hubbridge_sla_warnings_total", **labels)
    breached_before = counter("hubbridge_sla_breaches_total", **labels)
    with Session(store) as s:
        add_case(s, REF)
        s.add(HubUpdateRow(hub_ref=REF, sequence=1, status="routed", payload={}))
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", START)
        s.commit()

        nothing = sla.sweep(s, START + 2 * H + timedelta(minutes=59))
        assert (nothing.warnings, nothing.breaches, nothing.updated_refs) == (0, 0, [])

        warn = sla.sweep(s, START + 3 * H)  # 75% of 4 h
        s.commit()
        assert (warn.warnings, warn.breaches, warn.updated_refs) == (1, 0, [REF])
        assert s.get(CaseRow, 1).queue_priority == 5
        [ev] = events(s, "sla.warning")
        assert ev.detail["clock"] == "acknowledge" and ev.detail["due_at"] == "2026-03-02T11:00:00Z"
        [_, upd] = updates(s)
        assert upd.sequence == 2 and upd.status == "routed"
        model = CaseUpdate.model_validate(upd.payload)
        assert model.sequence == 2 and model.ref == REF and model.status == HubStatus.ROUTED
        assert model.note == "SLA warning: the customer's acknowledge clock is due 2026-03-02T11:00:00Z"
        assert model.occurred_at == START + 3 * H

        again = sla.sweep(s, START + 3 * H + timedelta(minutes=30))
        assert (again.warnings, again.breaches) == (0, 0)

        breach = sla.sweep(s, START + 4 * H)
        s.commit()
        assert (breach.warnings, breach.breaches, breach.updated_refs) == (0, 1, [REF])
        assert breach.escalations == {"refuse-supervisors": [REF]}
        assert s.get(CaseRow, 1).queue_priority == 9
        [ev] = events(s, "sla.breach")
        assert ev.detail["escalation"] == "refuse-supervisors" and ev.detail["service"] == "refuse.missed-collection"
        upd = updates(s)[-1]
        assert upd.sequence == 3
        assert CaseUpdate.model_validate(upd.payload).note == (
            "SLA breach: the customer's acknowledge clock was due 2026-03-02T11:00:00Z; "
            "escalated to refuse-supervisors")

        later = sla.sweep(s, START + 100 * H)  # resolve warns and breaches in the same sweep: breach only
        s.commit()
        assert (later.warnings, later.breaches) == (0, 1)
        assert len(events(s, "sla.breach")) == 2 and len(events(s, "sla.warning")) == 1
        assert sla.sweep(s, START + 200 * H).breaches == 0
        assert s.scalar(select(func.count()).select_from(SlaSweepRow)) == 6
    assert counter("hubbridge_sla_warnings_total", **labels) == warned_before + 1
    assert counter("hubbridge_sla_breaches_total", **labels) == breached_before + 1


def test_many_cases_one_sweep_sequences_per_case(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        for i in range(1, 51):
            ref = f"WH-2026-{i:06d}"
            add_case(s, ref, authority="redditch" if i % 2 else "worcester")
            for seq in range(1, i % 4 + 1):
                s.add(HubUpdateRow(hub_ref=ref, sequence=seq, status="routed", payload={}))
            sla.start(s, ref, "refuse.missed-collection", "redditch" if i % 2 else "worcester", "normal",
                      START + timedelta(minutes=i))
        s.commit()
        result = sla.sweep(s, utc(2026, 3, 5, 15, 0))  # Thu: both clocks of every case breached
        s.commit()
        assert result.breaches == 100 and result.warnings == 0 and result.hub_updates == 100
        assert len(result.updated_refs) == 50
        for i in (1, 2, 3, 4):
            ref = f"WH-2026-{i:06d}"
            seqs = [u.sequence for u in updates(s, ref)]
            assert seqs == list(range(1, i % 4 + 3)), ref
        assert s.scalar(select(func.min(CaseRow.queue_priority))) == 9
        at_risk = REGISTRY.get_sample_value("hubbridge_sla_clocks_breached",
                                            {"service": "refuse.missed-collection", "authority": "redditch"})
        assert at_risk == 50


def test_paused_after_due_still_breaches_and_paused_before_does_not(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        add_case(s, "WH-2026-000001")
        add_case(s, "WH-2026-000002")
        sla.start(s, "WH-2026-000001", "refuse.missed-collection", "bromsgrove", "normal", START)
        sla.start(s, "WH-2026-000002", "refuse.missed-collection", "bromsgrove", "normal", START)
        # awaiting_customer stops acknowledge and pauses resolve (24 business hours, due Wed 15:00)
        sla.on_status(s, "WH-2026-000001", HubStatus.AWAITING_CUSTOMER, utc(2026, 3, 5, 10, 0))  # 27 h spent
        sla.on_status(s, "WH-2026-000002", HubStatus.AWAITING_CUSTOMER, START + 1 * H)
        s.commit()
        result = sla.sweep(s, START + 500 * H)
        assert result.updated_refs == ["WH-2026-000001"]
        assert result.breaches == 1


def test_stopped_clocks_never_fire(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        add_case(s, REF)
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", START)
        sla.on_status(s, REF, HubStatus.RESOLVED, START + H)
        s.commit()
        assert sla.sweep(s, START + 500 * H).breaches == 0


def test_sweep_without_case_row_fires_but_sends_no_update(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", START)
        s.commit()
        result = sla.sweep(s, START + 5 * H)
        assert result.breaches == 1 and result.hub_updates == 0 and result.updated_refs == []
        assert s.scalar(select(SlaClockRow.breached).where(SlaClockRow.clock == "acknowledge"))


def test_priority_raised_after_warning_does_not_warn_twice(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        add_case(s, REF)
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", START)
        wed_9 = utc(2026, 3, 4, 9, 0)  # 18 business hours: resolve warns (acknowledge breaches)
        first = sla.sweep(s, wed_9)
        assert (first.warnings, first.breaches) == (1, 1)
        sla.on_priority(s, REF, "high", wed_9)
        result = sla.sweep(s, wed_9 + timedelta(minutes=1))
        assert result.warnings == 0 and result.breaches == 1  # high: 16 h target, already over


def test_breach_goes_to_the_escalation_outbox_with_the_configured_queue(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        add_case(s, REF)
        add_case(s, "WH-2026-000002", service="highways.dangerous-defect", authority="worcestershire")
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", START)
        sla.start(s, "WH-2026-000002", "highways.dangerous-defect", "worcestershire", "normal", START,
                  escalation="no-such-team")
        s.commit()
        warn = sla.sweep(s, START + 3 * H)  # warnings are not escalated; the 24/7 clocks breach (2 h)
        s.commit()
        assert warn.escalated == 2 and warn.hub_refs == warn.updated_refs == [REF, "WH-2026-000002"]
        rows = list(s.scalars(select(SlaEscalationRow).order_by(SlaEscalationRow.id)))
        assert {(r.hub_ref, r.clock, r.escalation, r.queue) for r in rows} == {
            ("WH-2026-000002", "acknowledge", "no-such-team", FALLBACK_QUEUE),
            ("WH-2026-000002", "resolve", "no-such-team", FALLBACK_QUEUE),
        }
        breach = sla.sweep(s, START + 4 * H)
        s.commit()
        [row] = s.scalars(select(SlaEscalationRow).where(SlaEscalationRow.sweep_id == breach.sweep_id))
        assert (row.hub_ref, row.clock, row.escalation, row.queue) == (
            REF, "acknowledge", "refuse-supervisors", "sla.escalations.refuse")
        assert row.due_at == utc(2026, 3, 2, 11, 0) and row.published_at is None
        assert sla.sweep(s, START + 4 * H + timedelta(minutes=5)).escalated == 0


def test_pending_delivery_is_brought_forward_but_a_retry_keeps_its_time(sla: SlaEngine, store: Engine) -> None:
    later = utc(2026, 3, 9, 7, 0)
    with Session(store) as s:
        for i, attempts in ((1, 0), (2, 3), (3, 0)):
            ref = f"WH-2026-{i:06d}"
            add_case(s, ref)
            row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
            row.stage, row.attempts, row.next_attempt_at = "received", attempts, later
            sla.start(s, ref, "refuse.missed-collection", "bromsgrove", "normal", START)
        s.scalar(select(CaseRow).where(CaseRow.hub_ref == "WH-2026-000003")).stage = "delivered"
        s.commit()
        now = START + 3 * H
        result = sla.sweep(s, now)
        s.commit()
        assert result.warnings == 3 and result.brought_forward == 3
        due = dict(s.execute(select(CaseRow.hub_ref, CaseRow.next_attempt_at)).all())
        prio = dict(s.execute(select(CaseRow.hub_ref, CaseRow.queue_priority)).all())
        assert due == {"WH-2026-000001": now, "WH-2026-000002": later, "WH-2026-000003": later}
        assert set(prio.values()) == {5}


@pytest.mark.services
def test_publish_escalations_to_rabbitmq(sla: SlaEngine, sqlite_store: Engine) -> None:
    queue = "sla.escalations.refuse"
    with Connection(AMQP_URL) as conn, Session(sqlite_store) as s:
        with conn.channel() as channel:
            channel.queue_delete(queue)
        add_case(s, REF)
        sla.start(s, REF, "refuse.missed-collection", "bromsgrove", "normal", START)
        sla.sweep(s, START + 100 * H)  # both clocks breached
        s.commit()
        assert publish_escalations(s, conn, sla.config) == 2
        s.commit()
        assert publish_escalations(s, conn, sla.config) == 0  # stamped: not sent twice
        got = []
        with conn.channel() as channel:
            for _ in range(2):
                message = channel.basic_get(queue, no_ack=True)
                assert message is not None
                got.append(message)
            assert channel.basic_get(queue, no_ack=True) is None
            channel.queue_delete(queue)
        bodies = sorted((json.loads(m.body) for m in got), key=lambda b: b["clock"])
        assert [b["clock"] for b in bodies] == ["acknowledge", "resolve"]
        assert bodies[0]["hub_ref"] == REF and bodies[0]["hub_team"] == "Hub refuse & recycling team"
        assert bodies[0]["due_at"] == "2026-03-02T11:00:00+00:00"
        assert all(m.properties["priority"] == 9 and m.properties["delivery_mode"] == 2 for m in got)
        assert s.scalar(select(func.count()).select_from(SlaEscalationRow)
                        .where(SlaEscalationRow.published_at.is_(None))) == 0
