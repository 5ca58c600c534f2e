"""How mapped values are matched against keys and converted to the type a target field expects."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

from hubbridge.mappings.compiled import FieldFailure, described
from hubbridge.mappings.model import ValueType

TARGET_TYPES = {
    "string": ValueType.STRING, "str": ValueType.STRING, "token": ValueType.STRING,
    "normalizedstring": ValueType.STRING, "text": ValueType.STRING,
    "int": ValueType.INTEGER, "integer": ValueType.INTEGER, "long": ValueType.INTEGER,
    "short": ValueType.INTEGER, "unsignedint": ValueType.INTEGER,
    "decimal": ValueType.NUMBER, "float": ValueType.NUMBER, "double": ValueType.NUMBER,
    "number": ValueType.NUMBER,
    "boolean": ValueType.BOOLEAN, "bool": ValueType.BOOLEAN,
    "date": ValueType.DATE,
    "datetime": ValueType.DATETIME,
}

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


def match_key(value: Any) -> str | None:
    """How a value is matched against map keys, lookup keys and condition values."""
    if value is None:
        return None
    value_type = type(value)
    if value_type is str:
        return value
    if value_type is bool:
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if value_type is float and value.is_integer():
        return str(int(value))
    return str(value)


def is_empty(value: Any) -> bool:
    """Whether a value counts as not given: None, empty text or an empty list."""
    return value is None or value == "" or value == []


def converter(kind: ValueType, fmt: str | None, zone: ZoneInfo, where: str) -> Callable[[Any], Any]:
    """A function converting a present value to `kind`, raising FieldFailure when it cannot."""

    def cannot(value: Any, what: str) -> FieldFailure:
        # the rule and the kind of value, never the value: this message reaches the worker log
        return FieldFailure(f"cannot convert {described(value)} to {what}", where)

    if kind is ValueType.STRING:
        def to_string(value: Any) -> str:
            if type(value) is str:
                return value
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, Enum):
                return str(value.value)
            if isinstance(value, datetime):
                return value.astimezone(zone).isoformat()
            if isinstance(value, float) and value.is_integer():
                return str(int(value))
            return str(value)

        return to_string
    if kind is ValueType.INTEGER:
        def to_int(value: Any) -> int:
            value_type = type(value)
            if value_type is int:
                return value
            if value_type is bool:
                return int(value)
            if value_type is float and value.is_integer():
                return int(value)
            if value_type is str:
                stripped = value.strip()
                if stripped.lstrip("-").isdigit() and len(stripped) < 30:
                    return int(stripped)
            raise cannot(value, "an integer")

        return to_int
    if kind is ValueType.NUMBER:
        def to_number(value: Any) -> float | int:
            value_type = type(value)
            if value_type is int or value_type is float:
                return value
            if value_type is str:
                try:
                    number = float(value)
                except ValueError:
                    raise cannot(value, "a number") from None
                if number == number and number not in (float("inf"), float("-inf")):
                    return number
            raise cannot(value, "a number")

        return to_number
    if kind is ValueType.BOOLEAN:
        def to_bool(value: Any) -> bool:
            if type(value) is bool:
                return value
            text = match_key(value)
            if text is not None:
                text = text.strip().lower()
                if text in _TRUE:
                    return True
                if text in _FALSE:
                    return False
            raise cannot(value, "a boolean (true/false, yes/no, 1/0)")

        return to_bool
    if kind is ValueType.DATETIME:
        def to_datetime(value: Any) -> str:
            if isinstance(value, str):
                try:
                    value = datetime.fromisoformat(value)
                except ValueError:
                    raise cannot(value, "a date and time") from None
            if isinstance(value, datetime):
                local = value.astimezone(zone) if value.tzinfo is not None else value.replace(tzinfo=zone)
                return local.strftime(fmt) if fmt else local.isoformat()
            raise cannot(value, "a date and time")

        return to_datetime
    if kind is ValueType.DATE:
        def to_date(value: Any) -> str:
            if isinstance(value, str):
                try:
                    value = (datetime.fromisoformat(value) if "T" in value or " " in value
                             else date.fromisoformat(value))
                except ValueError:
                    raise cannot(value, "a date") from None
            if isinstance(value, datetime):
                value = value.astimezone(zone).date() if value.tzinfo is not None else value.date()
            if isinstance(value, date):
                return value.strftime(fmt) if fmt else value.isoformat()
            raise cannot(value, "a date")

        return to_date
    raise AssertionError(kind)  # pragma: no cover
