"""The shared connector conformance suite, run against the Bartec connector and its simulator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.bartec import BartecConnector, BartecSimulator
from hubbridge.connectors.base import Delivery
from hubbridge.connectors.conformance import ConformanceHarness, ConnectorConformance

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


def bartec_harness(sim: BartecSimulator, tenant: str = TENANT) -> ConformanceHarness:
    def make_connector(read_timeout: float | None = None) -> BartecConnector:
        instance = ConnectorInstance(
            name=f"refuse-{tenant}", plugin="bartec", endpoint=sim.tenant_url(tenant),
            credentials={"username": "WYCHAVON_BARTEC_USER", "password": "WYCHAVON_BARTEC_PASSWORD"},
            timeouts=Timeouts(connect=2.0, read=read_timeout or 5.0),
        )
        return BartecConnector(instance, env=ENV)

    return ConformanceHarness(
        simulator=sim,
        make_connector=make_connector,
        delivery=bartec_delivery,
        jobs_for=lambda hub_ref: sim.jobs_for(tenant, hub_ref),
        advance=lambda: sim.advance(tenant),
        refused_delivery=lambda i: bartec_delivery(900 + i, uprn="999999999999"),
    )


class TestBartecConformance(ConnectorConformance):
    @pytest.fixture
    def harness(self) -> Iterator[ConformanceHarness]:
        with BartecSimulator() as sim:
            yield bartec_harness(sim)  # type: ignore[arg-type]
