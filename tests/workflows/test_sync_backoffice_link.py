"""Updates on our own job from a server that does not echo our reference are matched by the back office's own id."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hubbridge.connectors.open311 import Open311Simulator
from hubbridge.store import LinkRow, RaisedCaseRow, session_scope, utcnow
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.raised import raise_pending
from hubbridge.workflows.runtime import Outcome, Runtime
from hubbridge.workflows.sync import poll_connector

from .conftest import Rig, accept, row
from .stack import connectors_yaml, use_config, write_config

INSTANCE = "highways-county"
TENANT = "county"


@pytest.fixture
def spec_rig(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
             sqlite_url: str) -> Iterator[Rig]:
    """Highways on a GeoReport v2 server that echoes no attributes (our reference never comes back)."""
    hub, _ = sims
    hub.reset()
    with Open311Simulator(api_key=None, echo_attributes=False) as highways:
        cfg = write_config(tmp_path / "config", hub.endpoint, {"open311": highways.url}, ["open311"])
        with connectors_yaml(cfg) as conns:
            conns["connectors"][INSTANCE]["options"]["server_echoes_attributes"] = False
            conns["hub"]["timeouts"] = {"connect": 2, "read": 60}  # the held answer below must not time out
        use_config(monkeypatch, cfg, sqlite_url)
        rt = Runtime()
        yield Rig(rt, hub, highways)
        hub.faults.clear()
        rt.close()


def pothole() -> dict[str, Any]:
    return next(generate_cases(1, areas=("highways",), services=("highways.pothole",)))


def test_update_read_by_a_fresh_worker_goes_to_our_case(spec_rig: Rig) -> None:
    ref = accept(spec_rig, pothole())
    assert deliver_case(spec_rig.rt, ref).kind == "done"
    sim: Open311Simulator = spec_rig.backoffice
    [job] = sim.store.by_hub_ref(TENANT, ref)
    sim.set_status(TENANT, job.ref, "INV")
    fresh = Runtime()  # a restarted worker: nothing in memory, only the store's link
    try:
        poll_connector(fresh, INSTANCE)
        raise_pending(fresh, INSTANCE)
    finally:
        fresh.close()
    assert not [c for c in spec_rig.hub.raised_cases() if c["backoffice_ref"] == job.ref]
    push_hub(spec_rig.rt, ref)
    notes = [u.get("note") or "" for u in spec_rig.hub.updates_for(ref)]
    assert len(notes) >= 2, notes  # `delivered`, then the job's own news


def test_update_while_the_delivery_commit_is_pending_makes_no_second_case(spec_rig: Rig) -> None:
    ref = accept(spec_rig, pothole())
    sim: Open311Simulator = spec_rig.backoffice
    hub = spec_rig.hub
    hub.faults.next("hold", match=ref)  # the Hub's answer to `delivered`, told before delivery's commit
    outcome: list[Outcome] = []
    delivery = threading.Thread(target=lambda: outcome.append(deliver_case(spec_rig.rt, ref)))
    delivery.start()
    try:
        assert hub.faults.holding.wait(60), "delivery never told the Hub"
        # the job exists in the back office, the link is not committed yet: a poll reads the job's update now
        [job] = sim.store.by_hub_ref(TENANT, ref)
        poller = Runtime()  # another worker: it has not seen the create, only the store
        try:
            polled = poll_connector(poller, INSTANCE)
            assert polled.kind == "done", polled
            raise_pending(poller, INSTANCE)
        finally:
            poller.close()
        assert not [c for c in hub.raised_cases() if c["backoffice_ref"] == job.ref], "our job became a 2nd case"
        with session_scope(spec_rig.url) as s:
            held = s.scalar(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref))
        assert held is not None and held.state == "pending" and ref in (held.last_error or "")
    finally:
        hub.faults.release()
        delivery.join(60)
    assert outcome and outcome[0].kind == "done"
    # once the link is committed, the held update goes to our own case
    raise_pending(spec_rig.rt, INSTANCE, now=utcnow() + timedelta(hours=1))
    with session_scope(spec_rig.url) as s:
        held = s.scalar(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref))
        link = s.scalar(select(LinkRow.hub_ref).where(LinkRow.backoffice_ref == job.ref))
    assert held is not None and held.state == "linked" and held.hub_ref == ref == link
    assert not [c for c in hub.raised_cases() if c["backoffice_ref"] == job.ref]
    assert row(spec_rig, ref).stage != "dead"
    assert sim.jobs_for(ref) == 1
