"""The highways connector: Open311 GeoReport v2 (JSON or XML) with FixMyStreet's service request updates.

Every request carries the Hub reference as an identifying attribute (`attribute[hub_ref]`, like
FixMyStreet's `fixmystreet_id` on Confirm). GeoReport v2 has no look-up by it, so after a lost answer
`find` uses what the server offers: the `token` a queued create answered (`GET tokens/{token}`), a
time-window search matched on the echoed reference where config says the server echoes attributes, the
`attribute[...]` filter only where config says the server honours it; otherwise it raises `OutcomeUnknown`
with the candidate requests. Updates come from `GET servicerequestupdates`
with a cursor of (high-water timestamp, update ids already returned near it), so updates sharing a
timestamp or arriving a little late are neither skipped nor repeated.

Follow-ups go as FixMyStreet sends its updates (`perllib/Open311.pm`, `_populate_service_request_update_params`):
one `POST servicerequestupdates` each, its key at the head of the description, where a server that lists
posted updates (declared `server_lists_posted_updates`) lets `find_follow_up` read it back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
import structlog
from cachetools import LRUCache
from pydantic import ValidationError

from hubbridge.case import FollowUpKind
from hubbridge.connectors.base import (
    BackOfficeUpdate,
    Connector,
    CreateResult,
    Delivery,
    FollowUp,
    FollowUpResult,
    TargetField,
    UpdatePage,
)
from hubbridge.connectors.http import HttpClient, parse_xml, retry_after_seconds
from hubbridge.connectors.open311.models import Open311Request, request_target_fields
from hubbridge.errors import (
    BadResponseError,
    ConfigError,
    NotSupported,
    OutcomeUnknown,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

if TYPE_CHECKING:
    from lxml import etree

    from hubbridge.config.models import ConnectorInstance

log = structlog.get_logger(__name__)

MASK = "********"
LOOKUP_CHUNK = 50
CACHE_SIZE = 5000
"""Requests remembered per connector instance and process: enough for every request with updates in flight."""


@dataclass(frozen=True)
class _Update:
    update_id: str
    request_id: str
    at: datetime
    row: dict[str, Any]


_XML_ROOTS = {"requests": "service_requests", "servicerequestupdates": "service_request_updates",
              "services": "services", "tokens": "service_requests"}
"""The root element each GeoReport v2 resource answers with in XML."""

UPDATE_STATUSES = frozenset({
    "OPEN", "CLOSED", "FIXED", "IN_PROGRESS", "ACTION_SCHEDULED", "INVESTIGATING", "DUPLICATE",
    "NOT_COUNCILS_RESPONSIBILITY", "NO_FURTHER_ACTION", "INTERNAL_REFERRAL", "CANCELLED", "REOPEN", "FOR_TRIAGE"})
"""The statuses FixMyStreet sends on an update (OPEN/CLOSED, or these with extended statuses)."""
DESCRIPTION_MAX = 4000
"""The longest update description GeoReport servers commonly take (as for a request's description)."""
MEDIA_URL = re.compile(r"^https?://\S{1,1990}$")
AUTHOR_FIELDS = ("first_name", "last_name", "email", "phone")


def _num(value: float | int) -> str:
    """Numbers as a back office expects them in a form: no trailing `.0` on whole numbers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def w3c(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _id_key(update_id: str) -> tuple[int, int, str]:
    return (0, int(update_id), "") if update_id.isdigit() else (1, 0, update_id)


class Open311Connector(Connector):
    """GeoReport v2 client for a highways back office (Confirm / Symology behind an Open311 front).

    Options: `format` (json|xml, default json), `jurisdiction_id`, `ref_attribute` (default hub_ref),
    `server_timezone` (for timestamps without an offset, default Europe/London), `overlap_seconds`
    (how far back each poll looks for late updates, default 60), `api_key_on_reads` (send the key on GETs
    too, default false), `note_first_name` / `note_last_name` / `note_email` (author of notes sent),
    `server_lists_posted_updates` (GET servicerequestupdates lists client-posted updates with their text, so
    `find_follow_up` can tell; default false), `extended_statuses` / `mark_reopen` (FixMyStreet's body settings:
    cancel as CANCELLED and reopen as REOPEN), `multi_media_urls` (FixMyStreet's multi_photos: every document's
    url as a repeated media_url). Credentials: `api_key` (the environment variable holding the key).
    """

    plugin = "open311"
    supports_cancel = True
    supports_notes = True
    # GeoReport v2 has no priority, and no amendment operation either: an amendment would be a plain
    # note on the wire, so it is left to the route's fallback (sent as a note)
    followup_kinds = frozenset({FollowUpKind.NOTE, FollowUpKind.EVIDENCE, FollowUpKind.CANCEL,
                                FollowUpKind.REOPEN})

    def __init__(self, instance: ConnectorInstance, env: Mapping[str, str] | None = None) -> None:
        super().__init__(instance, env)
        opts = instance.options
        self.format = str(opts.get("format", "json")).lower()
        if self.format not in ("json", "xml"):
            raise ConfigError(f"format must be json or xml, not {self.format!r}",
                              key=f"connectors.{self.name}.options.format")
        self.ref_attribute = str(opts.get("ref_attribute", "hub_ref"))
        self.jurisdiction_id = opts.get("jurisdiction_id")
        self.overlap = timedelta(seconds=float(opts.get("overlap_seconds", 60)))
        self.api_key_on_reads = bool(opts.get("api_key_on_reads", False))
        # what this instance's server is declared to offer beyond GeoReport v2 (both off: a spec server)
        self.filters_by_ref = bool(opts.get("server_filters_by_ref", False))
        self.echoes_attributes = bool(opts.get("server_echoes_attributes", False))
        self.search_window = timedelta(hours=float(opts.get("search_window_hours", 72)))
        self.lists_posted_updates = bool(opts.get("server_lists_posted_updates", False))
        self.extended_statuses = bool(opts.get("extended_statuses", False))
        self.mark_reopen = bool(opts.get("mark_reopen", False))
        self.multi_media_urls = bool(opts.get("multi_media_urls", False))
        # hub_ref -> token of a create the server queued; lost on a restart, when the search below remains
        self._tokens: LRUCache[str, str] = LRUCache(maxsize=CACHE_SIZE)
        self.note_author = {k: str(opts[f"note_{k}"]) for k in ("first_name", "last_name", "email")
                            if opts.get(f"note_{k}")} or {"first_name": "Worcestershire", "last_name": "Hub"}
        try:
            self.server_tz = ZoneInfo(str(opts.get("server_timezone", "Europe/London")))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {opts.get('server_timezone')!r}",
                              key=f"connectors.{self.name}.options.server_timezone") from None
        self.base = instance.endpoint if instance.endpoint.endswith("/") else instance.endpoint + "/"
        self.http = HttpClient(instance)
        self._api_key: str | None = None
        # service_request_id -> request record: hub_ref and service_code never change for a request
        self._requests: LRUCache[str, dict[str, Any]] = LRUCache(maxsize=CACHE_SIZE)

    # -- the Connector interface ---------------------------------------------------------------
    def target_fields(self) -> Mapping[str, TargetField]:
        return request_target_fields()

    def create(self, delivery: Delivery) -> CreateResult:
        bound = log.bind(hub_ref=delivery.hub_ref, instance=self.name)
        request = self._validate(delivery)
        existing = None if delivery.known_new else self.find(delivery.hub_ref, delivery)
        if existing is not None:
            bound.info("open311.create.exists", backoffice_ref=existing.backoffice_ref)
            return existing
        pairs = self._form(request, delivery.hub_ref, self._key())
        rows = self._call("POST", "requests", data=pairs, sending=True, what=f"create for {delivery.hub_ref}")
        row = rows[0] if rows and isinstance(rows[0], dict) else {}
        sid = row.get("service_request_id")
        if sid in (None, "") and row.get("token"):
            self._tokens[delivery.hub_ref] = str(row["token"])
            resolved = self._resolve_token(delivery.hub_ref, str(row["token"]))
            if resolved is None:
                raise UnknownOutcomeError(
                    f"request for {delivery.hub_ref} accepted with token {row['token']} but no id yet",
                    instance=self.name, hint="the token is asked again (GET tokens/{token}) before any resend")
            return resolved
        if sid in (None, ""):
            raise BadResponseError(f"create for {delivery.hub_ref}: answer has no service_request_id: "
                                   f"{str(rows)[:200]}", instance=self.name)
        sid = str(sid)
        self._remember(sid, {"service_request_id": sid, "service_code": request.service_code,
                             "attributes": {self.ref_attribute: delivery.hub_ref}})
        bound.info("open311.create.done", backoffice_ref=sid)
        return CreateResult(sid, None, raw=row)

    def find(self, hub_ref: str, delivery: Delivery | None = None) -> CreateResult | None:
        token = self._tokens.get(hub_ref)
        if token is not None:
            resolved = self._resolve_token(hub_ref, token)
            if resolved is None:  # queued, not lost: ask again later rather than create a second one
                raise UnknownOutcomeError(f"request for {hub_ref} (token {token}) still has no id",
                                          instance=self.name, hint="the token is asked again later")
            return resolved
        if self.filters_by_ref:
            return self._find_by_filter(hub_ref)
        return self._find_by_search(hub_ref, delivery)

    def _resolve_token(self, hub_ref: str, token: str) -> CreateResult | None:
        """The request a queued create became (`GET tokens/{token}`), or None while it is still queued."""
        rows = self._call("GET", f"tokens/{quote(token, safe='')}", what=f"token {token} of {hub_ref}",
                          root="service_requests")
        sid = next((str(r["service_request_id"]) for r in rows if isinstance(r, dict)
                    and r.get("service_request_id") not in (None, "")), None)
        if sid is None:
            return None
        self._tokens.pop(hub_ref, None)
        self._requests[sid] = {"service_request_id": sid, "service_code": None,
                               "attributes": {self.ref_attribute: hub_ref}}
        return CreateResult(sid, None, raw={"token": token, "service_request_id": sid})

    def _find_by_search(self, hub_ref: str, delivery: Delivery | None) -> CreateResult | None:
        """Search the recent requests of the case's service; certain only where the server echoes attributes."""
        now = datetime.now(UTC).replace(microsecond=0)
        params = {"start_date": w3c(now - self.search_window), "end_date": w3c(now + timedelta(minutes=5))}
        code = (delivery.payload.get("service_code") if delivery is not None else None)
        if code:
            params["service_code"] = str(code)
        rows = [r for r in self._call("GET", "requests", params=params, what=f"search for {hub_ref}")
                if isinstance(r, dict) and r.get("service_request_id") not in (None, "")]
        if self.echoes_attributes:
            return self._pick(hub_ref, rows)
        # nothing here can say which request (if any) is ours: park it with the likely ones
        candidates = [str(r["service_request_id"]) for r in rows if self._looks_like(r, delivery)]
        raise OutcomeUnknown(
            f"{self.name} cannot look {hub_ref} up (GeoReport v2 has no search by our reference and this server "
            f"is not declared to echo attributes)", instance=self.name, candidates=candidates[:20])

    @staticmethod
    def _looks_like(row: dict[str, Any], delivery: Delivery | None) -> bool:
        """Same place (to about 10 m) or same description as the delivery: worth an operator's look."""
        if delivery is None:
            return True
        p = delivery.payload
        try:
            near = (abs(float(row["lat"]) - float(p["lat"])) < 1e-4
                    and abs(float(row["long"]) - float(p["long"])) < 1e-4)
        except (KeyError, TypeError, ValueError):
            near = False
        return near or (bool(p.get("description")) and row.get("description") == p.get("description"))

    def _find_by_filter(self, hub_ref: str) -> CreateResult | None:
        params = {f"attribute[{self.ref_attribute}]": hub_ref}
        rows = self._call("GET", "requests", params=params, what=f"look-up of {hub_ref}")
        return self._pick(hub_ref, rows)

    def _pick(self, hub_ref: str, rows: list[Any]) -> CreateResult | None:
        # only trust requests that echo the reference: a server ignoring the filter must not match
        matches = [r for r in rows if isinstance(r, dict) and isinstance(r.get("attributes"), dict)
                   and str(r["attributes"].get(self.ref_attribute) or "") == hub_ref
                   and r.get("service_request_id") not in (None, "")]
        if not matches:
            return None
        if len(matches) > 1:
            log.warning("open311.find.duplicates", hub_ref=hub_ref, instance=self.name,
                        refs=[str(m["service_request_id"]) for m in matches])
        first = min(matches, key=lambda r: (str(r.get("requested_datetime") or ""),
                                            _id_key(str(r["service_request_id"]))))
        sid = str(first["service_request_id"])
        self._remember(sid, first)
        return CreateResult(sid, str(first["status"]) if first.get("status") else None, raw=first)

    def updates_since(self, cursor: str | None, limit: int = 100) -> UpdatePage:
        limit = max(1, limit)
        high, seen = self._decode_cursor(cursor)
        params: dict[str, str] = {}
        low = high - self.overlap if high else None
        if low is not None:
            params["start_date"] = w3c(low.replace(microsecond=0))  # rounding down only ever adds
        rows = self._call("GET", "servicerequestupdates", params=params, what="updates")
        fresh: dict[str, _Update] = {}
        for row in rows:
            u = self._parse_update(row)
            if (low is not None and u.at < low) or u.update_id in seen:
                continue
            fresh.setdefault(u.update_id, u)
        ordered = sorted(fresh.values(), key=lambda u: (u.at, _id_key(u.update_id)))
        page, has_more = ordered[:limit], len(ordered) > limit
        records = self._lookup({u.request_id for u in page})
        out = []
        for u in page:
            rec = records[u.request_id]
            attrs = rec.get("attributes") if isinstance(rec.get("attributes"), dict) else {}
            hub_ref = attrs.get(self.ref_attribute) or None
            status = u.row.get("external_status_code") or u.row.get("status") or None
            out.append(BackOfficeUpdate(
                backoffice_ref=u.request_id, update_id=u.update_id, occurred_at=u.at,
                status_code=str(status) if status is not None else None,
                note=str(u.row.get("description") or "") or None,
                hub_ref=str(hub_ref) if hub_ref else None,
                service_code=str(rec["service_code"]) if rec.get("service_code") else None,
                raw={"update": u.row, "request": rec},
            ))
        if page:
            seen.update({u.update_id: u.at for u in page})
            high = max([high, *[u.at for u in page]]) if high else max(u.at for u in page)
        return UpdatePage(out, self._encode_cursor(high, seen), has_more)

    def add_note(self, backoffice_ref: str, note: str) -> None:
        record = self._get_request(backoffice_ref)
        # send the request's own state, so a note on a closed request does not reopen (or close) it
        status = "CLOSED" if str(record.get("status", "open")).lower() == "closed" else "OPEN"
        self._post_update(backoffice_ref, status, note, kind="note")

    def cancel(self, backoffice_ref: str, reason: str) -> None:
        self._post_update(backoffice_ref, "CLOSED", f"Cancelled by the Hub: {reason}", kind="cancel")

    def follow_up(self, followup: FollowUp) -> FollowUpResult:
        self._check_kind(followup)
        # a server that does not list posted updates cannot be looked in (find_follow_up says OutcomeUnknown)
        existing = self.landed_before(followup) if self.lists_posted_updates else None
        if existing is not None:
            return existing
        fields = followup.fields or {}
        ref, kind = followup.backoffice_ref, followup.kind
        description = self._marker(followup.key) + " " + str(fields.get("description") or followup.text)
        media: list[str] = []
        if kind == FollowUpKind.EVIDENCE:
            media = self._media_urls(followup)
            if not self.multi_media_urls and len(media) > 1:
                # FixMyStreet sends only its first photo unless multi_photos; the rest stay reachable in the text
                description += "\n\nFurther documents: " + " ".join(media[1:])
                media = media[:1]
        # the key must survive, so a text the server would refuse as too long loses its end, not its head
        description = description[:DESCRIPTION_MAX]
        status = self._followup_status(followup)
        when = followup.occurred_at if followup.occurred_at.tzinfo else followup.occurred_at.replace(tzinfo=UTC)
        author = {**self.note_author, **{k: str(fields[k]) for k in AUTHOR_FIELDS if fields.get(k)}}
        row = self._send_update(ref, update_id=self._followup_update_id(followup.key),
                                updated=w3c(when.replace(microsecond=0)), status=status, description=description,
                                media=media, author=author, what=f"{kind.value} follow-up {followup.key}")
        log.info("open311.followup.done", key=followup.key, kind=kind.value, backoffice_ref=ref,
                 update_id=str(row["update_id"]), status=status, instance=self.name)
        return FollowUpResult(str(row["update_id"]), raw={"update_id": str(row["update_id"]), "status": status})

    def find_follow_up(self, followup: FollowUp) -> FollowUpResult | None:
        self._check_kind(followup)
        ref, key = followup.backoffice_ref, followup.key
        if not self.lists_posted_updates:
            raise OutcomeUnknown(
                f"{self.name} cannot tell whether follow-up {key} reached request {ref}: GeoReport v2 keeps no "
                f"client update_id and this server is not declared to list posted updates", instance=self.name,
                candidates=[ref], hint="look at the request's updates in the back office; if the follow-up is "
                "missing, replay it (declare options.server_lists_posted_updates only where the server lists them)")
        # the update is logged at the updated_datetime sent (occurred_at) or, where the server will not take
        # an older time, when it arrived: the window holds both
        now = datetime.now(UTC).replace(microsecond=0)
        sent = followup.occurred_at if followup.occurred_at.tzinfo else followup.occurred_at.replace(tzinfo=UTC)
        params = {"start_date": w3c((min(sent, now) - self.overlap).replace(microsecond=0)),
                  "end_date": w3c(now + timedelta(minutes=5))}
        rows = self._call("GET", "servicerequestupdates", params=params, what=f"look-up of follow-up {key}")
        marker = self._marker(key)
        matches = [r for r in rows if isinstance(r, dict) and str(r.get("service_request_id") or "") == ref
                   and marker in str(r.get("description") or "") and r.get("update_id") not in (None, "")]
        if not matches:
            return None
        if len(matches) > 1:
            log.warning("open311.find_follow_up.duplicates", key=key, backoffice_ref=ref, instance=self.name,
                        update_ids=[str(m["update_id"]) for m in matches])
        first = min(matches, key=lambda r: (str(r.get("updated_datetime") or ""), _id_key(str(r["update_id"]))))
        uid = str(first["update_id"])
        return FollowUpResult(uid, raw={"update_id": uid, "status": first.get("status"),
                                        "updated_datetime": first.get("updated_datetime")})

    def _check_kind(self, followup: FollowUp) -> None:
        if followup.kind not in self.followup_kinds:
            raise NotSupported(f"GeoReport v2 has no {followup.kind.value} operation", instance=self.name)

    @staticmethod
    def _marker(key: str) -> str:
        # at the head of the text (Confirm keeps only its first 2000 characters), bracketed so that
        # WH-2026-000123/3 is never found inside WH-2026-000123/31
        return f"[{key}]"

    @staticmethod
    def _followup_update_id(key: str) -> str:
        # open311-adapter takes word characters and hyphens only, so the key itself ('/') cannot go here
        return "hub-" + hashlib.sha256(key.encode()).hexdigest()[:24]

    def _followup_status(self, followup: FollowUp) -> str:
        """The update's status as FixMyStreet would set it for the same change of state."""
        wanted = followup.fields.get("status") if followup.fields else None
        if wanted:
            status = str(wanted).upper()
            if status not in UPDATE_STATUSES:
                raise PermanentError(f"follow-up {followup.key}: status {status!r} is not an Open311 update status",
                                     instance=self.name, hint=f"use one of {', '.join(sorted(UPDATE_STATUSES))}")
            return status
        if followup.kind == FollowUpKind.CANCEL:  # FixMyStreet: a cancelled report is not open, so CLOSED
            return "CANCELLED" if self.extended_statuses else "CLOSED"
        if followup.kind == FollowUpKind.REOPEN:
            return "REOPEN" if self.extended_statuses and self.mark_reopen else "OPEN"
        # a note keeps the request's own state: OPEN on a closed request would reopen it
        record = self._get_request(followup.backoffice_ref)
        return "CLOSED" if str(record.get("status", "open")).lower() == "closed" else "OPEN"

    def _media_urls(self, followup: FollowUp) -> list[str]:
        given = followup.fields.get("media_url") if followup.fields else None
        if given:
            # a mapping's list has a gap for a file the Hub sent as bytes only: it has no address to send
            urls = [str(u) for u in (given if isinstance(given, list | tuple) else [given]) if u]
        else:
            urls = [d.url for d in followup.documents if d.url]
        if not urls:
            raise PermanentError(f"evidence follow-up {followup.key} has no document url: GeoReport v2 takes "
                                 "documents only as media_url", instance=self.name,
                                 hint="give the documents a url (or fields.media_url in the mapping), or route "
                                 "evidence for this service another way")
        bad = sum(1 for u in urls if not MEDIA_URL.match(u))
        if bad:  # the urls themselves stay out of the message: they may carry access tokens
            raise PermanentError(f"evidence follow-up {followup.key}: {bad} document url(s) are not http(s) "
                                 "urls of at most 2000 characters", instance=self.name)
        return urls

    def render(self, delivery: Delivery) -> str:
        request = self._validate(delivery)
        pairs = self._form(request, delivery.hub_ref, MASK)
        # the same encoding `create` sends, byte for byte, except that the key's value is masked
        body = "&".join(f"api_key={MASK}" if k == "api_key" else urlencode([(k, v)]) for k, v in pairs)
        fields = "\n".join(f"  {k} = {v}" for k, v in pairs)
        return (f"POST {self._url('requests')}\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\n\n"
                f"{body}\n\n# the same fields, decoded:\n{fields}\n")

    def close(self) -> None:
        self.http.close()

    # -- reading the service catalogue ---------------------------------------------------------
    def services(self) -> list[dict[str, Any]]:
        """The service list (`GET services`): service_code, service_name, group, metadata, ..."""
        return [r for r in self._call("GET", "services", what="service list", auth=False) if isinstance(r, dict)]

    def service_definition(self, service_code: str) -> dict[str, Any]:
        """One service's definition (`GET services/{code}`): its attributes with datatypes and values."""
        what = f"definition of service {service_code}"
        url = self._url(f"services/{quote(service_code, safe='')}")
        resp = self._send("GET", url, params=self._params({}, auth=False), sending=False)
        if self.format == "json":
            data = self.http.json(resp, url)
            if not isinstance(data, dict) or not isinstance(data.get("attributes", []), list):
                raise BadResponseError(f"{what} is not a service definition object", instance=self.name)
            return data
        root = self._xml(resp, url, what)
        if root.tag == "errors":
            self._raise_error_document(root, what)
        if root.tag != "service_definition":
            raise BadResponseError(f"{what}: expected <service_definition>, got <{root.tag}>", instance=self.name)
        attrs = []
        for a in root.iterfind("attributes/attribute"):
            item: dict[str, Any] = {c.tag: c.text or "" for c in a if isinstance(c.tag, str) and c.tag != "values"}
            for key in ("variable", "required"):
                if key in item:
                    item[key] = str(item[key]).lower() == "true"
            if item.get("order") and str(item["order"]).isdigit():
                item["order"] = int(item["order"])
            values = [{"key": v.findtext("key"), "name": v.findtext("name")} for v in a.iterfind("values/value")]
            if values:
                item["values"] = values
            attrs.append(item)
        return {"service_code": root.findtext("service_code"), "attributes": attrs}

    # -- plumbing ------------------------------------------------------------------------------
    def _key(self) -> str:
        if self._api_key is None:
            env_name = self.instance.credentials.get("api_key")
            if env_name is None:
                raise ConfigError("the open311 plugin needs credentials.api_key (the environment variable name)",
                                  key=f"connectors.{self.name}.credentials")
            self._api_key = self.secret(env_name) or ""
        return self._api_key

    def _validate(self, delivery: Delivery) -> Open311Request:
        payload = delivery.payload
        if isinstance(payload.get("attributes"), dict) and self.ref_attribute in payload["attributes"]:
            # the connector owns the identifying attribute; a mapping must not be able to set another value
            payload = {**payload, "attributes": {k: v for k, v in payload["attributes"].items()
                                                 if k != self.ref_attribute}}
        try:
            return Open311Request.model_validate(payload)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                                 for e in exc.errors())
            raise PermanentError(f"payload for {delivery.hub_ref} does not fit the Open311 request: {problems}",
                                 instance=self.name,
                                 hint="fix the mapping's output for these fields and replay") from None

    def _form(self, request: Open311Request, hub_ref: str, api_key: str) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = [("api_key", api_key)]
        if self.jurisdiction_id:
            pairs.append(("jurisdiction_id", str(self.jurisdiction_id)))
        data = request.model_dump(exclude_none=True)
        attributes = data.pop("attributes", {})
        for name in Open311Request.model_fields:
            value = data.get(name)
            if value is None:
                continue
            pairs.append((name, _num(value) if isinstance(value, int | float) else str(value)))
        pairs.append((f"attribute[{self.ref_attribute}]", hub_ref))
        for code, value in attributes.items():
            pairs.append((f"attribute[{code}]", _num(value) if isinstance(value, int | float) else str(value)))
        return pairs

    def _url(self, resource: str) -> str:
        return f"{self.base}{resource}.{self.format}"

    def _params(self, params: Mapping[str, str], *, auth: bool) -> dict[str, str]:
        out = dict(params)
        if self.jurisdiction_id:
            out["jurisdiction_id"] = str(self.jurisdiction_id)
        if auth and self.api_key_on_reads:
            out["api_key"] = self._key()
        return out

    def _send(self, method: str, url: str, *, sending: bool, form: bool = False, **kwargs: Any) -> requests.Response:
        headers = {"Accept": "application/json" if self.format == "json" else "text/xml, application/xml"}
        if form:
            headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
        resp = self.http.request(method, url, sending=sending, headers=headers, **kwargs)
        if resp.status_code >= 400:
            self._raise_http_error(resp, url)
        return resp

    def _call(self, method: str, resource: str, *, params: Mapping[str, str] | None = None,
              data: list[tuple[str, str]] | None = None, sending: bool = False, what: str = "request",
              auth: bool = True, root: str | None = None) -> list[Any]:
        """Send one GeoReport call and return its rows (the list inside a JSON array or the XML root)."""
        url = self._url(resource)
        query = self._params(params or {}, auth=auth and data is None)
        if data is not None:
            resp = self._send(method, url, sending=sending, params=query, data=urlencode(data).encode(),
                              form=True)
        else:
            resp = self._send(method, url, sending=sending, params=query)
        if self.format == "json":
            body = self.http.json(resp, url)
            if isinstance(body, dict) and isinstance(body.get("errors"), list):
                self._raise_errors(body["errors"], what, resp.status_code)
            if not isinstance(body, list):
                raise BadResponseError(f"{what}: expected a JSON array from {url}, got {type(body).__name__}",
                                       instance=self.name)
            if body and all(isinstance(r, dict) and set(r) <= {"code", "description"} and "description" in r
                            for r in body):
                self._raise_errors(body, what, resp.status_code)  # an error list sent with 200
            return body
        doc = self._xml(resp, url, what)
        if doc.tag == "errors":
            self._raise_error_document(doc, what)
        expected = root or _XML_ROOTS.get(resource.split("/", 1)[0])
        if expected is not None and doc.tag != expected:
            # an HTML error page or a stranger's XML is not "no such request": reading it so could make a second job
            raise BadResponseError(f"{what}: expected <{expected}> from {url}, got <{doc.tag}>", instance=self.name)
        return [self._xml_row(child) for child in doc if isinstance(child.tag, str)]

    def _xml(self, resp: requests.Response, url: str, what: str) -> etree._Element:
        ctype = resp.headers.get("Content-Type", "")
        if "xml" not in ctype:
            raise BadResponseError(f"{what}: expected XML from {url}, got content type {ctype or 'none'!r}",
                                   instance=self.name)
        return parse_xml(resp.content, self.name, what)

    @staticmethod
    def _xml_row(el: etree._Element) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for child in el:
            if not isinstance(child.tag, str):
                continue  # comments, processing instructions
            row[child.tag] = {g.tag: g.text for g in child if isinstance(g.tag, str)} if len(child) else child.text
        return row

    def _raise_http_error(self, resp: requests.Response, url: str) -> None:
        errors = self._error_list(resp)
        detail = "; ".join(f"{e.get('description') or ''} (code {e.get('code')})".strip() for e in errors)
        detail = detail or resp.text[:200].replace("\n", " ")
        code = resp.status_code
        if code == 429:
            raise TransientError(f"rate limited (429) by {url}: {detail}", instance=self.name,
                                 retry_after=retry_after_seconds(resp.headers.get("Retry-After")))
        if code >= 500 or code in (408, 425):
            raise TransientError(f"HTTP {code} from {url}: {detail}", instance=self.name)
        if code in (401, 403) or "api_key" in detail:
            env = self.instance.credentials.get("api_key", "the api_key variable")
            raise PermanentError(f"HTTP {code} from {url}: {detail}", instance=self.name,
                                 hint=f"the back office refused the api_key: check ${env}, then replay")
        raise PermanentError(f"HTTP {code} refused by {url}: {detail}", instance=self.name,
                             hint="the back office refused the request itself; fix the mapping or the case and replay")

    def _error_list(self, resp: requests.Response) -> list[dict[str, Any]]:
        """The `<errors>` / JSON error list of a failed answer, or [] when the body is something else."""
        body = resp.content or b""
        try:
            if body.lstrip()[:1] in (b"[", b"{"):
                data = json.loads(body)
                if isinstance(data, dict):
                    data = data.get("errors", [data])
                return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
            if body.lstrip()[:1] == b"<":
                root = parse_xml(body, self.name, "error answer")
                return [{"code": e.findtext("code"), "description": e.findtext("description")}
                        for e in root.iter("error")]
        except (ValueError, BadResponseError):
            return []
        return []

    def _raise_errors(self, errors: list[Any], what: str, status: int) -> None:
        items = [e for e in errors if isinstance(e, dict)]
        codes = []
        for e in items:
            code = str(e.get("code") or "")
            if code.isdigit():
                codes.append(int(code))
        detail = "; ".join(f"{e.get('description')} (code {e.get('code')})" for e in items) or str(errors)[:200]
        if any(c >= 500 for c in codes):
            raise TransientError(f"{what}: back office error: {detail}", instance=self.name)
        raise PermanentError(f"{what}: refused by the back office: {detail}", instance=self.name,
                             hint="fix the mapping or the case and replay")

    def _raise_error_document(self, root: etree._Element, what: str) -> None:
        errors = [{"code": e.findtext("code"), "description": e.findtext("description")} for e in root.iter("error")]
        self._raise_errors(errors, what, 200)

    def _parse_update(self, row: Any) -> _Update:
        if not isinstance(row, dict):
            raise BadResponseError(f"service request update is not an object: {str(row)[:100]}", instance=self.name)
        uid, sid, when = row.get("update_id"), row.get("service_request_id"), row.get("updated_datetime")
        if uid in (None, "") or sid in (None, "") or not when:
            raise BadResponseError(f"service request update lacks update_id, service_request_id or "
                                   f"updated_datetime: {str(row)[:200]}", instance=self.name)
        return _Update(str(uid), str(sid), self._parse_time(str(when)), row)

    def _parse_time(self, value: str) -> datetime:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadResponseError(f"updated_datetime {value!r} is not a W3C datetime", instance=self.name) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.server_tz)

    def _remember(self, sid: str, record: dict[str, Any]) -> None:
        # Only a request carrying its Hub reference is remembered, and only what its updates need: a whole
        # record (description, address) would hold residents' details in memory for no purpose. A request
        # raised in the back office is fetched whole each time, for the details of the Hub case it becomes.
        attrs = record.get("attributes")
        hub_ref = attrs.get(self.ref_attribute) if isinstance(attrs, dict) else None
        if hub_ref:
            self._requests[sid] = {"service_request_id": sid, "service_code": record.get("service_code"),
                                   "attributes": {self.ref_attribute: hub_ref}}

    def _lookup(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """The request records (hub_ref attribute, service_code) of the given ids, batched and cached."""
        found: dict[str, dict[str, Any]] = {}
        for i in ids:
            cached = self._requests.get(i)
            if cached is not None:
                found[i] = cached
        missing = sorted(ids - found.keys())
        for start in range(0, len(missing), LOOKUP_CHUNK):
            chunk = missing[start:start + LOOKUP_CHUNK]
            rows = self._call("GET", "requests", params={"service_request_id": ",".join(chunk)},
                              what="request look-up for updates")
            for row in rows:
                if isinstance(row, dict) and str(row.get("service_request_id") or "") in chunk:
                    found[str(row["service_request_id"])] = row
                    self._remember(str(row["service_request_id"]), row)
        absent = sorted(ids - found.keys())
        if absent:
            # never guess: a missing record would make a Hub job look like one raised in the back office
            raise BadResponseError(f"updates name requests the back office does not return: {', '.join(absent)}",
                                   instance=self.name)
        return found

    def _get_request(self, backoffice_ref: str) -> dict[str, Any]:
        rows = self._call("GET", f"requests/{quote(backoffice_ref, safe='')}", what=f"request {backoffice_ref}")
        row = next((r for r in rows if isinstance(r, dict)), None)
        if row is None:
            raise PermanentError(f"request {backoffice_ref} not found", instance=self.name)
        return row

    def _post_update(self, backoffice_ref: str, status: str, text: str, *, kind: str) -> None:
        # the same update_id for the same text: only a server that dedupes on it drops a resend (most do not)
        digest = hashlib.sha256(f"{kind}|{backoffice_ref}|{text}".encode()).hexdigest()[:24]
        now = w3c(datetime.now(UTC).replace(microsecond=0))
        self._send_update(backoffice_ref, update_id=f"hub-{digest}", updated=now, status=status, description=text,
                          media=[], author=self.note_author, what=f"{kind} on request {backoffice_ref}")
        log.info(f"open311.{kind}.done", backoffice_ref=backoffice_ref, instance=self.name)

    def _send_update(self, backoffice_ref: str, *, update_id: str, updated: str, status: str, description: str,
                     media: list[str], author: Mapping[str, str], what: str) -> dict[str, Any]:
        """One `POST servicerequestupdates` with FixMyStreet's parameters; the answer's row (with `update_id`)."""
        pairs = [("api_key", self._key())]
        if self.jurisdiction_id:
            pairs.append(("jurisdiction_id", str(self.jurisdiction_id)))
        pairs += [("service_request_id", backoffice_ref), ("update_id", update_id), ("updated_datetime", updated),
                  ("status", status), ("description", description), *author.items(),
                  *(("media_url", u) for u in media)]
        rows = self._call("POST", "servicerequestupdates", data=pairs, sending=True, what=what)
        if not rows or not isinstance(rows[0], dict) or rows[0].get("update_id") in (None, ""):
            raise BadResponseError(f"{what}: answer has no update_id", instance=self.name)
        return rows[0]

    # -- cursor ----------------------------------------------------------------------------------
    def _decode_cursor(self, cursor: str | None) -> tuple[datetime | None, dict[str, datetime]]:
        if not cursor:
            return None, {}
        try:
            data = json.loads(cursor)
            high = datetime.fromisoformat(data["t"]) if data.get("t") else None
            seen = {str(k): datetime.fromisoformat(v) for k, v in data.get("seen", {}).items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            raise PermanentError(f"update cursor {cursor[:80]!r} is not an open311 cursor", instance=self.name,
                                 hint="reset this instance's sync cursor") from None
        return high, seen

    def _encode_cursor(self, high: datetime | None, seen: dict[str, datetime]) -> str:
        if high is not None:  # keep only the ids a later poll can still see again
            floor = high - self.overlap
            seen = {k: v for k, v in seen.items() if v >= floor}
        return json.dumps({"t": high.isoformat() if high else None,
                           "seen": {k: v.isoformat() for k, v in sorted(seen.items(), key=lambda kv: kv[1])}},
                          separators=(",", ":"))
