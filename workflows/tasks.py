"""The Celery tasks: thin, idempotent wrappers over the steps (delivery, outbox, sync, schedule).

Each is bound to the case's correlation id.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import Retry

from hubbridge.workflows import delivery, followups, outbox, retry, schedule, sync
from hubbridge.workflows.app import app
from hubbridge.workflows.retry import STORE_RETRY
from hubbridge.workflows.runtime import Outcome, OutcomeKind, Runtime, runtime

log = structlog.get_logger(__name__)


def _priorities(hub_refs: list[str]) -> dict[str, int]:
    """Each case's queue priority (raised by the SLA sweep), in one query for a whole sweep's refs."""
    from sqlalchemy import select

    from hubbridge.store import CaseRow, session_scope

    if not hub_refs:
        return {}
    with session_scope(runtime().url) as s:
        rows = s.execute(select(CaseRow.hub_ref, CaseRow.queue_priority).where(CaseRow.hub_ref.in_(hub_refs)))
        return {ref: int(priority or 0) for ref, priority in rows}


def enqueue_delivery(hub_ref: str, priority: int = 0) -> None:
    deliver_case.apply_async(args=[hub_ref], priority=priority)


def enqueue_push(hub_ref: str, priority: int = 0) -> None:
    push_hub.apply_async(args=[hub_ref], priority=priority)


def enqueue_followups(hub_ref: str, priority: int = 0) -> None:
    deliver_followups.apply_async(args=[hub_ref], priority=priority)


def _push_now(rt: Runtime, refs: list[str], *, event: str) -> list[str]:
    """Push these cases' Hub updates from the running task; returns the refs left for push tasks of their own."""
    try:
        pushed = outbox.push_cases(rt, refs)
        return [ref for ref in refs if pushed[ref].kind != OutcomeKind.DONE]
    except Exception as exc:  # the outbox rows stay pending: the queued push (or reconcile) takes them
        log.warning(event, refs=len(refs), error=str(exc)[:200])
        return list(refs)


def _after(task: Task, outcome: Outcome, *, hub_ref: str | None = None) -> None:
    for ref in outcome.push:
        enqueue_push(ref)
    countdown = retry.queue_countdown(outcome.retry_in) if outcome.kind == OutcomeKind.RETRY else None
    if countdown is not None:
        # short waits ride on Celery's own retry; longer ones stay parked in the store for reconcile
        raise task.retry(countdown=countdown, max_retries=None)


@app.task(name="hubbridge.deliver_case", bind=True, max_retries=None, **STORE_RETRY)
def deliver_case(self: Task, hub_ref: str) -> str:
    rt = runtime()
    # the delivery tells the Hub itself; what is left in `push` (a Hub that failed, a case with earlier updates
    # to send first) goes to a push task of its own, which backs off
    outcome = delivery.deliver_case(rt, hub_ref)
    try:
        _after(self, outcome, hub_ref=hub_ref)
    except Retry:
        raise
    return outcome.kind


@app.task(name="hubbridge.deliver_followups", bind=True, max_retries=None, **STORE_RETRY)
def deliver_followups(self: Task, hub_ref: str) -> str:
    outcome = followups.deliver_followups(runtime(), hub_ref)
    if outcome.more:
        enqueue_followups(hub_ref)
    _after(self, outcome, hub_ref=hub_ref)
    return outcome.kind


@app.task(name="hubbridge.push_hub", bind=True, max_retries=None, **STORE_RETRY)
def push_hub(self: Task, hub_ref: str) -> str:
    outcome = outbox.push_hub(runtime(), hub_ref)
    _after(self, outcome, hub_ref=hub_ref)
    return outcome.kind


@app.task(name="hubbridge.poll_connector", bind=True, max_retries=None, **STORE_RETRY)
def poll_connector(self: Task, name: str) -> str:
    rt = runtime()
    outcome = sync.poll_connector(rt, name)
    if outcome.push:
        # the page's Hub updates go out from this task, recorded in one transaction; a case the Hub could not
        # take now gets a push task of its own, which retries with backoff
        for ref in _push_now(rt, outcome.push, event="sync.inline_push_failed"):
            enqueue_push(ref)
    if outcome.more:
        poll_connector.apply_async(args=[name])
    return outcome.kind


@app.task(name="hubbridge.reconcile")
def reconcile() -> dict[str, Any]:
    rt = runtime()
    sweep = schedule.reconcile(rt)
    priority = _priorities(sorted({*sweep.deliver, *sweep.push}))
    for ref in sweep.deliver:
        enqueue_delivery(ref, priority=priority.get(ref, 0))
    for ref in sweep.push:
        enqueue_push(ref, priority=priority.get(ref, 0))
    for ref in sweep.followups:
        enqueue_followups(ref)
    _publish_escalations(rt)
    if sweep.deliver or sweep.push or sweep.followups:
        log.info("reconcile", requeued=len(sweep.deliver), pushes=len(sweep.push), followups=len(sweep.followups))
    return {"deliver": len(sweep.deliver), "push": len(sweep.push), "followups": len(sweep.followups)}


def _publish_escalations(rt: Runtime) -> None:
    """Send SLA breaches waiting in the escalation outbox to their queues; on failure they wait for the next sweep."""
    from hubbridge.sla.enforce import publish_escalations
    from hubbridge.store import session_scope

    try:
        with session_scope(rt.url) as s, app.connection_for_write() as conn:
            publish_escalations(s, conn, rt.sla.config)
    except Exception as exc:  # the outbox keeps them; the broker or store will be back
        log.warning("sla.escalations.unpublished", error=str(exc)[:200])


@app.task(name="hubbridge.send_escalations")
def send_escalations() -> dict[str, Any]:
    """Send due SLA warnings and breaches to their e-mail and webhook targets, and chase back offices."""
    from hubbridge.sla.escalate import followup_chaser
    from hubbridge.sla.escalate import send_escalations as send

    rt = runtime()
    return send(rt.url, rt.sla.config, rt.settings, chaser=followup_chaser(rt)).as_dict()


@app.task(name="hubbridge.poll_due")
def poll_due() -> list[str]:
    rt = runtime()
    # polls whose instances' intervals start before the next tick are sent now, to run at their own moment
    plan = schedule.due_polls(rt, within=rt.settings.sweep_seconds)
    for name, wait in plan.items():
        poll_connector.apply_async(args=[name], countdown=wait or None)
    return list(plan)


@app.task(name="hubbridge.drain_dead")
def drain_dead(limit: int = 500) -> int:
    """Move messages RabbitMQ dead-lettered (past a quorum queue's delivery limit) into the dead-letter store."""
    from hubbridge.workflows.deadletters import drain_broker_dead

    rt = runtime()
    broker = rt.settings.resolved_broker_url
    if not broker.startswith("amqp"):
        return 0  # only RabbitMQ dead-letters messages; the embedded transport has no such queue
    return drain_broker_dead(rt.url, broker, limit=limit)


@app.task(name="hubbridge.privacy_retention")
def privacy_retention() -> dict[str, Any]:
    """Erase the personal data past its service's retention period (config `privacy.yaml`); the audit trail stays."""
    from hubbridge.privacy import apply_retention, load_privacy

    rt = runtime()
    done = apply_retention(rt.url, load_privacy(rt.config.config_dir, rt.config.services))
    return {"cases": len(done.cases), "rows": done.rows}
