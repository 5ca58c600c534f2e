"""The one SLA report for every partner: the same definitions whatever the service or authority.

Population: clocks started (the case routed) from `--from` 00:00 to the end of `--to`, Europe/London.
Per group and clock (acknowledge, resolve, ...):

- volume: clocks started in the period;
- open: clocks not stopped yet; at risk: open, past the warning point, not past due;
- completed: stopped by a status other than cancelled / rejected; met: completed within the target;
  met % = met / completed;
- breached: completed or withdrawn over the target, or open past the due time;
- median / p90: business time used by completed clocks, nearest-rank percentiles (the smallest value
  with at least p% of values at or below it; `percentile_disc` on PostgreSQL, the same by ranks on SQLite).

Each clock times one of two promises (`promise` in sla.yaml's clock_rules): the customer's SLA (from routing)
or the service area's own operational level (from delivery). `build_promises` puts them side by side per
case: population the cases whose customer clocks started in the period; a case's promise is breached when
any of its clocks is, at risk when any is and none breached, open while any runs, met when all stopped
within target (withdrawn: stopped by cancelled / rejected). Who holds the delay: an open case is held by
the Hub until it is delivered, then by the service area (by the customer while it waits on them); a
customer breach is the service area's when its own promise breached too, else the Hub's.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, not_, or_, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from hubbridge.errors import UsageError
from hubbridge.sla.calendar import LONDON
from hubbridge.sla.policy import CUSTOMER, SERVICE_AREA
from hubbridge.sla.tables import PAUSED, STOPPED, SlaClockRow

GROUP_KEYS = ("service", "authority", "priority", "policy")
WITHDRAWN = ("cancelled", "rejected")


@dataclass
class ReportRow:
    group: dict[str, str]
    clock: str
    promise: str
    volume: int
    open: int
    at_risk: int
    completed: int
    met: int
    breached: int
    met_pct: float | None
    median_h: float | None
    p90_h: float | None

    def flat(self) -> dict[str, Any]:
        out = dict(self.group)
        data = asdict(self)
        data.pop("group")
        out.update(data)
        return out


def period(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) in Europe/London, as UTC instants."""
    if end < start:
        raise UsageError(f"--to {end} is before --from {start}", where="hubbridge sla report",
                         hint="give a --from on or before --to")
    lo = datetime.combine(start, time(0), tzinfo=LONDON).astimezone(UTC)
    hi = datetime.combine(end + timedelta(days=1), time(0), tzinfo=LONDON).astimezone(UTC)
    return lo, hi


def _check_by(by: Sequence[str]) -> None:
    for key in by:
        if key not in GROUP_KEYS:
            raise UsageError(f"cannot group by {key!r}", where="hubbridge sla report --by",
                             hint="choose from " + ", ".join(GROUP_KEYS))


def _standing(now: datetime) -> tuple[Any, Any, Any, Any]:
    """(stopped, completed, breached, at risk) of a clock at `now`, as SQL conditions: one definition."""
    c = SlaClockRow
    stopped = c.state == STOPPED
    completed = and_(stopped, or_(c.stop_status.is_(None), c.stop_status.notin_(WITHDRAWN)))
    over_open = and_(not_(stopped), or_(c.breached.is_(True), c.due_at <= now))
    breached = or_(and_(stopped, c.spent_s > c.target_s), over_open)
    at_risk = and_(not_(stopped), not_(over_open), or_(c.warned.is_(True), c.warn_at <= now))
    return stopped, completed, breached, at_risk


def build_report(session: Session, start: date, end: date, by: Sequence[str] = ("service", "authority"),
                 now: datetime | None = None, promises: Mapping[str, str] | None = None) -> list[ReportRow]:
    """Aggregate the SLA clocks started in the period, grouped by `by` and clock, in one query.

    `promises` maps clock names to the promise they time (`SlaConfig.promises`); a clock not in it is the
    customer's.
    """
    _check_by(by)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    lo, hi = period(start, end)
    c = SlaClockRow
    stopped, completed, breached, at_risk = _standing(now)
    keys = [getattr(c, k) for k in by]
    done = case((completed, 1), else_=0)
    dialect = session.get_bind().dialect.name

    def count(cond: Any) -> Any:
        return func.sum(case((cond, 1), else_=0))

    where = and_(c.started_at >= lo, c.started_at < hi)
    if dialect == "postgresql":
        # counts by a parallel hash aggregate over the period; percentiles by one narrow sort of the
        # completed clocks only (both from one percentile_disc): far cheaper than one wide sorted pass
        session.execute(text("SET LOCAL jit = off"))
        counts = session.execute(
            select(*keys, c.clock, func.count(), count(~stopped), count(at_risk), count(completed),
                   count(and_(completed, c.spent_s <= c.target_s)), count(breached))
            .where(where).group_by(*keys, c.clock)
        ).all()
        pcts = dict(
            ((*r[:-1],), r[-1]) for r in session.execute(
                select(*keys, c.clock, func.percentile_disc(postgresql.array([0.5, 0.9])).within_group(c.spent_s))
                .where(where, completed).group_by(*keys, c.clock)
            )
        )
        rows = sorted((*r, *(pcts.get((*r[:len(keys) + 1],)) or (None, None))) for r in counts)
    else:
        part = [*keys, c.clock, done]
        ranked = select(
            *[k.label(f"k_{i}") for i, k in enumerate(keys)], c.clock.label("clock"),
            done.label("done"), c.spent_s.label("spent_s"), c.target_s.label("target_s"),
            (~stopped).label("is_open"), at_risk.label("at_risk"), breached.label("breached"),
            func.row_number().over(partition_by=part, order_by=c.spent_s).label("rn"),
            func.count().over(partition_by=part).label("n"),
        ).where(where).subquery()
        r = ranked.c
        gkeys = [r[f"k_{i}"] for i in range(len(keys))]

        def pct(p: int) -> Any:
            return func.min(case((and_(r.done == 1, r.rn * 100 >= literal(p) * r.n), r.spent_s)))

        query = (
            select(*gkeys, r.clock, func.count(), func.sum(case((r.is_open, 1), else_=0)),
                   func.sum(case((r.at_risk, 1), else_=0)), func.sum(r.done),
                   func.sum(case((and_(r.done == 1, r.spent_s <= r.target_s), 1), else_=0)),
                   func.sum(case((r.breached, 1), else_=0)), pct(50), pct(90))
            .group_by(*gkeys, r.clock).order_by(*gkeys, r.clock)
        )
        rows = session.execute(query).all()

    out = []
    n = len(keys)
    for row in rows:
        volume, open_, risk, comp, met, over, median, p90 = (row[n + 1 + i] for i in range(8))
        comp = int(comp or 0)
        out.append(ReportRow(
            group={k: row[i] for i, k in enumerate(by)}, clock=row[n],
            promise=(promises or {}).get(row[n], CUSTOMER), volume=int(volume), open=int(open_ or 0),
            at_risk=int(risk or 0), completed=comp, met=int(met or 0), breached=int(over or 0),
            met_pct=round(100.0 * int(met or 0) / comp, 1) if comp else None,
            median_h=round(median / 3600, 2) if median is not None else None,
            p90_h=round(p90 / 3600, 2) if p90 is not None else None,
        ))
    return out


COLUMNS = ("volume", "met_pct", "breached", "at_risk", "open", "median_h", "p90_h", "completed", "met")
HEADINGS = {"volume": "volume", "met_pct": "met %", "breached": "breached", "at_risk": "at risk", "open": "open",
            "median_h": "median (business h)", "p90_h": "p90 (business h)", "completed": "completed",
            "met": "met"}


def to_csv(rows: Sequence[ReportRow], by: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*by, "clock", "promise", *COLUMNS])
    for r in rows:
        flat = r.flat()
        writer.writerow([*(flat[k] for k in by), r.clock, r.promise,
                         *("" if flat[c] is None else flat[c] for c in COLUMNS)])
    return buf.getvalue()


def to_json(rows: Sequence[ReportRow], start: date, end: date, by: Sequence[str],
            promises: Sequence[PromiseRow] | None = None) -> str:
    """The report as JSON: `rows` per clock, and `promises` (both promises side by side per group) if given."""
    data: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat(), "by": list(by),
                            "rows": [r.flat() for r in rows]}
    if promises is not None:
        data["promises"] = [p.flat() for p in promises]
    return json.dumps(data, indent=2)


CUSTOMER_OUTCOMES = ("met", "at_risk", "breached", "open", "withdrawn")
SERVICE_AREA_OUTCOMES = (*CUSTOMER_OUTCOMES, "not_started", "untimed")
HOLDERS = ("hub", "service_area", "customer", "untimed")


@dataclass
class PromiseRow:
    """One group's cases with both promises side by side, and who holds the delay."""

    group: dict[str, str]
    cases: int
    customer: dict[str, int]  # met / at_risk / breached / open / withdrawn: each case counted once
    service_area: dict[str, int]  # the same, and not_started (not delivered yet), untimed (no such clocks)
    held_by: dict[str, int]  # cases open on the customer promise, by who holds them now
    breaches_held_by: dict[str, int]  # customer breaches: the service area's when its own promise breached too
    handover: dict[str, Any]  # routed -> delivered, elapsed hours: delivered, mean_h, max_h

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.group)
        data = asdict(self)
        data.pop("group")
        out.update(data)
        return out


def build_promises(session: Session, start: date, end: date, promises: Mapping[str, str],
                   by: Sequence[str] = ("service", "authority"), now: datetime | None = None) -> list[PromiseRow]:
    """Both promises of the cases whose customer clocks started in the period, per group (see the module)."""
    _check_by(by)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    lo, hi = period(start, end)
    c = SlaClockRow
    stopped, _, breached, at_risk = _standing(now)
    sa_names = sorted(n for n, p in promises.items() if p == SERVICE_AREA)
    is_sa: Any = c.clock.in_(sa_names) if sa_names else literal(False)
    is_cu = not_(is_sa)
    started = c.started_at.is_not(None)
    withdrawn = and_(stopped, c.stop_status.in_(WITHDRAWN))

    def flag(promise: Any, cond: Any, name: str) -> Any:
        return func.max(case((and_(promise, cond), 1), else_=0)).label(name)

    population = select(c.hub_ref).where(c.started_at >= lo, c.started_at < hi, is_cu).distinct()
    keys = [getattr(c, k).label(f"k_{i}") for i, k in enumerate(by)]
    per_case = select(
        *keys, c.hub_ref,
        flag(is_cu, breached, "c_breached"), flag(is_cu, at_risk, "c_risk"),
        flag(is_cu, and_(not_(stopped), started), "c_open"), flag(is_cu, withdrawn, "c_withdrawn"),
        flag(is_cu, c.state == PAUSED, "c_paused"),
        func.sum(case((is_sa, 1), else_=0)).label("s_n"), flag(is_sa, started, "s_started"),
        flag(is_sa, breached, "s_breached"), flag(is_sa, at_risk, "s_risk"),
        flag(is_sa, and_(not_(stopped), started), "s_open"), flag(is_sa, withdrawn, "s_withdrawn"),
        func.min(case((is_cu, c.started_at))).label("c_start"), func.min(case((is_sa, c.started_at))).label("s_start"),
    ).where(c.hub_ref.in_(population)).group_by(*[getattr(c, k) for k in by], c.hub_ref).subquery()
    p = per_case.c
    cust = case((p.c_breached == 1, "breached"), (p.c_risk == 1, "at_risk"), (p.c_open == 1, "open"),
                (p.c_withdrawn == 1, "withdrawn"), else_="met")
    area = case((p.s_n == 0, "untimed"), (p.s_started == 0, "not_started"), (p.s_breached == 1, "breached"),
                (p.s_risk == 1, "at_risk"), (p.s_open == 1, "open"), (p.s_withdrawn == 1, "withdrawn"), else_="met")
    # while the customer waits on the case it sits with the Hub until a service-area clock runs
    held = case((p.c_open == 0, None), (p.c_paused == 1, "customer"), (p.s_n == 0, "untimed"),
                (p.s_open == 1, "service_area"), else_="hub")
    blame = case((p.c_breached == 0, None), (p.s_n == 0, "untimed"), (p.s_breached == 1, "service_area"),
                 else_="hub")
    if session.get_bind().dialect.name == "postgresql":
        gap: Any = func.extract("epoch", p.s_start - p.c_start)
    else:
        gap = (func.julianday(p.s_start) - func.julianday(p.c_start)) * 86400.0
    handover = case((and_(p.s_start.is_not(None), p.c_start.is_not(None), p.s_start >= p.c_start), gap))
    gkeys = [p[f"k_{i}"] for i in range(len(by))]
    rows = session.execute(
        select(*gkeys, cust.label("cust"), area.label("area"), held.label("held"), blame.label("blame"),
               func.count(), func.count(handover), func.sum(handover), func.max(handover))
        .group_by(*gkeys, cust, area, held, blame)
    ).all()
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    n = len(by)
    for row in rows:
        key = tuple(row[:n])
        g = groups.setdefault(key, {"cases": 0, "customer": dict.fromkeys(CUSTOMER_OUTCOMES, 0),
                                    "service_area": dict.fromkeys(SERVICE_AREA_OUTCOMES, 0),
                                    "held_by": dict.fromkeys(HOLDERS, 0),
                                    "breaches_held_by": dict.fromkeys(("hub", "service_area", "untimed"), 0),
                                    "delivered": 0, "gap_sum": 0.0, "gap_max": None})
        cust_, area_, held_, blame_, count, gaps, gap_sum, gap_max = row[n:]
        g["cases"] += count
        g["customer"][cust_] += count
        g["service_area"][area_] += count
        if held_ is not None:
            g["held_by"][held_] += count
        if blame_ is not None:
            g["breaches_held_by"][blame_] += count
        if gaps:
            g["delivered"] += gaps
            g["gap_sum"] += float(gap_sum or 0)
            g["gap_max"] = max(float(gap_max), g["gap_max"] or 0.0)
    out = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        g = groups[key]
        out.append(PromiseRow(
            group={k: key[i] for i, k in enumerate(by)}, cases=g["cases"], customer=g["customer"],
            service_area=g["service_area"], held_by=g["held_by"], breaches_held_by=g["breaches_held_by"],
            handover={"delivered": g["delivered"],
                      "mean_h": round(g["gap_sum"] / g["delivered"] / 3600, 2) if g["delivered"] else None,
                      "max_h": round(g["gap_max"] / 3600, 2) if g["gap_max"] is not None else None},
        ))
    return out
