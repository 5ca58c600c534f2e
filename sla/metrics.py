"""Prometheus metrics of SLA standing per service and authority (on the default registry)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from hubbridge.sla.tables import TICKING_STATES, SlaClockRow

LABELS = ("service", "authority")


def _make(registry: CollectorRegistry) -> tuple[Counter, Counter, Gauge, Gauge, Histogram]:
    return (
        Counter("hubbridge_sla_warnings", "SLA warnings fired", [*LABELS, "clock"], registry=registry),
        Counter("hubbridge_sla_breaches", "SLA breaches fired", [*LABELS, "clock"], registry=registry),
        Gauge("hubbridge_sla_clocks_at_risk", "Open SLA clocks past their warning point, not yet breached",
              LABELS, registry=registry),
        Gauge("hubbridge_sla_clocks_breached", "Open SLA clocks past their due time", LABELS, registry=registry),
        Histogram("hubbridge_sla_sweep_seconds", "Time taken by one SLA sweep", registry=registry,
                  buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)),
    )


WARNINGS, BREACHES, AT_RISK, BREACHED, SWEEP_SECONDS = _make(REGISTRY)
_gauge_labels: set[tuple[str, str]] = set()


def fired(kind: str, service: str, authority: str, clock: str, count: int) -> None:
    """Count warnings or breaches one sweep fired."""
    (BREACHES if kind == "breach" else WARNINGS).labels(service, authority, clock).inc(count)


def refresh(session: Session, now: datetime) -> dict[tuple[str, str], tuple[int, int]]:
    """Set the at-risk and breached gauges from the store in one grouped query over warned open clocks."""
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
    seen = {}
    for service, authority, at_risk, over in rows:
        seen[(service, authority)] = (int(at_risk or 0), int(over or 0))
    for key in _gauge_labels - set(seen):
        AT_RISK.labels(*key).set(0)
        BREACHED.labels(*key).set(0)
    for key, (at_risk, over) in seen.items():
        AT_RISK.labels(*key).set(at_risk)
        BREACHED.labels(*key).set(over)
    _gauge_labels.update(seen)
    return seen
