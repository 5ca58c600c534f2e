"""The shared connector conformance suite, run against the Open311 connector in both of its formats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import ConformanceHarness, ConnectorConformance
from hubbridge.connectors.open311 import Open311Connector, Open311Simulator
from hubbridge.connectors.open311.simulator import DEFAULT_API_KEY

KEY_ENV = "COUNTY_OPEN311_API_KEY"
TENANT = "county"

SAMPLES = [
    ("HM_PHS", {"depth": "40TO100", "surface": "carriageway"}),
    ("SL_LNO", {"column_number": "WC/042", "fault_type": "OUT"}),
    ("DR_BLK", {"drain_type": "gully", "flooding": "no"}),
    ("HM_DGD", {"hazard_type": "FALLEN_TREE", "road_blocked": "yes"}),
]


def sample(i: int) -> Delivery:
    service_code, attributes = SAMPLES[i % len(SAMPLES)]
    return Delivery(
        hub_ref=f"WH-2026-{100000 + i:06d}", authority="worcestershire", service="highways.sample",
        payload={"service_code": service_code, "lat": 52.19 + i / 10000, "long": -2.22,
                 "description": f"Sample highway report {i}", "first_name": "Sam", "last_name": "Ple",
                 "email": f"sample{i}@example.org", "attributes": {**attributes, "easting": 384900 + i,
                                                                   "northing": 255100}},
    )


def refused(i: int) -> Delivery:
    """Valid for the request model, but the street light service requires a column number and fault type."""
    good = sample(1)
    return Delivery(hub_ref=f"WH-2026-{200000 + i:06d}", authority=good.authority, service=good.service,
                    payload={**good.payload, "service_code": "SL_LNO", "attributes": {}})


class _Open311Conformance(ConnectorConformance):
    fmt = "json"

    @pytest.fixture
    def harness(self) -> Iterator[ConformanceHarness]:
        with Open311Simulator() as sim:
            assert isinstance(sim, Open311Simulator)

            def make_connector(read_timeout: float | None = None) -> Open311Connector:
                inst = ConnectorInstance(
                    name="highways-county", plugin="open311", endpoint=sim.tenant_url(TENANT),
                    credentials={"api_key": KEY_ENV}, options={"format": self.fmt},
                    timeouts=Timeouts(connect=2, read=read_timeout or 10),
                )
                return Open311Connector(inst, env={KEY_ENV: DEFAULT_API_KEY})

            yield ConformanceHarness(
                simulator=sim,
                make_connector=make_connector,
                delivery=sample,
                jobs_for=lambda hub_ref: sim.jobs_for(hub_ref, TENANT),
                advance=lambda: sim.advance(TENANT),
                refused_delivery=refused,
            )


class TestOpen311JsonConformance(_Open311Conformance):
    fmt = "json"


class TestOpen311XmlConformance(_Open311Conformance):
    fmt = "xml"
