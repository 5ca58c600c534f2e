"""The broker: RabbitMQ in production; the embedded default, kombu's SQLAlchemy transport on SQLite.

The embedded transport is kombu's own, with two corrections registered as the `embedded+` URL
scheme: transport options meant for the channel (the polling interval) are not handed to
`create_engine`, and the SQLite file is opened in WAL mode with a busy timeout so the worker,
beat, the API and the CLI can share it.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as sqla
from sqlalchemy import create_engine, event

from hubbridge.config.settings import Settings

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


TRANSPORT_ALIASES[EMBEDDED_SCHEME] = f"{__name__}:EmbeddedTransport"


def embedded_url(path: str) -> str:
    return f"{EMBEDDED_SCHEME}+sqlite:///{path}"


QUEUES = ("deliver", "hub", "sync", "control")
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
