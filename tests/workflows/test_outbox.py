"""The Hub outbox: updates pushed in order, in batches, held through a Hub outage, refused ones dead-lettered."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from hubbridge.store import (
    DeadLetterRow,
    HubUpdateRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.outbox import push_cases, push_hub
from hubbridge.workflows.runtime import Outcome

from .conftest import Commits, Rig, accept, jobs, missed_bins, row


def test_hub_outage_keeps_updates_in_order_until_it_answers(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.hub.faults.down = True
    out = deliver_case(rig.rt, ref)
    # the back office has the job: the delivery is recorded, its Hub update left for a push that backs off
    assert out.kind == "done" and out.push == [ref]
    with session_scope(rig.url) as s:
        [pending] = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref)).all()
    assert pending.pushed_at is None and pending.attempts == 1 and pending.next_attempt_at > utcnow()
    assert row(rig, ref).stage == "delivered" and jobs(rig, ref) == 1
    assert push_hub(rig.rt, ref).kind == "retry"
    assert row(rig, ref).stage == "delivered"
    rig.hub.faults.down = False
    assert push_hub(rig.rt, ref).kind == "done"
    assert row(rig, ref).stage == "acknowledged"
    assert [u["status"] for u in rig.hub.updates_for(ref)] == ["delivered"]


def test_one_push_sends_several_cases_and_records_them_in_one_transaction(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(3, seed=21)]
    for ref in refs:
        assert deliver_case(rig.rt, ref, tell_hub=False).kind == "done"
    with Commits(rig) as commits:
        outcomes = push_cases(rig.rt, refs)
    assert {ref: o.kind for ref, o in outcomes.items()} == dict.fromkeys(refs, "done")
    assert commits.n == 2  # one read of the pending updates, one write of what was sent
    for ref in refs:
        assert row(rig, ref).stage == "acknowledged"
        assert [u["status"] for u in rig.hub.updates_for(ref)] == ["delivered"]
    with session_scope(rig.url) as s:
        assert s.scalar(select(func.count()).select_from(HubUpdateRow).where(
            HubUpdateRow.hub_ref.in_(refs), HubUpdateRow.pushed_at.is_(None))) == 0
    assert push_cases(rig.rt, refs) == dict.fromkeys(refs, Outcome("done", "0 sent"))


def test_a_hub_failure_stops_the_batch_and_leaves_every_untried_case_pending(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(3, seed=22)]
    for ref in refs:
        deliver_case(rig.rt, ref, tell_hub=False)
    rig.hub.faults.next("error500")  # the first push fails, the Hub is fine afterwards
    outcomes = push_cases(rig.rt, refs)
    assert [outcomes[ref].kind for ref in refs] == ["retry", "retry", "retry"]
    assert all(outcomes[ref].retry_in for ref in refs)
    with session_scope(rig.url) as s:
        pending = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref.in_(refs))
                            .order_by(HubUpdateRow.hub_ref)).all()
    assert [u.pushed_at for u in pending] == [None, None, None]
    assert [u.attempts for u in pending] == [1, 0, 0]  # only the one the Hub failed counts an attempt
    assert all(rig.hub.updates_for(ref) == [] for ref in refs)
    assert all(o.kind == "done" for o in push_cases(rig.rt, refs).values())
    assert all(row(rig, ref).stage == "acknowledged" for ref in refs)


def test_a_refused_update_is_dead_lettered_and_the_rest_of_the_batch_goes(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(2, seed=23)]
    for ref in refs:
        deliver_case(rig.rt, ref, tell_hub=False)
    rig.hub._known = {refs[1]}  # the Hub does not know the first case: HTTP 404, refused
    try:
        outcomes = push_cases(rig.rt, refs)
    finally:
        rig.hub._known = None
    assert outcomes[refs[0]].kind == "done" and outcomes[refs[1]].kind == "done"
    assert row(rig, refs[0]).stage == "delivered" and row(rig, refs[1]).stage == "acknowledged"
    with session_scope(rig.url) as s:
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref.in_(refs))).all()
    assert [(d.hub_ref, d.stage, d.reason) for d in dead] == [(refs[0], "push", "hub_refused")]


def test_delivery_hands_its_first_update_to_the_push_which_reads_nothing_back(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=24)[0])
    out = deliver_case(rig.rt, ref, tell_hub=False)
    assert [u.sequence for u in out.updates] == [1]
    with Commits(rig) as commits:
        assert push_hub(rig.rt, ref, out.updates).kind == "done"
    assert commits.n == 1
    assert row(rig, ref).stage == "acknowledged" and rig.hub.backoffice_ref(ref)


def test_a_hub_refusing_the_delivered_update_dead_letters_the_update_not_the_case(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=25)[0])
    rig.hub._known = set()  # HTTP 404 for every case: refused, not worth retrying
    try:
        out = deliver_case(rig.rt, ref)
    finally:
        rig.hub._known = None
    assert out.kind == "done" and out.push == []
    assert row(rig, ref).stage == "delivered" and jobs(rig, ref) == 1
    with session_scope(rig.url) as s:
        [outbox] = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref)).all()
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref)).all()
    assert outbox.pushed_at is not None and (outbox.last_error or "").startswith("dead-lettered")
    assert [(d.stage, d.reason, json.loads(d.payload)) for d in dead] == [("push", "hub_refused", outbox.payload)]
