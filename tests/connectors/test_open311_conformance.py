"""The shared connector conformance suite, run against the Open311 connector in both of its formats."""

from __future__ import annotations

from typing import Any

from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import conformance_tests
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


OPEN311: dict[str, Any] = dict(
    connector=Open311Connector, simulator=Open311Simulator, delivery=sample, tenant=TENANT, refused_delivery=refused,
    name="highways-{tenant}", credentials={"api_key": KEY_ENV}, env={KEY_ENV: DEFAULT_API_KEY},
    followup_writes={kind: "servicerequestupdates" for kind in ("note", "evidence", "cancel", "reopen")})
TestOpen311JsonConformance = conformance_tests(**OPEN311, options={"format": "json", "server_echoes_attributes": True})
TestOpen311XmlConformance = conformance_tests(**OPEN311, options={"format": "xml", "server_echoes_attributes": True})
