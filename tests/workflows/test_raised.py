"""Jobs raised directly in a back office become one Hub case each, and their updates follow in order.

Real sockets throughout: the Bartec and Hub simulators on loopback, the pipeline steps in this process
on a SQLite store. The Hub simulator's own record of raised cases is the oracle for "exactly once".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from hubbridge.case import Customer
from hubbridge.connectors.base import BackOfficeUpdate
from hubbridge.store import (
    CaseRow,
    DeadLetterRow,
    HubUpdateRow,
    LinkRow,
    RaisedCaseRow,
    SyncCursorRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.raised import _details_from_raw, _valid, raise_case, raise_pending
from hubbridge.workflows.runtime import Outcome, Runtime
from hubbridge.workflows.sync import poll_connector

from .conftest import Rig
from .stack import connectors_yaml, use_config, write_config

TENANT = "bromsgrove"
INSTANCE = "refuse-bromsgrove"
LATER = timedelta(hours=1)  # "when the retry is due", without waiting for it


@pytest.fixture
def raised_rig(
    tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> Iterator[Rig]:
    """The pipeline rig, with a Hub read timeout short enough to lose an answer on purpose."""
    hub, bartec = sims
    hub.reset()
    bartec.faults.clear()
    hub.faults.slow_seconds = 3.0
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    with connectors_yaml(cfg) as conns:
        conns["hub"]["timeouts"] = {"connect": 2, "read": 2}
    use_config(monkeypatch, cfg, sqlite_url)
    # start the sync cursor after the jobs other tests left in the module's simulator: they stay out of this one
    rt = Runtime()
    conn, cursor = rt.connector(INSTANCE), None
    while True:
        page = conn.updates_since(cursor, 500)
        cursor = page.cursor
        if not page.has_more:
            break
    with session_scope(sqlite_url) as s:
        s.add(SyncCursorRow(connector=INSTANCE, cursor=cursor, polled_at=utcnow()))
    yield Rig(rt, hub, bartec)
    hub.faults.clear()
    rt.close()


def poll(rig: Rig, *, now_offset: timedelta | None = None) -> list[str]:
    """One poll of the instance (with any raised jobs due), then push what it touched to the Hub."""
    out = poll_connector(rig.rt, INSTANCE)
    refs = list(out.push)
    if now_offset is not None:
        refs += raise_pending(rig.rt, INSTANCE, now=utcnow() + now_offset)
    for ref in sorted(set(refs)):
        push_hub(rig.rt, ref)
    return refs


def advance(rig: Rig, job: Any) -> str:
    """Move one job (only that one: the simulator holds other tests' jobs too) a step along its lifecycle."""
    store = rig.backoffice.store
    nxt = store.lifecycle[store.lifecycle.index(job.status) + 1]
    store.set_status(job, nxt, f"moved to {nxt}")
    return nxt


def raised_for(rig: Rig, bo_ref: str) -> list[dict[str, Any]]:
    return [c for c in rig.hub.raised_cases() if c["backoffice_ref"] == bo_ref]


def hub_ref_of(rig: Rig, bo_ref: str) -> str:
    with session_scope(rig.url) as s:
        ref = s.scalar(select(LinkRow.hub_ref).where(LinkRow.connector == INSTANCE, LinkRow.backoffice_ref == bo_ref))
    assert ref is not None, f"{bo_ref} is not linked to a Hub case"
    return ref


def test_a_job_raised_in_the_back_office_becomes_one_linked_hub_case(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001234", 238, location_description="Bin by the gate")
    refs = poll(rig)
    [raised] = raised_for(rig, job.ref)
    assert raised["connector"] == INSTANCE
    case = raised["case"]
    assert (case["authority"], case["service"], case["channel"]) == ("bromsgrove", "refuse.missed-collection",
                                                                     "back-office")
    assert case["attributes"]["backoffice_ref"] == job.ref and job.ref in case["description"]
    assert refs == [raised["ref"]]
    hub_ref = hub_ref_of(rig, job.ref)
    assert hub_ref == raised["ref"]
    with session_scope(rig.url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == hub_ref))
    assert row is not None and row.origin == "backoffice" and row.stage == "acknowledged"
    # the job's first state reached the new Hub case, with the back office's reference
    [first] = rig.hub.updates_for(hub_ref)
    assert (first["sequence"], first["status"], first["backoffice_ref"]) == (1, "acknowledged", job.ref)


def test_later_updates_follow_to_the_new_hub_case_in_order(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001235", 239)
    poll(rig)
    hub_ref = hub_ref_of(rig, job.ref)
    while job.status != rig.backoffice.store.lifecycle[-1]:
        advance(rig, job)
        poll(rig)
    ups = rig.hub.updates_for(hub_ref)
    assert [u["sequence"] for u in ups] == list(range(1, len(ups) + 1))
    assert [u["status"] for u in ups][-1] == "closed"
    assert {u["backoffice_ref"] for u in ups} == {job.ref}
    assert len(raised_for(rig, job.ref)) == 1
    assert rig.hub.out_of_order == []


def test_a_retried_poll_makes_no_second_hub_case(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001236", 238)
    poll(rig)
    hub_ref = hub_ref_of(rig, job.ref)
    with session_scope(rig.url) as s:
        before = s.scalar(select(func.count()).select_from(HubUpdateRow).where(HubUpdateRow.hub_ref == hub_ref))
        s.execute(update(SyncCursorRow).where(SyncCursorRow.connector == INSTANCE).values(cursor=None))
    # read every page again from the start, as a redelivered poll task would
    while poll_connector(rig.rt, INSTANCE).more:
        pass
    poll(rig, now_offset=LATER)
    assert len(raised_for(rig, job.ref)) == 1
    with session_scope(rig.url) as s:
        assert s.scalar(select(func.count()).select_from(HubUpdateRow).where(HubUpdateRow.hub_ref == hub_ref)) == before
        assert len(s.scalars(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref)).all()) == 1


def test_a_lost_hub_answer_is_asked_again_and_gets_the_same_case(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001237", 238)
    # the Hub raises the case, but its answer comes after our read timeout: outcome unknown
    rig.hub.faults.next("slow", match='"connector":')
    out = poll_connector(rig.rt, INSTANCE)
    assert out.push == []
    assert len(raised_for(rig, job.ref)) == 1, "the Hub did raise it"
    with session_scope(rig.url) as s:
        row = s.scalar(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref))
    assert row is not None and row.state == "pending" and row.attempts == 1 and row.last_error
    # the job moves on meanwhile: its update waits, in order, on the outbox row
    advance(rig, job)
    poll_connector(rig.rt, INSTANCE)
    with session_scope(rig.url) as s:
        row = s.scalar(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref))
    assert row is not None and [u["status_code"] for u in row.updates] == ["OPEN", "ASSIGNED"]
    refs = poll(rig, now_offset=LATER)
    [raised] = raised_for(rig, job.ref)
    assert refs == [raised["ref"]] and hub_ref_of(rig, job.ref) == raised["ref"]
    ups = rig.hub.updates_for(raised["ref"])
    assert [(u["sequence"], u["status"]) for u in ups] == [(1, "acknowledged"), (2, "in_progress")]


def test_hub_down_keeps_the_job_and_its_updates_until_it_answers(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001238", 240)
    rig.hub.faults.down = True
    for _ in range(3):
        advance(rig, job)
        assert poll_connector(rig.rt, INSTANCE).push == []
        raise_pending(rig.rt, INSTANCE, now=utcnow() + LATER)
    assert raised_for(rig, job.ref) == []
    rig.hub.faults.down = False
    poll(rig, now_offset=LATER * 2)
    [raised] = raised_for(rig, job.ref)
    ups = rig.hub.updates_for(raised["ref"])
    assert [u["sequence"] for u in ups] == [1, 2, 3, 4]
    assert [u["status"] for u in ups] == ["acknowledged", "in_progress", "in_progress", "closed"]
    assert rig.hub.out_of_order == []


def test_two_workers_raising_the_same_job_make_one_hub_case(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001239", 241)
    rig.hub.faults.down = True
    poll_connector(rig.rt, INSTANCE)  # the outbox row is written; the Hub is not reachable
    rig.hub.faults.down = False
    with session_scope(rig.url) as s:
        rid = s.scalar(select(RaisedCaseRow.id).where(RaisedCaseRow.backoffice_ref == job.ref))
    assert rid is not None
    # the first worker is held inside its Hub call (within the read timeout); the second finds its claim
    # expired (as if the first had been killed) and asks the Hub too
    rig.hub.faults.slow_seconds = 1.0
    rig.hub.faults.next("slow", match='"connector":')
    results: list[Outcome] = []
    first = threading.Thread(target=lambda: results.append(raise_case(rig.rt, rid, utcnow() + LATER)))
    first.start()
    deadline = utcnow() + timedelta(seconds=10)
    while not raised_for(rig, job.ref) and utcnow() < deadline:
        threading.Event().wait(0.02)
    with session_scope(rig.url) as s:
        s.execute(update(RaisedCaseRow).where(RaisedCaseRow.id == rid).values(next_attempt_at=utcnow()))
    results.append(raise_case(rig.rt, rid, utcnow() + LATER))
    first.join()
    assert sorted(o.kind for o in results) == ["done", "skipped"]
    [raised] = raised_for(rig, job.ref)
    assert hub_ref_of(rig, job.ref) == raised["ref"]
    with session_scope(rig.url) as s:
        assert len(s.scalars(select(CaseRow.id).where(CaseRow.hub_ref == raised["ref"])).all()) == 1
        assert len(s.scalars(select(HubUpdateRow.id).where(HubUpdateRow.hub_ref == raised["ref"])).all()) == 1


def test_two_pollers_at_once_make_one_hub_case(raised_rig: Rig) -> None:
    rig = raised_rig
    jobs = [rig.backoffice.raise_direct(TENANT, f"10012000130{i}", 238) for i in range(3)]
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.append(poll_connector(rig.rt, INSTANCE).kind))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    poll(rig, now_offset=LATER)
    for job in jobs:
        assert len(raised_for(rig, job.ref)) == 1
        hub_ref_of(rig, job.ref)


def test_a_job_no_mapping_covers_is_dead_lettered_with_the_reason(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001240", 290)  # fly tipping: no refuse mapping covers it
    assert poll(rig) == []
    assert raised_for(rig, job.ref) == []
    with session_scope(rig.url) as s:
        dl = s.scalar(select(DeadLetterRow).where(DeadLetterRow.stage == "raise"))
        row = s.scalar(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref))
    assert dl is not None and dl.reason == "unroutable" and "'290'" in dl.detail and job.ref in dl.detail
    assert row is not None and row.state == "dead"


def test_connector_details_link_the_case_to_the_customer(raised_rig: Rig) -> None:
    rig = raised_rig
    job = rig.backoffice.raise_direct(TENANT, "100120001241", 238)
    conn = rig.rt.connector(INSTANCE)

    def raised_details(update: BackOfficeUpdate) -> dict[str, Any]:
        # what a connector that looks the job up would give (the simulator's own record of it)
        found = rig.backoffice.store.by_ref(TENANT, update.backoffice_ref)
        assert found is not None
        return {"customer": {"name": "Pat Resident", "phone": "01527 881234",
                             "address": {"line1": "1 High Street", "town": "Bromsgrove", "postcode": "B60 1AA",
                                         "uprn": found.data["uprn"]}},
                "location": {"uprn": found.data["uprn"]}, "description": "Missed bin reported by phone"}

    conn.raised_details = raised_details  # type: ignore[method-assign]
    conn.supports_raised_details = True  # type: ignore[misc]
    poll(rig)
    [raised] = raised_for(rig, job.ref)
    assert raised["case"]["customer"]["name"] == "Pat Resident"
    assert raised["case"]["customer"]["address"]["uprn"] == "100120001241"
    assert raised["case"]["location"]["uprn"] == "100120001241"


def test_customer_and_location_are_read_from_the_update_record() -> None:
    raw = {"update": {"status": "open"}, "request": {"first_name": "Bob", "last_name": "Smith", "phone": "01905 123456",
                                                      "email": "bob@example.org", "lat": "52.19", "long": "-2.22",
                                                      "description": "Light out on Bath Road"}}
    found = _details_from_raw(raw)
    assert found["customer"] == {"name": "Bob Smith", "phone": "01905 123456", "email": "bob@example.org"}
    assert found["location"] == {"lat": "52.19", "lon": "-2.22"}
    assert found["description"] == "Light out on Bath Road"
    # a field that does not validate is left out, the rest kept
    customer = _valid(Customer, {"name": "Bob", "phone": "not a phone"})
    assert customer is not None and customer.name == "Bob" and customer.phone is None


def test_a_delivery_whose_worker_died_is_linked_and_acknowledged_through_the_sync(raised_rig: Rig) -> None:
    from hubbridge.case import HubCase
    from hubbridge.connectors.base import Delivery
    from hubbridge.workflows.casegen import generate_cases

    rig = raised_rig
    case = next(c for c in generate_cases(200, seed=77, start_serial=77001, services=("refuse.missed-collection",))
                if c["authority"] == TENANT)
    ref = accept_case(rig.rt, case).hub_ref
    # the worker sent the case and died before writing the link: the back office has it, our store does not
    hub_case = HubCase.model_validate(case)
    _, conn, mapping = rig.rt.mapping_for(hub_case.authority, hub_case.service)
    made = conn.create(Delivery(ref, hub_case.authority, hub_case.service, mapping.outbound(hub_case).payload))
    job = rig.backoffice.store.by_ref(TENANT, made.backoffice_ref)
    advance(rig, job)
    assert poll(rig) == [ref]
    assert hub_ref_of(rig, made.backoffice_ref) == ref
    with session_scope(rig.url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
    # the Hub got the back office's own update with its reference: that acknowledges the case
    assert row is not None and row.stage == "acknowledged"
    assert rig.hub.backoffice_ref(ref) == made.backoffice_ref
    assert deliver_case(rig.rt, ref).kind == "skipped"
    assert rig.backoffice.store.count_by_hub_ref()[ref] == 1
