"""Jobs raised in the County's shared highways back office reach the Hub case of the council their location is in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hubbridge.connectors.open311 import Open311Simulator
from hubbridge.store import RaisedCaseRow, session_scope
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.raised import raise_pending
from hubbridge.workflows.runtime import Runtime
from hubbridge.workflows.sync import poll_connector

from .conftest import Rig
from .stack import use_config, write_config

INSTANCE = "highways-county"
TENANT = "county"


@pytest.fixture
def highways_rig(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
                 sqlite_url: str) -> Iterator[Rig]:
    hub, _ = sims
    hub.reset()
    with Open311Simulator(api_key=None) as highways:
        cfg = write_config(tmp_path / "config", hub.endpoint, {"open311": highways.url}, ["open311"])
        use_config(monkeypatch, cfg, sqlite_url)
        rt = Runtime()
        yield Rig(rt, hub, highways)
        rt.close()


def poll(rig: Rig) -> None:
    out = poll_connector(rig.rt, INSTANCE)
    refs = set(out.push) | set(raise_pending(rig.rt, INSTANCE))
    for ref in sorted(refs):
        push_hub(rig.rt, ref)


def test_raised_highways_jobs_of_two_councils_reach_their_own_council(highways_rig: Rig) -> None:
    sim: Open311Simulator = highways_rig.backoffice
    in_bromsgrove = sim.raise_direct(TENANT, "HM_PHS", address_string="High Street, Bromsgrove B61 8DA",
                                     zipcode="B61 8DA", attributes={"depth": "GT100", "surface": "carriageway"})
    in_malvern = sim.raise_direct(TENANT, "HM_PHS", address_string="Church Street, Great Malvern WR14 2AY",
                                  attributes={"depth": "40TO100", "surface": "carriageway"})
    poll(highways_rig)
    raised = {c["backoffice_ref"]: c["case"] for c in highways_rig.hub.raised_cases()}
    assert raised[in_bromsgrove.ref]["authority"] == "bromsgrove"  # from the request's zipcode
    assert raised[in_malvern.ref]["authority"] == "malvern-hills"  # from the postcode in its address
    assert {raised[r]["service"] for r in (in_bromsgrove.ref, in_malvern.ref)} == {"highways.pothole"}


def test_a_raised_job_with_no_known_postcode_is_dead_lettered_saying_why(highways_rig: Rig) -> None:
    sim: Open311Simulator = highways_rig.backoffice
    job = sim.raise_direct(TENANT, "HM_PHS", address_string="A lay-by on the A44",
                           attributes={"depth": "GT100", "surface": "carriageway"})
    poll(highways_rig)
    assert not [c for c in highways_rig.hub.raised_cases() if c["backoffice_ref"] == job.ref]
    with session_scope(highways_rig.url) as s:
        row = s.scalar(select(RaisedCaseRow).where(RaisedCaseRow.backoffice_ref == job.ref))
    assert row is not None and row.state != "raised"
    assert "location gave no authority" in (row.last_error or "")
