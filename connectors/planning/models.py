"""Pydantic models of the planning back office's REST/JSON messages (requests, responses, changes, webhooks).

The shapes follow public material, not a vendor schema (none is published):

- Idox Uniform's service-request interface as driven by mySociety's open311-adapter
  (`perllib/Integrations/Uniform.pm`): a request carries the caller's own reference as an alternative
  reference (`AlternativeReferences/ReferenceValue` -> `external_reference`), a type code (`ComplaintType`,
  SRRECTYPE -> `enquiry_type`), the site (`SubmittedSiteLocation` `MapEast`/`MapNorth` -> `site.easting` /
  `site.northing`), the text (`NatureOfComplaint` -> `description`), how it came in (`HowComplaintReceived`,
  SRRECHOW -> `how_received`) and customers (`SubmittedCustomer`: `CustomerTypeCode` (SRCUSTTYPE),
  `FullName`, contact details -> `customer`); changes are found by time (`GetChangedServiceRequestRefVals`),
  which this interface replaces with a gap-free sequence.
- planning.data.gov.uk's data model (`digital-land/specification`, dataset `planning-application`): an
  application is named by its `reference`, sits at a `uprn` / `address-text` / `point`, has a
  `planning-application-status`, and belongs to an `organisation` (here: the district, the tenant).
  Kebab-case names there are snake_case here (`address-text` -> `address_text`).
- Follow-ups on an enquiry: Uniform keeps documents against a case in its document management (Idox
  Public Access lists them on a case's "Documents" tab), and open311-adapter's Uniform integration adds
  later updates to an existing service request as visits with `Comments` (`AddVisitsToInspection`).
  Hence typed notes (`NoteRequest`), evidence files (`DocumentsRequest`, bytes or a link, as the create's
  `attachments` take links) and the enquiry's notes and documents in `GET /api/v1/enquiries/{id}`, so a
  client can read back what it sent. The note categories and the document endpoint's shape are ours.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

HUB_REF_PATTERN = r"^[A-Z]{2}-\d{4}-\d{6}$"
APPLICATION_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9/.\- ]{2,29}$"
"""Planning application references as councils print them, e.g. `23/01234/FUL` or `W/24/00567/PN`."""

POSTCODE_PATTERN = r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$"

DOCUMENT_TYPES = frozenset({"application/pdf", "image/jpeg", "image/png", "image/gif", "image/heic", "image/webp",
                            "text/plain"})
"""The file types the document store takes on an enquiry."""
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
MAX_DOCUMENTS = 10
"""One `POST .../documents` takes at most ten files of at most 2 MiB each (and, like every request, 5 MB)."""


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a time zone (e.g. 2026-03-01T09:30:00+00:00)")
    return value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
# Upper-cased before the pattern is checked (StringConstraints checks the pattern on the raw text).
Postcode = Annotated[str, BeforeValidator(_upper), StringConstraints(pattern=POSTCODE_PATTERN, max_length=8)]


class EnquiryType(StrEnum):
    """The enquiry types (Uniform `ComplaintType` codes); also `BackOfficeUpdate.service_code`."""

    APPLICATION_ENQUIRY = "APPLICATION_ENQUIRY"
    """About an existing planning application, named by its reference."""
    BREACH_REPORT = "BREACH_REPORT"
    """Breach of planning control reported for enforcement."""
    PRE_APPLICATION_ADVICE = "PRE_APPLICATION_ADVICE"
    """Advice asked before making an application."""


class EnquiryStatus(StrEnum):
    """Back-office statuses, as they appear in `BackOfficeUpdate.status_code`."""

    RECEIVED = "RECEIVED"
    ALLOCATED = "ALLOCATED"
    UNDER_INVESTIGATION = "UNDER_INVESTIGATION"
    UNDER_ASSESSMENT = "UNDER_ASSESSMENT"
    AWAITING_INFORMATION = "AWAITING_INFORMATION"
    RESPONSE_SENT = "RESPONSE_SENT"
    ADVICE_ISSUED = "ADVICE_ISSUED"
    ENFORCEMENT_ACTION = "ENFORCEMENT_ACTION"
    CLOSED_NO_BREACH = "CLOSED_NO_BREACH"
    CLOSED = "CLOSED"
    NOT_PLANNING_MATTER = "NOT_PLANNING_MATTER"
    WITHDRAWN = "WITHDRAWN"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({EnquiryStatus.CLOSED_NO_BREACH, EnquiryStatus.CLOSED,
                            EnquiryStatus.NOT_PLANNING_MATTER, EnquiryStatus.WITHDRAWN})


class BreachType(StrEnum):
    """What kind of breach of planning control is alleged."""

    UNAUTHORISED_WORKS = "UNAUTHORISED_WORKS"
    CHANGE_OF_USE = "CHANGE_OF_USE"
    CONDITIONS_NOT_MET = "CONDITIONS_NOT_MET"
    LISTED_BUILDING = "LISTED_BUILDING"
    PROTECTED_TREES = "PROTECTED_TREES"
    ADVERTISEMENT = "ADVERTISEMENT"
    UNTIDY_LAND = "UNTIDY_LAND"
    OTHER = "OTHER"


class DevelopmentScale(StrEnum):
    """The scale of the proposal a pre-application request is about (sets the advice fee band)."""

    HOUSEHOLDER = "HOUSEHOLDER"
    MINOR = "MINOR"
    MAJOR = "MAJOR"
    OTHER = "OTHER"


class HowReceived(StrEnum):
    """How the enquiry reached the council (Uniform SRRECHOW codes plus the Hub's channels)."""

    TELE = "TELE"
    VISIT = "VISIT"
    WEB = "WEB"
    EMAIL = "EMAIL"
    CHAT = "CHAT"
    LETTER = "LETTER"
    OTHER = "OTHER"


class CustomerType(StrEnum):
    """Who the customer is to the site (Uniform SRCUSTTYPE codes)."""

    PUBLIC = "PUBLIC"
    NEIBOU = "NEIBOU"
    OCC = "OCC"
    OWNER = "OWNER"
    AGENT = "AGENT"
    CLLR = "CLLR"


class Priority(StrEnum):
    NORMAL = "NORMAL"
    URGENT = "URGENT"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Site(_Request):
    """Where the enquiry is about: a UPRN, an address, grid coordinates or a description (any of them)."""

    uprn: Annotated[str, StringConstraints(pattern=r"^\d{1,12}$", max_length=12)] | None = None
    address_text: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    postcode: Postcode | None = None
    easting: Annotated[float, Field(ge=0, le=800000)] | None = None
    northing: Annotated[float, Field(ge=0, le=1400000)] | None = None
    latitude: Annotated[float, Field(ge=49.0, le=61.0)] | None = None
    longitude: Annotated[float, Field(ge=-9.0, le=3.0)] | None = None
    location_description: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Site:
        if (self.easting is None) != (self.northing is None):
            raise ValueError("easting and northing come together")
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude come together")
        if not (self.uprn or self.address_text or self.easting is not None or self.latitude is not None
                or self.location_description):
            raise ValueError("give at least one of uprn, address_text, easting/northing, latitude/longitude "
                             "or location_description")
        return self


class Customer(_Request):
    """The person making the enquiry (Uniform `SubmittedCustomer`)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    phone: Annotated[str, StringConstraints(max_length=20, pattern=r"^\+?[0-9 ()-]{7,20}$")] | None = None
    address_text: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    customer_type: CustomerType = CustomerType.PUBLIC


class AttachmentLink(_Request):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    content_type: Annotated[str, StringConstraints(pattern=r"^[a-z]+/[a-zA-Z0-9.+-]+$", max_length=100)]
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)]


class EnquiryPayload(_Request):
    """What a mapping must produce in `Delivery.payload`: one enquiry, without the Hub reference.

    Per type: APPLICATION_ENQUIRY needs `application_reference`; BREACH_REPORT needs `site` and
    `breach_type`; PRE_APPLICATION_ADVICE needs `site` and `development_scale`.
    """

    enquiry_type: EnquiryType
    description: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    customer: Customer
    application_reference: Annotated[str, StringConstraints(pattern=APPLICATION_REF_PATTERN, max_length=30)] | None = (
        None
    )
    site: Site | None = None
    breach_type: BreachType | None = None
    breach_started: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$", max_length=10)] | None = None
    development_scale: DevelopmentScale | None = None
    how_received: HowReceived = HowReceived.OTHER
    priority: Priority = Priority.NORMAL
    confidential: bool = Field(True, description="Keep the customer's identity from the site owner")
    received_at: AwareDatetime | None = None
    attachments: Annotated[list[AttachmentLink], Field(max_length=20)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _per_type(self) -> EnquiryPayload:
        missing: list[str] = []
        if self.enquiry_type is EnquiryType.APPLICATION_ENQUIRY and not self.application_reference:
            missing.append("application_reference")
        if self.enquiry_type is EnquiryType.BREACH_REPORT:
            missing += [n for n in ("site", "breach_type") if getattr(self, n) is None]
        if self.enquiry_type is EnquiryType.PRE_APPLICATION_ADVICE:
            missing += [n for n in ("site", "development_scale") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.enquiry_type.value} needs {', '.join(missing)}")
        return self


class EnquiryRequest(EnquiryPayload):
    """The body of `POST /api/v1/enquiries`: the payload plus the caller's own reference."""

    external_reference: Annotated[str, StringConstraints(min_length=1, max_length=40)]


class NoteCategory(StrEnum):
    """What a note is, so planning officers can filter an enquiry's notes."""

    GENERAL = "GENERAL"
    CUSTOMER_CONTACT = "CUSTOMER_CONTACT"
    AMENDMENT = "AMENDMENT"
    """Details of the enquiry corrected or added by the customer after it was made."""


class NoteRequest(_Request):
    """The body of `POST /api/v1/enquiries/{id}/notes`. Not idempotent without an `Idempotency-Key`."""

    text: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    author: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "hubbridge"
    category: NoteCategory = NoteCategory.GENERAL


Base64Text = Annotated[str, StringConstraints(min_length=4, max_length=4 * (MAX_DOCUMENT_BYTES // 3 + 1))]


class DocumentUpload(_Request):
    """One file for an enquiry: its bytes (`content_base64`) or a link the back office fetches (`url`)."""

    filename: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    content_type: Annotated[str, StringConstraints(pattern=r"^[a-z]+/[a-zA-Z0-9.+-]+$", max_length=100)]
    description: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    content_base64: Base64Text | None = None
    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$", max_length=2000)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DocumentUpload:
        if (self.content_base64 is None) == (self.url is None):
            raise ValueError("give exactly one of content_base64 and url")
        if self.content_type not in DOCUMENT_TYPES:
            taken = ", ".join(sorted(DOCUMENT_TYPES))
            raise ValueError(f"content type {self.content_type} is not taken; taken: {taken}")
        if self.content_base64 is not None:
            try:
                content = base64.b64decode(self.content_base64, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("content_base64 is not base64") from None
            if not content or len(content) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"the file must be 1 to {MAX_DOCUMENT_BYTES} bytes")
        return self


class DocumentsRequest(_Request):
    """The body of `POST /api/v1/enquiries/{id}/documents`: stored all together or not at all. Not idempotent."""

    documents: Annotated[list[DocumentUpload], Field(min_length=1, max_length=MAX_DOCUMENTS)]


class WithdrawRequest(_Request):
    """The body of `POST /api/v1/enquiries/{id}/withdraw`."""

    reason: Annotated[str, StringConstraints(min_length=1, max_length=500)]


# -- responses: tolerant of fields added later by the back office ------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EnquiryNote(_Response):
    """A note on an enquiry made through this interface, as the enquiry lists it."""

    note_id: int
    text: str
    author: str | None = None
    category: str = NoteCategory.GENERAL.value
    created_at: AwareDatetime


class EnquiryDocument(_Response):
    """A document stored on an enquiry (what was stored, not the file)."""

    document_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    filename: str
    content_type: str
    size_bytes: int | None = None
    url: str | None = None
    description: str | None = None
    created_at: AwareDatetime


class DocumentsStored(_Response):
    """The answer to `POST .../documents`: every file of the request, stored."""

    enquiry_id: str
    documents: Annotated[list[EnquiryDocument], Field(min_length=1)]


class Enquiry(_Response):
    """One enquiry as `GET /api/v1/enquiries/{id}` returns it, with the notes and documents sent to it."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]
    external_reference: str | None = None
    enquiry_type: str
    status: str
    organisation: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    sequence: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    notes: list[EnquiryNote] = Field(default_factory=list)
    documents: list[EnquiryDocument] = Field(default_factory=list)


class EnquiryList(_Response):
    enquiries: list[Enquiry]
    total: int | None = None


class Change(_Response):
    """One entry of the changes feed (and of a webhook push): a status change or an officer's note."""

    sequence: Annotated[int, Field(ge=1)]
    enquiry_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    external_reference: str | None = None
    enquiry_type: str
    status: str
    note: str | None = None
    kind: str = "status"
    occurred_at: AwareDatetime


class ChangesPage(_Response):
    """`GET /api/v1/changes?since_sequence=&limit=`: changes with a sequence above `since_sequence`."""

    changes: list[Change]
    since_sequence: int
    next_sequence: int
    has_more: bool = False


class WebhookEnvelope(_Response):
    """A signed push from the back office: the same change entries as the feed."""

    event: str
    organisation: str | None = None
    changes: Annotated[list[Change], Field(min_length=1, max_length=500)]


class FieldProblem(_Response):
    field: str
    message: str


class ErrorBody(_Response):
    """Every error answer: `{"error": "...", "errors": [{"field": ..., "message": ...}]}`."""

    error: str
    errors: list[FieldProblem] = Field(default_factory=list)
