"""The canonical Hub case model: what it accepts and how it says no."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from hubbridge.case import CaseUpdate, HubCase, HubStatus
from hubbridge.workflows.casegen import generate_cases


def test_generated_cases_validate_for_every_area() -> None:
    for data in generate_cases(60, areas=("refuse", "revenues", "highways", "planning")):
        case = HubCase.model_validate(data)
        assert case.ref.startswith("WH-2026-")
        assert case.created_at.tzinfo is not None


def test_naive_timestamp_is_refused_with_the_field_named() -> None:
    data = next(generate_cases(1))
    data["created_at"] = "2026-03-01T09:30:00"
    with pytest.raises(ValidationError) as err:
        HubCase.model_validate(data)
    assert err.value.errors()[0]["loc"] == ("created_at",)
    assert "time zone" in err.value.errors()[0]["msg"]


@pytest.mark.parametrize(("path", "value"), [
    (("ref",), "123"),
    (("service",), "Missed Bin"),
    (("channel",), "fax"),
    (("customer", "address", "postcode"), "NOT A POSTCODE"),
    (("location", "lat"), 10.0),
])
def test_each_bad_field_is_named(path: tuple[str, ...], value: object) -> None:
    data = next(generate_cases(1))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as err:
        HubCase.model_validate(data)
    assert any(e["loc"][: len(path)] == path for e in err.value.errors())


def test_unknown_keys_are_refused() -> None:
    data = next(generate_cases(1))
    data["customer"]["shoe_size"] = 9
    with pytest.raises(ValidationError) as err:
        HubCase.model_validate(data)
    assert err.value.errors()[0]["loc"] == ("customer", "shoe_size")


def test_london_display_time_and_status_vocabulary() -> None:
    case = HubCase.model_validate({**next(generate_cases(1)), "created_at": "2026-07-01T12:00:00+00:00"})
    assert case.created_local().hour == 13  # BST
    update = CaseUpdate(ref=case.ref, status="awaiting_customer", sequence=1, occurred_at=datetime.now(UTC))
    assert update.status is HubStatus.AWAITING_CUSTOMER
    assert {s.value for s in HubStatus} == {"received", "routed", "delivered", "acknowledged", "in_progress",
                                            "awaiting_customer", "resolved", "closed", "rejected", "cancelled"}
