"""structlog set-up: JSON in production, readable in a terminal, personal data redacted on every line."""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
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


CUSTOMER = "[customer]"

# Parts of a name that say nothing about who it is: never redacted on their own.
_NAME_WORDS = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "lady", "lord", "rev", "the", "and"})
_CASES_REMEMBERED = 2048
"""How many cases' values a process keeps for redaction (least recently bound dropped first)."""


def _phone_forms(phone: str) -> set[str]:
    digits = re.sub(r"\D", "", phone)
    forms = {phone, digits}
    if digits.startswith("44"):
        forms.add("0" + digits[2:])
    elif digits.startswith("0"):
        forms |= {"44" + digits[1:], "+44" + digits[1:]}
    return forms


def case_values(payload: Mapping[str, Any] | None, *, attributes: bool = True) -> set[str]:
    """The customer's own values in a Hub case payload (name and its parts, e-mail, phone forms, address, the
    free text and, with `attributes`, its longer attribute texts): what a log line bound to the case must not show."""
    if not isinstance(payload, Mapping):
        return set()
    found: set[str] = set()
    customer = payload.get("customer") if isinstance(payload.get("customer"), Mapping) else {}
    name = customer.get("name")
    if isinstance(name, str) and name.strip():
        found.add(name.strip())
        words = [w for w in re.split(r"[\s,]+", name) if w]
        untitled = [w for w in words if w.lower().strip(".") not in _NAME_WORDS]
        found.add(" ".join(untitled))  # "Mrs Ann Lee" is also written "Ann Lee"
        found |= {w for w in untitled if len(w) >= 3}
    if isinstance(customer.get("email"), str):
        found.add(customer["email"])
    if isinstance(customer.get("phone"), str):
        found |= _phone_forms(customer["phone"])
    address = customer.get("address") if isinstance(customer.get("address"), Mapping) else {}
    for key in ("line1", "line2"):
        line = address.get(key)
        if isinstance(line, str):
            found.add(line.strip())
            # "12 Acacia Avenue" is also written "Acacia Avenue" or "12, Acacia Avenue"
            found.add(re.sub(r"^\s*\d+[a-zA-Z]?,?\s+", "", line).strip())
    postcode = address.get("postcode")
    if isinstance(postcode, str):
        compact = postcode.replace(" ", "").upper()
        found |= {postcode, compact, f"{compact[:-3]} {compact[-3:]}"}
    for key in ("uprn",):
        if isinstance(address.get(key), str):
            found.add(address[key])
    for text in (payload.get("description"), (payload.get("location") or {}).get("description")
                 if isinstance(payload.get("location"), Mapping) else None):
        if isinstance(text, str) and len(text.strip()) >= 12:  # a short note ("Bins") is no one's own words
            found.add(text.strip())
    extra = payload.get("attributes")
    if attributes and isinstance(extra, Mapping):
        # an attribute (a date, "Back lane") may be shared by many cases: fine to hide in a line, not to search by
        found |= {v.strip() for v in extra.values() if isinstance(v, str) and len(v.strip()) >= 6}
    return {v for v in found if len(v) >= 3}


def values_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any of `values` as a whole word run (longest first)."""
    ordered = sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(v) for v in ordered) + r")(?!\w)", re.IGNORECASE)


class _CaseValues:
    """The compiled pattern of each recently bound case's own values, keyed on the Hub reference."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._patterns: OrderedDict[str, re.Pattern[str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, hub_ref: str, values: Iterable[str]) -> None:
        pattern = values_pattern(values)
        with self._lock:
            if pattern is None:
                self._patterns.pop(hub_ref, None)
                return
            self._patterns[hub_ref] = pattern
            self._patterns.move_to_end(hub_ref)
            while len(self._patterns) > self._size:
                self._patterns.popitem(last=False)

    def forget(self, hub_ref: str) -> None:
        with self._lock:
            self._patterns.pop(hub_ref, None)

    def get(self, hub_ref: Any) -> re.Pattern[str] | None:
        return self._patterns.get(hub_ref) if isinstance(hub_ref, str) else None


_case_values = _CaseValues(_CASES_REMEMBERED)
# values bound for the running task that have no Hub reference yet (a raised job) or come from elsewhere
_bound_pattern: ContextVar[re.Pattern[str] | None] = ContextVar("hubbridge_case_values", default=None)


def remember_case(hub_ref: str | None, payload: Mapping[str, Any] | None) -> None:
    """Note a case's customer values so every later line naming its ref redacts them; no store read per line."""
    if hub_ref:
        _case_values.remember(hub_ref, case_values(payload))


def forget_case(hub_ref: str) -> None:
    _case_values.forget(hub_ref)


def bind_case(hub_ref: str, payload: Mapping[str, Any] | None = None) -> None:
    """Bind `hub_ref` to this context's log lines and, given the payload, redact its customer values in them."""
    structlog.contextvars.bind_contextvars(hub_ref=hub_ref)
    if payload is not None:
        remember_case(hub_ref, payload)


def bind_values(values: Iterable[str]) -> None:
    """Redact these values in every line of this context (cleared with `clear_bound_values`)."""
    _bound_pattern.set(values_pattern(values))


def clear_bound_values() -> None:
    _bound_pattern.set(None)


def redact_text(text: str, case_pattern: re.Pattern[str] | None = None) -> str:
    """Replace the case's own values, then e-mails, phone numbers, NI numbers and bank details inside free text."""
    if case_pattern is not None:
        text = case_pattern.sub(CUSTOMER, text)
    if not _MAY_HOLD_PATTERN.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(key: str | None, value: Any, _depth: int = 0, case_pattern: re.Pattern[str] | None = None) -> Any:
    """Redact one logged value: whole values under personal keys, the case's values and patterns inside text."""
    if key is not None and key.lower().replace("-", "_") in SENSITIVE_KEYS and value not in (None, "", [], {}):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value, case_pattern)
    if _depth > 20:  # a pathological structure is not worth walking: keep nothing of it
        return REDACTED
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"), case_pattern)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v, _depth + 1, case_pattern) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(None, v, _depth + 1, case_pattern) for v in value]
    # Models and dataclasses would otherwise be rendered by repr(), field values and all.
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return redact_value(None, dump(mode="json"), _depth + 1, case_pattern)
        except Exception:  # a model that cannot dump itself is rendered as text below
            pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return redact_value(None, dataclasses.asdict(value), _depth + 1, case_pattern)
    return redact_text(repr(value), case_pattern)


def _line_pattern(event_dict: Mapping[str, Any]) -> re.Pattern[str] | None:
    """The pattern of the case(s) this line is bound to: its hub_ref / correlation_id and the context's values."""
    patterns = [p for p in (_case_values.get(event_dict.get("hub_ref")),
                            _case_values.get(event_dict.get("correlation_id")), _bound_pattern.get()) if p is not None]
    if len(patterns) <= 1:
        return patterns[0] if patterns else None
    # rare (a line bound to two cases): one combined pattern, built for this line only
    return re.compile("|".join(p.pattern for p in patterns), re.IGNORECASE)


def redact_personal_data(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: nothing personal or secret leaves in a log line, the bound case's own values included."""
    case_pattern = _line_pattern(event_dict)
    for key in list(event_dict):
        if key in ("level", "timestamp", "logger"):
            continue
        if key in ("hub_ref", "correlation_id"):
            # A real reference survives the text patterns; a phone number sent in the ref field does not.
            event_dict[key] = redact_value(None, event_dict[key])
            continue
        event_dict[key] = redact_value(None if key in ("event", "exception") else key, event_dict[key],
                                       case_pattern=case_pattern)
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
