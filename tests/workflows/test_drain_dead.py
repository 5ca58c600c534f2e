"""drain_dead on real RabbitMQ: a poison message past a quorum queue's delivery limit lands in the store."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Producer
from sqlalchemy import select

from hubbridge.config.settings import Settings, get_settings
from hubbridge.store import CaseRow, DeadLetterRow, session_scope
from hubbridge.workflows import deadletters
from hubbridge.workflows.app import make_app
from hubbridge.workflows.broker import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, queue_declarations
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import Runtime, reset_runtime
from hubbridge.workflows.schedule import reconcile
from tests.conftest import AMQP_URL


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def vhost_url() -> Iterator[str]:
    """A fresh RabbitMQ virtual host, so the fixed queue names are this test's alone."""
    name = f"hubbridge-test-{uuid.uuid4().hex[:8]}"
    _ctl("add_vhost", name)
    _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    server = AMQP_URL.split("://", 1)[1].split("/", 1)[0]
    yield f"{AMQP_URL.split('://', 1)[0]}://{server}/{name}"
    _ctl("delete_vhost", name)


@pytest.fixture
def quorum(vhost_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("HUBBRIDGE_BROKER_URL", vhost_url)
    monkeypatch.setenv("HUBBRIDGE_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    with Connection(vhost_url) as conn:
        for q in queue_declarations(Settings()):
            q(conn.default_channel).declare()
    rt = Runtime()
    reset_runtime(rt)
    yield rt
    reset_runtime(None)


def _wait_for(conn: Connection, queue: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, messages, _ = conn.default_channel.queue_declare(queue, passive=True)
        if messages >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{queue} never held {count} message(s)")


def test_poison_delivery_message_is_drained_into_the_store_and_replays(quorum: Runtime) -> None:
    from hubbridge.workflows.tasks import drain_dead

    case = next(c for c in generate_cases(10, seed=3) if c["service"] == "refuse.missed-collection")
    ref = accept_case(quorum, json.dumps(case)).hub_ref
    url = quorum.settings.resolved_broker_url
    celery = make_app(quorum.settings)
    celery.send_task("hubbridge.deliver_case", args=[ref], queue="hubbridge.deliver", routing_key="deliver")
    with Connection(url) as conn:
        _wait_for(conn, "hubbridge.deliver", 1)
        # A worker that dies on this message every time: RabbitMQ counts each redelivery.
        for _ in range(60):
            msg = conn.default_channel.basic_get("hubbridge.deliver", no_ack=False)
            if msg is None:
                break
            conn.default_channel.basic_reject(msg.delivery_tag, requeue=True)
        _wait_for(conn, DEAD_LETTER_QUEUE, 1)

    assert drain_dead() == 1
    assert drain_dead() == 0, "the queue is empty once drained"
    with session_scope(quorum.url) as s:
        [dl] = s.scalars(select(DeadLetterRow)).all()
        assert (dl.stage, dl.reason, dl.hub_ref) == ("queue", "poison_message", ref)
        assert dl.service == case["service"] and dl.authority == case["authority"]
        kept = json.loads(dl.payload)
        assert kept["task"] == "hubbridge.deliver_case" and kept["args"] == [ref]
        assert kept["queue"] == "hubbridge.deliver" and kept["death_reason"] == "delivery_limit"
        assert "RabbitMQ" in dl.detail and "hubbridge.deliver" in dl.detail
        assert deadletters.counts_by_reason(s) == {"poison_message": 1}
    assert "made due for delivery now" in deadletters.replay(quorum, dl.id, by="ops")
    with session_scope(quorum.url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert row is not None and row.stage == "received"
    assert ref in reconcile(quorum).deliver


def test_the_same_message_dead_lettered_twice_is_stored_once(quorum: Runtime) -> None:
    url = quorum.settings.resolved_broker_url
    body = json.dumps([["not-a-ref"], {}, {}]).encode()
    headers = {"task": "hubbridge.poll_connector", "id": "4d1f6f0e-0000-4000-8000-000000000001"}
    with Connection(url) as conn:
        producer = Producer(conn.default_channel, exchange=Exchange(DEAD_LETTER_EXCHANGE, type="fanout"))
        for _ in range(2):
            producer.publish(body, headers=headers, content_type="application/json", content_encoding="utf-8")
        _wait_for(conn, DEAD_LETTER_QUEUE, 2)
    assert deadletters.drain_broker_dead(quorum.url, url) == 2
    with session_scope(quorum.url) as s:
        [dl] = s.scalars(select(DeadLetterRow)).all()
    assert dl.hub_ref is None and json.loads(dl.payload)["task"] == "hubbridge.poll_connector"
    assert "periodic" in deadletters.replay(quorum, dl.id, by="ops")
