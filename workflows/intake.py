"""Intake: validate, route and store one Hub case; a rejected case is kept as a dead letter with every field's error."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


def accept_case(rt: Runtime, raw: bytes | str | dict[str, Any], *, channel: str = "api") -> Accepted:
    """Validate, route and store one Hub case; failures are kept as dead letters and raised with every field."""
    text = raw if isinstance(raw, str | bytes) else None
    try:
        data = json.loads(raw) if isinstance(raw, str | bytes) else raw
        if not isinstance(data, dict):
            raise CaseValidationError({"(body)": "a Hub case is a JSON object"})
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
        _keep_rejected(rt, err, text if text is not None else data, None, reason="invalid_case", channel=channel)
        raise

    now = utcnow()
    with session_scope(rt.url) as s:
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
            record_event(s, case.ref, "intake.duplicate", channel=channel)
            return Accepted(case.ref, duplicate=True)
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
        )
