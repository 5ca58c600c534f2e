"""POST /webhooks/{connector}: signed pushes from the planning back office, taken once and in order."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from hubbridge.config.loader import load_config
from hubbridge.config.settings import Settings
from hubbridge.connectors.hub import HubSimulator
from hubbridge.signing import sign
from hubbridge.store import HubUpdateRow, LinkRow, SeenUpdateRow, session_scope
from hubbridge.workflows.api import create_app
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import Runtime
from hubbridge.workflows.simulated import DEMO_SECRETS, simulator_for
from hubbridge.workflows.sync import poll_connector

from .stack import connectors_yaml, use_config, write_config

SECRET = "planning-webhook-secret"
_serials = itertools.count(800_001, 100)


def secret_env(name: str) -> str:
    return name.upper().replace("-", "_") + "_WEBHOOK_SECRET"


class Planning:
    def __init__(self, rt: Runtime, sim: Any, hub: Any) -> None:
        self.rt, self.sim, self.hub = rt, sim, hub

    def delivered_case(self) -> tuple[str, str, str]:
        """A planning case delivered to the simulator: (Hub ref, connector instance, back-office ref)."""
        # any district but Wychavon, whose instance is left without a webhook secret
        case = next(c for c in generate_cases(30, areas=("planning",), seed=9, start_serial=next(_serials))
                    if c["authority"] != "wychavon")
        ref = accept_case(self.rt, json.dumps(case)).hub_ref
        assert deliver_case(self.rt, ref).kind == "done"
        with session_scope(self.rt.url) as s:
            link = s.scalar(select(LinkRow).where(LinkRow.hub_ref == ref))
            assert link is not None
            return ref, link.connector, link.backoffice_ref

    def updates(self, ref: str) -> list[HubUpdateRow]:
        with session_scope(self.rt.url) as s:
            return list(s.scalars(select(HubUpdateRow).where(HubUpdateRow.hub_ref == ref)
                                  .order_by(HubUpdateRow.sequence)))


@pytest.fixture
def planning(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Planning]:
    hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    cfg_dir = write_config(tmp_path / "config", hub.endpoint, {"planning": "http://127.0.0.1:1/"}, ["planning"])
    config = load_config(cfg_dir, Settings(config_dir=cfg_dir))
    sim = simulator_for("planning", 0, config).start()
    with connectors_yaml(cfg_dir) as conns:
        for name, inst in conns["connectors"].items():
            inst["endpoint"] = inst["endpoint"].replace("http://127.0.0.1:1", sim.url.rstrip("/"))
            if name != "planning-wychavon":  # one instance left without webhooks
                inst["webhook_secret_env"] = secret_env(name)
                monkeypatch.setenv(secret_env(name), SECRET)
    use_config(monkeypatch, cfg_dir, sqlite_url)
    rt = Runtime()
    yield Planning(rt, sim, hub)
    rt.close()
    sim.stop()
    hub.stop()


def change(bo_ref: str, hub_ref: str, sequence: int, status: str, when: datetime | None = None) -> dict[str, Any]:
    return {"sequence": sequence, "enquiry_id": bo_ref, "external_reference": hub_ref,
            "enquiry_type": "APPLICATION_ENQUIRY", "status": status, "kind": "status",
            "occurred_at": (when or datetime.now(UTC)).isoformat()}


def body_of(*changes: dict[str, Any]) -> bytes:
    return json.dumps({"event": "enquiry.changed", "changes": list(changes)}).encode()


def test_simulator_pushes_reach_the_hub_outbox_once(planning: Planning) -> None:
    ref, name, bo_ref = planning.delivered_case()
    before = len(planning.updates(ref))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(planning.rt, enqueue=False), log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        planning.sim.configure_webhook(f"http://127.0.0.1:{port}/webhooks/planning-{{tenant}}", SECRET)
        tenant = name.removeprefix("planning-")
        assert planning.sim.advance(tenant) >= 1
        assert planning.sim.wait_for_webhooks(10)
        statuses = [s for s, t, _ in planning.sim.webhook_log if t == tenant]
        assert statuses and set(statuses) == {200}, planning.sim.webhook_log
        pushed = planning.updates(ref)
        assert len(pushed) == before + 1
        assert pushed[-1].payload["backoffice_ref"] == bo_ref
        # the same change read again from the changes feed is already taken
        poll_connector(planning.rt, name)
        poll_connector(planning.rt, name)
        assert len(planning.updates(ref)) == before + 1
    finally:
        server.should_exit = True
        thread.join(10)


def test_refusals_size_limit_and_duplicates(planning: Planning, monkeypatch: pytest.MonkeyPatch) -> None:
    ref, name, bo_ref = planning.delivered_case()
    client = TestClient(create_app(planning.rt, enqueue=False))
    before = len(planning.updates(ref))
    body = body_of(change(bo_ref, ref, 900001, "ALLOCATED"))
    url = f"/webhooks/{name}"

    def post(data: bytes, headers: dict[str, str], to: str = url) -> Any:
        return client.post(to, content=data, headers={"Content-Type": "application/json", **headers})

    assert post(body, {}).status_code == 401
    assert "not signed" in post(body, {}).json()["detail"]
    assert post(body, sign(body, "someone-elses-secret")).status_code == 401
    assert post(body + b" ", sign(body, SECRET)).status_code == 401  # body changed after signing
    stale = post(body, sign(body, SECRET, timestamp=int(time.time()) - 3600))
    assert stale.status_code == 401 and "stale" in stale.json()["detail"]
    assert post(body, sign(body, SECRET), "/webhooks/planning-nowhere").status_code == 404
    no_secret = post(body, sign(body, SECRET), "/webhooks/planning-wychavon")
    assert no_secret.status_code == 404 and "webhook_secret_env" in no_secret.json()["detail"]
    garbage = b'{"event": "enquiry.changed", "changes": "lots"}'
    bad = post(garbage, sign(garbage, SECRET))
    assert bad.status_code == 422 and "not a valid notification" in bad.json()["detail"]
    huge = b'{"event": "x", "changes": [' + b" " * (planning.rt.settings.max_body_bytes + 1) + b"]}"
    assert post(huge, sign(huge, SECRET)).status_code == 413
    assert len(planning.updates(ref)) == before, "no refused push may reach the Hub outbox"

    first = post(body, sign(body, SECRET))
    assert first.status_code == 200 and first.json() == {"received": 1, "cases": [ref]}
    again = post(body, sign(body, SECRET))  # the back office retried a push it thought was lost
    assert again.status_code == 200 and again.json()["cases"] == []
    assert len(planning.updates(ref)) == before + 1
    with session_scope(planning.rt.url) as s:
        seen = s.scalar(select(func.count()).select_from(SeenUpdateRow).where(SeenUpdateRow.update_id == "900001"))
    assert seen == 1
    monkeypatch.delenv(secret_env(name))
    off = post(body, sign(body, SECRET))
    assert off.status_code == 503 and secret_env(name) in off.json()["detail"]


def test_updates_in_one_push_are_taken_in_sequence_order(planning: Planning) -> None:
    ref, name, bo_ref = planning.delivered_case()
    client = TestClient(create_app(planning.rt, enqueue=False))
    before = len(planning.updates(ref))
    t1 = datetime.now(UTC)
    later = t1 + timedelta(seconds=1)
    # sent out of order: the receiver applies them by sequence, so the later status wins
    body = body_of(change(bo_ref, ref, 910002, "RESPONSE_SENT", later), change(bo_ref, ref, 910001, "ALLOCATED", t1))
    resp = client.post(f"/webhooks/{name}", content=body, headers=sign(body, SECRET))
    assert resp.status_code == 200 and resp.json()["received"] == 2
    # in the given order the earlier change would have been dropped as stale: both must be there
    assert [u.status for u in planning.updates(ref)[before:]] == ["acknowledged", "resolved"]
    with session_scope(planning.rt.url) as s:
        seen = s.scalars(select(SeenUpdateRow.update_id).where(SeenUpdateRow.connector == name,
                                                               SeenUpdateRow.update_id.in_(["910001", "910002"]))
                         ).all()
    assert sorted(seen) == ["910001", "910002"]
