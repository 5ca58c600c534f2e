"""The canonical Hub case and case update: the one shape every connector and mapping works against."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

LONDON = ZoneInfo("Europe/London")

HUB_REF_PATTERN = r"^[A-Z]{2}-\d{4}-\d{6}$"
"""Hub references look like `WH-2026-000123` (prefix, year, six-digit serial)."""

SERVICE_KEY_PATTERN = r"^[a-z][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+$"
POSTCODE_PATTERN = r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$"


class HubStatus(StrEnum):
    """The one status vocabulary the Hub understands."""

    RECEIVED = "received"
    ROUTED = "routed"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    AWAITING_CUSTOMER = "awaiting_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (HubStatus.CLOSED, HubStatus.REJECTED, HubStatus.CANCELLED)


class Channel(StrEnum):
    PHONE = "phone"
    FACE_TO_FACE = "face-to-face"
    WEB = "web"
    CHATBOT = "chatbot"
    EMAIL = "email"
    BACK_OFFICE = "back-office"
    """Raised directly in a back office (a resident phoned the service area)."""


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    EMERGENCY = "emergency"


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a time zone (e.g. 2026-03-01T09:30:00+00:00)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Uprn = Annotated[str, StringConstraints(pattern=r"^\d{1,12}$")]
Usrn = Annotated[str, StringConstraints(pattern=r"^\d{1,8}$")]
Postcode = Annotated[str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=POSTCODE_PATTERN)]
AttributeValue = str | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4000, allow_inf_nan=False)


class Address(_Model):
    line1: ShortText
    line2: ShortText | None = None
    town: ShortText
    postcode: Postcode
    uprn: Uprn | None = None


class Customer(_Model):
    name: ShortText
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()-]{7,20}$")] | None = None
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    address: Address | None = None


class Location(_Model):
    uprn: Uprn | None = None
    usrn: Usrn | None = None
    easting: Annotated[float, Field(ge=0, le=800000)] | None = None
    northing: Annotated[float, Field(ge=0, le=1400000)] | None = None
    lat: Annotated[float, Field(ge=49.0, le=61.0)] | None = None
    lon: Annotated[float, Field(ge=-9.0, le=3.0)] | None = None
    description: Text | None = None

    @model_validator(mode="after")
    def _pairs(self) -> Location:
        if (self.easting is None) != (self.northing is None):
            raise ValueError("easting and northing come together")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon come together")
        return self


class Attachment(_Model):
    filename: ShortText
    content_type: Annotated[str, StringConstraints(pattern=r"^[a-z]+/[a-zA-Z0-9.+-]+$")]
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)]


class HubCase(_Model):
    """A case raised in the Hub that a service area must do in its back office."""

    ref: Annotated[str, StringConstraints(pattern=HUB_REF_PATTERN)]
    authority: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z-]{1,40}$")]
    service: Annotated[str, StringConstraints(pattern=SERVICE_KEY_PATTERN, max_length=80)]
    channel: Channel
    priority: Priority = Priority.NORMAL
    customer: Customer
    location: Location = Field(default_factory=Location)
    description: Text
    attributes: Annotated[
        dict[Annotated[str, StringConstraints(max_length=64)], AttributeValue], Field(max_length=50)
    ] = Field(default_factory=dict)
    attachments: Annotated[list[Attachment], Field(max_length=20)] = Field(default_factory=list)
    created_at: AwareDatetime
    updated_at: AwareDatetime | None = None

    def created_local(self) -> datetime:
        """The creation time in Europe/London, for display."""
        return self.created_at.astimezone(LONDON)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class CaseUpdate(_Model):
    """A change to a Hub case, sent to the Hub in sequence order."""

    ref: Annotated[str, StringConstraints(pattern=HUB_REF_PATTERN)]
    status: HubStatus
    sequence: Annotated[int, Field(ge=1)]
    backoffice_ref: ShortText | None = None
    note: Text | None = None
    resolution: Text | None = None
    source: ShortText | None = None
    occurred_at: AwareDatetime
