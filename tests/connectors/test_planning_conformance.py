"""The shared connector conformance suite, run against the planning connector and its simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import ConformanceHarness, ConnectorConformance
from hubbridge.connectors.planning import PlanningConnector, PlanningSimulator
from hubbridge.connectors.planning.simulator import DEFAULT_TOKEN

TENANT = "wychavon"
TOKEN_ENV = "PLANNING_WYCHAVON_TOKEN"
KINDS = ("BREACH_REPORT", "APPLICATION_ENQUIRY", "PRE_APPLICATION_ADVICE")


def sample_delivery(i: int) -> Delivery:
    """The i-th distinct valid delivery, cycling through the three enquiry types."""
    kind = KINDS[i % len(KINDS)]
    payload: dict[str, object] = {
        "enquiry_type": kind,
        "description": f"Conformance sample {i}",
        "customer": {"name": f"Sample Customer {i}", "email": f"customer{i}@example.org"},
        "how_received": "WEB",
    }
    if kind == "BREACH_REPORT":
        payload |= {"site": {"uprn": f"{100120000000 + i}", "address_text": f"{i} Station Road, Pershore"},
                    "breach_type": "CHANGE_OF_USE"}
    elif kind == "APPLICATION_ENQUIRY":
        payload |= {"application_reference": f"W/26/{i:05d}/FUL"}
    else:
        payload |= {"site": {"easting": 394500, "northing": 245900}, "development_scale": "MINOR"}
    return Delivery(hub_ref=f"WH-2026-{i + 1:06d}", authority=TENANT, service="planning.enquiry",
                    payload=payload, mapping_version="conformance")


def refused_delivery(i: int) -> Delivery:
    """A breach report at a UPRN outside the district's gazetteer: valid here, refused by the back office."""
    good = sample_delivery(0)
    payload = {**good.payload, "site": {"uprn": f"{999000000000 + i}"}}
    return Delivery(hub_ref=f"WH-2026-{900000 + i:06d}", authority=TENANT, service="planning.enquiry",
                    payload=payload, mapping_version="conformance")


class TestPlanningConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[ConformanceHarness]:
        with PlanningSimulator() as sim:
            assert isinstance(sim, PlanningSimulator)
            made: list[PlanningConnector] = []

            def make_connector(read_timeout: float | None = None) -> PlanningConnector:
                inst = ConnectorInstance(
                    name=f"planning-{TENANT}", plugin="planning", endpoint=sim.tenant_url(TENANT),
                    credentials={"token": TOKEN_ENV},
                    timeouts=Timeouts(connect=2.0, read=read_timeout if read_timeout is not None else 10.0),
                )
                conn = PlanningConnector(inst, env={TOKEN_ENV: DEFAULT_TOKEN})
                made.append(conn)
                return conn

            yield ConformanceHarness(
                simulator=sim,
                make_connector=make_connector,
                delivery=sample_delivery,
                jobs_for=lambda hub_ref: sim.jobs_for(hub_ref, TENANT),
                advance=lambda: sim.advance(TENANT),
                refused_delivery=refused_delivery,
            )
            for conn in made:
                conn.close()
