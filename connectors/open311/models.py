"""The Open311 GeoReport v2 request the County's highways back office accepts, as a pydantic model.

`Delivery.payload` for the open311 plugin must validate against `Open311Request`; the connector adds
the Hub reference itself (attribute `hub_ref`), so mappings never set it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.fields import FieldInfo

from hubbridge.connectors.base import TargetField

Str = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

DEPTHS = Literal["LT40", "40TO100", "GT100"]
SURFACES = Literal["carriageway", "footway", "cycleway", "verge"]
LIGHT_FAULTS = Literal["OUT", "DAYBURN", "FLICKER", "DAMAGED", "EXPOSED"]
DRAIN_TYPES = Literal["gully", "grating", "ditch", "culvert"]
YES_NO = Literal["yes", "no"]
HAZARDS = Literal["COLLAPSE", "EXPOSED_WIRES", "FALLEN_TREE", "MISSING_COVER", "FLOOD", "SPILLAGE", "OTHER"]


class Open311Attributes(BaseModel):
    """The service-definition attributes (`attribute[code]=value`) across the County's highway services.

    Which ones a service requires is in its definition (`GET services/{code}`); the back office refuses
    a request that lacks one (PermanentError).
    """

    model_config = ConfigDict(extra="forbid")

    easting: Annotated[float, Field(ge=0, le=800000)] | None = None
    northing: Annotated[float, Field(ge=0, le=1400000)] | None = None
    title: Annotated[str, StringConstraints(max_length=100)] | None = None
    site_code: Annotated[str, StringConstraints(pattern=r"^\d{1,8}$")] | None = Field(
        None, description="USRN of the street")
    central_asset_id: Annotated[str, StringConstraints(max_length=50)] | None = None
    asset_details: Annotated[str, StringConstraints(max_length=1000)] | None = None
    closest_address: Annotated[str, StringConstraints(max_length=250)] | None = None
    # pothole (HM_PHS)
    depth: DEPTHS | None = None
    surface: SURFACES | None = None
    # street light fault (SL_LNO)
    column_number: Annotated[str, StringConstraints(max_length=20)] | None = None
    fault_type: LIGHT_FAULTS | None = None
    # blocked drain (DR_BLK)
    drain_type: DRAIN_TYPES | None = None
    flooding: YES_NO | None = None
    # dangerous defect (HM_DGD, emergency)
    hazard_type: HAZARDS | None = None
    road_blocked: YES_NO | None = None


class Open311Request(BaseModel):
    """The fields of `POST requests.{fmt}` (GeoReport v2), without `api_key` and the Hub reference."""

    model_config = ConfigDict(extra="forbid")

    service_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
    lat: Annotated[float, Field(ge=-90, le=90)] | None = None
    long: Annotated[float, Field(ge=-180, le=180)] | None = None
    address_string: Annotated[str, StringConstraints(max_length=250)] | None = None
    address_id: Annotated[str, StringConstraints(max_length=50)] | None = Field(None, description="UPRN")
    email: Annotated[str, StringConstraints(max_length=254)] | None = None
    device_id: Annotated[str, StringConstraints(max_length=100)] | None = None
    account_id: Annotated[str, StringConstraints(max_length=100)] | None = None
    first_name: Annotated[str, StringConstraints(max_length=50)] | None = None
    last_name: Annotated[str, StringConstraints(max_length=50)] | None = None
    phone: Annotated[str, StringConstraints(max_length=30)] | None = None
    description: Annotated[str, StringConstraints(max_length=4000)] | None = None
    media_url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://\S+$")] | None = None
    attributes: Open311Attributes = Field(default_factory=Open311Attributes)

    @model_validator(mode="after")
    def _location(self) -> Open311Request:
        if (self.lat is None) != (self.long is None):
            raise ValueError("lat and long come together")
        if self.lat is None and not self.address_string and not self.address_id:
            raise ValueError("a location is required: lat and long, address_string or address_id")
        return self


def _target(name: str, info: FieldInfo) -> TargetField:
    ann: Any = info.annotation
    args = get_args(ann)
    if type(None) in args:  # Optional[X]
        ann = next(a for a in args if a is not type(None))
    max_length = None
    meta = list(info.metadata)
    if get_origin(ann) is Annotated:
        meta += list(get_args(ann)[1:])
        ann = get_args(ann)[0]
    for m in meta:
        if getattr(m, "max_length", None) is not None:
            max_length = m.max_length
    enum: tuple[str, ...] = ()
    if get_origin(ann) is Literal:
        enum = tuple(str(a) for a in get_args(ann))
        ftype = "string"
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        children = {n: _target(n, f) for n, f in ann.model_fields.items()}
        return TargetField(name, "object", required=info.is_required(), children=children)
    elif ann is float:
        ftype = "number"
    elif ann is int:
        ftype = "integer"
    elif ann is bool:
        ftype = "boolean"
    else:
        ftype = "string"
    return TargetField(name, ftype, max_length=max_length, required=info.is_required(), enum=enum)


def request_target_fields() -> dict[str, TargetField]:
    """`Open311Request` as target fields, so mappings are checked before a case is sent."""
    return {name: _target(name, info) for name, info in Open311Request.model_fields.items()}
