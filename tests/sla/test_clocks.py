"""Clock rules on Hub status: start, pause (several), resume, stop, restart on reopen, priority change."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from hubbridge.case import HubStatus
from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.errors import HubbridgeError
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.tables import SlaPauseRow
from hubbridge.store import EventRow
from tests.sla.conftest import add_case, utc

REF = "WH-2026-000001"
H = timedelta(hours=1)
# refuse.bulky-waste: office calendar 09:00-17:00 (8 h days), acknowledge 5 working days, resolve 20
MON = utc(2026, 3, 2, 9, 0)  # GMT, no bank holidays until Good Friday 3 April


def clocks(sla: SlaEngine, session: Session) -> dict[str, object]:
    return {c.clock: c for c in sla.clocks_of(session, REF)}


def test_start_creates_running_clocks_with_due_times(sla: SlaEngine, session: Session) -> None:
    add_case(session, REF, "refuse.bulky-waste")
    rows = sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    by = {r.clock: r for r in rows}
    # the customer's clocks run from routing; the service area's wait for the delivery
    assert set(by) == {"acknowledge", "resolve", "backoffice-acknowledge", "backoffice-resolve"}
    assert by["backoffice-acknowledge"].state == by["backoffice-resolve"].state == "pending"
    assert by["acknowledge"].state == "running"
    assert by["acknowledge"].due_at == utc(2026, 3, 6, 17, 0)  # 40 h: Mon to Fri
    assert by["acknowledge"].warn_at == utc(2026, 3, 5, 15, 0)  # 30 h of 40
    assert by["resolve"].due_at == utc(2026, 3, 27, 17, 0)
    assert by["resolve"].escalation == "refuse-supervisors"
    assert session.scalar(select(EventRow.kind).where(EventRow.hub_ref == REF)) == "sla.start"


def test_start_is_idempotent(sla: SlaEngine, session: Session) -> None:
    first = sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    again = sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON + H)
    assert [c.id for c in first] == [c.id for c in again]
    assert again[0].started_at == MON


def test_route_escalation_and_policy_override(sla: SlaEngine, session: Session) -> None:
    rows = sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON,
                     policy="refuse.missed-collection", escalation="refuse-supervisors")
    assert rows[0].policy == "refuse.missed-collection"
    assert rows[0].calendar == "depot"


def test_acknowledged_stops_acknowledge_only(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.ACKNOWLEDGED, MON + 3 * H)
    c = clocks(sla, session)
    assert c["acknowledge"].state == "stopped"
    assert c["acknowledge"].spent_s == 3 * 3600
    assert c["acknowledge"].stop_status == "acknowledged"
    assert c["resolve"].state == "running"


def test_several_pauses_keep_due_time_moving_by_business_time_only(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    original = clocks(sla, session)["resolve"].due_at
    # first pause: Mon 11:00 to Tue 11:00 = 8 business hours
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, MON + 2 * H)
    resolve = clocks(sla, session)["resolve"]
    assert resolve.state == "paused" and resolve.due_at is None and resolve.spent_s == 2 * 3600
    sla.on_status(session, REF, HubStatus.IN_PROGRESS, MON + 26 * H)
    assert resolve.state == "running"
    # 8 business hours paused (Mon 11-17, Tue 9-11): Fri 27 Mar 17:00 GMT -> Mon 30 Mar 17:00 BST
    assert original == utc(2026, 3, 27, 17, 0)
    assert resolve.due_at == utc(2026, 3, 30, 16, 0)
    # second pause: Fri 16:00 to Mon 10:00 = 2 business hours
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, utc(2026, 3, 6, 16, 0))
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, utc(2026, 3, 7, 16, 0))  # repeated: no-op
    sla.on_status(session, REF, HubStatus.IN_PROGRESS, utc(2026, 3, 9, 10, 0))
    assert resolve.pauses == 2
    assert resolve.due_at == utc(2026, 3, 31, 10, 0)  # 2 h more: Tue 31 Mar 11:00 BST
    pauses = session.scalars(select(SlaPauseRow).where(SlaPauseRow.clock_id == resolve.id)
                             .order_by(SlaPauseRow.id)).all()
    assert [(p.paused_at, p.resumed_at) for p in pauses] == [
        (MON + 2 * H, MON + 26 * H), (utc(2026, 3, 6, 16, 0), utc(2026, 3, 9, 10, 0))]


def test_stop_while_paused_closes_the_pause(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, MON + H)
    sla.on_status(session, REF, HubStatus.RESOLVED, MON + 30 * H)
    resolve = clocks(sla, session)["resolve"]
    assert resolve.state == "stopped" and resolve.spent_s == 3600
    assert session.scalar(select(SlaPauseRow.resumed_at)) == MON + 30 * H
    assert sla.standing(resolve, MON + 1000 * H) == "met"


def test_reopen_restarts_the_resolve_clock(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.ACKNOWLEDGED, MON + H)
    sla.on_status(session, REF, HubStatus.RESOLVED, MON + 5 * H)
    sla.on_status(session, REF, HubStatus.RESOLVED, MON + 6 * H)  # redelivered: no change
    resolve = clocks(sla, session)["resolve"]
    assert resolve.stopped_at == MON + 5 * H
    sla.on_status(session, REF, HubStatus.IN_PROGRESS, utc(2026, 3, 3, 9, 0))  # reopened next morning
    assert resolve.state == "running" and resolve.restarts == 1 and resolve.spent_s == 0
    assert resolve.started_at == utc(2026, 3, 3, 9, 0)
    assert resolve.due_at == utc(2026, 3, 30, 16, 0)  # 20 working days from Tue 3 Mar: Mon 30 Mar 17:00 BST
    assert clocks(sla, session)["acknowledge"].state == "stopped"  # acknowledge is not reopened


def test_priority_change_keeps_time_spent(sla: SlaEngine, session: Session) -> None:
    # missed bin, depot 07:00-15:00: normal resolve 3 working days (24 h), high 2 (16 h)
    sla.start(session, REF, "refuse.missed-collection", "bromsgrove", "normal", utc(2026, 3, 2, 7, 0))
    sla.on_priority(session, REF, "high", utc(2026, 3, 2, 13, 0))  # 6 h spent
    resolve = clocks(sla, session)["resolve"]
    assert resolve.priority == "high" and resolve.target_s == 16 * 3600 and resolve.spent_s == 6 * 3600
    assert resolve.due_at == utc(2026, 3, 3, 15, 0)  # 2 h Mon + 8 h Tue = 16 h from Mon 07:00
    assert resolve.warn_at == utc(2026, 3, 3, 11, 0)  # 12 h
    # and back to normal: the original due time again
    sla.on_priority(session, REF, "normal", utc(2026, 3, 2, 14, 0))
    assert resolve.due_at == sla.due("refuse.missed-collection", "normal", utc(2026, 3, 2, 7, 0))["resolve"]


def test_priority_change_while_paused(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.missed-collection", "bromsgrove", "normal", utc(2026, 3, 2, 7, 0))
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, utc(2026, 3, 2, 9, 0))
    sla.on_priority(session, REF, "high", utc(2026, 3, 2, 10, 0))
    resolve = clocks(sla, session)["resolve"]
    assert resolve.state == "paused" and resolve.due_at is None and resolve.target_s == 16 * 3600
    sla.on_status(session, REF, HubStatus.IN_PROGRESS, utc(2026, 3, 3, 7, 0))
    assert resolve.due_at == utc(2026, 3, 4, 13, 0)  # 14 h left from Tue 07:00


def test_emergency_priority_moves_to_24x7(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "highways.pothole", "worcestershire", "normal", utc(2026, 3, 6, 16, 0))
    sla.on_priority(session, REF, "emergency", utc(2026, 3, 6, 16, 30))  # Friday evening
    resolve = clocks(sla, session)["resolve"]
    assert resolve.calendar == "24x7"
    assert resolve.due_at == utc(2026, 3, 6, 18, 0)  # 30 minutes already spent of 2 hours


def test_cancelled_case_stops_every_clock(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.CANCELLED, MON + H)
    c = clocks(sla, session)
    assert {x.state for x in c.values()} == {"stopped"}
    assert sla.standing(c["resolve"], MON + 1000 * H) == "withdrawn"


def test_out_of_order_status_does_not_run_time_backwards(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.ACKNOWLEDGED, MON - H)
    assert clocks(sla, session)["acknowledge"].spent_s == 0


def test_status_before_start_is_ignored(sla: SlaEngine, session: Session) -> None:
    assert sla.on_status(session, REF, HubStatus.RESOLVED, MON) == []


def test_naive_time_refused(sla: SlaEngine, session: Session) -> None:
    with pytest.raises(HubbridgeError, match="naive"):
        sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON.replace(tzinfo=None))


def test_show_lists_clocks_pauses_and_standing(sla: SlaEngine, session: Session) -> None:
    sla.start(session, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON)
    sla.on_status(session, REF, HubStatus.AWAITING_CUSTOMER, MON + H)
    views = {v.clock: v for v in sla.show(session, REF, MON + 10 * H)}
    assert views["resolve"].standing == "paused"
    assert views["resolve"].pauses[0]["status"] == "awaiting_customer"
    assert views["acknowledge"].standing == "met"
    data = views["resolve"].as_dict()
    assert data["started_at"] == MON.isoformat()


def test_a_new_cases_clocks_are_written_whether_or_not_they_start_on_routed(
    store: Engine, tmp_path: Path
) -> None:
    # a council's own policy: the resolve clock waits for the back office's acknowledgement
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    text = text.replace("  resolve:                     # the case is resolved\n    start_on: [routed]",
                        "  resolve:                     # the case is resolved\n    start_on: [acknowledged]")
    assert "start_on: [acknowledged]" in text
    (tmp_path / "sla.yaml").write_text(text)
    engine = SlaEngine.from_config(tmp_path)
    with Session(store) as s:
        add_case(s, REF, "refuse.bulky-waste")
        rows = engine.start(s, REF, "refuse.bulky-waste", "bromsgrove", "normal", MON, new=True)
        assert {r.clock: r.state for r in rows} == {"acknowledge": "running", "resolve": "pending",
                                                    "backoffice-acknowledge": "pending",
                                                    "backoffice-resolve": "pending"}
        s.commit()
    with Session(store) as s:  # read back from the table, as the delivery will
        by = {c.clock: c for c in engine.clocks_of(s, REF)}
        assert (by["acknowledge"].state, by["acknowledge"].due_at) == ("running", utc(2026, 3, 6, 17, 0))
        assert (by["resolve"].state, by["resolve"].due_at, by["resolve"].spent_s) == ("pending", None, 0)
        assert by["resolve"].created_at is not None and by["resolve"].warned is False
        engine.on_status(s, REF, HubStatus.ACKNOWLEDGED, MON + 3 * H)
        s.commit()
    with Session(store) as s:
        by = {c.clock: c for c in engine.clocks_of(s, REF)}
        assert (by["acknowledge"].state, by["resolve"].state) == ("stopped", "running")
        # 20 working days of 8 h from Mon 2 March 12:00: noon on 30 March, British Summer Time by then
        assert by["resolve"].due_at == utc(2026, 3, 30, 11, 0)
