"""hubbridge's Prometheus metrics, and the multiprocess set-up that lets the API's /metrics show every process's.

Deliveries, retries and Hub pushes happen in Celery pool processes, SLA sweeps in another: each `hubbridge` process
writes its counters and histograms to its own files in the metrics directory (prometheus_client's multiprocess
mode, `PROMETHEUS_MULTIPROC_DIR`), and `/metrics` adds them all up at each scrape. What is a state rather than a
count (circuit state, queue depth, open dead letters, SLA standing) is read from the store or the broker at the
scrape instead, so it is never a dead process's stale figure.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from hubbridge.case import CaseUpdate
from hubbridge.errors import ConnectorError, TransientError

DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Where prometheus_client's multiprocess mode keeps each process's metric files (its own variable)."""

CASE_LABELS = ("connector", "service", "authority")

_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# intake to delivery spans retries and circuit waits: minutes to hours, not a call's seconds
_LAG_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

# Every metric here has labels, so prometheus_client makes its values (and their files) only at `.labels()`,
# after `share_across_processes` has chosen the multiprocess value class: see there.
DELIVERIES = Counter("hubbridge_deliveries", "Cases their back office took", CASE_LABELS)
DELIVERY_RETRIES = Counter(
    "hubbridge_delivery_retries", "Delivery attempts that failed and will be tried again", CASE_LABELS)
DELIVERY_SECONDS = Histogram(
    "hubbridge_delivery_seconds",
    "Time a delivery's back-office calls took (its look-up and create, rate-limit waits included)",
    CASE_LABELS, buckets=_SECONDS)
INTAKE_TO_DELIVERY_SECONDS = Histogram(
    "hubbridge_intake_to_delivery_seconds", "From hubbridge taking a case in to its back office having it",
    CASE_LABELS, buckets=_LAG_SECONDS)
HUB_PUSHES = Counter(
    "hubbridge_hub_pushes", "Updates sent to the Hub, by how it answered (sent, retry, refused, error)",
    [*CASE_LABELS, "outcome"])
HUB_PUSH_SECONDS = Histogram(
    "hubbridge_hub_push_seconds", "Time the Hub took to answer one pushed update", CASE_LABELS, buckets=_SECONDS)
DEAD_LETTERS = Counter(
    "hubbridge_dead_letters", "Work dead-lettered (committed), by stage and reason", ["stage", "reason"])
FOLLOWUPS = Counter(
    "hubbridge_followups", "Follow-ups delivered to a back office, by kind and how (operation, note, email)",
    [*CASE_LABELS, "kind", "via"])


# -- the multiprocess set-up ---------------------------------------------------------------------------------
def share_across_processes(directory: Path) -> Path | None:
    """Make this process, and every process it starts, write its metrics to files in `directory`.

    Call it before any module that makes an unlabelled metric is imported: prometheus_client picks a metric's
    value class when the value is made, from the class it chose at its own import (without the variable).
    A directory that cannot be written leaves the process's metrics to itself, with a warning: no outage
    for want of metrics.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        import structlog

        structlog.get_logger(__name__).warning("metrics.dir_unwritable", dir=str(directory), error=str(exc))
        return None
    os.environ[DIR_VARIABLE] = str(directory.resolve())
    values.ValueClass = values.get_value_class()
    return directory


def shared_dir() -> Path | None:
    """The metrics directory this process writes to, or None when it keeps its metrics to itself."""
    value = os.environ.get(DIR_VARIABLE)
    return Path(value) if value else None


def process_ended(pid: int | None = None) -> None:
    """Forget a finished process's live gauges (its counters stay: what it counted did happen)."""
    directory = shared_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid or os.getpid(), str(directory))


# -- what the steps call -------------------------------------------------------------------------------------
def delivered(connector: str, service: str, authority: str, call_seconds: float, received_at: datetime) -> None:
    """Count a delivery the store recorded, with its back-office call time and its time since intake."""
    labels = (connector, service, authority)
    DELIVERIES.labels(*labels).inc()
    DELIVERY_SECONDS.labels(*labels).observe(call_seconds)
    since = received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
    INTAKE_TO_DELIVERY_SECONDS.labels(*labels).observe(max((datetime.now(UTC) - since).total_seconds(), 0.0))


PushTiming = tuple[str, float, str]
"""One Hub push: (hub ref, seconds the Hub took, outcome)."""


def timed_push(push: Callable[[CaseUpdate], object], update: CaseUpdate, took: list[PushTiming]) -> None:
    """`push(update)`, its time and outcome added to `took`; whatever it raises is raised on."""
    started = time.perf_counter()
    outcome = "error"
    try:
        push(update)
        outcome = "sent"
    except TransientError:
        outcome = "retry"
        raise
    except ConnectorError:
        outcome = "refused"
        raise
    finally:
        took.append((update.ref, time.perf_counter() - started, outcome))


def push_observed(push: Callable[[CaseUpdate], object], update: CaseUpdate, labels: tuple[str, str, str]) -> None:
    """`push(update)` for a case whose labels the caller knows, counted and timed at once."""
    took: list[PushTiming] = []
    try:
        timed_push(push, update, took)
    finally:
        observe_pushes(took, {update.ref: labels})


def case_labels(session: Session, took: Iterable[PushTiming]) -> dict[str, tuple[str, str, str]]:
    """(connector, service, authority) of the pushed cases, in one query of the caller's transaction."""
    from hubbridge.store import CaseRow

    refs = {ref for ref, _, _ in took}
    if not refs:
        return {}
    rows = session.execute(
        select(CaseRow.hub_ref, CaseRow.connector, CaseRow.service, CaseRow.authority)
        .where(CaseRow.hub_ref.in_(refs))
    ).all()
    return {ref: (connector or "", service, authority) for ref, connector, service, authority in rows}


def observe_pushes(took: Iterable[PushTiming], labels: Mapping[str, tuple[str, str, str]]) -> None:
    """Count Hub pushes and their times, labelled with their case's connector, service and authority."""
    for ref, seconds, outcome in took:
        case = labels.get(ref, ("", "", ""))
        HUB_PUSHES.labels(*case, outcome).inc()
        HUB_PUSH_SECONDS.labels(*case).observe(seconds)


_PENDING_DEAD = "hubbridge.metrics.dead_letters"


def dead_lettered_on_commit(session: Session, stage: str, reason: str) -> None:
    """Count a dead letter once the session commits it (a rolled-back one never existed)."""
    pending = session.info.get(_PENDING_DEAD)
    if pending is None:
        # the listeners stay for the session's life (removing one while it runs breaks SQLAlchemy's dispatch);
        # each commit or rollback empties the list they read
        pending = session.info[_PENDING_DEAD] = []
        event.listen(session, "after_commit", _count_dead_letters)
        event.listen(session, "after_rollback", _drop_dead_letters)
    pending.append((stage, reason))


def _count_dead_letters(session: Session) -> None:
    pending = session.info.get(_PENDING_DEAD, [])
    for stage, reason in pending:
        DEAD_LETTERS.labels(stage, reason).inc()
    pending.clear()


def _drop_dead_letters(session: Session) -> None:
    session.info.get(_PENDING_DEAD, []).clear()


# -- what /metrics reads at the scrape -----------------------------------------------------------------------
CIRCUIT_STATES = ("closed", "open", "half_open")


class StoreFiguresCollector(Collector):
    """Circuit state per connector instance and open dead letters per reason, read from the store when scraped."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[Metric]:
        from hubbridge.store import ConnectorHealthRow, session_scope
        from hubbridge.workflows.deadletters import counts_by_reason

        state = GaugeMetricFamily("hubbridge_circuit_state", "1 for the state each connector instance's circuit is in",
                                  labels=["connector", "state"])
        failures = GaugeMetricFamily("hubbridge_circuit_consecutive_failures",
                                     "Failed back-office calls in a row, per connector instance", labels=["connector"])
        dead = GaugeMetricFamily("hubbridge_dead_letters_open", "Dead letters not yet replayed or discarded",
                                 labels=["reason"])
        with session_scope(self.database_url) as s:
            rows = s.execute(select(ConnectorHealthRow.connector, ConnectorHealthRow.state,
                                    ConnectorHealthRow.consecutive_failures)).all()
            for reason, n in counts_by_reason(s).items():
                dead.add_metric([reason], n)
        for connector, current, in_a_row in sorted(rows):
            for name in CIRCUIT_STATES:
                state.add_metric([connector, name], 1.0 if current == name else 0.0)
            failures.add_metric([connector], in_a_row or 0)
        yield state
        yield failures
        yield dead


class QueueDepthCollector(Collector):
    """Messages waiting in each of hubbridge's queues, asked of the broker when scraped (a passive declare).

    On RabbitMQ that counts ready messages, not those a worker holds unacknowledged; the embedded transport
    deletes a message once a worker takes it, so there too it is what still waits. An unreachable broker is
    `hubbridge_broker_up 0` and no depths, rather than a failed scrape.
    """

    CONNECT_SECONDS = 3.0

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("hubbridge_queue_depth", "Messages waiting in the queue", labels=["queue"])
        up = GaugeMetricFamily("hubbridge_broker_up", "1 if the broker answered this scrape")
        answered = self._depths(depth)
        up.add_metric([], 1.0 if answered else 0.0)
        yield up
        yield depth

    def _depths(self, depth: GaugeMetricFamily) -> bool:
        from kombu import Connection

        from hubbridge.workflows import broker, queues

        if _missing_embedded_file(self.broker_url):
            return False  # nothing was ever queued; connecting would create the broker's file from here
        names = [*queues.ALL, *((broker.DEAD_LETTER_QUEUE,) if self.broker_url.startswith("amqp") else ())]
        try:
            with Connection(self.broker_url, connect_timeout=self.CONNECT_SECONDS) as conn:
                conn.connect()
                for name in names:
                    # a channel each: a passive declare of a queue not there yet closes its channel on RabbitMQ
                    with contextlib.suppress(Exception), conn.channel() as channel:
                        depth.add_metric([name], channel.queue_declare(queue=name, passive=True).message_count)
        except Exception:  # the broker being down is what broker_up says, not a failed scrape
            return False
        return True


def _missing_embedded_file(broker_url: str) -> bool:
    scheme, _, rest = broker_url.partition(":///")
    return scheme.endswith("+sqlite") and not Path(rest).exists()


class _EveryProcess(Collector):
    """Every process's counters and histograms from the metrics directory, or this process's own without one;
    leaving out the families another collector answers for from the store (their processes' figures go stale)."""

    def __init__(self, directory: Path | None, leave_out: frozenset[str]) -> None:
        self.source: Any = multiprocess.MultiProcessCollector(None, str(directory)) if directory else REGISTRY
        self.leave_out = leave_out

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name not in self.leave_out:
                yield family


def scrape_registry(database_url: str, broker_url: str | None = None) -> CollectorRegistry:
    """What `/metrics` serves: every process's counts (one process's without a metrics directory), and the
    SLA standing, circuit states, open dead letters and, given `broker_url`, queue depths as they are now."""
    from hubbridge.sla.metrics import STANDING_NAMES, StoreStandingCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EveryProcess(shared_dir(), STANDING_NAMES))
    registry.register(StoreStandingCollector(database_url))
    registry.register(StoreFiguresCollector(database_url))
    if broker_url:
        registry.register(QueueDepthCollector(broker_url))
    return registry
