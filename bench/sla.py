"""Benchmark of the SLA sweep and report on PostgreSQL: `python -m bench.sla --json`.

Creates a scratch database, migrates it, bulk-loads N cases with two clocks each (acknowledge, resolve)
with `generate_series` so that N clocks are open (by default 1,000,000 cases, 2,000,000 clocks of which
1,000,000 open, ~1% due a warning and ~1% due a breach at the sweep's `now`), then times one sweep (with
every action: events, queue priority, Hub updates, escalation outbox) and one report over every case, and
drops the database. Every case is still awaiting delivery, so every fired case is also brought forward.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta

import psycopg
from sqlalchemy import JSON, Boolean, DateTime, Integer, Numeric, String, Text
from sqlalchemy.orm import Session

from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.report import build_report
from hubbridge.store import CaseRow, make_engine, migrate

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SERVICES = [
    "refuse.missed-collection", "refuse.assisted-collection", "refuse.bulky-waste", "refuse.new-container",
    "revenues.council-tax-change-of-address", "revenues.single-person-discount",
    "revenues.benefit-change-of-circumstances", "revenues.payment-arrangement", "highways.pothole",
    "highways.street-light-fault", "highways.blocked-drain", "highways.dangerous-defect",
    "planning.application-enquiry", "planning.breach-report", "planning.pre-application-advice",
]
AUTHORITIES = ["worcestershire", "bromsgrove", "malvern-hills", "redditch", "worcester", "wychavon", "wyre-forest"]


def _array(values: list[str]) -> str:
    return "ARRAY[" + ",".join(f"'{v}'" for v in values) + "]"


def _case_columns() -> tuple[str, str]:
    """Column list and SELECT expressions for `cases`, filling any NOT NULL column by its type.

    Built from the table definition so the load keeps working as the workflow team adds columns.
    """
    given = {
        "hub_ref": "'WH-' || (2025 + g / 1000000)::text || '-' || lpad((g % 1000000)::text, 6, '0')",
        "authority": f"({_array(AUTHORITIES)})[1 + g % {len(AUTHORITIES)}]",
        "service": f"({_array(SERVICES)})[1 + (g / 7) % {len(SERVICES)}]",
        "priority": "'normal'",
        "status": "CASE WHEN g % 2 = 0 THEN 'in_progress' ELSE 'resolved' END",
        "payload": "'{}'::json",
        "received_at": ":now - (g % 86400) * interval '1 minute'",
    }
    cols, exprs = [], []
    for col in CaseRow.__table__.columns:
        if col.primary_key:
            continue
        if col.name in given:
            expr = given[col.name]
        elif col.nullable:
            continue
        elif isinstance(col.type, Boolean):
            expr = "false"
        elif isinstance(col.type, Integer | Numeric):
            expr = "0"
        elif isinstance(col.type, JSON):
            expr = "'{}'::json"
        elif isinstance(col.type, String | Text):
            expr = "'hub'" if col.name == "origin" else "'received'" if col.name == "stage" else "''"
        elif isinstance(col.type, DateTime) or "DateTime" in type(col.type).__name__:
            expr = ":now"
        else:
            expr = "DEFAULT"
        cols.append(col.name)
        exprs.append(expr)
    return ", ".join(cols), ", ".join(exprs)


def load(conn: psycopg.Connection, cases: int) -> None:
    """Bulk-load `cases` cases with acknowledge and resolve clocks, entirely inside PostgreSQL."""
    # no bind parameters: the SQL is all ours, and `%` stays the modulo operator
    now = f"'{NOW.isoformat()}'::timestamptz"
    cols, exprs = _case_columns()
    conn.execute(f"INSERT INTO cases ({cols}) SELECT {exprs.replace(':now', now)} "
                 f"FROM generate_series(1, {int(cases)}) g")
    # one earlier Hub update for half the cases, so sequences continue from an existing max
    conn.execute("INSERT INTO hub_updates (hub_ref, sequence, status, payload, created_at, attempts) "
                 "SELECT hub_ref, 1, 'routed', '{}'::json, received_at, 0 FROM cases WHERE id % 2 = 0")
    # bucket b in [0, 100): 0 = due a breach now, 1 = due a warning now, 2 = breached before, else on track.
    # acknowledge: 70% stopped; resolve: 30% stopped; so `cases` clocks are open in total
    clock_sql = f"""
        INSERT INTO sla_clocks (hub_ref, clock, service, authority, policy, priority, calendar, escalation, state,
            target_s, warn_s, spent_s, since, started_at, due_at, warn_at, stopped_at, stop_status, warned,
            breached, pauses, restarts, created_at, updated_at)
        SELECT c.hub_ref, k.clock, c.service, c.authority, c.service, 'normal', 'office', 'refuse-supervisors',
            CASE WHEN stopped THEN 'stopped' ELSE 'running' END,
            k.target, k.target * 3 / 4,
            CASE WHEN stopped THEN (k.target * (50 + b)) / 100 ELSE 0 END,
            CASE WHEN stopped THEN NULL ELSE c.received_at END,
            c.received_at,
            CASE WHEN stopped THEN c.received_at + k.target * interval '1 second'
                 WHEN b = 0 OR b = 2 THEN {now} - (1 + c.id % 600) * interval '1 minute'
                 WHEN b = 1 THEN {now} + (1 + c.id % 600) * interval '1 minute'
                 ELSE {now} + (1 + c.id % 20000) * interval '1 minute' + interval '1 day' END,
            CASE WHEN stopped THEN c.received_at + k.target * interval '0.75 second'
                 WHEN b <= 2 THEN {now} - (601 + c.id % 600) * interval '1 minute'
                 ELSE {now} + (1 + c.id % 20000) * interval '1 minute' END,
            CASE WHEN stopped THEN c.received_at + interval '3 hours' END,
            CASE WHEN stopped THEN 'resolved' END,
            NOT stopped AND b = 2, NOT stopped AND b = 2, 0, 0, c.received_at, c.received_at
        FROM cases c
        CROSS JOIN LATERAL (VALUES ('acknowledge', 144000, 70), ('resolve', 576000, 30)) AS k(clock, target, pct)
        CROSS JOIN LATERAL (SELECT ((c.id / 100) * 37 + length(k.clock)) % 100 AS b) r
        CROSS JOIN LATERAL (SELECT ((c.id * 29 + length(k.clock) * 31) % 100) < k.pct AS stopped) s
    """
    conn.execute(clock_sql)
    conn.execute("ANALYZE")


def run(cases: int, keep: bool) -> dict[str, float | int]:
    name = f"hubbridge_bench_sla_{os.getpid()}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        migrate(url)
        began = time.perf_counter()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}") as conn:
            load(conn, cases)
            conn.commit()
        load_s = time.perf_counter() - began
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}") as conn:
            clocks, open_clocks = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state <> 'stopped') FROM sla_clocks").fetchone()
        sla = SlaEngine.from_config(SHIPPED_CONFIG_DIR)
        engine = make_engine(url)
        with Session(engine) as s:
            began = time.perf_counter()
            result = sla.sweep(s, NOW)
            s.commit()
            sweep_s = time.perf_counter() - began
            # the steady state: beat sweeps every few seconds and most runs find nothing new to fire
            began = time.perf_counter()
            idle = sla.sweep(s, NOW + timedelta(seconds=2))
            s.commit()
            idle_s = time.perf_counter() - began
        with Session(engine) as s:
            began = time.perf_counter()
            rows = build_report(s, date(2025, 1, 1), date(2026, 12, 31), ["service", "authority"], now=NOW)
            report_s = time.perf_counter() - began
        engine.dispose()
        return {
            "sweep_s": round(sweep_s, 3), "sweep_idle_s": round(idle_s, 3), "idle_fired": idle.warnings + idle.breaches,
            "report_s": round(report_s, 3), "clocks": int(open_clocks),
            "cases": cases, "all_clocks": int(clocks), "warnings": result.warnings, "breaches": result.breaches,
            "hub_updates": result.hub_updates, "escalated": result.escalated,
            "brought_forward": result.brought_forward, "report_rows": len(rows),
            "report_volume": sum(r.volume for r in rows if r.clock == "resolve"), "load_s": round(load_s, 1),
        }
    finally:
        if not keep:
            from hubbridge.store import engine_for

            engine_for(url).dispose()
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000, help="cases to load (2 clocks each)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    figures = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"), **run(args.cases, args.keep)}
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>14}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
