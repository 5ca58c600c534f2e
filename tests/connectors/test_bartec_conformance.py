"""The shared connector conformance suite, run against the Bartec connector and its simulator."""

from __future__ import annotations

from datetime import UTC, datetime

from hubbridge.connectors.bartec import BartecConnector, BartecSimulator
from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import ConformanceHarness, conformance_tests

TENANT = "wychavon"
ENV = {"WYCHAVON_BARTEC_USER": "hubbridge", "WYCHAVON_BARTEC_PASSWORD": "not-a-real-password"}


def bartec_delivery(i: int, uprn: str | None = None) -> Delivery:
    """A missed-bin case as the refuse mapping would translate it."""
    return Delivery(
        hub_ref=f"WH-2026-{i + 1:06d}", authority=TENANT, service="refuse.missed-bin",
        payload={
            "UPRN": uprn or f"{100120000000 + i}",
            "ServiceTypeID": 238,
            "DateRequested": datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
            "serviceLocationDescription": f"{i + 1} High Street, by the gate",
            "ServiceRequest_Location": {"Metric": {"Latitude": "52.0921", "Longitude": "-1.9468"}},
            "reporterContact": {"Forename": "Ann", "Surname": "Example", "Email": "ann@example.org",
                                "Telephone": "01905 000000", "ReporterType": "Public"},
            "extendedData": {"ServiceRequest_CreateServiceRequest_CreateFields": [
                {"FieldName": "BIN_TYPE", "FieldValue": "Grey 240L"}]},
        },
    )


TestBartecConformance = conformance_tests(
    connector=BartecConnector, simulator=BartecSimulator, delivery=bartec_delivery, tenant=TENANT,
    refused_delivery=lambda i: bartec_delivery(900 + i, uprn="999999999999"), name="refuse-{tenant}",
    credentials={"username": "WYCHAVON_BARTEC_USER", "password": "WYCHAVON_BARTEC_PASSWORD"}, env=ENV,
    read_timeout=5.0)


def bartec_harness(sim: BartecSimulator, tenant: str = TENANT) -> ConformanceHarness:
    """The conformance harness for one Bartec tenant of `sim`, for the Bartec-specific tests."""
    return TestBartecConformance.target.harness(sim, tenant)
