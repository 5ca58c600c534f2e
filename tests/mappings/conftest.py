"""Shared fixtures for the mapping engine tests: a valid case and a Bartec-like target field tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hubbridge.case import HubCase
from hubbridge.connectors.base import TargetField

SHIPPED = Path(__file__).resolve().parents[2] / "mappings" / "shipped"
MISSED = SHIPPED / "refuse" / "missed-collection.bartec.yaml"


def case_data(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ref": "WH-2026-000123",
        "authority": "bromsgrove",
        "service": "refuse.missed-collection",
        "channel": "phone",
        "customer": {
            "name": "Ann Smith",
            "phone": "01527 881288",
            "email": "ann@example.org",
            "address": {"line1": "1 High Street", "town": "Bromsgrove", "postcode": "B60 1AA", "uprn": "100120"},
        },
        "location": {"lat": 52.33, "lon": -2.06},
        "description": "Bin not emptied",
        "attributes": {"container": "recycling", "bin_location": "front of property"},
        "created_at": "2026-03-01T09:30:00+00:00",
    }
    data.update(over)
    return data


@pytest.fixture
def case() -> HubCase:
    return HubCase.model_validate(case_data())


def bartec_targets() -> dict[str, TargetField]:
    """A Bartec ServiceRequests_Create-like tree, as a connector would declare it."""
    s = "string"
    return {
        "UPRN": TargetField("UPRN", "decimal", required=True),
        "ServiceTypeID": TargetField("ServiceTypeID", "int", required=True),
        "DateRequested": TargetField("DateRequested", "dateTime"),
        "CrewID": TargetField("CrewID", "int"),
        "CRMID": TargetField("CRMID", s, max_length=50),
        "ExternalReference": TargetField("ExternalReference", s, max_length=12),
        "serviceLocationDescription": TargetField("serviceLocationDescription", s, max_length=80),
        "extendedData": TargetField("extendedData", "object", children={
            "ServiceRequest_CreateServiceRequest_CreateFields": TargetField(
                "ServiceRequest_CreateServiceRequest_CreateFields", "object", repeated=True, children={
                    "FieldName": TargetField("FieldName", s, max_length=50, required=True),
                    "FieldValue": TargetField("FieldValue", s, max_length=250, required=True),
                }),
        }),
        "ServiceRequest_Location": TargetField("ServiceRequest_Location", "object", children={
            "Metric": TargetField("Metric", "object", children={
                "Latitude": TargetField("Latitude", "decimal"),
                "Longitude": TargetField("Longitude", "decimal"),
            }),
        }),
        "reporterContact": TargetField("reporterContact", "object", children={
            "Forename": TargetField("Forename", s, max_length=50),
            "Surname": TargetField("Surname", s, max_length=50),
            "Email": TargetField("Email", s, max_length=254),
            "Telephone": TargetField("Telephone", s, max_length=20),
            "ReporterType": TargetField("ReporterType", s, enum=("Public", "Councillor", "Staff")),
        }),
        "Attachments": TargetField("Attachments", "object", repeated=True, children={
            "FileName": TargetField("FileName", s, max_length=40),
            "Url": TargetField("Url", s),
        }),
    }


@pytest.fixture
def targets() -> dict[str, TargetField]:
    return bartec_targets()


@pytest.fixture
def write(tmp_path: Path):
    def _write(text: str, name: str = "m.yaml") -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return p

    return _write
