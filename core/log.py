"""structlog set-up: JSON in production, readable in a terminal, personal data redacted on every line."""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

# Keys whose values are personal data or secrets whatever they contain.
SENSITIVE_KEYS = frozenset(
    {
        "name",
        "customer",
        "first_name",
        "last_name",
        "full_name",
        "phone",
        "telephone",
        "mobile",
        "email",
        "address",
        "line1",
        "line2",
        "postcode",
        "description",
        "note",
        "notes",
        "resolution",
        "payload",
        "password",
        "token",
        "api_key",
        "secret",
        "authorization",
        "ni_number",
        "nino",
        "bank_account",
        "account_number",
        "sort_code",
        "iban",
        "body",
        "contact",
        "forename",
        "surname",
        "firstname",
        "lastname",
        "given_name",
        "family_name",
        "customer_name",
        "reporter",
        "caller",
        "email_address",
        "phone_number",
        "telephone_number",
        "address_text",
        "street",
        "house",
        "house_number",
        "date_of_birth",
        "dob",
        "accountnumber",
        "sortcode",
        "callback",
        "api_key_value",
    }
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[email]"),
    # National Insurance number (loosely, so HMRC's own example QQ 12 34 56 C is caught too)
    (re.compile(r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", re.I), "[ni-number]"),
    (re.compile(r"\b\d{2}-\d{2}-\d{2}\b"), "[sort-code]"),
    (re.compile(r"\bGB\d{2}[A-Z]{4}\d{14}\b", re.I), "[iban]"),
    (re.compile(r"(?<![\w-])(?:\+44\s?|0)(?:\d[\s-]?){9,10}\b"), "[phone]"),
    # not the first group of a UUID (a Celery task id in its own log lines)
    (re.compile(r"\b\d{8}\b(?!-[0-9a-fA-F]{4}-)"), "[account-number]"),
    # A full postcode (with the inward part) narrows an address to a few houses; districts like B60 stay.
    (re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2}\b", re.I), "[postcode]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [secret]"),
]


# Every pattern above needs a digit, an @ or a credential scheme's name: text with none of them (most logged
# values: event names, instance names, statuses) skips the eight substitutions.
_MAY_HOLD_PATTERN = re.compile(r"[\d@]|bearer|basic", re.I)


def redact_text(text: str) -> str:
    """Replace e-mails, phone numbers, NI numbers and bank details inside free text."""
    if not _MAY_HOLD_PATTERN.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(key: str | None, value: Any, _depth: int = 0) -> Any:
    """Redact one logged value: whole values under personal keys, patterns inside text, recursively."""
    if key is not None and key.lower().replace("-", "_") in SENSITIVE_KEYS and value not in (None, "", [], {}):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if _depth > 20:  # a pathological structure is not worth walking: keep nothing of it
        return REDACTED
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(None, v, _depth + 1) for v in value]
    # Models and dataclasses would otherwise be rendered by repr(), field values and all.
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return redact_value(None, dump(mode="json"), _depth + 1)
        except Exception:  # a model that cannot dump itself is rendered as text below
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return redact_value(None, dataclasses.asdict(value), _depth + 1)
    return redact_text(repr(value))


def redact_personal_data(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: nothing personal or secret leaves in a log line."""
    for key in list(event_dict):
        if key in ("level", "timestamp", "logger"):
            continue
        if key in ("hub_ref", "correlation_id"):
            # A real reference survives the text patterns; a phone number sent in the ref field does not.
            event_dict[key] = redact_value(None, event_dict[key])
            continue
        event_dict[key] = redact_value(None if key in ("event", "exception") else key, event_dict[key])
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now (test capture and daemonising both swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _AcceptedIntakeFilter(logging.Filter):
    """Drops uvicorn's access line for an intake the API took (202 on POST /cases): `case.accepted` says the same
    with the case's ref, and formatting a second line cost the API about a tenth of its CPU per case."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path, http version, status)
        return not (isinstance(args, tuple) and len(args) == 5 and args[4] == 202 and args[1] == "POST"
                    and args[2] == "/cases")


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    """Configure structlog and route stdlib logging (celery, uvicorn) through the same redaction."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_personal_data,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # a line below the level is dropped before the processors (redaction included) spend anything on it
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("zeep", "urllib3", "amqp", "kombu", "alembic.runtime.migration", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [f for f in access.filters if not isinstance(f, _AcceptedIntakeFilter)]
    access.addFilter(_AcceptedIntakeFilter())


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
