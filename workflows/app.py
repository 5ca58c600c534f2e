"""The Celery app and its broker: RabbitMQ in production, an embedded SQLite transport by default.

The embedded default (see `broker.py`) is kombu's SQLAlchemy transport on a SQLite file: it needs no server, keeps
queued messages on disk across restarts, and runs the real Celery worker and beat. It has no
publisher confirms and keeps a message only in the worker's memory once taken, so the store stays
the source of truth: every case is written before it is queued, and beat's reconcile sweep
re-queues any case whose message was lost (a killed worker, a lost publish).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_prerun, worker_init, worker_process_init, worker_process_shutdown

from hubbridge.config.settings import Settings, get_settings
from hubbridge.workflows import queues
from hubbridge.workflows.broker import queue_declarations


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker = settings.resolved_broker_url
    app = Celery("hubbridge", broker=broker, include=["hubbridge.workflows.tasks"])
    transport_options: dict[str, Any] = {}
    if broker.startswith("amqp"):
        transport_options = {"confirm_publish": True}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        result_backend=None,
        task_default_delivery_mode="persistent",
        task_queues=queue_declarations(settings),
        task_default_queue=queues.DELIVER,
        task_default_exchange="hubbridge",
        task_default_routing_key="deliver",
        task_create_missing_queues=False,
        task_routes={task: {"queue": queue, "routing_key": queues.routing_key(queue)}
                     for task, queue in queues.TASK_QUEUES.items()},
        task_queue_max_priority=10,
        task_default_priority=0,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        beat_schedule={
            "reconcile": {"task": "hubbridge.reconcile", "schedule": settings.sweep_seconds},
            "poll-due": {"task": "hubbridge.poll_due", "schedule": settings.sweep_seconds},
            "privacy-retention": {"task": "hubbridge.privacy_retention", "schedule": 3600.0},
            "send-escalations": {"task": "hubbridge.send_escalations", "schedule": settings.sweep_seconds},
        },
        timezone="UTC",
        enable_utc=True,
    )
    if settings.worker_max_memory_mib:
        app.conf.worker_max_memory_per_child = settings.worker_max_memory_mib * 1024  # Celery counts KiB
    if broker.startswith("amqp"):
        app.conf.beat_schedule["drain-dead"] = {"task": "hubbridge.drain_dead", "schedule": 30.0}
    return app


app = make_app()


@setup_logging.connect
def _logging(**_: Any) -> None:
    from hubbridge.log import configure_logging

    s = get_settings()
    configure_logging(s.log_format, s.log_level)


@worker_init.connect
def _warm_before_fork(**_: Any) -> None:
    # Config, SLA policies, connectors and compiled mappings take seconds to load: load them once here, in the
    # worker's main process, so every pool process starts with them (copy-on-write) instead of each paying on
    # its first cases. gc.freeze keeps the collector from touching, and so copying, those shared pages.
    import gc

    import structlog

    from hubbridge.workflows.runtime import runtime

    # Celery sets up logging only after worker_init: configure it first, so nothing warm() binds or logs
    # is left on structlog's defaults (console lines, no redaction) in every pool process.
    _logging()
    routes = runtime().warm()
    gc.freeze()
    structlog.get_logger(__name__).info("worker.warm", routes=routes)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share the parent's database connections.
    from hubbridge.store import engine_for

    engine_for.cache_clear()


@worker_process_shutdown.connect
def _metrics_of_ended_process(pid: int | None = None, **_: Any) -> None:
    # a pool process replaced (memory limit) or stopped: its live gauges go; its counts stay in /metrics' sums
    from hubbridge.workflows.metrics import process_ended

    process_ended(pid)


CONNECTOR_TASKS = frozenset({"hubbridge.poll_connector"})
"""Tasks whose first argument is a connector instance's name, bound to the log as `connector`."""


@task_prerun.connect
def _bind_correlation(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()
    from hubbridge.log import clear_bound_values

    clear_bound_values()
    name = getattr(task, "name", None)
    structlog.contextvars.bind_contextvars(task=name)
    if name in CONNECTOR_TASKS:
        # a poll works for a connector instance, not a case: its correlation id is the instance's name
        connector = (kwargs or {}).get("name") or (args[0] if args else None)
        if isinstance(connector, str):
            structlog.contextvars.bind_contextvars(connector=connector)
        return
    ref = (kwargs or {}).get("hub_ref") or (args[0] if args else None)
    if isinstance(ref, str) and ref[:2].isalpha():
        structlog.contextvars.bind_contextvars(hub_ref=ref)
