"""Intake: validate, route and store one Hub case; a rejected case is kept as a dead letter with every field's error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from hubbridge.case import HubCase, HubStatus
from hubbridge.errors import (
    CaseValidationError,
    RoutingError,
)
from hubbridge.store import (
    CaseRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.runtime import Runtime

log = structlog.get_logger(__name__)

_NEW_CASE = insert(CaseRow.__table__)


MAX_NUMBER_DIGITS = 20
"""A number longer than this is refused: no Hub field needs one, and Python's int parser stops at 4,300 digits."""

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 cannot carry (C0 controls but tab/CR/LF, lone surrogates, U+FFFE/U+FFFF): refused."""

_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200b\u2060\ufeff]")
"""Bidi embeddings/overrides/isolates and zero-width space, word joiner, BOM: stripped (docs/security.md)."""


class _Refused:
    """A JSON value the parser would not take (NaN, Infinity, an over-long number), found and named afterwards."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number; send a finite number or null")


def _integer(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        return _Refused(f"a number of {digits} digits is over the {MAX_NUMBER_DIGITS}-digit limit")
    return int(text)


def _real(text: str) -> float | _Refused:
    value = float(text) if len(text) <= 64 else float("inf")
    if value != value or value in (float("inf"), float("-inf")):
        return _Refused(f"a number of {len(text)} characters that is not a finite double")
    return value


def _parse(raw: str | bytes) -> Any:
    return json.loads(raw, parse_constant=_constant, parse_int=_integer, parse_float=_real)


def _screen(value: Any, path: str, errors: dict[str, str], stripped: set[str]) -> Any:
    """`value` with invisible formatting characters removed; refused values and characters noted in `errors`."""
    if isinstance(value, _Refused):
        errors[path or "(body)"] = value.problem
        return None
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        errors[path or "(body)"] = "NaN or Infinity is not a JSON number; send a finite number or null"
        return None
    if isinstance(value, str):
        bad = _NOT_XML.search(value)
        if bad:
            # the character's code point is named, never the text around it (it may be personal data)
            errors[path or "(body)"] = (f"contains control character U+{ord(bad.group()):04X} at position "
                                        f"{bad.start()}, which no back office (XML) can carry; remove it")
            return value
        if _INVISIBLE.search(value):
            stripped.add(path or "(body)")
            return _INVISIBLE.sub("", value)
        return value
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _NOT_XML.search(key):
                errors[path or "(body)"] = "a field name contains a control character; remove it"
                continue
            out[_INVISIBLE.sub("", key) if isinstance(key, str) else key] = _screen(item, where, errors, stripped)
        return out
    if isinstance(value, list):
        return [_screen(item, f"{path}.{i}" if path else str(i), errors, stripped) for i, item in enumerate(value)]
    return value


def _ids(data: Any) -> dict[str, Any]:
    """The ref/service/authority of a refused body, when they are plain strings, for the dead letter's columns."""
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in ("ref", "service", "authority") if isinstance(data.get(k), str)}


def _field_errors(exc: ValidationError) -> dict[str, str]:
    out: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        out[loc] = err["msg"]
    return out


@dataclass
class Accepted:
    hub_ref: str
    duplicate: bool
    amended: list[int] = field(default_factory=list)
    """The sequences of the follow-ups a re-posted case with changed content became (empty: nothing changed)."""


def accept_case(rt: Runtime, raw: bytes | str | dict[str, Any], *, channel: str = "api") -> Accepted:
    """Validate, route and store one Hub case; failures are kept as dead letters and raised with every field."""
    text = raw if isinstance(raw, str | bytes) else None
    stripped: set[str] = set()
    try:
        parsed = _parse(raw) if isinstance(raw, str | bytes) else raw
        if not isinstance(parsed, dict):
            raise CaseValidationError({"(body)": "a Hub case is a JSON object"})
        screened: dict[str, str] = {}
        data = _screen(parsed, "", screened, stripped)
        if screened:
            ids = _ids(data)
            err = CaseValidationError(screened, ref=ids.get("ref"))
            _keep_rejected(rt, err, text if text is not None else parsed, ids, reason="invalid_case", channel=channel)
            raise err
        case = HubCase.model_validate(data)
        route = rt.config.route(case.authority, case.service)
    except json.JSONDecodeError as exc:
        err = CaseValidationError({"(body)": f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"})
        _keep_rejected(rt, err, text, None, reason="invalid_json", channel=channel)
        raise err from None
    except (UnicodeDecodeError, RecursionError) as exc:
        # json.loads raises these (not JSONDecodeError) for bytes that are not UTF-8 and for absurd nesting
        problem = (f"not UTF-8 text: {exc.reason} at byte {exc.start}" if isinstance(exc, UnicodeDecodeError)
                   else "not valid JSON: nested too deeply")
        err = CaseValidationError({"(body)": problem})
        _keep_rejected(rt, err, text, None, reason="invalid_json", channel=channel)
        raise err from None
    except ValidationError as exc:
        ref = data.get("ref") if isinstance(data.get("ref"), str) else None
        err = CaseValidationError(_field_errors(exc), ref=ref)
        _keep_rejected(rt, err, text if text is not None else data, data, reason="invalid_case", channel=channel)
        raise err from None
    except RoutingError as exc:
        field_name = "authority" if "authority" in exc.message else "service"
        err = CaseValidationError({field_name: str(exc)}, ref=case.ref)
        _keep_rejected(rt, err, text if text is not None else data, data, reason="unroutable", channel=channel)
        raise err from None
    except CaseValidationError as err:
        if err.fields.get("(body)") == "a Hub case is a JSON object":
            _keep_rejected(rt, err, text if text is not None else parsed, None, reason="invalid_case",
                           channel=channel)
        raise

    now = utcnow()
    with session_scope(rt.url) as s:
        if stripped:
            record_event(s, case.ref, "received", channel=channel, invisible_stripped=sorted(stripped))
        else:
            record_event(s, case.ref, "received", channel=channel)
        record_event(
            s,
            case.ref,
            "routed",
            connector=route.connector.name,
            mapping=str(route.mapping_path.name),
            sla_policy=route.sla_policy,
        )
        try:
            # A case the store already holds fails here, on the unique hub_ref: no look-up first, since a
            # duplicate is rare and the look-up was a round trip on every case.
            s.execute(_NEW_CASE, {
                "hub_ref": case.ref,
                "authority": case.authority,
                "service": case.service,
                "priority": case.priority.value,
                "origin": "hub",
                "status": HubStatus.ROUTED.value,
                "status_at": now,
                "stage": "received",
                "payload": case.dump(),
                "connector": route.connector.name,
                "next_attempt_at": now + timedelta(seconds=rt.settings.reconcile_after_seconds),
                "received_at": now,
                "updated_at": now,
            })
            rt.sla.start(s, case.ref, case.service, case.authority, case.priority.value, now,
                         policy=route.sla_policy, escalation=route.escalation, new=True)
        except IntegrityError:
            s.rollback()
            if s.scalar(select(CaseRow.id).where(CaseRow.hub_ref == case.ref)) is None:
                raise  # some other constraint: not a duplicate
            from hubbridge.workflows.followups import amend_from_repost

            # the Hub re-sent a case it had sent: what changed is news for the back office, never dropped
            amended = amend_from_repost(rt, s, case, channel)
            if not amended:
                record_event(s, case.ref, "intake.duplicate", channel=channel)
            return Accepted(case.ref, duplicate=True, amended=amended)
    log.info("case.accepted", hub_ref=case.ref, service=case.service, authority=case.authority)
    return Accepted(case.ref, duplicate=False)


def _keep_rejected(
    rt: Runtime, err: CaseValidationError, raw: Any, data: dict[str, Any] | None, *, reason: str, channel: str
) -> None:
    data = data or {}
    with session_scope(rt.url) as s:
        dead_letter(
            s,
            stage="intake",
            reason=reason,
            detail=str(err),
            payload=raw,
            hub_ref=data.get("ref") if isinstance(data.get("ref"), str) else None,
            service=data.get("service") if isinstance(data.get("service"), str) else None,
            authority=data.get("authority") if isinstance(data.get("authority"), str) else None,
            once_per_body=True,  # a captured request replayed must not fill the dead letters
        )
