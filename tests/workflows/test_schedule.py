"""Beat's reconcile sweep hands lost or due work back to the queues."""
from __future__ import annotations

from datetime import timedelta

from hubbridge.store import (
    utcnow,
)
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.schedule import reconcile

from .conftest import Rig, accept, missed_bins


def test_reconcile_requeues_lost_work(rig: Rig) -> None:
    ref = accept(rig, missed_bins(1)[0])
    # the message for this case was lost: nothing happens until its lease runs out
    assert ref not in reconcile(rig.rt).deliver
    later = utcnow() + timedelta(seconds=rig.rt.settings.reconcile_after_seconds + 1)
    sweep = reconcile(rig.rt, now=later)
    assert sweep.deliver == [ref]
    assert reconcile(rig.rt, now=later).deliver == []  # leased again: not queued twice
    deliver_case(rig.rt, ref, tell_hub=False)
    sweep = reconcile(rig.rt, now=later + timedelta(seconds=rig.rt.settings.reconcile_after_seconds + 1))
    assert ref in sweep.push  # its Hub update was never pushed


def test_work_that_could_not_be_published_is_due_at_the_next_sweep(rig: Rig) -> None:
    from hubbridge.workflows.schedule import mark_unpublished

    ref = accept(rig, missed_bins(1)[0])
    assert ref not in reconcile(rig.rt).deliver  # leased at intake: a lost publish would wait out the lease
    mark_unpublished(rig.rt, deliver=[ref])
    assert reconcile(rig.rt).deliver == [ref]  # the very next sweep, not minutes later
    assert reconcile(rig.rt).deliver == []  # and leased again once handed over
    deliver_case(rig.rt, ref, tell_hub=False)
    mark_unpublished(rig.rt, deliver=[ref], push=[ref])  # a delivered case is not re-queued for delivery
    sweep = reconcile(rig.rt)
    assert sweep.deliver == [] and ref in sweep.push
