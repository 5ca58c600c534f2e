"""The Bartec connector's options in connectors.yaml, checked by pydantic when the config loads."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class BartecOptions(BaseModel):
    """What one Bartec instance (one district's installation) may set under `options:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auth_endpoint: str | None = Field(None, description="Authenticate's own service URL, when not the endpoint")
    note_type: str = Field("General note", description="Note type description used by add_note")
    lookback_seconds: Annotated[float, Field(ge=0)] = 5.0
    history_retention_days: Annotated[float, Field(gt=0)] = Field(
        14.0, description="How long the sync cursor remembers the history ids it has passed for a request")
    find_window_hours: Annotated[float, Field(gt=0)] = Field(
        72.0, description="How far back a look-up without the case searches the requests Bartec lists as changed")
    fallback_land_type_id: Annotated[int, Field(ge=1)] | None = Field(
        None, description="LandTypeID sent when the mapping gives none (service types without a default land type)")
    service_types: dict[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Shipped ServiceTypeID (the mappings' lookup) -> this district's ServiceTypeID, from its "
        "ServiceRequests_Types_Get; districts do not share one service-type table")
    followup_note_types: dict[Literal["note", "amendment"], str] = Field(
        default_factory=lambda: {"note": "General note", "amendment": "Specific note"},
        description="Note type description (ServiceRequests_Notes_Types_Get) each kind of Hub follow-up is filed "
        "under; a kind left out, or a type the installation lacks, uses note_type")
    document_public: bool = Field(
        False, description="ServiceRequest_Document_Create's Public flag for customer evidence, unless the "
        "mapping's followups: section sets Public; off, as evidence can show people and homes")
    external_reference_lookup: bool = Field(
        False, description="Only for a simulator started with the same option: look requests up by "
        "ExternalReference, which a real Bartec cannot do")
