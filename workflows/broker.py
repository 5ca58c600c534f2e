"""The broker: RabbitMQ in production; the embedded default, kombu's SQLAlchemy transport on SQLite.

The embedded transport is kombu's own, with corrections registered as the `embedded+` URL scheme:
transport options meant for the channel (the polling interval) are not handed to `create_engine`;
the SQLite file is opened in WAL mode with a busy timeout so the worker, beat, the API and the CLI
can share it; a message taken is deleted rather than kept as an invisible row (kombu never reads it
again, and the table would grow with every message ever sent, each poll scanning more of it); and
the worker wakes every few milliseconds instead of kombu's one second, so a freed prefetch slot is
filled at once, while an empty queue is only queried again after `empty_backoff` seconds.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as sqla
from kombu.utils.json import loads
from sqlalchemy import create_engine, event, text

from hubbridge.config.settings import Settings
from hubbridge.workflows import queues

EMBEDDED_SCHEME = "embedded"
CHANNEL_OPTIONS = ("polling_interval",)


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class EmbeddedChannel(sqla.Channel):
    polling_interval = 0.05
    empty_backoff = 0.05
    """Seconds before an empty queue is queried again: bounds idle polling and added latency alike."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._empty_until: dict[str, float] = {}

    def _get(self, queue: str) -> Any:
        now = time.monotonic()
        if self._empty_until.get(queue, 0.0) > now:
            raise Empty()
        obj = self._get_or_create(queue)
        if self.session.bind.name == "sqlite":
            self.session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            model = self.message_cls
            msg = (
                self.session.query(model)
                .with_for_update()
                .filter(model.queue_id == obj.id, model.visible != False)  # noqa: E712 (SQL, not Python)
                .order_by(model.sent_at, model.id)
                .limit(1)
                .first()
            )
            if msg is None:
                self._empty_until[queue] = now + self.empty_backoff
                raise Empty()
            payload = msg.payload
            # kombu marks a taken message invisible and never reads it again: delete it instead
            self.session.delete(msg)
            return loads(payload if isinstance(payload, str) else payload.decode())
        finally:
            self.session.commit()

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        super()._put(queue, payload, **kwargs)
        self._empty_until.pop(queue, None)  # this process's own publish: look again at once

    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k in ("echo", "pool_size")}
        engine = create_engine(conninfo.hostname, connect_args={"timeout": 30}, **options)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _pragmas)
        return engine


class EmbeddedTransport(sqla.Transport):
    """kombu's SQLAlchemy transport, on a SQLite file by default."""

    Channel = EmbeddedChannel
    # kombu's default is 1 s, slept whenever nothing was fetched, including while the prefetch window
    # is full: with acks_late a worker then ran about one task per second per pool process.
    polling_interval = 0.005


TRANSPORT_ALIASES[EMBEDDED_SCHEME] = f"{__name__}:EmbeddedTransport"


def embedded_url(path: str) -> str:
    return f"{EMBEDDED_SCHEME}+sqlite:///{path}"


QUEUES = queues.ROUTING_KEYS
DEAD_LETTER_EXCHANGE = "hubbridge.dlx"
DEAD_LETTER_QUEUE = "hubbridge.dead"


def queue_declarations(settings: Settings) -> list[Queue]:
    """Durable queues; classic with priorities by default, quorum (replicated) when asked for."""
    exchange = Exchange("hubbridge", type="direct", durable=True)
    args: dict[str, Any]
    if settings.queue_type == "quorum":
        # Quorum queues drop a message redelivered past the delivery limit unless it is dead-lettered.
        args = {
            "x-queue-type": "quorum",
            "x-delivery-limit": 20,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    else:
        args = {"x-max-priority": 10, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
    queues = [
        Queue(f"hubbridge.{name}", exchange, routing_key=name, durable=True, queue_arguments=args) for name in QUEUES
    ]
    if settings.resolved_broker_url.startswith("amqp"):
        queues.append(
            Queue(
                DEAD_LETTER_QUEUE,
                Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True),
                routing_key="#",
                durable=True,
            )
        )
    return queues
