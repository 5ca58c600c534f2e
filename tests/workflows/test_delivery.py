"""Delivering a case to its back office: exactly once, retried, looked up after an unknown outcome, dead-lettered."""
from __future__ import annotations

import itertools
import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from hubbridge.store import (
    CaseRow,
    DeadLetterRow,
    EventRow,
    HubUpdateRow,
    LinkRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.runtime import Outcome

from .conftest import Commits, Rig, _release, accept, jobs, missed_bins, row


def test_delivery_links_the_case_and_acknowledges_the_hub(rig: Rig) -> None:
    cases = missed_bins(12)
    first, case = next((a, b) for a, b in itertools.combinations(cases, 2) if a["authority"] == b["authority"])
    # a first delivery to the same back office, so its circuit breaker's own bookkeeping is not counted below
    assert deliver_case(rig.rt, accept(rig, first)).kind == "done"
    ref = accept(rig, case)
    with Commits(rig) as commits:
        out = deliver_case(rig.rt, ref)
    assert out.kind == "done" and out.push == []  # the Hub was told by the delivery itself
    assert commits.n == 2  # the claim, then the delivery with the Hub's answer
    r = row(rig, ref)
    assert r.stage == "acknowledged" and r.status == "delivered" and r.mapping_version
    with session_scope(rig.url) as s:
        link = s.scalar(select(LinkRow).where(LinkRow.hub_ref == ref))
        [outbox] = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref)).all()
        kinds = s.scalars(select(EventRow.kind).where(EventRow.hub_ref == ref).order_by(EventRow.id)).all()
    assert link is not None and rig.hub.backoffice_ref(ref) == link.backoffice_ref
    # what the Hub got is what the outbox recorded as sent
    [sent] = rig.hub.updates_for(ref)
    assert outbox.pushed_at is not None and outbox.sequence == sent["sequence"] == 1
    assert {k: sent[k] for k in outbox.payload} == outbox.payload
    assert kinds[-2:] == ["delivered", "hub.acknowledged"]
    assert push_hub(rig.rt, ref) == Outcome("done", "0 sent")
    assert jobs(rig, ref) == 1
    # a redelivered message changes nothing
    assert deliver_case(rig.rt, ref).kind == "skipped"
    assert jobs(rig, ref) == 1


def test_transient_fault_retries_then_delivers_once(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.next("error500", 3)
    out = deliver_case(rig.rt, ref)
    assert out.kind == "retry" and out.retry_in is not None
    r = row(rig, ref)
    assert r.attempts == 1 and "will be retried" in (r.last_error or "") and r.next_attempt_at > utcnow()
    rig.backoffice.faults.clear()
    assert deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1


def test_unknown_outcome_is_looked_up_before_creating_again(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.slow_seconds = 4.0  # beyond the 3 s read timeout: the job is made, the answer lost
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")
    out = deliver_case(rig.rt, ref)
    assert out.kind == "retry"
    assert row(rig, ref).unknown_outcome
    assert jobs(rig, ref) == 1
    assert deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1, "the second attempt must find the first job, not make another"


def test_refused_case_is_dead_lettered_with_the_reason(rig: Rig) -> None:
    case = missed_bins(1)[0]
    bad_uprn = next(iter(sorted(rig.backoffice.unknown_uprns)))
    case["location"]["uprn"] = bad_uprn
    case["customer"]["address"]["uprn"] = bad_uprn
    ref = accept(rig, case)
    out = deliver_case(rig.rt, ref)
    assert out.kind == "dead"
    with session_scope(rig.url) as s:
        dl = s.scalar(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref))
    assert dl is not None and dl.stage == "deliver" and dl.reason == "refused"
    assert "UPRN" in dl.detail
    assert json.loads(dl.payload)["ref"] == ref
    assert jobs(rig, ref) == 0


def test_retries_run_out_into_the_dead_letter_store(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    limit = rig.rt.config.connectors[row(rig, ref).connector].retry.max_attempts
    rig.backoffice.faults.next("error500", limit + 5)
    kinds = [deliver_case(rig.rt, ref).kind for _ in range(limit)]
    _release(rig, ref)
    assert kinds[-1] == "dead" and set(kinds[:-1]) <= {"retry", "skipped"}
    with session_scope(rig.url) as s:
        dl = s.scalar(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref))
    assert dl is not None and dl.reason == "retries_exhausted"
    rig.backoffice.faults.clear()


def test_two_workers_on_one_case_make_one_job(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.slow_seconds = 1.0
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")  # hold the first worker inside the call
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(deliver_case(rig.rt, ref).kind))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["done", "skipped"]
    assert jobs(rig, ref) == 1


def test_a_first_delivery_calls_the_back_office_once_and_a_retry_looks_up_once(rig: Rig) -> None:
    """Nothing was sent before a first attempt, so nothing is looked up; after an unknown outcome, one look-up."""
    first, second = missed_bins(2, seed=25)
    assert deliver_case(rig.rt, accept(rig, first)).kind == "done"  # sign-in and caches out of the way
    requests = rig.backoffice.requests
    ref = accept(rig, second)
    rig.backoffice.faults.next("reset", match="ServiceRequest_Create")  # refused: nothing reached Bartec
    before = len(requests)
    assert deliver_case(rig.rt, ref).kind == "retry"
    assert len(requests) - before == 1, "a first attempt must go straight to create"
    before = len(requests)
    assert deliver_case(rig.rt, ref).kind == "done"
    assert len(requests) - before == 2, "a retry looks up once (it may have landed), then creates once"
    assert jobs(rig, ref) == 1


def test_a_delivery_lost_after_telling_the_hub_is_found_and_told_the_same_update_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies between the Hub's answer and the delivery's commit: the retry makes no second job and
    the Hub, which dedupes on (ref, sequence), ends with one `delivered` update carrying the job's reference."""
    ref = accept(rig, missed_bins(1, seed=26)[0])

    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("worker killed")

    with monkeypatch.context() as m:
        m.setattr(rig.rt.sla, "clocks_of", crash)
        with pytest.raises(RuntimeError):
            deliver_case(rig.rt, ref)
    [told] = rig.hub.updates_for(ref)
    r = row(rig, ref)
    assert r.stage == "received" and r.unknown_outcome  # nothing of the delivery was committed
    with session_scope(rig.url) as s:  # its claim runs out
        s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(claimed_until=utcnow() - timedelta(seconds=1)))
    assert deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1
    assert row(rig, ref).stage == "acknowledged"
    assert rig.hub.updates_for(ref) == [told]
    assert told["backoffice_ref"] == rig.hub.backoffice_ref(ref) and (ref, 1) in rig.hub.duplicates
