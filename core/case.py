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


class FollowUpKind(StrEnum):
    """What the Hub tells a back office about a case it already has."""

    AMENDMENT = "amendment"
    """Corrected or added details (a re-posted case whose content changed becomes one)."""
    NOTE = "note"
    EVIDENCE = "evidence"
    """Customer evidence: photos, documents."""
    PRIORITY = "priority"
    CANCEL = "cancel"
    """The customer withdrew the request."""
    REOPEN = "reopen"


FOLLOWUP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"

EVIDENCE_TYPES = (
    "image/jpeg", "image/png", "image/gif", "image/heic", "image/webp", "application/pdf", "text/plain",
)
"""Evidence content types taken by default (settings `evidence_types` may narrow or widen them)."""


class EvidenceFile(_Model):
    """A photo or document the customer sent: its bytes (base64) and/or a URL where the Hub keeps it."""

    filename: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                               pattern=r"^[^/\\\x00-\x1f]+$")]
    content_type: Annotated[str, StringConstraints(pattern=r"^[a-z]+/[a-zA-Z0-9.+-]+$")]
    content: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/\r\n]*={0,2}$")] | None = Field(
        None, description="The file, base64-encoded", repr=False)
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)] | None = None

    @model_validator(mode="after")
    def _some_source(self) -> EvidenceFile:
        if self.content is None and self.url is None:
            raise ValueError("an evidence file needs its content (base64) or a url")
        return self


class HubFollowUp(_Model):
    """Something the Hub tells the back office after the case was raised: one model for every kind.

    `id` is the Hub's own id for the event: the same id posted twice is one follow-up.
    """

    id: Annotated[str, StringConstraints(pattern=FOLLOWUP_ID_PATTERN)] | None = None
    ref: Annotated[str, StringConstraints(pattern=HUB_REF_PATTERN)]
    kind: FollowUpKind
    note: Text | None = None
    priority: Priority | None = None
    changes: dict[str, Any] | None = Field(
        None, description="For an amendment: the case fields that changed, with their new values")
    attachments: Annotated[list[EvidenceFile], Field(max_length=10)] = Field(default_factory=list)
    author: ShortText | None = None
    occurred_at: AwareDatetime

    @model_validator(mode="after")
    def _kind_needs(self) -> HubFollowUp:
        k = self.kind
        if k == FollowUpKind.PRIORITY and self.priority is None:
            raise ValueError("a priority follow-up needs 'priority'")
        if k == FollowUpKind.EVIDENCE and not self.attachments:
            raise ValueError("an evidence follow-up needs at least one file in 'attachments'")
        if k == FollowUpKind.AMENDMENT and not self.changes:
            raise ValueError("an amendment needs 'changes': the case fields that changed")
        if k == FollowUpKind.NOTE and not self.note:
            raise ValueError("a note follow-up needs 'note'")
        if k != FollowUpKind.EVIDENCE and self.attachments:
            raise ValueError("only an evidence follow-up carries attachments")
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
