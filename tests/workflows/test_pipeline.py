"""Each queued step on its own, against the simulators: exactly once, in order, nothing lost."""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, update

from hubbridge.store import (
    CaseRow,
    DeadLetterRow,
    EventRow,
    HubUpdateRow,
    LinkRow,
    SyncCursorRow,
    session_scope,
    utcnow,
)
from hubbridge.workflows import pipeline
from hubbridge.workflows.casegen import generate_cases

from .conftest import Rig

_serials = itertools.count(1, 1000)


def missed_bins(n: int, seed: int = 1) -> list[dict]:
    """Missed-bin cases with refs no other test uses (the simulators live for the whole module)."""
    cases = generate_cases(n * 6, seed=seed, start_serial=next(_serials))
    return [c for c in cases if c["service"] == "refuse.missed-collection"][:n]


def accept(rig: Rig, case: dict) -> str:
    return pipeline.accept_case(rig.rt, json.dumps(case)).hub_ref


def row(rig: Rig, ref: str) -> CaseRow:
    with session_scope(rig.url) as s:
        found = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert found is not None
        return found


def jobs(rig: Rig, ref: str) -> int:
    return rig.backoffice.store.count_by_hub_ref().get(ref, 0)


def test_delivery_links_the_case_and_acknowledges_the_hub(rig: Rig) -> None:
    cases = missed_bins(12)
    first, case = next((a, b) for a, b in itertools.combinations(cases, 2) if a["authority"] == b["authority"])
    # a first delivery to the same back office, so its circuit breaker's own bookkeeping is not counted below
    assert pipeline.deliver_case(rig.rt, accept(rig, first)).kind == "done"
    ref = accept(rig, case)
    with Commits(rig) as commits:
        out = pipeline.deliver_case(rig.rt, ref)
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
    assert pipeline.push_hub(rig.rt, ref) == pipeline.Outcome("done", "0 sent")
    assert jobs(rig, ref) == 1
    # a redelivered message changes nothing
    assert pipeline.deliver_case(rig.rt, ref).kind == "skipped"
    assert jobs(rig, ref) == 1


def test_transient_fault_retries_then_delivers_once(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.next("error500", 3)
    out = pipeline.deliver_case(rig.rt, ref)
    assert out.kind == "retry" and out.retry_in is not None
    r = row(rig, ref)
    assert r.attempts == 1 and "will be retried" in (r.last_error or "") and r.next_attempt_at > utcnow()
    rig.backoffice.faults.clear()
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1


def test_unknown_outcome_is_looked_up_before_creating_again(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.slow_seconds = 4.0  # beyond the 3 s read timeout: the job is made, the answer lost
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")
    out = pipeline.deliver_case(rig.rt, ref)
    assert out.kind == "retry"
    assert row(rig, ref).unknown_outcome
    assert jobs(rig, ref) == 1
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1, "the second attempt must find the first job, not make another"


def test_steps_a_job_took_before_a_late_delivery_still_reach_the_hub(rig: Rig) -> None:
    """The back office moved the job on while our answer was lost: its news is not older than our `delivered`."""
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.slow_seconds = 4.0
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")
    assert pipeline.deliver_case(rig.rt, ref).kind == "retry"
    store = rig.backoffice.store
    for _ in range(len(store.lifecycle)):
        store.advance()
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"  # found, after every step of the job
    pipeline.push_hub(rig.rt, ref)
    for name in sorted({r.connector.name for r in rig.rt.config.routes.values()}):
        for pushed in pipeline.poll_connector(rig.rt, name).push:
            pipeline.push_hub(rig.rt, pushed)
    ups = rig.hub.updates_for(ref)
    assert ups[0]["status"] == "delivered" and ups[-1]["status"] == "closed"
    assert [u["sequence"] for u in ups] == list(range(1, len(ups) + 1))


def test_refused_case_is_dead_lettered_with_the_reason(rig: Rig) -> None:
    case = missed_bins(1)[0]
    bad_uprn = next(iter(sorted(rig.backoffice.unknown_uprns)))
    case["location"]["uprn"] = bad_uprn
    case["customer"]["address"]["uprn"] = bad_uprn
    ref = accept(rig, case)
    out = pipeline.deliver_case(rig.rt, ref)
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
    kinds = [pipeline.deliver_case(rig.rt, ref).kind for _ in range(limit)]
    _release(rig, ref)
    assert kinds[-1] == "dead" and set(kinds[:-1]) <= {"retry", "skipped"}
    with session_scope(rig.url) as s:
        dl = s.scalar(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref))
    assert dl is not None and dl.reason == "retries_exhausted"
    rig.backoffice.faults.clear()


def _release(rig: Rig, ref: str) -> None:
    with session_scope(rig.url) as s:
        s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(claimed_until=None))


def test_two_workers_on_one_case_make_one_job(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.backoffice.faults.slow_seconds = 1.0
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")  # hold the first worker inside the call
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(pipeline.deliver_case(rig.rt, ref).kind))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["done", "skipped"]
    assert jobs(rig, ref) == 1


def test_updates_reach_the_hub_in_order_once(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(3)]
    for ref in refs:
        pipeline.deliver_case(rig.rt, ref)
        pipeline.push_hub(rig.rt, ref)
    store = rig.backoffice.store
    for _ in range(len(store.lifecycle)):
        store.advance()
        for name in sorted({r.connector.name for r in rig.rt.config.routes.values()}):
            for ref in pipeline.poll_connector(rig.rt, name).push:
                pipeline.push_hub(rig.rt, ref)
    for ref in refs:
        ups = rig.hub.updates_for(ref)
        assert [u["sequence"] for u in ups] == list(range(1, len(ups) + 1))
        assert ups[-1]["status"] in ("resolved", "closed")
    # reading every page again from the start adds nothing: updates are taken once
    with session_scope(rig.url) as s:
        before = s.scalar(select(func.count()).select_from(HubUpdateRow))
        s.execute(update(SyncCursorRow).values(cursor=None))
    for name in sorted({r.connector.name for r in rig.rt.config.routes.values()}):
        pipeline.poll_connector(rig.rt, name)
    with session_scope(rig.url) as s:
        assert s.scalar(select(func.count()).select_from(HubUpdateRow)) == before
    assert rig.hub.out_of_order == []


def test_hub_outage_keeps_updates_in_order_until_it_answers(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    rig.hub.faults.down = True
    out = pipeline.deliver_case(rig.rt, ref)
    # the back office has the job: the delivery is recorded, its Hub update left for a push that backs off
    assert out.kind == "done" and out.push == [ref]
    with session_scope(rig.url) as s:
        [pending] = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref)).all()
    assert pending.pushed_at is None and pending.attempts == 1 and pending.next_attempt_at > utcnow()
    assert row(rig, ref).stage == "delivered" and jobs(rig, ref) == 1
    assert pipeline.push_hub(rig.rt, ref).kind == "retry"
    assert row(rig, ref).stage == "delivered"
    rig.hub.faults.down = False
    assert pipeline.push_hub(rig.rt, ref).kind == "done"
    assert row(rig, ref).stage == "acknowledged"
    assert [u["status"] for u in rig.hub.updates_for(ref)] == ["delivered"]


def test_reconcile_requeues_lost_work(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    # the message for this case was lost: nothing happens until its lease runs out
    assert ref not in pipeline.reconcile(rig.rt).deliver
    later = utcnow() + timedelta(seconds=rig.rt.settings.reconcile_after_seconds + 1)
    sweep = pipeline.reconcile(rig.rt, now=later)
    assert sweep.deliver == [ref]
    assert pipeline.reconcile(rig.rt, now=later).deliver == []  # leased again: not queued twice
    pipeline.deliver_case(rig.rt, ref, tell_hub=False)
    sweep = pipeline.reconcile(rig.rt, now=later + timedelta(seconds=rig.rt.settings.reconcile_after_seconds + 1))
    assert ref in sweep.push  # its Hub update was never pushed


class Commits:
    """Counts the store's commits while it is open, to show how many transactions a step took."""

    def __init__(self, rig: Rig) -> None:
        from hubbridge.store import engine_for

        self.engine, self.n = engine_for(rig.url), 0

    def _count(self, *_: object) -> None:
        self.n += 1

    def __enter__(self) -> Commits:
        from sqlalchemy import event

        event.listen(self.engine, "commit", self._count)
        return self

    def __exit__(self, *_: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "commit", self._count)


def test_one_push_sends_several_cases_and_records_them_in_one_transaction(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(3, seed=21)]
    for ref in refs:
        assert pipeline.deliver_case(rig.rt, ref, tell_hub=False).kind == "done"
    with Commits(rig) as commits:
        outcomes = pipeline.push_cases(rig.rt, refs)
    assert {ref: o.kind for ref, o in outcomes.items()} == dict.fromkeys(refs, "done")
    assert commits.n == 2  # one read of the pending updates, one write of what was sent
    for ref in refs:
        assert row(rig, ref).stage == "acknowledged"
        assert [u["status"] for u in rig.hub.updates_for(ref)] == ["delivered"]
    with session_scope(rig.url) as s:
        assert s.scalar(select(func.count()).select_from(HubUpdateRow).where(
            HubUpdateRow.hub_ref.in_(refs), HubUpdateRow.pushed_at.is_(None))) == 0
    assert pipeline.push_cases(rig.rt, refs) == dict.fromkeys(refs, pipeline.Outcome("done", "0 sent"))


def test_a_hub_failure_stops_the_batch_and_leaves_every_untried_case_pending(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(3, seed=22)]
    for ref in refs:
        pipeline.deliver_case(rig.rt, ref, tell_hub=False)
    rig.hub.faults.next("error500")  # the first push fails, the Hub is fine afterwards
    outcomes = pipeline.push_cases(rig.rt, refs)
    assert [outcomes[ref].kind for ref in refs] == ["retry", "retry", "retry"]
    assert all(outcomes[ref].retry_in for ref in refs)
    with session_scope(rig.url) as s:
        pending = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref.in_(refs))
                            .order_by(HubUpdateRow.hub_ref)).all()
    assert [u.pushed_at for u in pending] == [None, None, None]
    assert [u.attempts for u in pending] == [1, 0, 0]  # only the one the Hub failed counts an attempt
    assert all(rig.hub.updates_for(ref) == [] for ref in refs)
    assert all(o.kind == "done" for o in pipeline.push_cases(rig.rt, refs).values())
    assert all(row(rig, ref).stage == "acknowledged" for ref in refs)


def test_a_refused_update_is_dead_lettered_and_the_rest_of_the_batch_goes(rig: Rig) -> None:
    refs = [accept(rig, c) for c in missed_bins(2, seed=23)]
    for ref in refs:
        pipeline.deliver_case(rig.rt, ref, tell_hub=False)
    rig.hub._known = {refs[1]}  # the Hub does not know the first case: HTTP 404, refused
    try:
        outcomes = pipeline.push_cases(rig.rt, refs)
    finally:
        rig.hub._known = None
    assert outcomes[refs[0]].kind == "done" and outcomes[refs[1]].kind == "done"
    assert row(rig, refs[0]).stage == "delivered" and row(rig, refs[1]).stage == "acknowledged"
    with session_scope(rig.url) as s:
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref.in_(refs))).all()
    assert [(d.hub_ref, d.stage, d.reason) for d in dead] == [(refs[0], "push", "hub_refused")]


def test_delivery_hands_its_first_update_to_the_push_which_reads_nothing_back(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=24)[0])
    out = pipeline.deliver_case(rig.rt, ref, tell_hub=False)
    assert [u.sequence for u in out.updates] == [1]
    with Commits(rig) as commits:
        assert pipeline.push_hub(rig.rt, ref, out.updates).kind == "done"
    assert commits.n == 1
    assert row(rig, ref).stage == "acknowledged" and rig.hub.backoffice_ref(ref)


def test_warm_loads_every_route_and_leaves_a_broken_mapping_to_its_cases(rig: Rig) -> None:
    import shutil

    config = rig.rt.config
    assert rig.rt.warm() == len(config.routes)
    # a config directory with its own mappings/ uses those: copy the shipped ones and break one copy
    shutil.copytree(config.mappings_dir, config.config_dir / "mappings")
    first = next(iter(config.routes.values())).mapping_path
    (config.config_dir / "mappings" / first.relative_to(config.mappings_dir)).write_text("outbound: [not, a\n")
    sharing = sum(1 for r in config.routes.values() if r.mapping_path == first)
    fresh = pipeline.Runtime()
    try:
        assert fresh.config.mappings_dir == config.config_dir / "mappings"
        assert fresh.warm() == len(config.routes) - sharing  # the worker still starts
    finally:
        fresh.close()


def test_a_lost_link_is_mended_once_by_a_page_holding_several_updates_of_the_job(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=25)[0])
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"
    with session_scope(rig.url) as s:  # as if the worker died between the back office's answer and our commit
        bo_ref = s.scalar(select(LinkRow.backoffice_ref).where(LinkRow.hub_ref == ref))
        s.execute(LinkRow.__table__.delete().where(LinkRow.hub_ref == ref))
    for _ in range(2):
        rig.backoffice.store.advance()  # the job moves on twice: one page holds several of its updates
    names = sorted({r.connector.name for r in rig.rt.config.routes.values()})
    touched = [t for name in names for t in pipeline.poll_connector(rig.rt, name).push]
    assert ref in touched
    with session_scope(rig.url) as s:
        links = s.scalars(select(LinkRow).where(LinkRow.hub_ref == ref)).all()
    assert [link.backoffice_ref for link in links] == [bo_ref]
    pipeline.push_cases(rig.rt, [ref])
    statuses = [u["status"] for u in rig.hub.updates_for(ref)]
    assert statuses[0] == "delivered" and len(statuses) >= 3  # delivered, then each step the page held


def test_a_poll_that_finds_the_job_before_its_delivery_commits_tells_the_hub_delivered_first(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bartec has taken the case but the worker has not yet committed: the sync records the delivery."""
    ref = accept(rig, missed_bins(1, seed=26)[0])
    monkeypatch.setattr(rig.backoffice.faults, "slow_seconds", 4.0)  # room for a slow machine's poll
    rig.backoffice.faults.next("slow", match="ServiceRequest_Create")  # the job is made, the answer waits
    results: list[pipeline.Outcome] = []
    worker = threading.Thread(target=lambda: results.append(pipeline.deliver_case(rig.rt, ref)))
    worker.start()
    deadline = time.monotonic() + 10
    while jobs(rig, ref) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert jobs(rig, ref) == 1
    rig.backoffice.store.advance()  # and the job moves on before the worker hears back
    connector = row(rig, ref).connector
    assert connector is not None
    assert ref in pipeline.poll_connector(rig.rt, connector).push
    assert worker.is_alive(), "the poll must run inside the delivery's window"
    pipeline.push_cases(rig.rt, [ref])
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
    pipeline.poll_connector(rig.rt, other)
    case = row(rig, ref)
    assert case.stage == "received" and rig.hub.updates_for(ref) == []
    with session_scope(rig.url) as s:
        assert s.scalars(select(LinkRow.connector).where(LinkRow.hub_ref == ref)).all() == []
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"  # its own back office still gets it
    with session_scope(rig.url) as s:
        assert s.scalars(select(LinkRow.connector).where(LinkRow.hub_ref == ref)).all() == [own]


def test_a_first_delivery_calls_the_back_office_once_and_a_retry_looks_up_once(rig: Rig) -> None:
    """Nothing was sent before a first attempt, so nothing is looked up; after an unknown outcome, one look-up."""
    first, second = missed_bins(2, seed=25)
    assert pipeline.deliver_case(rig.rt, accept(rig, first)).kind == "done"  # sign-in and caches out of the way
    requests = rig.backoffice.requests
    ref = accept(rig, second)
    rig.backoffice.faults.next("reset", match="ServiceRequest_Create")  # refused: nothing reached Bartec
    before = len(requests)
    assert pipeline.deliver_case(rig.rt, ref).kind == "retry"
    assert len(requests) - before == 1, "a first attempt must go straight to create"
    before = len(requests)
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"
    assert len(requests) - before == 2, "a retry looks up once (it may have landed), then creates once"
    assert jobs(rig, ref) == 1


def test_a_hub_refusing_the_delivered_update_dead_letters_the_update_not_the_case(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1, seed=25)[0])
    rig.hub._known = set()  # HTTP 404 for every case: refused, not worth retrying
    try:
        out = pipeline.deliver_case(rig.rt, ref)
    finally:
        rig.hub._known = None
    assert out.kind == "done" and out.push == []
    assert row(rig, ref).stage == "delivered" and jobs(rig, ref) == 1
    with session_scope(rig.url) as s:
        [outbox] = s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref)).all()
        dead = s.scalars(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref)).all()
    assert outbox.pushed_at is not None and (outbox.last_error or "").startswith("dead-lettered")
    assert [(d.stage, d.reason, json.loads(d.payload)) for d in dead] == [("push", "hub_refused", outbox.payload)]


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
            pipeline.deliver_case(rig.rt, ref)
    [told] = rig.hub.updates_for(ref)
    r = row(rig, ref)
    assert r.stage == "received" and r.unknown_outcome  # nothing of the delivery was committed
    with session_scope(rig.url) as s:  # its claim runs out
        s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(claimed_until=utcnow() - timedelta(seconds=1)))
    assert pipeline.deliver_case(rig.rt, ref).kind == "done"
    assert jobs(rig, ref) == 1
    assert row(rig, ref).stage == "acknowledged"
    assert rig.hub.updates_for(ref) == [told]
    assert told["backoffice_ref"] == rig.hub.backoffice_ref(ref) and (ref, 1) in rig.hub.duplicates
