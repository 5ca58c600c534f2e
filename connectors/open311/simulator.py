"""A loopback Open311 GeoReport v2 server standing in for the County's highways back office.

Serves `services`, `services/{code}`, `requests` (GET and POST), `requests/{id}` and FixMyStreet's
`servicerequestupdates` (GET and POST) in both `.json` and `.xml`, one tenant per first path segment.
Service definitions are shaped like Confirm's as exposed by mySociety's open311-adapter
(`t/open311/endpoint/xml/confirm/*.xml`: server_set easting/northing, an external system id, hidden
asset fields). Jobs move through Confirm-style enquiry status codes, reported as `external_status_code`
beside the FixMyStreet status. `POST servicerequestupdates` takes what open311-adapter's mySociety role
requires (`perllib/Open311/Endpoint/Role/mySociety.pm`: service_request_id, update_id, status from its
extended list, updated_datetime, description; repeated media_url) and, like its Confirm back end, does not
drop a resend with the same client update_id (opt-in `dedupe_update_ids`).
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from hubbridge.connectors.simulator import (
    BILLION_LAUGHS_BODY,
    XXE_BODY,
    Job,
    JobStore,
    Request,
    Response,
    Simulator,
)

DEFAULT_API_KEY = "test-api-key"
HUB_REF_ATTRIBUTE = "hub_ref"

# Confirm-style enquiry status code -> (FixMyStreet status, description). The first six are the lifecycle.
STATUS_CODES: dict[str, tuple[str, str]] = {
    "LOG": ("OPEN", "Enquiry logged"),
    "INV": ("INVESTIGATING", "Inspector assigned"),
    "SCH": ("ACTION_SCHEDULED", "Works ordered"),
    "WIP": ("IN_PROGRESS", "Works in progress"),
    "FIX": ("FIXED", "Repair completed"),
    "CLO": ("CLOSED", "Enquiry closed"),
    "AWC": ("INVESTIGATING", "Awaiting information from the customer"),
    "NCR": ("NOT_COUNCILS_RESPONSIBILITY", "Not the County's responsibility"),
    "DUP": ("DUPLICATE", "Duplicate of an existing enquiry"),
    "NFA": ("NO_FURTHER_ACTION", "Inspected: no further action"),
    "CAN": ("CLOSED", "Cancelled at the customer's request"),
}
LIFECYCLE = ("LOG", "INV", "SCH", "WIP", "FIX", "CLO")
CLOSED_CODES = frozenset({"FIX", "CLO", "NCR", "DUP", "NFA", "CAN"})

UPDATE_STATUSES = frozenset({
    "UNCHANGED", "OPEN", "CLOSED", "FIXED", "IN_PROGRESS", "PLANNED", "ACTION_SCHEDULED", "INVESTIGATING",
    "DUPLICATE", "NOT_COUNCILS_RESPONSIBILITY", "NO_FURTHER_ACTION", "INTERNAL_REFERRAL", "CANCELLED", "REOPEN",
    "FOR_TRIAGE"})
"""The statuses open311-adapter's `status_extended_upper` type takes on `POST servicerequestupdates`."""
CLOSING_STATUSES = {"CLOSED": "CAN", "CANCELLED": "CAN", "FIXED": "FIX"}
"""Update statuses that close an open enquiry, and the code they close it with (a forward status mapping)."""
REOPENING_STATUSES = frozenset({"OPEN", "REOPEN"})
UPDATE_ID = re.compile(r"^[\w-]+$", re.ASCII)
"""open311-adapter's default identifier type (`/open311/example/identifier`): word characters and hyphens."""


def _attr(code: str, description: str, order: int, *, datatype: str = "string", required: bool = False,
          variable: bool = True, automated: str | None = None, values: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"variable": variable, "code": code, "datatype": datatype, "required": required,
                           "datatype_description": "", "order": order, "description": description}
    if automated:
        out["automated"] = automated
    if values:
        out["values"] = [{"key": k, "name": v} for k, v in values.items()]
    return out


def _common() -> list[dict[str, Any]]:
    """The attributes every Confirm-backed service carries (as in the reference service definitions)."""
    return [
        _attr("easting", "easting", 1, datatype="number", variable=False, automated="server_set"),
        _attr("northing", "northing", 2, datatype="number", variable=False, automated="server_set"),
        _attr(HUB_REF_ATTRIBUTE, "external system ID (Hub reference)", 3, required=True, variable=False,
              automated="server_set"),
        _attr("title", "Title", 4, automated="server_set"),
        _attr("asset_details", "Asset information", 5, datatype="text", automated="hidden_field"),
        _attr("site_code", "Site code (USRN)", 6, automated="hidden_field"),
        _attr("central_asset_id", "Central Asset ID", 7, automated="hidden_field"),
        _attr("closest_address", "Closest address", 8, automated="server_set"),
    ]


SERVICES: dict[str, dict[str, Any]] = {
    "HM_PHS": {
        "service_name": "Pothole", "group": "Roads", "keywords": "pothole,carriageway,footway",
        "description": "A pothole or sunken surface in a road, pavement or cycleway",
        "attributes": [
            _attr("depth", "How deep is the pothole?", 9, datatype="singlevaluelist", required=True,
                  values={"LT40": "Less than 40mm", "40TO100": "40mm to 100mm", "GT100": "More than 100mm"}),
            _attr("surface", "Where is it?", 10, datatype="singlevaluelist", required=True,
                  values={"carriageway": "Road", "footway": "Pavement", "cycleway": "Cycleway", "verge": "Verge"}),
        ],
    },
    "SL_LNO": {
        "service_name": "Street light fault", "group": "Street lighting", "keywords": "street light,lamp",
        "description": "A street light that is out, on during the day, flickering or damaged",
        "attributes": [
            _attr("column_number", "Column number (on the post)", 9, required=True),
            _attr("fault_type", "What is wrong with the light?", 10, datatype="singlevaluelist", required=True,
                  values={"OUT": "Not working", "DAYBURN": "On during the day", "FLICKER": "Flickering",
                          "DAMAGED": "Column damaged", "EXPOSED": "Door missing, wires exposed"}),
        ],
    },
    "DR_BLK": {
        "service_name": "Blocked drain", "group": "Drainage", "keywords": "drain,gully,flooding",
        "description": "A blocked road gully, grating, ditch or culvert",
        "attributes": [
            _attr("drain_type", "Type of drain", 9, datatype="singlevaluelist", required=True,
                  values={"gully": "Road gully", "grating": "Grating", "ditch": "Ditch", "culvert": "Culvert"}),
            _attr("flooding", "Is the road or a property flooding?", 10, datatype="singlevaluelist", required=True,
                  values={"yes": "Yes", "no": "No"}),
        ],
    },
    "HM_DGD": {
        "service_name": "Dangerous defect (emergency)", "group": "Emergencies", "keywords": "emergency,danger",
        "description": "A defect that is an immediate danger: made safe within 2 hours, 24/7",
        "attributes": [
            _attr("hazard_type", "What is the danger?", 9, datatype="singlevaluelist", required=True,
                  values={"COLLAPSE": "Road or wall collapse", "EXPOSED_WIRES": "Exposed electrical wires",
                          "FALLEN_TREE": "Fallen tree", "MISSING_COVER": "Missing drain or manhole cover",
                          "FLOOD": "Deep flooding", "SPILLAGE": "Oil or chemical spillage", "OTHER": "Other"}),
            _attr("road_blocked", "Is the road blocked?", 10, datatype="singlevaluelist",
                  values={"yes": "Yes", "no": "No"}),
        ],
    },
}

REQUEST_FIELDS = ("service_code", "lat", "long", "address_string", "address_id", "email", "device_id",
                  "account_id", "first_name", "last_name", "phone", "description", "media_url")
MAX_LENGTHS = {"description": 4000, "address_string": 250, "first_name": 50, "last_name": 50, "email": 254,
               "phone": 30, "media_url": 2000, "address_id": 50}


def w3c(value: datetime) -> str:
    """W3C datetime at second precision, as most Open311 servers give it (so updates share timestamps)."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_w3c(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        self.status = status
        self.description = description


def _xml_value(tag: str, value: Any) -> str:
    if value is None:
        return f"<{tag}/>"
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, dict):
        return f"<{tag}>" + "".join(_xml_value(k, v) for k, v in value.items()) + f"</{tag}>"
    return f"<{tag}>{escape(str(value))}</{tag}>"


class _Enquiries(JobStore):
    """Jobs whose lifecycle steps carry the back office's own wording (the update's description)."""

    def advance(self, tenant: str | None = None, note: str | None = None) -> int:
        moved = 0
        with self._lock:  # one consistent step, not interleaved with a cancellation
            for job in list(self.jobs.values()):
                if tenant is not None and job.tenant != tenant:
                    continue
                if job.status in self.lifecycle and job.status != self.lifecycle[-1] and not self.stalled(job):
                    nxt = self.lifecycle[self.lifecycle.index(job.status) + 1]
                    self.set_status(job, nxt, note or STATUS_CODES[nxt][1])
                    moved += 1
        return moved


class Open311Simulator(Simulator):
    """A compliant GeoReport v2 server (plus FixMyStreet's servicerequestupdates) over loopback."""

    name = "open311"
    xml = False  # JSON is the primary form; XML is served for `.xml` paths

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = DEFAULT_API_KEY,
                 public_reads: bool = True, tokens: bool = False, echo_attributes: bool = True,
                 ref_filter: bool = False, dedupe_update_ids: bool = False,
                 list_posted_updates: bool = False) -> None:
        super().__init__(host, port)
        # Like servers that queue creates (recorded Merton answers): POST answers a `token`, and
        # `GET tokens/{token}` gives the id once the job exists (at once here, or after `hold_tokens`).
        self.tokens = tokens
        self.hold_tokens = False
        self._tokens: dict[str, tuple[str, str | None]] = {}  # token -> (tenant, job ref or None while queued)
        self._queued: dict[str, tuple[str, dict[str, Any]]] = {}  # token -> (tenant, form) not yet made a job
        # GeoReport v2 leaves echoing `attributes` in answers to the server.
        self.echo_attributes = echo_attributes
        # Off by default: `GET requests?attribute[hub_ref]=` is this project's extension, which a spec
        # server ignores like any unknown parameter.
        self.ref_filter = ref_filter
        # Off by default: open311-adapter's back ends (Confirm's EnquiryUpdate) keep no client update_id, so
        # a resend is a second update. On: a resend of the same update_id gets the first answer.
        self.dedupe_update_ids = dedupe_update_ids
        # Off by default: a posted comment is kept on the enquiry but not listed by GET servicerequestupdates
        # (a status change it makes is). On: like Confirm with `publish_service_update_text`, every posted
        # update is a status log listed with its text, under the update_id the POST answered.
        self.list_posted_updates = list_posted_updates
        self.api_key = api_key  # None: any non-empty key is accepted (a missing one is still refused)
        self.public_reads = public_reads  # GET services is always public; requests/updates need the key if False
        self.store = _Enquiries(LIFECYCLE, ref_format="{id}", first_id=200001)
        self._note_ids = itertools.count(1)
        self.notes: dict[str, list[dict[str, Any]]] = {}  # "tenant/ref" -> notes posted by clients

    # -- helpers for tests and the demo -------------------------------------------------------
    @property
    def clock(self) -> Callable[[], datetime]:
        return self.store.clock

    @clock.setter
    def clock(self, fn: Callable[[], datetime]) -> None:
        self.store.clock = fn

    def advance(self, tenant: str | None = None) -> int:
        """Move every open job one step along LOG -> INV -> SCH -> WIP -> FIX -> CLO."""
        return self.store.advance(tenant)

    def set_status(self, tenant: str, ref: str, code: str, note: str | None = None) -> None:
        """Put one job into any status code (e.g. AWC, NCR, DUP), as a back-office officer would."""
        if code not in STATUS_CODES:
            raise ValueError(f"unknown status code {code!r}; known: {', '.join(STATUS_CODES)}")
        job = self.store.by_ref(tenant, ref)
        if job is None:
            raise KeyError(f"no job {ref} in tenant {tenant}")
        self.store.set_status(job, code, note or STATUS_CODES[code][1])

    def raise_direct(self, tenant: str, service_code: str, *, description: str = "Reported by phone to Highways",
                     lat: float = 52.1936, long: float = -2.2216, address_string: str | None = None,
                     attributes: dict[str, str] | None = None, **contact: str) -> Job:
        """A job raised directly in the back office (no Hub reference), e.g. a resident phoned Highways."""
        if service_code not in SERVICES:
            raise ValueError(f"unknown service code {service_code!r}")
        data: dict[str, Any] = {"service_code": service_code, "description": description, "lat": str(lat),
                                "long": str(long), "attributes": dict(attributes or {}), **contact}
        if address_string:
            data["address_string"] = address_string
        return self.store.create(tenant, None, service_code, data)

    def jobs_for(self, hub_ref: str, tenant: str | None = None) -> int:
        return sum(1 for j in self.store.jobs.values()
                   if j.hub_ref == hub_ref and (tenant is None or j.tenant == tenant))

    # -- HTTP -----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        path = request.path.lstrip("/")
        stem, dot, fmt = path.rpartition(".")
        if not dot or fmt not in ("json", "xml"):
            return self._error("json", 404, f"unknown resource {request.path}; add .json or .xml")
        params = dict(request.query)
        if request.method == "POST":
            ctype = request.headers.get("content-type", "")
            if "application/x-www-form-urlencoded" not in ctype:
                return self._error(fmt, 400, "POST bodies must be application/x-www-form-urlencoded")
            for k, v in parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True).items():
                params[k] = v
        one = {k: v[0] for k, v in params.items() if v}
        try:
            if stem == "servicerequestupdates" and request.method == "POST":
                # media_url may repeat (open311-adapter's `@media_url`; FixMyStreet's multi_photos)
                self._check_key(one)
                return self._post_update(fmt, request.tenant, one, [u for u in params.get("media_url", []) if u])
            return self._route(request.method, request.tenant, stem, fmt, one)
        except _ApiError as exc:
            return self._error(fmt, exc.status, exc.description)

    def _route(self, method: str, tenant: str, stem: str, fmt: str, p: dict[str, str]) -> Response:
        if method == "GET" and stem == "services":
            return self._ok(fmt, "services", "service", [self._service(c) for c in SERVICES])
        if method == "GET" and stem.startswith("services/"):
            code = stem.split("/", 1)[1]
            if code not in SERVICES:
                raise _ApiError(404, f"service_code {code} not found")
            return self._definition(fmt, code)
        if stem == "requests" and method == "POST":
            self._check_key(p)
            return self._create(fmt, tenant, p)
        if stem.startswith("tokens/") and method == "GET":
            return self._token(fmt, tenant, stem.split("/", 1)[1])
        if stem == "requests" and method == "GET":
            if not self.public_reads:
                self._check_key(p)
            return self._ok(fmt, "service_requests", "request", [self._request(j) for j in self._search(tenant, p)])
        if stem.startswith("requests/") and method == "GET":
            if not self.public_reads:
                self._check_key(p)
            job = self.store.by_ref(tenant, stem.split("/", 1)[1])
            if job is None:
                raise _ApiError(404, f"service_request_id {stem.split('/', 1)[1]} not found")
            return self._ok(fmt, "service_requests", "request", [self._request(job)])
        if stem == "servicerequestupdates" and method == "GET":
            if not self.public_reads:
                self._check_key(p)
            return self._updates(fmt, tenant, p)
        raise _ApiError(404, f"no {method} {stem}.{fmt} on this server")

    def _check_key(self, p: dict[str, str]) -> None:
        key = p.get("api_key")
        if not key:
            raise _ApiError(400, "api_key is required")
        if self.api_key is not None and key != self.api_key:
            raise _ApiError(403, "Invalid api_key")

    def _service(self, code: str) -> dict[str, Any]:
        s = SERVICES[code]
        return {"service_code": code, "service_name": s["service_name"], "description": s["description"],
                "metadata": True, "type": "realtime", "keywords": s["keywords"], "group": s["group"]}

    @staticmethod
    def _attributes(code: str) -> list[dict[str, Any]]:
        return _common() + SERVICES[code]["attributes"]

    def _definition(self, fmt: str, code: str) -> Response:
        attrs = self._attributes(code)
        if fmt == "json":
            return Response(200, json.dumps({"service_code": code, "attributes": attrs}).encode())
        parts = []
        for a in attrs:
            inner = "".join(_xml_value(k, v) for k, v in a.items() if k != "values")
            if a.get("values"):
                inner += "<values>" + "".join(
                    f"<value><key>{escape(v['key'])}</key><name>{escape(v['name'])}</name></value>"
                    for v in a["values"]) + "</values>"
            parts.append(f"<attribute>{inner}</attribute>")
        body = (f'<?xml version="1.0" encoding="utf-8"?>\n<service_definition><attributes>{"".join(parts)}'
                f"</attributes><service_code>{escape(code)}</service_code></service_definition>")
        return Response(200, body.encode(), "text/xml; charset=utf-8")

    def _create(self, fmt: str, tenant: str, p: dict[str, str]) -> Response:
        code = p.get("service_code")
        if not code:
            raise _ApiError(400, "service_code is required")
        if code not in SERVICES:
            raise _ApiError(400, f"service_code {code} not found")
        has_latlong = bool(p.get("lat")) and bool(p.get("long"))
        if not has_latlong and not p.get("address_string") and not p.get("address_id"):
            raise _ApiError(400, "lat/long, address_string or address_id is required")
        if has_latlong:
            try:
                float(p["lat"]), float(p["long"])
            except ValueError:
                raise _ApiError(400, "lat and long must be numbers") from None
        for name, most in MAX_LENGTHS.items():
            if len(p.get(name, "")) > most:
                raise _ApiError(400, f"{name} is longer than {most} characters")
        attributes = {k[len("attribute["):-1]: v for k, v in p.items()
                      if k.startswith("attribute[") and k.endswith("]")}
        for a in self._attributes(code):
            value = attributes.get(a["code"])
            if a["required"] and not value:
                raise _ApiError(400, f"attribute {a['code']} is required for service {code}")
            if value and a.get("values") and value not in {v["key"] for v in a["values"]}:
                raise _ApiError(400, f"attribute {a['code']}: {value!r} is not one of the allowed values")
            if value and a["datatype"] == "number":
                try:
                    float(value)
                except ValueError:
                    raise _ApiError(400, f"attribute {a['code']} must be a number") from None
        data = {k: p[k] for k in REQUEST_FIELDS if p.get(k)}
        data["attributes"] = attributes
        if self.tokens:
            token = f"tok-{uuid.uuid4().hex[:16]}"
            with self.store._lock:
                self._tokens[token] = (tenant, None)
                self._queued[token] = (tenant, {"code": code, "data": data})
            if not self.hold_tokens:
                self.release_tokens()
            return self._ok(fmt, "service_requests", "request", [{"token": token}])
        job = self.store.create(tenant, attributes.get(HUB_REF_ATTRIBUTE), code, data)
        item = {"service_request_id": job.ref, "service_notice": "Thank you: the County will inspect within "
                "2 working days", "account_id": None}
        return self._ok(fmt, "service_requests", "request", [item])

    def release_tokens(self) -> int:
        """Turn every queued create into its job, as the server's queue would; returns how many."""
        with self.store._lock:
            queued, self._queued = self._queued, {}
        for token, (tenant, item) in queued.items():
            data = item["data"]
            job = self.store.create(tenant, data["attributes"].get(HUB_REF_ATTRIBUTE), item["code"], data)
            self._tokens[token] = (tenant, job.ref)
        return len(queued)

    def _token(self, fmt: str, tenant: str, token: str) -> Response:
        known = self._tokens.get(token)
        if known is None or known[0] != tenant:
            raise _ApiError(404, f"token {token} not found")
        row: dict[str, Any] = {"token": token}
        if known[1] is not None:
            row["service_request_id"] = known[1]
        return self._ok(fmt, "service_requests", "request", [row])

    def _search(self, tenant: str, p: dict[str, str]) -> list[Job]:
        if p.get("service_request_id"):
            wanted = [s.strip() for s in p["service_request_id"].split(",")]
            found = {job.id: job for ref in wanted if (job := self.store.by_ref(tenant, ref)) is not None}
            return sorted(found.values(), key=lambda j: j.id)
        # the extension, only when switched on; a spec server ignores the parameter
        hub_ref = p.get(f"attribute[{HUB_REF_ATTRIBUTE}]") if self.ref_filter else None
        jobs = self.store.tenant_jobs(tenant) if hub_ref is None else self.store.by_hub_ref(tenant, hub_ref)
        if p.get("service_code"):
            jobs = [j for j in jobs if j.service_code in p["service_code"].split(",")]
        if p.get("status"):
            wanted = set(p["status"].split(","))
            jobs = [j for j in jobs if ("closed" if j.status in CLOSED_CODES else "open") in wanted]
        try:
            if p.get("start_date"):
                start = parse_w3c(p["start_date"])
                jobs = [j for j in jobs if j.created_at >= start]
            if p.get("end_date"):
                end = parse_w3c(p["end_date"])
                jobs = [j for j in jobs if j.created_at <= end]
        except ValueError:
            raise _ApiError(400, "start_date and end_date must be W3C datetimes") from None
        return jobs[-1000:]

    def _request(self, job: Job) -> dict[str, Any]:
        d = job.data
        notes = [e.note for e in job.events if e.note]
        return {
            "service_request_id": job.ref,
            "status": "closed" if job.status in CLOSED_CODES else "open",
            "status_notes": notes[-1] if notes else None,
            "service_name": SERVICES[job.service_code]["service_name"],
            "service_code": job.service_code,
            "description": d.get("description"),
            "agency_responsible": "Worcestershire County Council Highways",
            "service_notice": None,
            "requested_datetime": w3c(job.created_at),
            "updated_datetime": w3c(job.changed_at),
            "expected_datetime": None,
            "address": d.get("address_string"),
            "address_id": d.get("address_id"),
            "zipcode": d.get("zipcode"),
            "lat": _number(d.get("lat")),
            "long": _number(d.get("long")),
            "media_url": d.get("media_url"),
            **({"attributes": dict(d.get("attributes") or {})} if self.echo_attributes else {}),
        }

    def _updates(self, fmt: str, tenant: str, p: dict[str, str]) -> Response:
        try:
            start = parse_w3c(p["start_date"]) if p.get("start_date") else datetime.min.replace(tzinfo=UTC)
            end = parse_w3c(p["end_date"]) if p.get("end_date") else None
        except ValueError:
            raise _ApiError(400, "start_date and end_date must be W3C datetimes") from None
        # second-precision timestamps on the wire: compare at that precision, end inclusive
        start = start.replace(microsecond=0)
        items = []
        for job, ev in self.store.events_between(tenant, start):
            if end is not None and ev.at.replace(microsecond=0) > end:
                continue
            fms_status, _ = STATUS_CODES.get(ev.status, ("OPEN", ""))
            items.append({"update_id": str(ev.update_id), "service_request_id": job.ref, "status": fms_status,
                          "updated_datetime": w3c(ev.at), "description": ev.note or "",
                          "external_status_code": ev.status, "media_url": None})
        return self._ok(fmt, "service_request_updates", "request_update", items)

    def _post_update(self, fmt: str, tenant: str, p: dict[str, str], media_urls: list[str]) -> Response:
        for name in ("service_request_id", "update_id", "status", "updated_datetime"):
            if not p.get(name):
                raise _ApiError(400, f"{name} is required")
        ref, client_id = p["service_request_id"], p["update_id"]
        if not UPDATE_ID.match(client_id):
            raise _ApiError(400, "update_id may hold only letters, digits, underscores and hyphens")
        status = p["status"]
        if status not in UPDATE_STATUSES:
            raise _ApiError(400, f"status {status} is not one of {', '.join(sorted(UPDATE_STATUSES))}")
        try:
            parse_w3c(p["updated_datetime"])
        except ValueError:
            raise _ApiError(400, "updated_datetime must be a W3C datetime") from None
        description = p.get("description") or ""
        if not description.strip():
            raise _ApiError(400, "description is required")
        if len(description) > 4000:
            raise _ApiError(400, "description is longer than 4000 characters")
        if any(len(u) > MAX_LENGTHS["media_url"] for u in media_urls):
            raise _ApiError(400, f"media_url is longer than {MAX_LENGTHS['media_url']} characters")
        job = self.store.by_ref(tenant, ref)
        if job is None:
            raise _ApiError(404, f"service_request_id {ref} not found")
        key = f"{tenant}/{ref}"
        with self.store._lock:  # one update at a time per server, so a resend racing its original is seen
            notes = self.notes.setdefault(key, [])
            if self.dedupe_update_ids:
                for n in notes:
                    if n["client_update_id"] == client_id:
                        return self._ok(fmt, "service_request_updates", "request_update",
                                        [{"update_id": n["update_id"]}])
            closed = job.status in CLOSED_CODES
            code, kind = job.status, ("evidence" if media_urls else "note")
            if status in CLOSING_STATUSES and not closed:
                code = CLOSING_STATUSES[status]
                kind = "cancel" if code == "CAN" else kind
            elif status in REOPENING_STATUSES and closed:
                code, kind = LIFECYCLE[0], "reopen"
            if code != job.status or self.list_posted_updates:
                update_id = str(self.store.set_status(job, code, description).update_id)
            else:  # a comment kept on the enquiry, not in the update feed
                update_id = f"N{next(self._note_ids)}"
            notes.append({"update_id": update_id, "client_update_id": client_id, "status": status,
                          "description": description, "media_url": list(media_urls),
                          "first_name": p.get("first_name"), "last_name": p.get("last_name"), "email": p.get("email")})
            self.store.record_followup(job, kind, description, documents=media_urls, update_id=update_id,
                                       client_update_id=client_id, status=status)
        return self._ok(fmt, "service_request_updates", "request_update", [{"update_id": update_id}])

    # -- encoding -------------------------------------------------------------------------------
    @staticmethod
    def _ok(fmt: str, root: str, item: str, rows: list[dict[str, Any]]) -> Response:
        if fmt == "json":
            return Response(200, json.dumps(rows).encode(), "application/json; charset=utf-8")
        inner = "".join(_xml_value(item, r) for r in rows)
        return Response(200, f'<?xml version="1.0" encoding="utf-8"?>\n<{root}>{inner}</{root}>'.encode(),
                        "text/xml; charset=utf-8")

    @staticmethod
    def _error(fmt: str, status: int, description: str) -> Response:
        if fmt == "json":
            return Response(status, json.dumps([{"code": status, "description": description}]).encode(),
                            "application/json; charset=utf-8")
        body = (f'<?xml version="1.0" encoding="utf-8"?>\n<errors><error><code>{status}</code>'
                f"<description>{escape(description)}</description></error></errors>")
        return Response(status, body.encode(), "text/xml; charset=utf-8")

    def bad_body(self, kind: str, good: Response) -> Response:
        """Faults in the form the client asked for: XML faults for `.xml`, JSON ones for `.json`."""
        is_xml = "xml" in good.content_type
        if kind == "wrong_type":
            if is_xml:
                return Response(200, b'{"not": "xml"}', "application/json")
            return Response(200, b'{"unexpected": [1, {"id": {"nested": true}}]}', "application/json")
        if kind == "xxe":
            return Response(200, XXE_BODY, "text/xml" if is_xml else "application/xml")
        if kind == "entities":
            return Response(200, BILLION_LAUGHS_BODY, "text/xml" if is_xml else "application/xml")
        return super().bad_body(kind, good)
