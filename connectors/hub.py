"""The Hub CRM: the connector that sends case updates and back-office-raised cases to it, and its simulator.

Both calls are idempotent on the Hub's side (a case update by (ref, sequence), a raised case by
(connector, back-office ref)), so after an unknown outcome they are simply sent again.

Start the simulator for the demo with `python -m hubbridge.connectors.hub` (port 8700, tenant `hub`).
"""

from __future__ import annotations

import argparse
import hmac
import itertools
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests
import structlog
from pydantic import ValidationError

from hubbridge.case import HUB_REF_PATTERN, CaseUpdate, HubCase
from hubbridge.config.models import HubEndpoint
from hubbridge.connectors.http import HttpClient
from hubbridge.connectors.simulator import Request, Response, Simulator
from hubbridge.errors import BadResponseError, ConfigError, PermanentError, SecurityError
from hubbridge.signing import sign, verify

log = structlog.get_logger(__name__)

DEFAULT_SIGNING_SECRET_ENV = "HUBBRIDGE_HUB_SIGNING_SECRET"
DEFAULT_TOKEN_ENV = "HUBBRIDGE_HUB_TOKEN"
DEMO_TOKEN = "hub-demo-token"
INSTANCE = "hub"
_REF_RE = re.compile(HUB_REF_PATTERN)


class HubConnector:
    """Sends case updates and back-office-raised cases to the Hub CRM's REST API."""

    def __init__(
        self,
        hub: HubEndpoint,
        env: Mapping[str, str] | None = None,
        signing_secret_env: str = DEFAULT_SIGNING_SECRET_ENV,
    ) -> None:
        self.hub = hub
        self.name = INSTANCE
        self.endpoint = hub.endpoint if hub.endpoint.endswith("/") else hub.endpoint + "/"
        env = os.environ if env is None else env
        self._token = self._read_env(env, hub.token_env, "hub.token_env") if hub.token_env else None
        # Signing is optional (the Hub may not check it), but a variable that is set must hold a secret.
        self._signing_secret = (
            self._read_env(env, signing_secret_env, "hub signing secret") if signing_secret_env in env else None
        )
        self.http = HttpClient(name=INSTANCE, timeouts=hub.timeouts, verify=hub.verify_tls)

    @staticmethod
    def _read_env(env: Mapping[str, str], name: str, key: str) -> str:
        value = env.get(name)
        if not value:
            raise ConfigError(
                f"environment variable {name} is {'empty' if value == '' else 'not set'}",
                key=key, hint=f"export {name}=... before starting hubbridge",
            )
        return value

    @property
    def signs(self) -> bool:
        """Whether request bodies are signed (the signing secret variable is set)."""
        return self._signing_secret is not None

    # -- public API ----------------------------------------------------------------------------
    def push_update(self, update: CaseUpdate) -> None:
        """Record `update` on its Hub case; a sequence the Hub already has counts as done."""
        url = f"{self.endpoint}cases/{quote(update.ref, safe='')}/updates"
        bound = log.bind(hub_ref=update.ref, sequence=update.sequence, status=str(update.status))
        resp = self._post(url, update.model_dump(mode="json"), idempotency_key=f"{update.ref}:{update.sequence}")
        code = resp.status_code
        if code in (200, 201, 202, 204):
            if _json_or_none(resp, "out_of_order") is True:
                # The Hub accepted it but already had a later update: the sync ordering was broken upstream.
                bound.warning("hub.update_out_of_order")
            else:
                bound.info("hub.update_pushed")
            return
        if code == 409:
            bound.info("hub.update_already_recorded")
            return
        if code == 404:
            raise PermanentError(
                f"the Hub does not know case {update.ref} (HTTP 404 on update sequence {update.sequence})",
                instance=self.name, hint="check the case reference; the update is dead-lettered for replay",
            )
        self._raise_for(resp, f"update {update.ref} sequence {update.sequence}")

    def create_case(self, case: HubCase, backoffice_ref: str, connector: str) -> str:
        """Raise on the Hub a case first recorded in a back office; returns the Hub's ref for it.

        `case.ref` is a placeholder the Hub replaces; calling again for the same (connector,
        backoffice_ref) returns the same Hub ref instead of a second case.
        """
        url = f"{self.endpoint}cases"
        bound = log.bind(connector=connector, backoffice_ref=backoffice_ref)
        payload = {"case": case.dump(), "backoffice_ref": backoffice_ref, "connector": connector}
        resp = self._post(url, payload, idempotency_key=f"{connector}:{backoffice_ref}")
        what = f"raised case {connector}/{backoffice_ref}"
        if resp.status_code not in (200, 201, 409):
            self._raise_for(resp, what)
        data = self.http.json(resp, url)
        ref = data.get("ref") if isinstance(data, dict) else None
        if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
            raise BadResponseError(f"the Hub's answer for {what} carries no valid case ref: {str(data)[:120]}",
                                   instance=self.name)
        bound.info("hub.case_raised", hub_ref=ref, created=resp.status_code == 201)
        return ref

    def get_case(self, ref: str) -> dict[str, Any] | None:
        """The Hub's view of a case (updates, status, back-office ref), or None if it does not know it."""
        url = f"{self.endpoint}cases/{quote(ref, safe='')}"
        resp = self.http.request("GET", url, headers=self._headers(b""), allow_redirects=False)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            self._raise_for(resp, f"case {ref}")
        data = self.http.json(resp, url)
        if not isinstance(data, dict):
            raise BadResponseError(f"the Hub's answer for case {ref} is not a JSON object", instance=self.name)
        return data

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HubConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _headers(self, body: bytes, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._signing_secret is not None:
            headers.update(sign(body, self._signing_secret))
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def _post(self, url: str, payload: Any, *, idempotency_key: str) -> requests.Response:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = self._headers(body, idempotency_key)
        headers["Content-Type"] = "application/json; charset=utf-8"
        # Redirects off: following one would re-send (or silently drop) a POST somewhere unintended.
        return self.http.request("POST", url, data=body, headers=headers, sending=True, allow_redirects=False)

    def _raise_for(self, resp: requests.Response, what: str) -> None:
        code = resp.status_code
        reason = _json_or_none(resp, "error") or resp.text[:200].replace("\n", " ")
        if code in (401, 403):
            raise PermanentError(
                f"the Hub refused our credentials for {what} (HTTP {code}): {reason}", instance=self.name,
                hint=f"check the bearer token in {self.hub.token_env or '(no token_env configured)'} and the "
                "signing secret match the Hub's, then replay",
            )
        HttpClient.raise_for_status(resp, self.name, body_hint=f"{what}: {reason}")
        raise BadResponseError(f"unexpected HTTP {code} from the Hub for {what}", instance=self.name,
                               hint="the Hub endpoint may be misconfigured (a redirect?)")


def _json_or_none(resp: requests.Response, key: str) -> Any:
    if "json" not in resp.headers.get("Content-Type", ""):
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------

def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data, default=str).encode(), "application/json", headers or {})


class HubSimulator(Simulator):
    """The Hub CRM on loopback: records case updates in arrival order and back-office-raised cases.

    Like a simple CRM it applies updates in the order they arrive, so `latest` is the last one
    received; `out_of_order` lists any update older (lower sequence) than one already received for
    its case, which hubbridge must never produce.
    """

    name = "hub"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = DEMO_TOKEN,
        signing_secret: str | None = None,
        tenant: str = "hub",
        ref_prefix: str = "WH",
        known_refs: Iterable[str] | None = None,
        window_seconds: int = 300,
    ) -> None:
        super().__init__(host, port)
        self.token = token
        self.signing_secret = signing_secret
        self.tenant = tenant
        self.ref_prefix = ref_prefix
        self.window_seconds = window_seconds
        self._lock = threading.RLock()
        # None: any well-formed ref is a Hub case; otherwise only these (and raised cases) are.
        self._known: set[str] | None = set(known_refs) if known_refs is not None else None
        self._updates: dict[str, list[dict[str, Any]]] = {}
        self._sequences: dict[str, set[int]] = {}
        self._backoffice: dict[str, str] = {}
        self._raised: list[dict[str, Any]] = []
        self._raised_by_key: dict[tuple[str, str], str] = {}
        self._out_of_order: list[dict[str, Any]] = []
        self._duplicates: list[tuple[str, int]] = []
        self._refused: list[tuple[str, str, str]] = []
        # Raised cases get serials far above intake's so the two never collide in a demo.
        self._serials = itertools.count(900001)

    @property
    def endpoint(self) -> str:
        """The URL to configure as `hub.endpoint`."""
        return self.tenant_url(self.tenant)

    def reset(self) -> None:
        """Forget every recorded update, raised case and refusal, and clear the fault plan."""
        with self._lock:
            for store in (self._updates, self._sequences, self._backoffice, self._raised_by_key):
                store.clear()
            for seen in (self._raised, self._out_of_order, self._duplicates, self._refused):
                seen.clear()
        self.faults.clear()
        self.faults.injected.clear()

    # -- thread-safe accessors (test oracles) --------------------------------------------------
    def add_case(self, ref: str) -> None:
        """Make `ref` a known case when the simulator only accepts known refs."""
        with self._lock:
            if self._known is not None:
                self._known.add(ref)

    def updates_for(self, ref: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(u) for u in self._updates.get(ref, [])]

    def latest(self, ref: str) -> dict[str, Any] | None:
        with self._lock:
            ups = self._updates.get(ref)
            return dict(ups[-1]) if ups else None

    def backoffice_ref(self, ref: str) -> str | None:
        with self._lock:
            return self._backoffice.get(ref)

    def raised_cases(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._raised]

    @property
    def out_of_order(self) -> list[dict[str, Any]]:
        """Each update that arrived after a higher sequence of its case: `ref`, `sequence`, `after`."""
        with self._lock:
            return [dict(o) for o in self._out_of_order]

    @property
    def duplicates(self) -> list[tuple[str, int]]:
        """(ref, sequence) of each update refused with 409 as already recorded."""
        with self._lock:
            return list(self._duplicates)

    @property
    def refused(self) -> list[tuple[str, str, str]]:
        """(method, path, reason) of each request refused for its token or signature."""
        with self._lock:
            return list(self._refused)

    # -- HTTP ----------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.tenant != self.tenant:
            return _json(404, {"error": f"no tenant {request.tenant!r}; the Hub API is under /{self.tenant}/"})
        refusal = self._authenticate(request)
        if refusal is not None:
            return refusal
        parts = [p for p in request.path.split("/") if p]
        if parts == ["cases"]:
            return self._raise_case(request) if request.method == "POST" else self._not_allowed("POST")
        if len(parts) == 2 and parts[0] == "cases":
            return self._get_case(parts[1]) if request.method == "GET" else self._not_allowed("GET")
        if len(parts) == 3 and parts[0] == "cases" and parts[2] == "updates":
            if request.method == "POST":
                return self._record_update(parts[1], request)
            if request.method == "GET":
                return self._get_case(parts[1])
            return self._not_allowed("GET, POST")
        return _json(404, {"error": f"no such resource {request.path}"})

    @staticmethod
    def _not_allowed(allow: str) -> Response:
        return _json(405, {"error": "method not allowed"}, {"Allow": allow})

    def _authenticate(self, request: Request) -> Response | None:
        if self.token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {self.token}".encode()):
                reason = "missing bearer token" if not given else "bearer token refused"
                with self._lock:
                    self._refused.append((request.method, request.path, reason))
                return _json(401, {"error": reason}, {"WWW-Authenticate": 'Bearer realm="hub"'})
        if self.signing_secret is not None and request.method in ("POST", "PUT", "PATCH", "DELETE"):
            try:
                verify(request.headers, request.body, self.signing_secret, window_seconds=self.window_seconds)
            except SecurityError as exc:
                with self._lock:
                    self._refused.append((request.method, request.path, exc.message))
                return _json(403, {"error": exc.message})
        return None

    def _is_known(self, ref: str) -> bool:
        if not _REF_RE.fullmatch(ref):
            return False
        return self._known is None or ref in self._known

    def _record_update(self, ref: str, request: Request) -> Response:
        try:
            update = CaseUpdate.model_validate_json(request.body)
        except ValidationError as exc:
            return _json(400, {"error": "invalid case update", "detail": exc.errors(include_url=False,
                                                                                    include_context=False)})
        if update.ref != ref:
            return _json(400, {"error": f"update is for {update.ref} but was sent to case {ref}"})
        data = update.model_dump(mode="json")
        with self._lock:
            if not self._is_known(ref):
                return _json(404, {"error": f"unknown case {ref}"})
            seen = self._sequences.setdefault(ref, set())
            if update.sequence in seen:
                self._duplicates.append((ref, update.sequence))
                return _json(409, {"error": "sequence already recorded", "ref": ref, "sequence": update.sequence})
            out_of_order = bool(seen) and update.sequence < max(seen)
            if out_of_order:
                self._out_of_order.append({"ref": ref, "sequence": update.sequence, "after": max(seen)})
            seen.add(update.sequence)
            data["received_at"] = datetime.now(UTC).isoformat()
            self._updates.setdefault(ref, []).append(data)
            if update.backoffice_ref:
                self._backoffice[ref] = update.backoffice_ref
        return _json(201, {"recorded": True, "ref": ref, "sequence": update.sequence, "out_of_order": out_of_order})

    def _get_case(self, ref: str) -> Response:
        with self._lock:
            ups = self._updates.get(ref, [])
            raised = next((c for c in self._raised if c["ref"] == ref), None)
            if not ups and raised is None and (self._known is None or ref not in self._known):
                return _json(404, {"error": f"unknown case {ref}"})
            body = {
                "ref": ref,
                "status": ups[-1]["status"] if ups else None,
                "backoffice_ref": self._backoffice.get(ref),
                "updates": [dict(u) for u in ups],
                "raised_by": raised["connector"] if raised else None,
            }
        return _json(200, body)

    def _raise_case(self, request: Request) -> Response:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return _json(400, {"error": "body is not JSON"})
        if not isinstance(data, dict):
            return _json(400, {"error": "body must be a JSON object"})
        connector, bo_ref = data.get("connector"), data.get("backoffice_ref")
        for key, value in (("connector", connector), ("backoffice_ref", bo_ref)):
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                return _json(400, {"error": f"{key} must be a non-empty string"})
        try:
            case = HubCase.model_validate(data.get("case"))
        except ValidationError as exc:
            return _json(400, {"error": "invalid case", "detail": exc.errors(include_url=False,
                                                                              include_context=False)})
        key = (connector, bo_ref)
        with self._lock:
            existing = self._raised_by_key.get(key)
            if existing is not None:
                return _json(200, {"ref": existing, "created": False})
            ref = f"{self.ref_prefix}-{datetime.now(UTC).year}-{next(self._serials):06d}"
            self._raised_by_key[key] = ref
            self._raised.append({"ref": ref, "connector": connector, "backoffice_ref": bo_ref,
                                 "case": case.dump(), "received_at": datetime.now(UTC).isoformat()})
            self._backoffice[ref] = bo_ref
            if self._known is not None:
                self._known.add(ref)
        return _json(201, {"ref": ref, "created": True})


def main(argv: list[str] | None = None) -> None:
    """Run the Hub simulator in the foreground; the token and secret come from the environment."""
    parser = argparse.ArgumentParser(prog="python -m hubbridge.connectors.hub", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--token-env", default=DEFAULT_TOKEN_ENV,
                        help=f"variable holding the bearer token to require (unset: {DEMO_TOKEN!r})")
    parser.add_argument("--signing-secret-env", default=DEFAULT_SIGNING_SECRET_ENV,
                        help="variable holding the signing secret; unset: signatures are not checked")
    args = parser.parse_args(argv)
    sim = HubSimulator(args.host, args.port, token=os.environ.get(args.token_env) or DEMO_TOKEN,
                       signing_secret=os.environ.get(args.signing_secret_env) or None)
    sim.start()
    print(f"Hub simulator on {sim.endpoint} (signatures {'checked' if sim.signing_secret else 'not checked'});"
          " Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
