"""How many messages wait in each hubbridge queue, on RabbitMQ or on the embedded SQLite broker.

RabbitMQ answers a passive `queue.declare` with the ready count without changing the queue. The
embedded broker (kombu's SQLAlchemy transport) keeps messages as rows: the ready ones are the visible
rows of the queue and of its priority sub-queues (`<name>\\x06\\x16<priority>`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog

from hubbridge.workflows.broker import DEAD_LETTER_QUEUE, QUEUES

log = structlog.get_logger(__name__)

PRIORITY_SEP = "\x06\x16"
"""kombu's separator between a queue's name and its priority step on virtual transports."""

KOMBU_QUEUE_TABLE = "kombu_queue"
KOMBU_MESSAGE_TABLE = "kombu_message"


@dataclass(frozen=True)
class QueueDepth:
    """One queue: messages ready to be taken, consumers attached (RabbitMQ only), or why it is unknown."""

    name: str
    ready: int | None
    consumers: int | None = None
    note: str | None = None


def queue_names(broker_url: str) -> list[str]:
    names = [f"hubbridge.{q}" for q in QUEUES]
    if broker_url.startswith("amqp"):
        names.append(DEAD_LETTER_QUEUE)
    return names


def queue_depths(broker_url: str, *, names: list[str] | None = None, timeout: float = 5.0) -> list[QueueDepth]:
    """The depth of every hubbridge queue (or of `names`); an unreachable broker gives a note, not an error."""
    names = names if names is not None else queue_names(broker_url)
    try:
        if broker_url.startswith("amqp"):
            return _amqp_depths(broker_url, names, timeout)
        if broker_url.startswith(("embedded+", "sqla+")):
            return _embedded_depths(broker_url.split("+", 1)[1], names)
    except Exception as exc:  # the page must render even when the broker is down
        log.warning("console.queue_depths_failed", error=str(exc)[:300])
        return [QueueDepth(n, None, note=f"broker unreachable: {type(exc).__name__}") for n in names]
    return [QueueDepth(n, None, note="depth not available for this broker") for n in names]


def _amqp_depths(broker_url: str, names: list[str], timeout: float) -> list[QueueDepth]:
    from amqp.exceptions import NotFound
    from kombu import Connection

    out: list[QueueDepth] = []
    with Connection(broker_url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1)
        for name in names:
            # a passive declare of a missing queue closes the channel, so each queue gets its own
            channel = conn.channel()
            try:
                ok = channel.queue_declare(queue=name, passive=True)
                out.append(QueueDepth(name, int(ok.message_count), int(ok.consumer_count)))
            except NotFound:
                out.append(QueueDepth(name, 0, 0, note="not declared yet"))
            finally:
                with contextlib.suppress(Exception):  # already closed by the broker after NotFound
                    channel.close()
    return out


def _embedded_depths(sqlalchemy_url: str, names: list[str]) -> list[QueueDepth]:
    from pathlib import Path

    from sqlalchemy import create_engine, inspect, text

    if sqlalchemy_url.startswith("sqlite:///") and not Path(sqlalchemy_url.split("///", 1)[1]).exists():
        return [QueueDepth(n, 0, note="no message sent yet") for n in names]  # and do not create the file
    engine = create_engine(sqlalchemy_url, connect_args={"timeout": 10} if sqlalchemy_url.startswith("sqlite") else {})
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(KOMBU_QUEUE_TABLE):
                return [QueueDepth(n, 0, note="no message sent yet") for n in names]
            rows = conn.execute(text(
                f"SELECT q.name, COUNT(m.id) FROM {KOMBU_QUEUE_TABLE} q "
                f"LEFT JOIN {KOMBU_MESSAGE_TABLE} m ON m.queue_id = q.id AND m.visible "
                "GROUP BY q.name"
            )).all()
    finally:
        engine.dispose()
    ready: dict[str, int] = {}
    for name, count in rows:
        base = str(name).split(PRIORITY_SEP, 1)[0]
        ready[base] = ready.get(base, 0) + int(count)
    return [QueueDepth(n, ready.get(n, 0)) for n in names]
