"""The shared connector conformance suite, run against the revenues & benefits connector and its simulator."""

from __future__ import annotations

from typing import Any

from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import conformance_tests
from hubbridge.connectors.revenues import RevenuesConnector, RevenuesSimulator
from hubbridge.connectors.revenues.simulator import UNKNOWN_ACCOUNTS

TENANT = "shared-services"
ENV = {"SHARED_REVENUES_USER": "hub-interface", "SHARED_REVENUES_PASSWORD": "conformance-pass"}
AUTHORITIES = ("malvern-hills", "worcester", "wychavon")  # the three councils the shared service bills for


def sample_delivery(i: int) -> Delivery:
    """The i-th distinct valid delivery, cycling through the four revenues & benefits case types."""
    kind = ("CTCOA", "CTSPD", "HBCOC", "CTARR")[i % 4]
    payload: dict[str, Any] = {
        "WorkItemType": kind,
        "CouncilTaxAccountRef": f"{30000000 + i}",
        "EffectiveDate": "2026-04-01",
        "ReceivedVia": "WEB",
        "Customer": {"FullName": f"Sample Customer {i}", "Email": f"customer{i}@example.org"},
        "Notes": f"Conformance sample {i}",
    }
    if kind == "CTCOA":
        payload["NewAddress"] = {"AddressLine1": f"{i + 1} Foregate Street", "Town": "Worcester",
                                 "Postcode": "WR1 1DB"}
    elif kind == "HBCOC":
        payload["BenefitClaimRef"] = f"{500000 + i}"
    elif kind == "CTARR":
        payload["PaymentProposal"] = {"InstalmentAmount": "25.00", "Frequency": "WEEKLY",
                                      "FirstPaymentDate": "2026-04-06"}
    return Delivery(hub_ref=f"WH-2026-{200000 + i:06d}", authority=AUTHORITIES[i % 3],
                    service="revenues.sample", payload=payload, mapping_version="conformance")


def refused_delivery(i: int) -> Delivery:
    """The i-th delivery against a council tax account the back office does not hold (a soap:Client fault)."""
    base = sample_delivery(4 * i)  # a change of address
    unknown = sorted(a for a in UNKNOWN_ACCOUNTS if len(a) >= 6)
    payload = {**base.payload, "CouncilTaxAccountRef": unknown[i % len(unknown)]}
    return Delivery(hub_ref=f"WH-2026-{300000 + i:06d}", authority=base.authority, service=base.service,
                    payload=payload, mapping_version="conformance")


TestRevenuesConformance = conformance_tests(
    connector=RevenuesConnector, simulator=RevenuesSimulator, delivery=sample_delivery, tenant=TENANT,
    refused_delivery=refused_delivery, env=ENV,
    credentials={"username": "SHARED_REVENUES_USER", "password": "SHARED_REVENUES_PASSWORD"})
