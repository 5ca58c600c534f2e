"""Pydantic models of a mapping file and a lookup file; the JSON Schema is generated from these."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from hubbridge.case import SERVICE_KEY_PATTERN, HubStatus

Scalar = str | int | float | bool
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
TargetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")]
SourcePath = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$", max_length=200),
    Field(description="A dotted path into the Hub case, e.g. customer.address.uprn (item.* inside each:)"),
]

VALUE_KEYS = ("source", "value", "template", "fields", "each", "choose", "items")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ValueType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"


def _keys_to_text(value: Any) -> Any:
    # YAML reads `1:` and `true:` as non-strings; map keys are matched as text
    if isinstance(value, dict):
        return {(str(k).lower() if isinstance(k, bool) else str(k)): v for k, v in value.items()}
    return value


class Condition(Strict):
    """A test on the case: one path test (`path` + one of present/equals/not_equals/in/not_in), or all/any/not."""

    path: SourcePath | None = Field(None, description="The source path tested")
    present: bool | None = Field(None, description="true: the value is set and not empty; false: it is not")
    equals: Scalar | None = Field(None, description="The value equals this")
    not_equals: Scalar | None = Field(None, description="The value differs from this (or is missing)")
    in_: list[Scalar] | None = Field(None, alias="in", description="The value is one of these")
    not_in: list[Scalar] | None = Field(None, description="The value is none of these (or is missing)")
    all: list[Condition] | None = Field(None, description="Every condition holds")
    any: list[Condition] | None = Field(None, description="At least one condition holds")
    not_: Condition | None = Field(None, alias="not", description="The condition does not hold")

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [k for k in ("present", "equals", "not_equals", "in_", "not_in") if getattr(self, k) is not None]
        groups = [k for k in ("all", "any", "not_") if getattr(self, k) is not None]
        if self.path is not None:
            if groups or len(tests) != 1:
                raise ValueError(
                    "a path condition needs exactly one of present, equals, not_equals, in, not_in"
                )
        elif tests or len(groups) != 1:
            raise ValueError("a condition is either path + one test, or exactly one of all, any, not")
        return self


class FieldSpec(Strict):
    """How one target field gets its value. Exactly one of source/value/template/fields/each/choose."""

    description: str | None = Field(None, description="A note for whoever edits this mapping")
    source: SourcePath | list[SourcePath] | None = Field(
        None, description="Source path, or a list of paths of which the first with a value is used"
    )
    value: Scalar | None = Field(None, description="A constant value")
    template: Annotated[str, StringConstraints(max_length=4000)] | None = Field(
        None, description="Text with {path} placeholders and filters, e.g. 'Ref {ref}'"
    )
    fields: dict[TargetName, FieldSpec] | None = Field(None, description="A nested structure (SOAP complex type)")
    each: SourcePath | None = Field(None, description="A list in the case; one output element per item")
    item: FieldSpec | None = Field(None, description="With each: the value of each element (for lists of values)")
    choose: list[FieldSpec] | None = Field(
        None, description="Options tried in order; the first whose 'when' holds (or has no 'when') is used"
    )
    items: list[FieldSpec] | None = Field(
        None, description="A fixed list of elements (each a field spec; elements without a value are left out)"
    )
    when: Condition | None = Field(None, description="Include the field (or pick this option) only when this holds")
    default: Scalar | None = Field(None, description="Used when the source has no value")
    required: bool = Field(False, description="Fail the case when there is no value")
    map: Annotated[dict[str, Scalar | None], Field(min_length=1)] | None = Field(
        None, description="Source value -> target value"
    )
    lookup: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*(\.[A-Za-z0-9_-]+)?$")] | None = Field(
        None, description="A lookup table named in 'lookups' (table or table.column)"
    )
    fallback: Scalar | None = Field(
        None, description="Used (with a warning) when map/lookup has no entry; without it such a case fails"
    )
    ignore_case: bool = Field(False, description="map/lookup keys match regardless of case")
    type: ValueType | None = Field(None, description="Convert to this type (default: the target field's type)")
    format: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        None, description="strftime format for date/datetime, e.g. '%Y-%m-%dT%H:%M:%S'"
    )
    timezone: str = Field("Europe/London", description="Time zone datetimes are converted to")
    enum: list[Scalar] | None = Field(None, description="The only values allowed")
    truncate: bool = Field(
        False, description="Cut text longer than the target's max_length (with a warning) instead of failing"
    )
    max_length: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Maximum length of text (defaults to the target field's)"
    )

    _keys = field_validator("map", mode="before")(_keys_to_text)

    @model_validator(mode="after")
    def _exactly_one(self) -> FieldSpec:
        given = [k for k in VALUE_KEYS if getattr(self, k) is not None]
        if self.each is not None and "fields" in given:
            given.remove("fields")  # each + fields: a list of records
        if len(given) != 1:
            if not given and self.default is not None:
                return self  # only a default: a constant by another name
            what = ", ".join(given) if given else "none"
            raise ValueError(
                f"give exactly one of source, value, template, fields, each, choose, items (found: {what})"
            )
        if self.item is not None and self.each is None:
            raise ValueError("'item' only goes with 'each'")
        if self.each is not None and (self.item is None) == (self.fields is None):
            raise ValueError("'each' needs exactly one of 'item' (a list of values) or 'fields' (a list of records)")
        if self.map is not None and self.lookup is not None:
            raise ValueError("use either 'map' or 'lookup', not both")
        if "fallback" in self.model_fields_set and self.map is None and self.lookup is None:
            raise ValueError("'fallback' only goes with 'map' or 'lookup'")
        if self.format is not None and self.type not in (ValueType.DATE, ValueType.DATETIME, None):
            raise ValueError("'format' only goes with type date or datetime")
        return self

    @property
    def has_fallback(self) -> bool:
        return "fallback" in self.model_fields_set


class Outbound(Strict):
    """Hub case -> back-office request."""

    fields: Annotated[dict[TargetName, FieldSpec], Field(min_length=1)] = Field(
        description="Target field name -> how to fill it"
    )


class Inbound(Strict):
    """Back-office update -> Hub update."""

    service_codes: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list,
        description="Back-office service/type codes this mapping covers (to recognise jobs raised there)",
    )
    status: FieldSpec | None = Field(None, description="The Hub status; values must be Hub statuses")
    note: FieldSpec | None = Field(None, description="The note shown on the Hub case")
    resolution: FieldSpec | None = Field(None, description="The resolution text, usually only when closed")


class FollowUps(Strict):
    """Hub follow-up (note, evidence, amendment, ...) -> the fields of the back office's follow-up request."""

    fields: Annotated[dict[TargetName, FieldSpec], Field(min_length=1)] = Field(
        description="Target field name -> how to fill it from the follow-up (kind, note, document.url, "
        "case.ref, ...); 'when: {path: kind, equals: evidence}' limits a field to one kind"
    )


class MappingFile(Strict):
    """One mapping: how a Hub case of one service becomes a request to one kind of back office, and back."""

    schema_: str | None = Field(None, alias="$schema", description="JSON Schema for editors")
    mapping: Name = Field(description="The mapping's name, e.g. refuse-missed-collection-bartec")
    description: str | None = None
    service: Annotated[str, StringConstraints(pattern=SERVICE_KEY_PATTERN)] = Field(
        description="The Hub service key, e.g. refuse.missed-collection"
    )
    plugin: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*$")] = Field(
        description="The connector plugin whose request this builds (bartec, revenues, open311, planning, ...)"
    )
    lookups: dict[Name, Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]+\.ya?ml$")]] = Field(
        default_factory=dict, description="Table name -> lookup file, relative to this mapping file"
    )
    outbound: Outbound
    inbound: Inbound = Field(default_factory=Inbound)
    followups: FollowUps | None = Field(
        None, description="How follow-ups on a delivered case fill the back office's follow-up request"
    )


class LookupFile(Strict):
    """A shared lookup table (e.g. district -> depot, bin type -> container code)."""

    schema_: str | None = Field(None, alias="$schema", description="JSON Schema for editors")
    description: str | None = None
    entries: Annotated[dict[str, Scalar | dict[str, Scalar]], Field(min_length=1)] = Field(
        description="Key -> value, or key -> {column: value}"
    )

    _keys = field_validator("entries", mode="before")(_keys_to_text)


HUB_STATUSES = tuple(s.value for s in HubStatus)
