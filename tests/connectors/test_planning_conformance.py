"""The shared connector conformance suite, run against the planning connector and its simulator."""

from __future__ import annotations

from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import conformance_tests
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


TestPlanningConformance = conformance_tests(
    connector=PlanningConnector, simulator=PlanningSimulator, delivery=sample_delivery, tenant=TENANT,
    refused_delivery=refused_delivery, credentials={"token": TOKEN_ENV}, env={TOKEN_ENV: DEFAULT_TOKEN})
