"""hubbridge's queue names, defined once: the broker declares them, the app routes tasks to them, the lanes take them.

Nothing is imported here, so the CLI can name the queues without paying for kombu and SQLAlchemy.
"""

from __future__ import annotations

ROUTING_KEYS = ("deliver", "hub", "sync", "control")
"""One routing key per queue; the queue is `hubbridge.<key>`."""

DELIVER, HUB, SYNC, CONTROL = (f"hubbridge.{key}" for key in ROUTING_KEYS)
ALL = (DELIVER, HUB, SYNC, CONTROL)

TASK_QUEUES = {
    "hubbridge.deliver_case": DELIVER,
    "hubbridge.deliver_followups": DELIVER,
    "hubbridge.push_hub": HUB,
    "hubbridge.poll_connector": SYNC,
    "hubbridge.reconcile": CONTROL,
    "hubbridge.poll_due": CONTROL,
    "hubbridge.drain_dead": CONTROL,
    "hubbridge.send_escalations": CONTROL,
    "hubbridge.privacy_retention": CONTROL,
}
"""Which queue each task is sent to."""


def routing_key(queue: str) -> str:
    """The routing key of one of hubbridge's queues."""
    return queue.removeprefix("hubbridge.")
