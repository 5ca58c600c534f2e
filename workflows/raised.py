"""Jobs raised in a back office: keep their updates, make each a Hub case exactly once, and replay its updates."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hubbridge.case import Channel, Customer, HubCase, HubStatus, Location
from hubbridge.connectors.base import BackOfficeUpdate, Connector
from hubbridge.errors import (
    ConnectorError,
    HubbridgeError,
    MappingError,
    RoutingError,
    StoreError,
    TransientError,
)
from hubbridge.store import (
    CaseRow,
    LinkRow,
    RaisedCaseRow,
    SeenUpdateRow,
    record_event,
    session_scope,
    utcnow,
)
from hubbridge.workflows import retry
from hubbridge.workflows.deadletters import dead_letter
from hubbridge.workflows.runtime import Outcome, OutcomeKind, Runtime

if TYPE_CHECKING:
    from hubbridge.config.loader import ResolvedRoute

log = structlog.get_logger(__name__)

RAISE_BATCH = 20
"""Back-office-raised jobs sent to the Hub per poll of their connector instance."""

#
# A resident phoned the service area, so the back office has a job the Hub never sent. Its first
# update writes a row in the `raised_cases` outbox, in the same transaction as the update (and the
# sync cursor); later updates of the job queue on that row, in order. `raise_pending` then asks the
# Hub for a case, keyed on (connector instance, back-office ref) so that a retry or a second worker
# gets the same Hub case back, and in one transaction writes the case, its link and the queued
# updates into the Hub outbox. Connectors may offer `raised_details(update) -> dict` (partial Hub
# case fields: authority, customer, location, description, attributes) when their update feed does
# not carry the job's details; otherwise what the update's `raw` holds is used.


def _raised_in_back_office(rt: Runtime, s: Session, conn: Connector, upd: BackOfficeUpdate) -> str | None:
    """Keep an update of a job the Hub never sent; returns its Hub ref if the job is already a Hub case."""
    if upd.hub_ref:
        # it names a Hub case we never had (another system's, or typed by hand): not ours to raise again
        record_event(
            s,
            None,
            "backoffice.unlinked",
            connector=conn.name,
            backoffice_ref=upd.backoffice_ref,
            update_id=upd.update_id,
            names_hub_ref=upd.hub_ref,
        )
        return None
    now = utcnow()
    key = (RaisedCaseRow.connector == conn.name) & (RaisedCaseRow.backoffice_ref == upd.backoffice_ref)
    # An UPDATE first: it takes the row's lock (PostgreSQL) or the write lock (SQLite), so a raiser
    # finishing the row at the same moment cannot miss the update appended here.
    touched = s.execute(
        update(RaisedCaseRow).where(key).values(seen_at=now).execution_options(synchronize_session=False)
    ).rowcount
    if not touched:
        s.add(
            RaisedCaseRow(
                connector=conn.name,
                backoffice_ref=upd.backoffice_ref,
                state="pending",
                service_code=upd.service_code,
                updates=[_dump_update(upd)],
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                seen_at=now,
            )
        )
        record_event(
            s,
            None,
            "backoffice.raised",
            connector=conn.name,
            backoffice_ref=upd.backoffice_ref,
            update_id=upd.update_id,
            service_code=upd.service_code,
        )
        return None
    raised = s.scalar(select(RaisedCaseRow).where(key).execution_options(populate_existing=True))
    if raised is None:
        raise StoreError(f"raised job {upd.backoffice_ref} of {conn.name} vanished while an update was added")
    if raised.state in ("raised", "linked") and raised.hub_ref:
        return raised.hub_ref  # raised on the Hub, or found to be ours, since this poll began
    raised.updates = [*raised.updates, _dump_update(upd)]
    raised.service_code = raised.service_code or upd.service_code
    return None


def raise_pending(rt: Runtime, name: str, now: datetime | None = None, limit: int = RAISE_BATCH) -> list[str]:
    """Send the due back-office-raised jobs of one connector instance to the Hub; returns the new Hub refs."""
    now = now or utcnow()
    with session_scope(rt.url) as s:
        ids = s.scalars(
            select(RaisedCaseRow.id)
            .where(
                RaisedCaseRow.connector == name,
                RaisedCaseRow.state == "pending",
                RaisedCaseRow.next_attempt_at <= now,
            )
            .order_by(RaisedCaseRow.id)
            .limit(limit)
        ).all()
    refs: list[str] = []
    for rid in ids:
        out = raise_case(rt, rid, now)
        refs.extend(out.push)
        if out.kind == OutcomeKind.RETRY:
            break  # the Hub is not answering: the others wait for the next poll too
    return refs


def raise_case(rt: Runtime, raised_id: int, now: datetime | None = None) -> Outcome:
    """Make one back-office-raised job a Hub case, exactly once, and queue its updates for it in order."""
    from hubbridge.workflows.sync import _apply_update  # sync imports this module: not at import time

    now = now or utcnow()
    with session_scope(rt.url) as s:
        claimed = s.execute(
            update(RaisedCaseRow)
            .where(
                RaisedCaseRow.id == raised_id,
                RaisedCaseRow.state == "pending",
                RaisedCaseRow.next_attempt_at <= now,
            )
            # a second raiser backs off while this one talks to the Hub (the Hub is idempotent anyway)
            .values(next_attempt_at=now + timedelta(seconds=_hub_call_seconds(rt)))
            .execution_options(synchronize_session=False)
        ).rowcount
        if not claimed:
            return Outcome(OutcomeKind.SKIPPED, "raised by another worker or not due")
        raised = s.get(RaisedCaseRow, raised_id)
        if raised is None:
            raise StoreError(f"raised job {raised_id} vanished while claimed")
        name, bo_ref, attempts = raised.connector, raised.backoffice_ref, raised.attempts
        first = _load_update(raised.updates[0]) if raised.updates else None
        service_code = raised.service_code
        # A back office that does not echo our reference makes our own job look raised there: its link (made
        # when delivery commits) decides, and while a delivery to this instance is unsettled the job waits.
        linked = s.scalar(select(LinkRow.hub_ref).where(LinkRow.connector == name, LinkRow.backoffice_ref == bo_ref))
        if linked is not None:
            return _take_into_linked_case(rt, s, raised, linked)
        unsettled = s.scalar(
            select(CaseRow.hub_ref).where(
                CaseRow.connector == name,
                CaseRow.stage == "received",
                CaseRow.unknown_outcome.is_(True),
                CaseRow.received_at <= raised.created_at,  # only a case older than the job can have made it
            ).limit(1)
        )
        if unsettled is not None:
            raised.next_attempt_at = now + timedelta(seconds=rt.settings.reconcile_after_seconds / 4)
            raised.last_error = f"waiting: the delivery of {unsettled} to {name} may have made this job"
            return Outcome(OutcomeKind.SKIPPED, f"waits for the delivery of {unsettled}")
    if first is None:
        return _raise_failed(rt, raised_id, "no_update", "the outbox row holds no back-office update", bo_ref, name)
    conn = rt.connector(name)
    bound = log.bind(connector=name, backoffice_ref=bo_ref)
    try:
        route, case = _raised_case(rt, conn, first, service_code)
        hub_ref = rt.hub.create_case(case, bo_ref, name)
    except TransientError as exc:
        delay = retry.hub_backoff(attempts + 1, exc.retry_after)
        with session_scope(rt.url) as s:
            s.execute(
                update(RaisedCaseRow)
                .where(RaisedCaseRow.id == raised_id, RaisedCaseRow.state == "pending")
                .values(
                    attempts=RaisedCaseRow.attempts + 1,
                    last_error=str(exc)[:2000],
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
                .execution_options(synchronize_session=False)
            )
        bound.warning("raise.retry", error=str(exc)[:200], in_seconds=round(delay, 1))
        return Outcome(OutcomeKind.RETRY, str(exc), retry_in=delay)
    except (RoutingError, MappingError) as exc:
        return _raise_failed(rt, raised_id, "unroutable", str(exc), bo_ref, name)
    except ConnectorError as exc:
        return _raise_failed(rt, raised_id, "hub_refused", str(exc), bo_ref, name)
    except HubbridgeError as exc:  # a mapping file that never loaded
        return _raise_failed(rt, raised_id, "mapping_invalid", str(exc), bo_ref, name)

    with session_scope(rt.url) as s:
        # the write first, again, so an update appended by a concurrent poll is either in the list read
        # below or arrives after the link exists
        done = s.execute(
            update(RaisedCaseRow)
            .where(RaisedCaseRow.id == raised_id, RaisedCaseRow.state == "pending")
            .values(state="raised", hub_ref=hub_ref, raised_at=utcnow(), next_attempt_at=None, last_error=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not done:
            return Outcome(OutcomeKind.SKIPPED, "raised concurrently")
        raised = s.scalar(
            select(RaisedCaseRow).where(RaisedCaseRow.id == raised_id).execution_options(populate_existing=True)
        )
        if raised is None:
            raise StoreError(f"raised job {raised_id} vanished while raised on the Hub")
        if s.scalar(select(CaseRow.id).where(CaseRow.hub_ref == hub_ref)) is not None:
            # the Hub answered with a ref we already hold for another case: never merge two cases
            s.rollback()
            return _raise_failed(
                rt, raised_id, "hub_ref_clash", f"the Hub gave {hub_ref}, a ref already in the store", bo_ref, name
            )
        pending = [_load_update(d) for d in raised.updates]
        created = case.created_at
        s.add(
            CaseRow(
                hub_ref=hub_ref,
                authority=case.authority,
                service=case.service,
                priority=case.priority.value,
                origin="backoffice",
                # the back office has had the job since it was raised; its updates take it on from there
                status=HubStatus.DELIVERED.value,
                status_at=created,
                stage="acknowledged",
                payload=case.model_copy(update={"ref": hub_ref}).dump(),
                connector=name,
                received_at=now,
                updated_at=now,
            )
        )
        s.flush()
        s.add(LinkRow(hub_ref=hub_ref, connector=name, backoffice_ref=bo_ref, created_at=now))
        record_event(s, hub_ref, "raised_on_hub", connector=name, backoffice_ref=bo_ref, updates=len(pending))
        rt.sla.start(
            s,
            hub_ref,
            case.service,
            case.authority,
            case.priority.value,
            created,
            policy=route.sla_policy,
            escalation=route.escalation,
        )
        raised.updates = []
        for upd in pending:
            _apply_update(rt, s, conn, hub_ref, upd)
            s.execute(
                update(SeenUpdateRow)
                .where(SeenUpdateRow.connector == name, SeenUpdateRow.update_id == upd.update_id)
                .values(hub_ref=hub_ref)
                .execution_options(synchronize_session=False)
            )
    bound.info("case.raised_on_hub", hub_ref=hub_ref, updates=len(pending))
    return Outcome(OutcomeKind.DONE, hub_ref, push=[hub_ref])


def _take_into_linked_case(rt: Runtime, s: Session, raised: RaisedCaseRow, hub_ref: str) -> Outcome:
    """The job was one of ours after all (its delivery committed the link since): its held updates go to that case."""
    from hubbridge.workflows.sync import _apply_update  # sync imports this module: not at import time

    conn = rt.connector(raised.connector)
    pending = [_load_update(d) for d in raised.updates]
    raised.state, raised.hub_ref, raised.updates, raised.next_attempt_at = "linked", hub_ref, [], None
    raised.last_error = None
    for upd in pending:
        _apply_update(rt, s, conn, hub_ref, upd)
        s.execute(
            update(SeenUpdateRow)
            .where(SeenUpdateRow.connector == raised.connector, SeenUpdateRow.update_id == upd.update_id)
            .values(hub_ref=hub_ref)
            .execution_options(synchronize_session=False)
        )
    record_event(s, hub_ref, "backoffice.update.linked", connector=raised.connector,
                 backoffice_ref=raised.backoffice_ref, updates=len(pending))
    log.info("raised.was_ours", hub_ref=hub_ref, connector=raised.connector, backoffice_ref=raised.backoffice_ref)
    return Outcome(OutcomeKind.DONE, hub_ref, push=[hub_ref])


def _hub_call_seconds(rt: Runtime) -> float:
    t = rt.config.hub.timeouts
    return 2 * (t.connect + t.read) + 30.0


def _raise_failed(rt: Runtime, raised_id: int, reason: str, detail: str, bo_ref: str, name: str) -> Outcome:
    with session_scope(rt.url) as s:
        raised = s.get(RaisedCaseRow, raised_id)
        if raised is None:
            raise StoreError(f"raised job {raised_id} vanished before it was dead-lettered")
        raised.state = "dead"
        raised.next_attempt_at = None
        raised.last_error = detail[:2000]
        dead_letter(
            s,
            stage="raise",
            reason=reason,
            detail=detail,
            payload={"connector": name, "backoffice_ref": bo_ref, "updates": raised.updates},
            connector=name,
        )
    return Outcome(OutcomeKind.DEAD, detail)


def _raised_case(
    rt: Runtime, conn: Connector, first: BackOfficeUpdate, service_code: str | None
) -> tuple[ResolvedRoute, HubCase]:
    """The Hub case for a job raised in `conn`'s back office, and the route its service takes there."""
    details: dict[str, Any] = dict(conn.raised_details(first) or {}) if conn.supports_raised_details else {}
    found = _details_from_raw(first.raw)
    authority = details.get("authority") or _authority_by_location(rt, details, first.raw)
    route = _raised_route(rt, conn, service_code, authority, first.backoffice_ref)
    # the Hub needs a name to file the case under; the back office may not have passed one on
    fallback = {"name": f"Caller to {conn.name} (no name passed on)"}
    customer = (
        _valid(Customer, details.get("customer"), fallback)
        or _valid(Customer, found["customer"], fallback)
        or Customer(**fallback)
    )
    location = _valid(Location, details.get("location")) or _valid(Location, found["location"]) or Location()
    what = details.get("description") or found["description"] or first.note or "no description passed on"
    attributes = {
        **{k: v for k, v in (details.get("attributes") or {}).items() if isinstance(v, str | int | float | bool)},
        "raised_in": conn.name,
        "backoffice_ref": first.backoffice_ref,
        "backoffice_service_code": service_code,
    }
    case = HubCase(
        ref=f"{rt.config.hub.ref_prefix}-{first.occurred_at.year:04d}-000000",  # the Hub gives the real one
        authority=route.authority,
        service=route.service,
        channel=Channel.BACK_OFFICE,
        customer=customer,
        location=location,
        description=f"{what} (raised in {conn.name} as {first.backoffice_ref})"[:4000],
        attributes=attributes,
        created_at=first.occurred_at,
    )
    return route, case


def _raised_route(rt: Runtime, conn: Connector, service_code: str | None, authority: str | None, bo_ref: str
                  ) -> ResolvedRoute:
    """The one route of `conn` whose mapping covers the job's back-office service code (and authority, if known)."""
    candidates = []
    for route in rt.config.routes_for_connector(conn.name):
        mapping = rt.mappings.get(route.mapping_path, conn.target_fields())
        if service_code is not None and service_code in mapping.service_codes:
            candidates.append(route)
    if not candidates:
        raise RoutingError(
            f"job {bo_ref} raised in {conn.name} has back-office service code {service_code!r}, "
            "which no mapping routed to this instance covers",
            where=str(rt.config.config_dir / "routes.yaml"),
            hint="add the code to inbound.service_codes of the service's mapping, then replay the dead letter",
        )
    if authority:
        candidates = [r for r in candidates if r.authority == authority]
    if len(candidates) != 1:
        pairs = ", ".join(sorted(f"{r.authority}/{r.service}" for r in candidates)) or "none"
        located = f"its location gave {authority}" if authority else (
            "its location gave no authority (no postcode of a district listed in authorities.yaml)")
        raise RoutingError(
            f"job {bo_ref} raised in {conn.name} (code {service_code}) cannot be told apart between: {pairs}; "
            f"{located}",
            where=conn.name,
            hint="add the job's postcode district to its council's postcode_areas in authorities.yaml, or have the "
            "connector give the authority through raised_details(); then replay",
        )
    return candidates[0]


# an outward code (B60, WR14, DY10) optionally followed by its inward code (1AA)
_POSTCODE = re.compile(r"\b([A-Z]{1,2}[0-9][0-9A-Z]?)(?:\s*[0-9][A-Z]{2})?\b")
_POSTCODE_KEYS = ("zipcode", "postcode", "postalcode", "zip")
_ADDRESS_KEYS = ("address", "addressstring", "addresstext", "sitedescription", "locationdescription", "description")


def _authority_by_location(rt: Runtime, details: dict[str, Any], raw: Any) -> str | None:
    """The one district whose postcode districts hold the job's postcode, for a back office that serves several.

    Postcode fields are read first, then addresses; None when no postcode or more than one district matches.
    """
    flat: dict[str, str] = {}

    def walk(obj: Any, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, dict | list):
                    walk(v, depth + 1)
                elif isinstance(v, str) and v:
                    flat.setdefault(_KEY_CHARS.sub("", str(k).lower()), v)
        elif isinstance(obj, list):
            for item in obj[:20]:
                walk(item, depth + 1)

    walk({"details": details, "raw": raw}, 0)
    by_district = {area.upper(): code for code, a in rt.config.authorities.items() for area in a.postcode_areas}
    for keys in (_POSTCODE_KEYS, _ADDRESS_KEYS):
        found = {by_district[m.group(1)] for k in keys if k in flat
                 for m in _POSTCODE.finditer(flat[k].upper()) if m.group(1) in by_district}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None  # two councils named: not ours to choose
    return None


_KEY_CHARS = re.compile(r"[^a-z]")
_NAME_KEYS = ("customername", "reportername", "callername", "contactname", "customerfullname")
_FIRST_KEYS = ("firstname", "forename")
_LAST_KEYS = ("lastname", "surname")


def _details_from_raw(raw: Any) -> dict[str, Any]:
    """Customer, location and description found in an update's raw record, by the usual field names."""
    flat: dict[str, Any] = {}

    def walk(obj: Any, prefix: str, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                key = _KEY_CHARS.sub("", str(k).lower())
                if isinstance(v, dict | list):
                    walk(v, prefix + key, depth + 1)
                elif v not in (None, ""):
                    flat.setdefault(prefix + key, v)
                    flat.setdefault(key, v)
        elif isinstance(obj, list):
            for item in obj[:20]:
                walk(item, prefix, depth + 1)

    walk(raw, "", 0)

    def first(*keys: str) -> Any:
        return next((flat[k] for k in keys if k in flat), None)

    name = first(*_NAME_KEYS)
    if name is None:
        parts = [first(*_FIRST_KEYS), first(*_LAST_KEYS)]
        name = " ".join(str(p) for p in parts if p) or None
    customer: dict[str, Any] = {
        "name": str(name) if name else None,
        "phone": first("phone", "telephone", "customerphone"),
        "email": first("email", "customeremail", "emailaddress"),
    }
    location: dict[str, Any] = {
        "uprn": first("uprn"),
        "usrn": first("usrn"),
        "lat": first("lat", "latitude"),
        "lon": first("long", "lon", "longitude"),
        "description": first("addressstring", "addresstext", "sitedescription", "locationdescription"),
    }
    return {
        "customer": {k: (str(v) if k != "name" else v) for k, v in customer.items() if v is not None},
        "location": {k: str(v) for k, v in location.items() if v is not None},
        "description": first("description", "notes", "details"),
    }


def _valid(model: Any, data: Any, defaults: dict[str, Any] | None = None) -> Any:
    """`model` from `data` over `defaults`, dropping fields that fail; None if nothing of `data` is left."""
    if not isinstance(data, dict) or not data:
        return None
    merged = {**(defaults or {}), **data}
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors(include_url=False) if e["loc"]}
    kept = {k: v for k, v in data.items() if k not in bad}
    if not kept:
        return None
    try:
        return model.model_validate({**(defaults or {}), **kept})
    except ValidationError:
        return None


def _dump_update(upd: BackOfficeUpdate) -> dict[str, Any]:
    data = {
        "backoffice_ref": upd.backoffice_ref,
        "update_id": upd.update_id,
        "occurred_at": upd.occurred_at.isoformat(),
        "status_code": upd.status_code,
        "note": upd.note,
        "hub_ref": upd.hub_ref,
        "service_code": upd.service_code,
        "raw": upd.raw,
    }
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def _load_update(data: dict[str, Any]) -> BackOfficeUpdate:
    return BackOfficeUpdate(
        backoffice_ref=data["backoffice_ref"],
        update_id=data["update_id"],
        occurred_at=datetime.fromisoformat(data["occurred_at"]),
        status_code=data.get("status_code"),
        note=data.get("note"),
        hub_ref=data.get("hub_ref"),
        service_code=data.get("service_code"),
        raw=data.get("raw") or {},
    )
