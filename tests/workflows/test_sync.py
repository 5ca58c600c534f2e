"""Polling a back office: its updates reach the Hub once and in order, and a lost link is mended."""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, update

from hubbridge.store import (
    EventRow,
    HubUpdateRow,
    LinkRow,
    SyncCursorRow,
    session_scope,
)
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.outbox import push_cases, push_hub
from hubbridge.workflows.runtime import Outcome
from hubbridge.workflows.sync import poll_connector

from .conftest import Rig, accept, jobs, missed_bins, row


def test_steps_a_job_took_before_a_late_delivery_still_reach_the_hub(rig: Rig) -> None:
    """The back office moved the job on while our answer was lost: its news is not older than our `delivered`."""
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.slow_seconds = 4.0
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")
    assert deliver_case(rig.rt, ref).kind == "retry"
    store = rig.backoffice.store
    for _ in range(len(store.lifecycle)):
        store.advance()
    assert deliver_case(rig.rt, ref).kind == "done"  # found, after every step of the job
    push_hub(rig.rt, ref)
    for name in sorted({r.connector.name for r in rig.rt.config.routes.values()}):
        for pushed in poll_connector(rig.rt, name).push:
            push_hub(rig.rt, pushed)
    ups = rig.hub.updates_for(ref)
    assert ups[0]["status"] == "delivered" and ups[-1]["status"] == "closed"
    assert [u["sequence"] for u in ups] == list(range(1, len(ups) + 1))


def test_updates_reach_the_hub_in_order_once(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(3)]
    for ref in refs:
        deliver_case(rig.rt, ref)
        push_hub(rig.rt, ref)
    store = rig.backoffice.store
    for _ in range(len(store.lifecycle)):
        store.advance()
        for name in sorted({r.connector.name for r in rig.rt.config.routes.values()}):
            for ref in poll_connector(rig.rt, name).push:
                push_hub(rig.rt, ref)
    for ref in refs:
        ups = rig.hub.updates_for(ref)
        assert [u["sequence"] for u in ups] == list(range(1, len(ups) + 1))
        assert ups[-1]["status"] in ("resolved", "closed")
    # reading every page again from the start adds nothing: updates are taken once
    with session_scope(rig.url) as s:
        before = s.scalar(select(func.count()).select_from(HubUpdateRow))
        s.execute(update(SyncCursorRow).values(cursor=None))
    for name in sorted({r.connector.name for r in rig.rt.config.routes.values()}):
        poll_connector(rig.rt, name)
    with session_scope(rig.url) as s:
        assert s.scalar(select(func.count()).select_from(HubUpdateRow)) == before
    assert rig.hub.out_of_order == []


def test_a_lost_link_is_mended_once_by_a_page_holding_several_updates_of_the_job(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=25)[0])
    assert deliver_case(rig.rt, ref).kind == "done"
    with session_scope(rig.url) as s:  # as if the worker died between the back office's answer and our commit
        bo_ref = s.scalar(select(LinkRow.backoffice_ref).where(LinkRow.hub_ref == ref))
        s.execute(LinkRow.__table__.delete().where(LinkRow.hub_ref == ref))
    for _ in range(2):
        rig.backoffice.store.advance()  # the job moves on twice: one page holds several of its updates
    names = sorted({r.connector.name for r in rig.rt.config.routes.values()})
    touched = [t for name in names for t in poll_connector(rig.rt, name).push]
    assert ref in touched
    with session_scope(rig.url) as s:
        links = s.scalars(select(LinkRow).where(LinkRow.hub_ref == ref)).all()
    assert [link.backoffice_ref for link in links] == [bo_ref]
    push_cases(rig.rt, [ref])
    statuses = [u["status"] for u in rig.hub.updates_for(ref)]
    assert statuses[0] == "delivered" and len(statuses) >= 3  # delivered, then each step the page held


def test_a_poll_that_finds_the_job_before_its_delivery_commits_tells_the_hub_delivered_first(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bartec has taken the case but the worker has not yet committed: the sync records the delivery."""
    ref = accept(rig, missed_bins(1, seed=26)[0])
    monkeypatch.setattr(rig.backoffice.faults, "slow_seconds", 4.0)  # room for a slow machine's poll
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")  # the job is made, the answer waits
    results: list[Outcome] = []
    worker = threading.Thread(target=lambda: results.append(deliver_case(rig.rt, ref)))
    worker.start()
    deadline = time.monotonic() + 10
    while jobs(rig, ref) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert jobs(rig, ref) == 1
    rig.backoffice.store.advance()  # and the job moves on before the worker hears back
    connector = row(rig, ref).connector
    assert connector is not None
    assert ref in poll_connector(rig.rt, connector).push
    assert worker.is_alive(), "the poll must run inside the delivery's window"
    push_cases(rig.rt, [ref])
    worker.join(10)
    assert [o.kind for o in results] == ["skipped"]
    statuses = [u["status"] for u in rig.hub.updates_for(ref)]
    assert statuses[0] == "delivered" and len(statuses) >= 2, statuses
    assert rig.hub.updates_for(ref)[0]["backoffice_ref"] == rig.hub.backoffice_ref(ref)
    case = row(rig, ref)
    assert (case.stage, case.unknown_outcome, case.claimed_until, case.next_attempt_at) == (
        "acknowledged", False, None, None)
    assert case.mapping_version
    assert jobs(rig, ref) == 1
    with session_scope(rig.url) as s:
        kinds = s.scalars(select(EventRow.kind).where(EventRow.hub_ref == ref).order_by(EventRow.id)).all()
    assert kinds.count("delivered") == 1


def test_a_job_naming_a_case_routed_to_another_instance_is_not_taken_for_its_delivery(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=27)[0])
    own = row(rig, ref).connector
    other = next(name for name in sorted(rig.rt.config.connectors) if name.startswith("refuse-") and name != own)
    tenant = urlsplit(rig.rt.config.connectors[other].endpoint).path.strip("/")
    stray = rig.backoffice.raise_direct(tenant, "100120123456", 238)  # typed in by hand with the case's ref
    stray.hub_ref = ref
    poll_connector(rig.rt, other)
    case = row(rig, ref)
    assert case.stage == "received" and rig.hub.updates_for(ref) == []
    with session_scope(rig.url) as s:
        assert s.scalars(select(LinkRow.connector).where(LinkRow.hub_ref == ref)).all() == []
    assert deliver_case(rig.rt, ref).kind == "done"  # its own back office still gets it
    with session_scope(rig.url) as s:
        assert s.scalars(select(LinkRow.connector).where(LinkRow.hub_ref == ref)).all() == [own]
