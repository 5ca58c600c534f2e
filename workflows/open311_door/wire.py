"""The GeoReport v2 answer formats: JSON and XML bodies, W3C datetimes and the spec's error answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from fastapi.responses import Response

from hubbridge.errors import HubbridgeError

FORMATS = ("json", "xml")
MAX_LIST = 1000
"""Most rows one GET answers (the GeoReport v2 spec's own limit for GET requests)."""


class GeoReportError(HubbridgeError):
    """A request the door refuses, answered in the spec's error format with `status`."""

    def __init__(self, status: int, description: str) -> None:
        self.status = status
        self.description = description
        super().__init__(description)


def w3c(value: datetime | None) -> str | None:
    """A W3C datetime at second precision, UTC (`2026-03-01T09:30:00Z`)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_w3c(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise GeoReportError(400, f"{name} must be a W3C datetime, e.g. 2026-03-01T09:30:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _element(tag: str, value: Any, singular: dict[str, str]) -> ET.Element:
    el = ET.Element(tag)
    if isinstance(value, dict):
        for k, v in value.items():
            el.append(_element(k, v, singular))
    elif isinstance(value, list):
        for item in value:
            el.append(_element(singular.get(tag, "item"), item, singular))
    elif value is not None:
        el.text = _text(value)
    return el


_SINGULAR = {"attributes": "attribute", "values": "value", "endpoints": "endpoint", "formats": "format"}
"""The element each list's items are written as in XML (service definitions and discovery nest lists)."""


def render(fmt: str, root: str, item: str | None, body: list[dict[str, Any]] | dict[str, Any],
           status: int = 200) -> Response:
    """JSON as given; XML as `<root><item>...</item></root>` (or `<root>...</root>` for one object)."""
    if fmt == "json":
        import json

        return Response(json.dumps(body), status, media_type="application/json; charset=utf-8")
    if isinstance(body, list):
        el = ET.Element(root)
        for row in body:
            el.append(_element(item or "item", row, _SINGULAR))
    else:
        el = _element(root, body, _SINGULAR)
    xml = ET.tostring(el, encoding="unicode")
    return Response(f'<?xml version="1.0" encoding="utf-8"?>\n{xml}', status, media_type="text/xml; charset=utf-8")


def error_response(fmt: str, status: int, description: str) -> Response:
    """The spec's error answer: `[{"code", "description"}]` or `<errors><error><code/><description/>...`."""
    return render(fmt if fmt in FORMATS else "json", "errors", "error",
                  [{"code": status, "description": description}], status)
