"""The console's templates and the small formatting helpers they use: London times, hours, audit details, the chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates

from hubbridge.case import LONDON

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_FILES = {"console.css": "text/css"}
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))

SECURITY_HEADERS = {
    # no inline script or style anywhere, so the policy can be strict
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


# -- formatting for templates ---------------------------------------------------------------------


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def local_time(value: Any) -> str:
    """An instant as Europe/London wall-clock time, e.g. `Mon 02 Mar 2026 09:00`."""
    when = _as_datetime(value)
    if when is None:
        return "–"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(LONDON).strftime("%a %d %b %Y %H:%M")


def hours(seconds: Any) -> str:
    return "–" if seconds is None else f"{int(seconds) / 3600:.1f} h"


def detail_text(detail: Any) -> str:
    """An audit event's detail as short `key=value` pairs."""
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for key, value in detail.items():
        if value is None or value == [] or value == {}:
            continue
        text = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        parts.append(f"{key}={text[:160]}")
    return "; ".join(parts)


TEMPLATES.env.filters["local"] = local_time
TEMPLATES.env.filters["hours"] = hours
TEMPLATES.env.filters["detail"] = detail_text


# -- the SVG chart --------------------------------------------------------------------------------


@dataclass
class ChartDay:
    day: date
    volume: int
    breached: int


def chart_geometry(days: list[ChartDay], width: int = 720, height: int = 240) -> dict[str, Any]:
    """Bar positions for the daily volume / breaches chart, drawn as inline SVG by the template."""
    left, bottom, top = 36, 28, 12
    plot_h = height - bottom - top
    top_value = max([1, *(d.volume for d in days), *(d.breached for d in days)])
    slot = (width - left - 8) / max(len(days), 1)
    bar = max(slot * 0.38, 1.0)
    bars = []
    label_every = max(1, len(days) // 10)
    for i, d in enumerate(days):
        x = left + i * slot + slot * 0.1
        vh = plot_h * d.volume / top_value
        bh = plot_h * d.breached / top_value
        bars.append({
            "day": d.day, "volume": d.volume, "breached": d.breached,
            "vx": round(x, 1), "vy": round(top + plot_h - vh, 1), "vh": round(vh, 1),
            "bx": round(x + bar, 1), "by": round(top + plot_h - bh, 1), "bh": round(bh, 1),
            "w": round(bar, 1), "label": d.day.strftime("%d %b") if i % label_every == 0 else None,
            "lx": round(x + bar, 1),
        })
    return {"width": width, "height": height, "left": left, "top": top, "base": top + plot_h,
            "max": top_value, "bars": bars, "label_y": height - 8}
