"""After a lost answer the Open311 connector uses only what GeoReport v2 offers, and never makes a second job."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery
from hubbridge.connectors.open311 import Open311Connector, Open311Simulator
from hubbridge.connectors.open311.simulator import DEFAULT_API_KEY
from hubbridge.errors import BadResponseError, OutcomeUnknown, UnknownOutcomeError
from tests.connectors.test_open311 import KEY_ENV, TENANT, pothole


def fresh(i: int) -> Delivery:
    """A delivery as the delivery step sends it first: known to have no job yet."""
    return replace(pothole(i), known_new=True)


def connector(sim: Open311Simulator, fmt: str = "json", **options: Any) -> Open311Connector:
    inst = ConnectorInstance(name="highways-county", plugin="open311", endpoint=sim.tenant_url(TENANT),
                             credentials={"api_key": KEY_ENV}, options={"format": fmt, **options},
                             timeouts=Timeouts(connect=2, read=5))
    return Open311Connector(inst, env={KEY_ENV: DEFAULT_API_KEY})


@pytest.fixture
def sim() -> Iterator[Open311Simulator]:
    with Open311Simulator() as s:
        yield s  # type: ignore[misc]


def test_default_simulator_ignores_the_reference_filter(sim: Open311Simulator) -> None:
    conn = connector(sim, server_echoes_attributes=True)
    conn.create(pothole(1))
    conn.create(pothole(2))
    # a spec server ignores `attribute[hub_ref]`: both requests come back, not only the one asked for
    rows = conn._call("GET", "requests", params={"attribute[hub_ref]": "WH-2026-000001"})
    assert len(rows) == 2


def test_reference_filter_only_when_switched_on_and_declared() -> None:
    with Open311Simulator(ref_filter=True) as s:
        conn = connector(s, server_filters_by_ref=True)
        made = conn.create(pothole(3))
        conn.create(pothole(4))
        assert len(conn._call("GET", "requests", params={"attribute[hub_ref]": "WH-2026-000003"})) == 1
        found = conn.find("WH-2026-000003")
        assert found is not None and found.backoffice_ref == made.backoffice_ref


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_spec_server_lost_answer_parks_with_candidates(sim: Open311Simulator, fmt: str) -> None:
    conn = connector(sim, fmt, server_echoes_attributes=False)
    d = pothole(5)
    conn.create(replace(d, known_new=True))  # stands in for the create whose answer was lost
    with pytest.raises(OutcomeUnknown) as caught:
        conn.find(d.hub_ref, d)
    assert caught.value.candidates == [sim.store.by_hub_ref(TENANT, d.hub_ref)[0].ref]
    assert "outcome unknown" in str(caught.value)
    assert sim.jobs_for(d.hub_ref) == 1


def test_spec_server_with_nothing_landed_still_refuses_to_guess(sim: Open311Simulator) -> None:
    conn = connector(sim)
    with pytest.raises(OutcomeUnknown, match="no candidate found"):
        conn.find("WH-2026-000006", pothole(6))
    assert sim.jobs_for("WH-2026-000006") == 0


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_echoing_server_is_searched_by_time_and_matched_on_reference(sim: Open311Simulator, fmt: str) -> None:
    conn = connector(sim, fmt, server_echoes_attributes=True)
    made = conn.create(pothole(7))
    conn.create(pothole(8))
    found = conn.find("WH-2026-000007", pothole(7))
    assert found is not None and found.backoffice_ref == made.backoffice_ref
    assert conn.find("WH-2026-000009", pothole(9)) is None


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_token_answer_is_resolved_with_get_tokens(fmt: str) -> None:
    with Open311Simulator(tokens=True, echo_attributes=False) as s:
        conn = connector(s, fmt)
        made = conn.create(fresh(10))
        assert made.backoffice_ref == s.store.by_hub_ref(TENANT, "WH-2026-000010")[0].ref
        assert any(path.startswith("/tokens/") for _, _, path in s.requests)


def test_queued_token_is_asked_again_never_recreated() -> None:
    with Open311Simulator(tokens=True, echo_attributes=False) as s:
        s.hold_tokens = True
        conn = connector(s)
        d = pothole(11)
        with pytest.raises(UnknownOutcomeError, match="token"):
            conn.create(replace(d, known_new=True))
        with pytest.raises(UnknownOutcomeError, match="still has no id"):
            conn.find(d.hub_ref, d)
        assert s.release_tokens() == 1
        found = conn.find(d.hub_ref, d)
        assert found is not None and found.backoffice_ref == s.store.by_hub_ref(TENANT, d.hub_ref)[0].ref
        assert s.jobs_for(d.hub_ref) == 1


@pytest.mark.parametrize("fault", ["html_proxy", "unrelated_xml"])
def test_xml_lookup_refuses_a_page_that_is_not_an_answer(sim: Open311Simulator, fault: str) -> None:
    conn = connector(sim, "xml", server_echoes_attributes=True)
    sim.faults.next(fault)
    with pytest.raises(BadResponseError):
        conn.find("WH-2026-000012", pothole(12))
