"""Prometheus metrics of SLA standing per service and authority (on the default registry).

The counters reach `/metrics` from the worker that sweeps through the multiprocess set-up in
`hubbridge.workflows.metrics`; the standing gauges are read from the store at each scrape instead.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from hubbridge.sla.tables import TICKING_STATES, SlaClockRow

LABELS = ("service", "authority")
AT_RISK_DOC = ("hubbridge_sla_clocks_at_risk", "Open SLA clocks past their warning point, not yet breached")
BREACHED_DOC = ("hubbridge_sla_clocks_breached", "Open SLA clocks past their due time")
STANDING_NAMES = frozenset({AT_RISK_DOC[0], BREACHED_DOC[0]})
"""The gauges `/metrics` reads from the store rather than from the processes that set them."""


def _make(registry: CollectorRegistry) -> tuple[Counter, Counter, Gauge, Gauge, Histogram]:
    return (
        Counter("hubbridge_sla_warnings", "SLA warnings fired", [*LABELS, "clock"], registry=registry),
        Counter("hubbridge_sla_breaches", "SLA breaches fired", [*LABELS, "clock"], registry=registry),
        # across processes, the last sweep's figures (its process alive) stand; /metrics reads the store anyway
        Gauge(*AT_RISK_DOC, LABELS, registry=registry, multiprocess_mode="livemostrecent"),
        Gauge(*BREACHED_DOC, LABELS, registry=registry, multiprocess_mode="livemostrecent"),
        Histogram("hubbridge_sla_sweep_seconds", "Time taken by one SLA sweep", registry=registry,
                  buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)),
    )


WARNINGS, BREACHES, AT_RISK, BREACHED, SWEEP_SECONDS = _make(REGISTRY)
_gauge_labels: set[tuple[str, str]] = set()


def fired(kind: str, service: str, authority: str, clock: str, count: int) -> None:
    """Count warnings or breaches one sweep fired."""
    (BREACHES if kind == "breach" else WARNINGS).labels(service, authority, clock).inc(count)


def standing(session: Session, now: datetime) -> dict[tuple[str, str], tuple[int, int]]:
    """(at risk, breached) open clocks per (service, authority), in one grouped query over warned clocks."""
    clk = SlaClockRow
    breached = (clk.breached.is_(True)) | (clk.due_at <= now)
    rows = session.execute(
        select(
            clk.service, clk.authority,
            func.sum(case((breached, 0), else_=1)),
            func.sum(case((breached, 1), else_=0)),
        )
        .where(clk.state.in_(TICKING_STATES), (clk.warned.is_(True)) | (clk.warn_at <= now))
        .group_by(clk.service, clk.authority)
    ).all()
    return {(service, authority): (int(at_risk or 0), int(over or 0)) for service, authority, at_risk, over in rows}


def refresh(session: Session, now: datetime) -> dict[tuple[str, str], tuple[int, int]]:
    """Set this process's at-risk and breached gauges from the store (the sweep does, after each run)."""
    seen = standing(session, now)
    for key in _gauge_labels - set(seen):
        AT_RISK.labels(*key).set(0)
        BREACHED.labels(*key).set(0)
    for key, (at_risk, over) in seen.items():
        AT_RISK.labels(*key).set(at_risk)
        BREACHED.labels(*key).set(over)
    _gauge_labels.update(seen)
    return seen


class StoreStandingCollector(Collector):
    """The at-risk and breached gauges read from the store at each scrape.

    The sweep runs in a Celery worker, so a process that only serves `/metrics` (the API) would otherwise
    show gauges nobody sets; this reads the same figures from the store whenever it is scraped.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def describe(self) -> list[GaugeMetricFamily]:
        return [_family(AT_RISK_DOC), _family(BREACHED_DOC)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from hubbridge.store import session_scope

        with session_scope(self.database_url) as session:
            seen = standing(session, datetime.now(UTC))
        at_risk, breached = _family(AT_RISK_DOC), _family(BREACHED_DOC)
        for (service, authority), (risk, over) in sorted(seen.items()):
            at_risk.add_metric([service, authority], risk)
            breached.add_metric([service, authority], over)
        yield at_risk
        yield breached


def _family(doc: tuple[str, str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(doc[0], doc[1], labels=list(LABELS))


def collect_from_store(database_url: str, registry: CollectorRegistry = REGISTRY) -> StoreStandingCollector:
    """Serve the SLA gauges of `registry` from the store (for the API's `/metrics`), replacing the in-process ones."""
    existing = _store_collectors.get(registry)
    if existing is not None:  # an app built twice in one process (tests) points the same collector anew
        existing.database_url = database_url
        return existing
    for gauge in (AT_RISK, BREACHED):
        with contextlib.suppress(KeyError):  # not on this registry
            registry.unregister(gauge)
    collector = StoreStandingCollector(database_url)
    registry.register(collector)
    _store_collectors[registry] = collector
    return collector


_store_collectors: weakref.WeakKeyDictionary[CollectorRegistry, StoreStandingCollector] = weakref.WeakKeyDictionary()


def scrape_registry(database_url: str) -> CollectorRegistry:
    """A registry for `/metrics` of a process that does not sweep: every process's metrics, SLA standing from the store.

    The default registry is left untouched, so gauges this process sets (in tests, or an API that also
    sweeps) keep working.
    """
    from hubbridge.workflows.metrics import scrape_registry as every_process

    return every_process(database_url)
