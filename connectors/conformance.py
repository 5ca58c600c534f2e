"""The conformance suite every connector passes against its simulator over real sockets.

A connector's test module (ours or a third party's) declares its connector with one call and pytest
runs every check below against it:

    TestMySystem = conformance_tests(connector=MySystemConnector, simulator=MySystemSimulator,
                                     delivery=my_delivery, tenant="malvern-hills")

A module that needs more control may still subclass `ConnectorConformance` and give it a `harness` fixture.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from hubbridge.case import FollowUpKind
from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import (
    BackOfficeUpdate,
    Connector,
    CreateResult,
    Delivery,
    Document,
    FollowUp,
    FollowUpResult,
    TargetField,
    connector_class,
)
from hubbridge.connectors.simulator import SAMPLE_JPEG, JobStore, Simulator
from hubbridge.errors import (
    BadResponseError,
    ConnectorError,
    NotSupported,
    OutcomeUnknown,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)


@dataclass
class ConformanceHarness:
    """What the suite needs to drive one connector against its started simulator."""

    simulator: Simulator
    make_connector: Callable[..., Connector]
    """Build a connector pointed at the simulator; accepts `read_timeout: float | None = None`."""
    delivery: Callable[[int], Delivery]
    """The i-th distinct, valid sample delivery (its own hub_ref)."""
    jobs_for: Callable[[str], int]
    """How many back-office jobs the simulator holds for a hub_ref (its own records, not the connector's)."""
    advance: Callable[[], int]
    """Move every job one step along its lifecycle, making updates; returns how many moved."""
    refused_delivery: Callable[[int], Delivery] | None = None
    """Optional: the i-th delivery the back office refuses (e.g. an unknown UPRN), for the permanent-error check."""
    followups_for: Callable[[str], list[dict[str, Any]]] = lambda _ref: []
    """The follow-up operations the simulator carried out on a back-office job, from its own records."""
    followup_writes: Mapping[str, str] = field(default_factory=dict)
    """Follow-up kind -> text in the request that carries it out (an operation name, a path), so a lost-answer
    check loses that request's answer; a kind not listed loses the next request's."""


FOLLOWUP_TEXTS = {
    FollowUpKind.NOTE: "Customer called again: the bin is by the side gate",
    FollowUpKind.AMENDMENT: "The Hub corrected the case: description: now at the rear of the property",
    FollowUpKind.EVIDENCE: "Customer sent a photo",
    FollowUpKind.PRIORITY: "The Hub raised the priority to high",
    FollowUpKind.CANCEL: "Customer withdrew the request: sorted out with a neighbour",
    FollowUpKind.REOPEN: "Customer says the problem is back",
}


def sample_followup(kind: FollowUpKind, backoffice_ref: str, hub_ref: str, sequence: int, *,
                    known_new: bool = True, text: str | None = None) -> FollowUp:
    """A follow-up of `kind` as the core sends it: worded text, a key unique to (case, sequence), a photo for
    evidence given both as bytes and as a URL, so each connector can take what its back office takes."""
    from datetime import UTC, datetime

    documents = ()
    if kind == FollowUpKind.EVIDENCE:
        documents = (Document(filename=f"photo-{sequence}.jpg", content_type="image/jpeg", content=SAMPLE_JPEG,
                              url=f"https://hub.example.gov.uk/evidence/{hub_ref}/{sequence}/photo.jpg"),)
    return FollowUp(
        hub_ref=hub_ref, backoffice_ref=backoffice_ref, key=f"{hub_ref}/{sequence}", kind=kind,
        text=text or FOLLOWUP_TEXTS[kind], occurred_at=datetime.now(UTC),
        priority="high" if kind == FollowUpKind.PRIORITY else None, documents=documents, known_new=known_new,
    )


PASS = "pass"
"""A FaultPlan entry that names no fault: the request it lands on is answered normally."""
BAD_BODY_KINDS = ("garbage", "truncated", "xxe", "entities", "wrong_type")
FAIL_FIRST_KINDS = ("error500", "reset", "status429")


def _drain(connector: Connector, cursor: str | None, limit: int, max_pages: int = 500) -> tuple[list, list, str]:
    """Read pages until `has_more` is False: (updates, cursors after each page, final cursor)."""
    updates: list = []
    cursors: list[str] = []
    for _ in range(max_pages):
        page = connector.updates_since(cursor, limit=limit)
        assert len(page.updates) <= limit, f"page of {len(page.updates)} updates exceeds limit {limit}"
        assert isinstance(page.cursor, str) and page.cursor, "every page must carry a cursor"
        updates.extend(page.updates)
        cursor = page.cursor
        cursors.append(cursor)
        if not page.has_more:
            return updates, cursors, cursor
        assert page.updates, "a page with has_more=True must not be empty"
    raise AssertionError(f"updates_since never reported has_more=False in {max_pages} pages")


def _job_store(simulator: Simulator) -> JobStore | None:
    return next((v for v in vars(simulator).values() if isinstance(v, JobStore)), None)


class ConnectorConformance:
    """The checks every connector passes against its simulator; subclass and provide a `harness` fixture.

    create is idempotent (also after an unknown outcome); updates are complete, ordered and resumable,
    with nothing skipped at a page or time boundary; errors are classified with the project's types and
    clear messages; timeouts are honoured; malformed or hostile answers give a clear error, never a
    crash or a hang.
    """

    slow_seconds = 1.5
    """How long the simulator stalls on a `slow` fault; longer than the 0.5 s read timeout used here."""

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def assert_clear(exc: BaseException, connector: Connector) -> None:
        assert isinstance(exc, ConnectorError), f"{type(exc).__name__} is not a hubbridge ConnectorError: {exc}"
        assert exc.instance == connector.name, f"error does not name the instance: {exc}"
        assert len(exc.message) >= 10, f"error message too terse: {exc.message!r}"

    def create_through_faults(self, harness: ConformanceHarness, kind: str, read_timeout: float | None = None,
                              index: int = 0, max_requests: int = 8) -> list[ConnectorError]:
        """Deliver one case with `kind` on its 1st request, then on its 2nd, ... until create gets past it.

        Whatever failed in between, the case ends as exactly one back-office job.
        """
        connector = harness.make_connector(read_timeout=read_timeout)
        delivery = harness.delivery(index)
        faults = harness.simulator.faults
        faults.slow_seconds = self.slow_seconds
        seen: list[ConnectorError] = []
        try:
            connector.find(harness.delivery(index + 1000).hub_ref)  # session set-up out of the way
            for n in range(max_requests):
                faults.clear()
                before = faults.injected.get(kind, 0)
                faults.next([PASS] * n + [kind])
                started = time.monotonic()
                try:
                    connector.create(delivery)
                except ConnectorError as exc:
                    self.assert_clear(exc, connector)
                    seen.append(exc)
                elapsed = time.monotonic() - started
                limit = (read_timeout or 30.0) * 4 + 2.0
                assert elapsed < limit, f"create took {elapsed:.1f}s with fault {kind!r}"
                if faults.injected.get(kind, 0) == before:
                    break  # create finished before reaching the fault: every position has been tried
            faults.clear()
            result = connector.create(delivery)
            assert result.backoffice_ref
            assert harness.jobs_for(delivery.hub_ref) == 1, (
                f"fault {kind!r}: {harness.jobs_for(delivery.hub_ref)} back-office jobs for {delivery.hub_ref}")
            again = connector.find(delivery.hub_ref)
            assert again is not None and again.backoffice_ref == result.backoffice_ref
        finally:
            faults.clear()
            connector.close()
        return seen

    # -- create / find -----------------------------------------------------------------------------
    def test_create_makes_one_job(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        delivery = harness.delivery(0)
        result = connector.create(delivery)
        assert isinstance(result, CreateResult) and result.backoffice_ref
        assert harness.jobs_for(delivery.hub_ref) == 1

    def test_create_twice_is_idempotent(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        delivery = harness.delivery(1)
        first = connector.create(delivery)
        second = connector.create(delivery)
        third = harness.make_connector().create(delivery)  # a fresh worker, no in-memory state
        assert first.backoffice_ref == second.backoffice_ref == third.backoffice_ref
        assert harness.jobs_for(delivery.hub_ref) == 1

    def test_create_of_a_known_new_case_does_not_look_first(self, harness: ConformanceHarness) -> None:
        """With `known_new` (the pipeline knows there is no job yet) create skips its look-up: fewer requests."""
        from dataclasses import replace

        connector = harness.make_connector()
        connector.find(harness.delivery(40).hub_ref)  # session set-up out of the way
        requests = harness.simulator.requests

        looked = harness.delivery(41)
        before = len(requests)
        connector.create(looked)
        looking = len(requests) - before

        fresh = replace(harness.delivery(42), known_new=True)
        before = len(requests)
        result = connector.create(fresh)
        assert len(requests) - before < looking, "create of a known-new case still looked for an existing job"
        assert result.backoffice_ref and harness.jobs_for(fresh.hub_ref) == 1
        found = connector.find(fresh.hub_ref)
        assert found is not None and found.backoffice_ref == result.backoffice_ref

    def test_distinct_cases_make_distinct_jobs(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        refs = {connector.create(harness.delivery(i)).backoffice_ref for i in range(2, 5)}
        assert len(refs) == 3

    def test_find(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        delivery = harness.delivery(5)
        assert connector.find(delivery.hub_ref) is None
        created = connector.create(delivery)
        found = connector.find(delivery.hub_ref)
        assert found is not None and found.backoffice_ref == created.backoffice_ref

    def test_unknown_outcome_then_retry_makes_one_job(self, harness: ConformanceHarness) -> None:
        """A create whose answer times out raises UnknownOutcomeError; delivering again makes no second job."""
        errors = self.create_through_faults(harness, "slow", read_timeout=0.5, index=6)
        assert errors, "a slow answer past the read timeout must raise"
        assert all(isinstance(e, TransientError) for e in errors), [type(e).__name__ for e in errors]
        assert any(isinstance(e, UnknownOutcomeError) for e in errors), (
            "a timeout after sending the create must be an UnknownOutcomeError: "
            + ", ".join(type(e).__name__ for e in errors))

    def test_lost_answer_makes_one_job_or_outcome_unknown(self, harness: ConformanceHarness) -> None:
        """As delivery does it: a create whose answer is lost, then `find` with the delivery, then create if None.

        The case ends as exactly one job, or as `OutcomeUnknown` with at most one job: never two.
        """
        connector = harness.make_connector(read_timeout=0.5)
        delivery = replace(harness.delivery(7), known_new=True)
        faults = harness.simulator.faults
        faults.slow_seconds = self.slow_seconds
        try:
            connector.find(harness.delivery(1007).hub_ref)  # session set-up out of the way
            faults.next("slow")
            with contextlib.suppress(UnknownOutcomeError):
                connector.create(delivery)
            faults.clear()
            for _ in range(3):  # a queued create (a token) may need asking again
                try:
                    found = connector.find(delivery.hub_ref, delivery)
                except OutcomeUnknown as exc:
                    self.assert_clear(exc, connector)
                    assert harness.jobs_for(delivery.hub_ref) <= 1
                    return
                except UnknownOutcomeError:
                    continue
                if found is None:
                    connector.create(delivery)
                assert harness.jobs_for(delivery.hub_ref) == 1, (
                    f"{harness.jobs_for(delivery.hub_ref)} back-office jobs for {delivery.hub_ref} after a lost answer")
                return
            raise AssertionError("find kept answering an unknown outcome")
        finally:
            faults.clear()
            connector.close()

    @pytest.mark.parametrize("kind", FAIL_FIRST_KINDS)
    def test_refused_before_work_is_transient(self, harness: ConformanceHarness, kind: str) -> None:
        errors = self.create_through_faults(harness, kind, index=7)
        assert errors, f"fault {kind!r} must raise"
        for exc in errors:
            assert isinstance(exc, TransientError) and not isinstance(exc, PermanentError), repr(exc)
        if kind == "status429":
            assert any(isinstance(e, TransientError) for e in errors)

    @pytest.mark.parametrize("kind", BAD_BODY_KINDS)
    def test_bad_answer_to_create_is_clear_and_idempotent(self, harness: ConformanceHarness, kind: str) -> None:
        errors = self.create_through_faults(harness, kind, index=8)
        assert errors, f"fault {kind!r} must raise"
        for exc in errors:
            assert isinstance(exc, BadResponseError | UnknownOutcomeError), repr(exc)

    @pytest.mark.parametrize("kind", BAD_BODY_KINDS)
    def test_bad_answer_to_a_read_is_bad_response(self, harness: ConformanceHarness, kind: str) -> None:
        connector = harness.make_connector()
        connector.updates_since(None, limit=5)  # warm up any session first, so the fault lands on the read
        harness.simulator.faults.next(kind)
        started = time.monotonic()
        with pytest.raises(BadResponseError) as info:
            connector.updates_since(None, limit=5)
        assert time.monotonic() - started < 10
        self.assert_clear(info.value, connector)
        harness.simulator.faults.clear()
        connector.updates_since(None, limit=5)  # and it recovers

    def test_refusal_is_permanent(self, harness: ConformanceHarness) -> None:
        if harness.refused_delivery is None:
            pytest.skip("the harness gives no delivery the back office refuses")
        connector = harness.make_connector()
        delivery = harness.refused_delivery(0)
        with pytest.raises(PermanentError) as info:
            connector.create(delivery)
        self.assert_clear(info.value, connector)
        assert harness.jobs_for(delivery.hub_ref) == 0

    def test_timeout_is_honoured(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector(read_timeout=0.5)
        connector.updates_since(None, limit=1)
        harness.simulator.faults.slow_seconds = self.slow_seconds
        harness.simulator.faults.next("slow")
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            connector.find(harness.delivery(9).hub_ref)
        elapsed = time.monotonic() - started
        assert elapsed < self.slow_seconds, f"a 0.5 s read timeout took {elapsed:.2f}s"
        self.assert_clear(info.value, connector)

    def test_back_office_down_then_up(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        delivery = harness.delivery(10)
        harness.simulator.faults.down = True
        try:
            with pytest.raises(TransientError) as info:
                connector.create(delivery)
            self.assert_clear(info.value, connector)
        finally:
            harness.simulator.faults.clear()
        assert connector.create(delivery).backoffice_ref
        assert harness.jobs_for(delivery.hub_ref) == 1

    # -- updates -----------------------------------------------------------------------------------
    def test_updates_complete_ordered_resumable(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        _, _, start = _drain(connector, None, limit=100)
        created = {}
        for i in range(20, 45):
            delivery = harness.delivery(i)
            created[connector.create(delivery).backoffice_ref] = delivery.hub_ref
        assert harness.advance() >= 25
        paged, cursors, end = _drain(connector, start, limit=7)
        whole, _, _ = _drain(connector, start, limit=1000)
        ids = [u.update_id for u in paged]
        assert len(ids) == len(set(ids)), "an update was returned twice"
        assert ids == [u.update_id for u in whole], "paging changed what was returned"
        times = [u.occurred_at for u in paged]
        assert times == sorted(times), "updates are not oldest first"
        assert all(isinstance(u, BackOfficeUpdate) and u.occurred_at.tzinfo for u in paged)
        refs = {u.backoffice_ref for u in paged}
        assert set(created) <= refs, f"updates missing for {sorted(set(created) - refs)}"
        for u in paged:
            if u.backoffice_ref in created and u.hub_ref is not None:
                assert u.hub_ref == created[u.backoffice_ref]
        # resumable: reading again from a cursor in the middle gives exactly the rest
        middle = cursors[1]
        taken = sum(1 for _ in paged[: 2 * 7])
        rest, _, _ = _drain(connector, middle, limit=7)
        assert [u.update_id for u in rest] == ids[taken:]
        # nothing new after the end, and new changes after it are all found
        empty = connector.updates_since(end, limit=7)
        assert empty.updates == [] and not empty.has_more
        assert harness.advance() >= 25
        later, _, _ = _drain(connector, end, limit=7)
        assert not {u.update_id for u in later} & set(ids), "an old update came back"
        assert set(created) <= {u.backoffice_ref for u in later}

    def test_updates_sharing_one_timestamp(self, harness: ConformanceHarness) -> None:
        """Many changes at the same instant, read in small pages: none lost, none repeated."""
        store = _job_store(harness.simulator)
        if store is None:
            pytest.skip("the simulator keeps no JobStore whose clock can be held still")
        connector = harness.make_connector()
        _, _, start = _drain(connector, None, limit=100)
        refs = {connector.create(harness.delivery(i)).backoffice_ref for i in range(50, 62)}
        original = store.clock
        instant = original()
        store.clock = lambda: instant
        try:
            assert harness.advance() >= 12
            assert harness.advance() >= 12
            paged, _, end = _drain(connector, start, limit=5)
        finally:
            store.clock = original
        ids = [u.update_id for u in paged]
        assert len(ids) == len(set(ids))
        per_ref = {r: sum(1 for u in paged if u.backoffice_ref == r) for r in refs}
        assert all(n >= 2 for n in per_ref.values()), per_ref
        assert connector.updates_since(end, limit=5).updates == []

    def test_bad_cursor_is_clear(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        try:
            connector.updates_since("not a cursor \x00", limit=5)
        except (ConnectorError, ValueError) as exc:
            assert str(exc)
        # a connector may also treat an unreadable cursor as "from the start"; it must not crash

    # -- the rest of the interface -------------------------------------------------------------------
    def test_target_fields(self, harness: ConformanceHarness) -> None:
        fields = harness.make_connector().target_fields()
        assert fields, "target_fields() must describe the payload"
        for name, f in fields.items():
            assert isinstance(f, TargetField) and f.name == name

    def test_render_sends_nothing(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        delivery = harness.delivery(70)
        before = len(harness.simulator.requests)
        text = connector.render(delivery)
        assert isinstance(text, str) and text.strip()
        assert len(harness.simulator.requests) == before, "render() must not talk to the back office"
        assert harness.jobs_for(delivery.hub_ref) == 0

    def test_notes_and_cancel(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        ref = connector.create(harness.delivery(71)).backoffice_ref
        if connector.supports_notes:
            connector.add_note(ref, "Customer called again: bin is by the gate")
        else:
            with pytest.raises(NotSupported):
                connector.add_note(ref, "x")
        if connector.supports_cancel:
            connector.cancel(ref, "Customer says the bin was emptied")
        else:
            with pytest.raises(NotSupported):
                connector.cancel(ref, "x")
        connector.close()

    # -- follow-ups: what the Hub tells the back office about a job it already has ---------------------------
    def _followup_job(self, harness: ConformanceHarness, index: int) -> tuple[Connector, str, str]:
        connector = harness.make_connector()
        delivery = harness.delivery(index)
        return connector, connector.create(delivery).backoffice_ref, delivery.hub_ref

    @staticmethod
    def _records(harness: ConformanceHarness, ref: str, kind: FollowUpKind) -> list[dict[str, Any]]:
        return [r for r in harness.followups_for(ref) if r["kind"] == kind.value]

    @pytest.mark.parametrize("kind", list(FollowUpKind))
    def test_followup_lands_once(self, harness: ConformanceHarness, kind: FollowUpKind) -> None:
        """A follow-up of a kind the back office has an operation for lands once, in its own records."""
        connector, ref, hub_ref = self._followup_job(harness, 80 + list(FollowUpKind).index(kind))
        try:
            followup = sample_followup(kind, ref, hub_ref, 2)
            if kind not in connector.followup_kinds:
                with pytest.raises(NotSupported):
                    connector.follow_up(followup)
                assert harness.followups_for(ref) == []
                return
            if kind == FollowUpKind.REOPEN and FollowUpKind.CANCEL in connector.followup_kinds:
                connector.follow_up(sample_followup(FollowUpKind.CANCEL, ref, hub_ref, 1))  # something to reopen
            result = connector.follow_up(followup)
            assert isinstance(result, FollowUpResult)
            records = self._records(harness, ref, kind)
            assert len(records) == 1, f"{len(records)} {kind.value} records in the back office after one follow-up"
            if kind == FollowUpKind.EVIDENCE:
                assert records[0]["documents"], "the back office holds no document for the evidence"
            try:
                found = connector.find_follow_up(replace(followup, known_new=False))
            except OutcomeUnknown as exc:  # a back office that cannot read its records back says so
                self.assert_clear(exc, connector)
            else:
                assert found is not None, "find_follow_up must find a follow-up that landed"
        finally:
            connector.close()

    @pytest.mark.parametrize("kind", list(FollowUpKind))
    def test_followup_not_sent_is_not_found(self, harness: ConformanceHarness, kind: FollowUpKind) -> None:
        connector, ref, hub_ref = self._followup_job(harness, 90 + list(FollowUpKind).index(kind))
        try:
            if kind not in connector.followup_kinds:
                return
            try:
                assert connector.find_follow_up(sample_followup(kind, ref, hub_ref, 5, known_new=False)) is None
            except OutcomeUnknown as exc:  # a back office that cannot read its own records back says so
                self.assert_clear(exc, connector)
        finally:
            connector.close()

    @pytest.mark.parametrize("kind", list(FollowUpKind))
    def test_followup_lost_answer_lands_once(self, harness: ConformanceHarness, kind: FollowUpKind) -> None:
        """As the core does it: a follow-up whose answer is lost, then `find_follow_up`, then send if None.

        It ends as exactly one record in the back office, or as `OutcomeUnknown` with at most one: never two.
        """
        connector, ref, hub_ref = self._followup_job(harness, 100 + list(FollowUpKind).index(kind))
        if kind not in connector.followup_kinds:
            connector.close()
            return
        slow = harness.make_connector(read_timeout=0.5)
        faults = harness.simulator.faults
        faults.slow_seconds = self.slow_seconds
        try:
            if kind == FollowUpKind.REOPEN and FollowUpKind.CANCEL in connector.followup_kinds:
                connector.follow_up(sample_followup(FollowUpKind.CANCEL, ref, hub_ref, 1))
            followup = sample_followup(kind, ref, hub_ref, 2)
            slow.find(harness.delivery(1100).hub_ref)  # session set-up out of the way
            # the fault lands on the write itself, not on a read the connector makes before it
            faults.next("slow", match=harness.followup_writes.get(kind.value))
            with pytest.raises(TransientError):
                slow.follow_up(followup)
            faults.clear()
            again = replace(followup, known_new=False)
            try:
                found = connector.find_follow_up(again)
            except OutcomeUnknown as exc:
                self.assert_clear(exc, connector)
                assert len(self._records(harness, ref, kind)) <= 1
                return
            if found is None:
                connector.follow_up(again)
            records = self._records(harness, ref, kind)
            assert len(records) == 1, f"{len(records)} {kind.value} records after a lost answer: never two"
        finally:
            faults.clear()
            slow.close()
            connector.close()

    def test_followups_keep_their_order(self, harness: ConformanceHarness) -> None:
        connector, ref, hub_ref = self._followup_job(harness, 110)
        try:
            kinds = [k for k in (FollowUpKind.NOTE, FollowUpKind.AMENDMENT) if k in connector.followup_kinds]
            if not kinds:
                return
            texts = [f"Follow-up {i}: the customer adds detail {i}" for i in range(1, 5)]
            for i, text in enumerate(texts, start=1):
                connector.follow_up(sample_followup(kinds[0], ref, hub_ref, i, text=text))
            seen = [r["text"] for r in harness.followups_for(ref) if r["kind"] == kinds[0].value]
            order = [next(i for i, t in enumerate(texts) if t in s) for s in seen]
            assert order == sorted(order) and len(order) == len(texts), seen
        finally:
            connector.close()

    def test_followup_on_unknown_job_is_refused(self, harness: ConformanceHarness) -> None:
        connector = harness.make_connector()
        try:
            kinds = sorted(connector.followup_kinds - {FollowUpKind.REOPEN, FollowUpKind.CANCEL})
            if not kinds:
                return
            with pytest.raises(ConnectorError) as caught:
                connector.follow_up(sample_followup(kinds[0], "99999999", "WH-2026-999999", 1))
            assert not isinstance(caught.value, TransientError), "an unknown job is a refusal, not worth retrying"
            self.assert_clear(caught.value, connector)
        finally:
            connector.close()


@dataclass(frozen=True)
class ConformanceTarget:
    """One connector as the suite drives it: its class, its simulator, sample deliveries and instance settings."""

    connector: type[Connector] | str
    """The connector class, or its plugin name to load through the entry point when a test starts."""
    simulator: Callable[[], Simulator]
    """Makes the (unstarted) simulator; its `tenant_url`, `jobs_for` and `advance` are what the suite uses."""
    delivery: Callable[[int], Delivery]
    """The i-th distinct, valid sample delivery (its own hub_ref)."""
    tenant: str
    refused_delivery: Callable[[int], Delivery] | None = None
    """Optional: the i-th delivery the back office refuses, for the permanent-error check."""
    name: str = "{plugin}-{tenant}"
    """The instance name, formatted with `plugin` and `tenant`."""
    credentials: Mapping[str, str] = field(default_factory=dict)
    """Credential role -> environment variable name, as in connectors.yaml."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The environment the connector reads those variables from (never the process's own)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    read_timeout: float = 10.0
    """The read timeout when a check asks for none in particular."""
    fixtures: Sequence[str] = ()
    """pytest fixtures to set up before the simulator starts (e.g. one that installs a plugin)."""
    followup_writes: Mapping[str, str] = field(default_factory=dict)
    """Follow-up kind -> text in the request that carries it out (see `ConformanceHarness.followup_writes`)."""

    def connector_class(self) -> type[Connector]:
        """The connector class, loaded now if it was given by plugin name."""
        return connector_class(self.connector) if isinstance(self.connector, str) else self.connector

    def harness(self, sim: Simulator, tenant: str | None = None,
                made: list[Connector] | None = None) -> ConformanceHarness:
        """The harness for `sim` (started), for `tenant` (default: the target's); connectors built go in `made`."""
        cls = self.connector_class()
        tenant = tenant or self.tenant

        def make_connector(read_timeout: float | None = None) -> Connector:
            instance = ConnectorInstance(
                name=self.name.format(plugin=cls.plugin, tenant=tenant), plugin=cls.plugin,
                endpoint=sim.tenant_url(tenant), credentials=dict(self.credentials), options=dict(self.options),
                timeouts=Timeouts(connect=2.0, read=read_timeout if read_timeout is not None else self.read_timeout),
            )
            conn = cls(instance, env=dict(self.env))
            if made is not None:
                made.append(conn)
            return conn

        return ConformanceHarness(
            simulator=sim,
            make_connector=make_connector,
            delivery=self.delivery,
            jobs_for=lambda hub_ref: sim.jobs_for(hub_ref, tenant),
            advance=lambda: sim.advance(tenant),
            refused_delivery=self.refused_delivery,
            followups_for=lambda backoffice_ref: sim.followups_for(backoffice_ref, tenant),
            followup_writes=dict(self.followup_writes),
        )


def conformance_tests(**target: Any) -> type[ConnectorConformance]:
    """The whole suite as a pytest test class for one connector; the keywords are `ConformanceTarget`'s fields.

    Assign the result to a `Test...` name in a test module and pytest runs every check against the connector.
    """
    declared = ConformanceTarget(**target)

    class Conformance(ConnectorConformance):
        target = declared

        @pytest.fixture
        def harness(self, request: pytest.FixtureRequest) -> Iterator[ConformanceHarness]:
            for name in declared.fixtures:
                request.getfixturevalue(name)
            made: list[Connector] = []
            with declared.simulator() as sim:
                yield declared.harness(sim, made=made)
                for conn in made:
                    conn.close()

    return Conformance
