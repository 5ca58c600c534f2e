"""A lost answer from a back office with no look-up by our reference ends as an "outcome unknown" dead letter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hubbridge.connectors.open311 import Open311Simulator
from hubbridge.store import DeadLetterRow, session_scope
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.runtime import Runtime

from .conftest import Rig, accept, row
from .stack import connectors_yaml, use_config, write_config


@pytest.fixture
def spec_rig(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch,
             sqlite_url: str) -> Iterator[Rig]:
    """A rig whose highways back office is a GeoReport v2 server that echoes no attributes."""
    hub, _ = sims
    hub.reset()
    with Open311Simulator(api_key=None, echo_attributes=False) as highways:
        cfg = write_config(tmp_path / "config", hub.endpoint, {"open311": highways.url}, ["open311"])
        with connectors_yaml(cfg) as conns:
            conns["connectors"]["highways-county"]["options"]["server_echoes_attributes"] = False
        use_config(monkeypatch, cfg, sqlite_url)
        rt = Runtime()
        yield Rig(rt, hub, highways)
        rt.close()


def test_lost_answer_on_a_spec_server_is_dead_lettered_as_outcome_unknown(spec_rig: Rig) -> None:
    case = next(generate_cases(1, areas=("highways",), services=("highways.pothole",)))
    ref = accept(spec_rig, case)
    sim: Open311Simulator = spec_rig.backoffice
    sim.faults.slow_seconds = 4.0  # past the read timeout: the job is made, the answer lost
    sim.faults.next("slow", match="service_code")
    assert deliver_case(spec_rig.rt, ref).kind == "retry"
    assert sim.jobs_for(ref) == 1
    out = deliver_case(spec_rig.rt, ref)
    assert out.kind == "dead"
    assert sim.jobs_for(ref) == 1, "no second create after an unknown outcome"
    job_ref = sim.store.by_hub_ref("county", ref)[0].ref
    with session_scope(spec_rig.url) as s:
        dl = s.scalar(select(DeadLetterRow).where(DeadLetterRow.hub_ref == ref))
    assert dl is not None and dl.stage == "deliver" and dl.reason == "outcome unknown"
    assert job_ref in dl.detail and "candidate" in dl.detail
    assert json.loads(dl.payload)["ref"] == ref
    assert row(spec_rig, ref).stage == "dead"
    # replaying the dead letter is the operator's call; delivering again on its own never creates
    assert deliver_case(spec_rig.rt, ref).kind != "done"
    assert sim.jobs_for(ref) == 1
