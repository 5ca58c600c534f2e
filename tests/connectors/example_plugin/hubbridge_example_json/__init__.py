"""An example third-party connector: a trivial JSON REST back office and its simulator."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hubbridge.connectors.base import BackOfficeUpdate, Connector, CreateResult, Delivery, TargetField, UpdatePage
from hubbridge.connectors.http import HttpClient
from hubbridge.connectors.simulator import JobStore, Request, Response, Simulator
from hubbridge.errors import BadResponseError

UNKNOWN_UPRN = "0"


class ExampleJsonConnector(Connector):
    """Jobs are created with `POST jobs`, looked up with `GET jobs?external_ref=`, synced from `GET updates`."""

    plugin = "example-json"

    def __init__(self, instance: Any, env: Mapping[str, str] | None = None) -> None:
        super().__init__(instance, env)
        self.http = HttpClient(instance)
        self.base = instance.endpoint.rstrip("/") + "/"

    def _json(self, method: str, path: str, *, sending: bool = False, **kwargs: Any) -> Any:
        url = self.base + path
        resp = self.http.request(method, url, sending=sending, **kwargs)
        self.http.raise_for_status(resp, self.name)
        body = self.http.json(resp, url)
        if not isinstance(body, dict):
            raise BadResponseError(f"{method} {path}: expected a JSON object, got {type(body).__name__}",
                                   instance=self.name)
        return body

    def _job(self, item: Any) -> CreateResult:
        if not isinstance(item, dict) or not isinstance(item.get("ref"), str):
            raise BadResponseError(f"job record is malformed: {str(item)[:80]}", instance=self.name)
        return CreateResult(backoffice_ref=item["ref"], status_code=item.get("status"))

    def create(self, delivery: Delivery) -> CreateResult:
        existing = None if delivery.known_new else self.find(delivery.hub_ref)
        if existing is not None:
            return existing
        body = self._json("POST", "jobs", sending=True,
                          json={**delivery.payload, "external_ref": delivery.hub_ref, "service": delivery.service})
        return self._job(body)

    def find(self, hub_ref: str, delivery: Delivery | None = None) -> CreateResult | None:
        body = self._json("GET", "jobs", params={"external_ref": hub_ref})
        jobs = body.get("jobs")
        if not isinstance(jobs, list):
            raise BadResponseError("GET jobs: 'jobs' is not a list", instance=self.name)
        return self._job(jobs[0]) if jobs else None

    def updates_since(self, cursor: str | None, limit: int = 100) -> UpdatePage:
        after = int(cursor) if cursor and cursor.isdigit() else 0
        body = self._json("GET", "updates", params={"after": after, "limit": limit})
        items = body.get("updates")
        if not isinstance(items, list) or not isinstance(body.get("has_more"), bool):
            raise BadResponseError("GET updates: answer lacks 'updates' or 'has_more'", instance=self.name)
        updates = []
        for u in items:
            try:
                updates.append(BackOfficeUpdate(
                    backoffice_ref=str(u["ref"]), update_id=str(int(u["update_id"])),
                    occurred_at=datetime.fromisoformat(u["at"]), status_code=u["status"], note=u.get("note"),
                    hub_ref=u.get("external_ref"), service_code=u.get("service")))
            except (KeyError, TypeError, ValueError) as exc:
                raise BadResponseError(f"GET updates: malformed update ({exc})", instance=self.name) from None
            after = int(u["update_id"])
        return UpdatePage(updates=updates, cursor=str(after), has_more=body["has_more"])

    def target_fields(self) -> Mapping[str, TargetField]:
        return {"description": TargetField("description", max_length=500, required=True),
                "uprn": TargetField("uprn", max_length=12)}

    def render(self, delivery: Delivery) -> str:
        return json.dumps({**delivery.payload, "external_ref": delivery.hub_ref, "service": delivery.service},
                          indent=2, sort_keys=True, default=str)

    def close(self) -> None:
        self.http.close()


class ExampleJsonSimulator(Simulator):
    """The JSON back office on loopback, built on hubbridge's simulator base (faults, tenants, jobs)."""

    name = "example-json"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.store = JobStore(("open", "in_progress", "closed"), ref_format="EX-{id}")

    @staticmethod
    def _ok(data: Any, status: int = 200) -> Response:
        return Response(status, json.dumps(data, default=str).encode(), "application/json")

    def handle(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/jobs":
            jobs = self.store.by_hub_ref(request.tenant, request.param("external_ref") or "")
            return self._ok({"jobs": [{"ref": j.ref, "status": j.status} for j in jobs]})
        if request.method == "POST" and request.path == "/jobs":
            try:
                data = json.loads(request.body)
            except ValueError:
                return self._ok({"error": "body is not JSON"}, 400)
            if not data.get("description"):
                return self._ok({"error": "description is required"}, 400)
            if data.get("uprn") == UNKNOWN_UPRN:
                return self._ok({"error": "unknown UPRN"}, 422)
            job = self.store.create(request.tenant, data.get("external_ref"), data.get("service", ""), data)
            return self._ok({"ref": job.ref, "status": job.status}, 201)
        if request.method == "GET" and request.path == "/updates":
            after, limit = int(request.param("after", "0") or 0), int(request.param("limit", "100") or 100)
            found = self.store.events_after(request.tenant, after, limit + 1)
            return self._ok({"has_more": len(found) > limit, "updates": [
                {"update_id": e.update_id, "ref": j.ref, "external_ref": j.hub_ref, "service": j.service_code,
                 "status": e.status, "note": e.note, "at": e.at.isoformat()} for j, e in found[:limit]]})
        return self._ok({"error": "not found"}, 404)


__all__ = ["ExampleJsonConnector", "ExampleJsonSimulator"]
