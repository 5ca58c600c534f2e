"""GeoReport service requests: a posted request becomes a Hub case; GET requests, requests/{id} and tokens read them."""

from __future__ import annotations

import mimetypes
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from hubbridge.case import HubCase, HubStatus, Priority
from hubbridge.config.open311_door import Open311Client
from hubbridge.errors import CaseValidationError, HubbridgeError
from hubbridge.store import CaseRow, HubUpdateRow, session_scope, utcnow
from hubbridge.workflows.open311_door.catalogue import (
    LOCATION_ATTRIBUTES,
    DoorConfig,
    client_of,
    definition,
    reader_of,
)
from hubbridge.workflows.open311_door.tables import Open311RequestRow, _allocate, _set_state
from hubbridge.workflows.open311_door.wire import MAX_LIST, GeoReportError, parse_w3c, w3c

if TYPE_CHECKING:
    from hubbridge.workflows.runtime import Runtime

log = structlog.get_logger(__name__)

DEFAULT_WINDOW = timedelta(days=90)
"""GET requests without dates covers the last 90 days, as the spec says."""


# -- where a request is for ------------------------------------------------------------------------------


_POSTCODE_IN_TEXT = re.compile(r"\b([A-Z]{1,2}[0-9][A-Z0-9]?) ?[0-9][A-Z]{2}\b", re.IGNORECASE)


def authority_of(conf: DoorConfig, client: Open311Client, params: dict[str, str]) -> str:
    """jurisdiction_id, else the client's one council, else the postcode district of address_string."""
    jid = params.get("jurisdiction_id", "").strip()
    if jid:
        authority = conf.jurisdictions.get(jid)
        if authority is None:
            known = ", ".join(sorted(conf.jurisdictions))
            raise GeoReportError(404, f"jurisdiction_id {jid} was not found; known: {known}")
    else:
        authority = client.single_authority
        if authority is None:
            match = _POSTCODE_IN_TEXT.search(params.get("address_string", ""))
            authority = conf.postcode_areas.get(match.group(1).upper()) if match else None
        if authority is None:
            raise GeoReportError(400, "jurisdiction_id was not provided and the council cannot be told from the "
                                 f"address: send jurisdiction_id (one of {', '.join(sorted(conf.jurisdictions))})")
    if not client.serves(authority):
        raise GeoReportError(403, f"this api_key may not report to jurisdiction {authority}")
    return authority


# -- POST requests: a request becomes a Hub case ---------------------------------------------------------------


def _attributes(params: dict[str, str]) -> dict[str, str]:
    return {k[len("attribute["):-1]: v for k, v in params.items()
            if k.startswith("attribute[") and k.endswith("]") and v != ""}


def _number(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise GeoReportError(400, f"{name} must be a number") from None


def _name(params: dict[str, str]) -> str:
    name = " ".join(p.strip() for p in (params.get("first_name", ""), params.get("last_name", "")) if p.strip())
    return name or "Not given"


def _attachment(url: str) -> dict[str, str]:
    if not re.fullmatch(r"https?://\S+", url):
        raise GeoReportError(400, "media_url must be an http(s) URL")
    filename = Path(urlsplit(url).path).name or "photo"
    content_type = mimetypes.guess_type(filename)[0] or "image/jpeg"
    return {"filename": filename[:200], "content_type": content_type, "url": url}


def case_from_request(rt: Runtime, conf: DoorConfig, client: Open311Client, params: dict[str, str], service: str,
                      authority: str, ref: str, created_at: datetime) -> dict[str, Any]:
    """The Hub case (as a dict, for `accept_case`) a GeoReport request describes."""
    attrs_def, asked = definition(rt, conf, service, client, authority)
    given = _attributes(params)
    for a in attrs_def:
        if a["required"] and not given.get(a["code"]):
            raise GeoReportError(400, f"attribute[{a['code']}] is required for service {conf.file.code_of(service)}")
        if given.get(a["code"]) and a.get("values") and given[a["code"]] not in {v["key"] for v in a["values"]}:
            allowed = ", ".join(v["key"] for v in a["values"])
            raise GeoReportError(400, f"attribute[{a['code']}]: {given[a['code']]!r} is not one of {allowed}")
    location: dict[str, Any] = {}
    lat, lon = _number(params.get("lat"), "lat"), _number(params.get("long"), "long")
    if (lat is None) != (lon is None):
        raise GeoReportError(400, "lat and long come together")
    address = params.get("address_string", "").strip()
    address_id = params.get("address_id", "").strip()
    if lat is None and not address and not address_id:
        raise GeoReportError(400, "a location is required: lat and long, address_string or address_id")
    if lat is not None:
        location |= {"lat": lat, "lon": lon}
    for code, field in LOCATION_ATTRIBUTES.items():
        if given.get(code):
            location[field] = _number(given[code], f"attribute[{code}]") if field in ("easting", "northing") \
                else given[code]
    if address_id:
        if re.fullmatch(r"\d{1,12}", address_id):
            location.setdefault("uprn", address_id)
        else:
            address = f"{address} (address id {address_id})".strip()
    description_of_place = address or given.get("closest_address", "").strip()
    if description_of_place:
        location["description"] = description_of_place
    bools = {q.code for q in asked if set(q.values) == {"true", "false"}}
    attributes: dict[str, Any] = {}
    for q in asked:
        if q.code in given:
            attributes[q.code] = given[q.code] == "true" if q.code in bools else given[q.code]
    if client.client_id_attribute and given.get(client.client_id_attribute):
        attributes[client.client_id_attribute] = given[client.client_id_attribute]
    customer: dict[str, Any] = {"name": _name(params)}
    for field in ("email", "phone"):
        if params.get(field, "").strip():
            customer[field] = params[field].strip()
    case: dict[str, Any] = {
        "ref": ref,
        "authority": authority,
        "service": service,
        "channel": "web",
        "priority": (Priority.EMERGENCY if rt.config.services[service].emergency else Priority.NORMAL).value,
        "customer": customer,
        "location": location,
        "description": params.get("description", ""),
        "attributes": attributes,
        "created_at": created_at.isoformat(),
    }
    if params.get("media_url"):
        case["attachments"] = [_attachment(params["media_url"])]
    return case


def _refused(rt: Runtime, client: Open311Client, params: dict[str, str], exc: GeoReportError) -> None:
    """Keep a refused request (without its key) as a dead letter, once per body, and log it without its content."""
    from hubbridge.workflows.deadletters import dead_letter

    # the contact fields also as a Hub customer, so a subject access or erasure by e-mail or phone finds it
    customer = {"name": _name(params), **{f: params[f] for f in ("email", "phone") if params.get(f)}}
    kept = {"open311_request": {k: v for k, v in params.items() if k != "api_key"}, "customer": customer}
    with session_scope(rt.url) as s:
        dead_letter(s, stage="intake", reason="open311_refused", detail=f"{client.name}: {exc.description}",
                    payload=kept, once_per_body=True)
    log.warning("open311.refused", client=client.name, status=exc.status, reason=exc.description[:200])


def post_request(rt: Runtime, conf: DoorConfig, params: dict[str, str], enqueue: bool) -> list[dict[str, Any]]:
    """Take one GeoReport request in as a Hub case (or find the case an earlier send of it became)."""
    from hubbridge.workflows.intake import accept_case

    client = client_of(conf, params)
    assert client is not None
    try:
        code = params.get("service_code", "").strip()
        if not code:
            raise GeoReportError(400, "service_code was not provided")
        service = conf.file.service_for_code(code)
        if service is None:
            raise GeoReportError(400, f"service_code {code} was not found")
        authority = authority_of(conf, client, params)
        try:
            rt.config.route(authority, service)
        except HubbridgeError:
            raise GeoReportError(400, f"service_code {code} is not offered in jurisdiction {authority}") from None
        client_id = _attributes(params).get(client.client_id_attribute or "") or None
        if client_id is not None and len(client_id) > 128:
            raise GeoReportError(400, f"attribute[{client.client_id_attribute}] is longer than 128 characters")
        # the case is checked before a reference is spent on it
        draft = case_from_request(rt, conf, client, params, service, authority, f"{client.ref_prefix}-2000-000000",
                                  utcnow())
        try:
            HubCase.model_validate(draft)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            raise GeoReportError(400, f"the request is not a valid case: {problems}") from None
    except GeoReportError as exc:
        _refused(rt, client, params, exc)
        raise
    row, resent = _allocate(rt, client, client_id, code)
    if resent and row.service_code != code:
        raise GeoReportError(400, f"attribute[{client.client_id_attribute}] {client_id} was sent before for "
                             f"service {row.service_code}")
    case = case_from_request(rt, conf, client, params, service, authority, row.hub_ref, row.created_at)
    try:
        accepted = accept_case(rt, case, channel="open311")
    except CaseValidationError as exc:
        _set_state(rt, row.id, "refused")
        problems = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
        raise GeoReportError(400, f"the request is not a valid case: {problems}") from None
    if row.state != "accepted":
        _set_state(rt, row.id, "accepted")
    if enqueue and not accepted.duplicate:
        _enqueue(rt, accepted.hub_ref)
    if getattr(accepted, "amended", None):
        # a resend whose content changed (the reporter edited it) is an amendment of the case, as at POST /cases
        from hubbridge.workflows.api import queue_followups

        queue_followups(rt, accepted.hub_ref, enqueue)
    log.info("open311.accepted", client=client.name, hub_ref=row.hub_ref, resent=resent,
             duplicate=accepted.duplicate)
    answer: dict[str, Any] = ({"token": row.token} if client.respond_with == "token"
                              else {"service_request_id": row.hub_ref})
    answer |= {"service_notice": conf.file.service_notice, "account_id": None}
    return [answer]


def _enqueue(rt: Runtime, hub_ref: str) -> None:
    from hubbridge.workflows.tasks import enqueue_delivery

    try:
        enqueue_delivery(hub_ref)
    except Exception as exc:  # the case is stored: beat's next sweep publishes it
        log.warning("open311.enqueue_failed", hub_ref=hub_ref, error=str(exc)[:200])
        from hubbridge.workflows.schedule import mark_unpublished

        mark_unpublished(rt, deliver=[hub_ref])


# -- GET requests, requests/{id}, tokens/{token} ------------------------------------------------------------------

_CLOSED = {HubStatus.RESOLVED.value, HubStatus.CLOSED.value, HubStatus.REJECTED.value, HubStatus.CANCELLED.value}


def _expected(rt: Runtime, s: Session, refs: list[str]) -> dict[str, datetime]:
    """Each case's expected_datetime: the due time of its running `resolve` SLA clock (else any running one)."""
    out: dict[str, datetime] = {}
    for ref, clocks in rt.sla.clocks_for(s, refs).items():
        live = [c for c in clocks if c.due_at is not None and c.state != "stopped"]
        pick = [c for c in live if c.clock == "resolve"] or live
        if pick:
            out[ref] = max(c.due_at for c in pick)
    return out


def _latest_notes(s: Session, refs: list[str]) -> dict[str, tuple[str | None, datetime | None]]:
    out: dict[str, tuple[str | None, datetime | None]] = {}
    for row in s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref.in_(refs)).order_by(HubUpdateRow.sequence)):
        note = row.payload.get("resolution") or row.payload.get("note")
        at = row.payload.get("occurred_at")
        prior = out.get(row.hub_ref, (None, None))
        out[row.hub_ref] = (note or prior[0], datetime.fromisoformat(at) if at else prior[1])
    return out


def request_rows(rt: Runtime, conf: DoorConfig, requests_: list[Open311RequestRow]) -> list[dict[str, Any]]:
    """GeoReport service requests for stored cases (public fields only: never the customer's contact details)."""
    refs = [r.hub_ref for r in requests_]
    with session_scope(rt.url) as s:
        cases = {c.hub_ref: c for c in s.scalars(select(CaseRow).where(CaseRow.hub_ref.in_(refs)))}
        expected = _expected(rt, s, list(cases))
        notes = _latest_notes(s, list(cases))
    out = []
    for r in requests_:
        case = cases.get(r.hub_ref)
        if case is None:
            continue
        p = case.payload or {}
        loc = p.get("location") or {}
        note, noted_at = notes.get(r.hub_ref, (None, None))
        entry = conf.file.services.get(case.service)
        auth = rt.config.authorities.get(case.authority)
        updated = max(t for t in (case.status_at, noted_at, case.received_at) if t is not None)
        out.append({
            "service_request_id": case.hub_ref,
            "status": "closed" if case.status in _CLOSED else "open",
            "status_notes": note,
            "service_name": rt.config.services[case.service].name if case.service in rt.config.services else None,
            "service_code": conf.file.code_of(case.service),
            "description": p.get("description"),
            "agency_responsible": (entry.agency if entry and entry.agency else (auth.name if auth else None)),
            "service_notice": None,
            "requested_datetime": w3c(r.created_at),
            "updated_datetime": w3c(updated),
            "expected_datetime": w3c(expected.get(case.hub_ref)),
            "address": loc.get("description"),
            "address_id": loc.get("uprn"),
            "zipcode": None,
            "lat": loc.get("lat"),
            "long": loc.get("lon"),
            "media_url": ((p.get("attachments") or [{}])[0]).get("url"),
        })
    return out


def _mine(query: Any, reader: Open311Client | None) -> Any:
    return query if reader is None else query.where(Open311RequestRow.client == reader.name)


def get_requests(rt: Runtime, conf: DoorConfig, params: dict[str, str]) -> list[dict[str, Any]]:
    reader = reader_of(conf, params)
    q = _mine(select(Open311RequestRow).where(Open311RequestRow.state != "refused"), reader)
    if params.get("service_request_id"):
        ids = [i.strip() for i in params["service_request_id"].split(",") if i.strip()][:MAX_LIST]
        q = q.where(Open311RequestRow.hub_ref.in_(ids))
    else:
        if params.get("service_code"):
            codes = [c.strip() for c in params["service_code"].split(",")]
            q = q.where(Open311RequestRow.service_code.in_(codes))
        end = parse_w3c(params["end_date"], "end_date") if params.get("end_date") else utcnow()
        start = parse_w3c(params["start_date"], "start_date") if params.get("start_date") else end - DEFAULT_WINDOW
        q = q.where(Open311RequestRow.created_at >= start, Open311RequestRow.created_at <= end)
    with session_scope(rt.url) as s:
        rows = list(s.scalars(q.order_by(Open311RequestRow.id.desc()).limit(MAX_LIST)))
    out = request_rows(rt, conf, rows[::-1])
    if params.get("status") and not params.get("service_request_id"):
        wanted = {w.strip().lower() for w in params["status"].split(",")}
        out = [r for r in out if r["status"] in wanted]
    return out


def get_request(rt: Runtime, conf: DoorConfig, ref: str, params: dict[str, str]) -> list[dict[str, Any]]:
    reader = reader_of(conf, params)
    with session_scope(rt.url) as s:
        row = s.scalar(_mine(select(Open311RequestRow).where(Open311RequestRow.hub_ref == ref), reader))
    found = request_rows(rt, conf, [row]) if row is not None else []
    if not found:
        raise GeoReportError(404, f"service_request_id {ref} was not found")
    return found


def get_token(rt: Runtime, conf: DoorConfig, token: str, params: dict[str, str]) -> list[dict[str, Any]]:
    reader = reader_of(conf, params)
    with session_scope(rt.url) as s:
        row = s.scalar(_mine(select(Open311RequestRow).where(Open311RequestRow.token == token), reader))
    if row is None or row.state == "refused":
        raise GeoReportError(404, f"token {token} was not found")
    answer: dict[str, Any] = {"token": token}
    if row.state == "accepted":  # an allocated row's case may not exist yet: the id comes once it does
        answer = {"service_request_id": row.hub_ref, **answer}
    return [answer]
