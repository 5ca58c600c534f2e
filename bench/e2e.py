"""End to end: Hub cases from intake to delivered-and-acknowledged in the Hub, against the stack's own ceiling.

`python -m bench.e2e --cases N [--json] [--embedded]` starts a whole hubbridge on loopback (intake
API, one worker, beat, the Hub and four back-office simulators; RabbitMQ + PostgreSQL, or with
`--embedded` the embedded SQLite broker and store), first measures the ceiling (an empty Celery task
with the same acks-late, persistent, confirmed, prefetch settings and the same worker concurrency, on
the same broker), then posts N cases mixed across the four service areas and counts, from the Hub
simulator's own records, how fast they came back delivered. Target: cases/s >= half the ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.stack import BenchStack, cases_for, cpu_per_case, measure_ceiling, stack_arguments, write_result


def run(
    cases: int,
    *,
    embedded: bool = False,
    concurrency: int | None = None,
    pool: str = "prefork",
    lanes: bool | None = None,
    ceiling_tasks: int | None = None,
    threads: int = 4,
    log_level: str = "INFO",
    timeout: float | None = None,
    profile: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    generated = cases_for(cases)
    where = {"root": root} if root else {}
    with BenchStack(embedded=embedded, concurrency=concurrency, pool=pool, lanes=lanes, log_level=log_level,
                    **where) as stack:
        ceiling = measure_ceiling(stack, ceiling_tasks or min(max(2 * cases, 1000), 20_000))
        stack.start_pipeline()
        if profile:
            stack.start_profiles("e2e-embedded" if embedded else "e2e")
        cpu_before = stack.cpu_snapshot()
        submitted = stack.submit(generated, threads=threads)
        intake_s = submitted.last - submitted.first
        # long enough for a slow machine (2 cases/s) before unfinished cases are counted as lost
        limit = timeout if timeout is not None else max(600.0, cases / 2)
        settled = stack.wait_settled(submitted.accepted, limit)
        cpu = cpu_per_case(cpu_before, stack.cpu_snapshot(), submitted.accepted)
        out = stack.outcome(submitted)
        stack.stop_profiles()
    return {
        "cases": cases,
        "cases_per_s": out["cases_per_s"],
        "ceiling_tasks_per_s": ceiling["ceiling_tasks_per_s"],
        "ratio": round(out["cases_per_s"] / ceiling["ceiling_tasks_per_s"], 3) if ceiling["ceiling_tasks_per_s"] else 0,
        "lost": out["lost"],
        "timed_out": settled < submitted.accepted,
        "acknowledged": out["acknowledged"],
        "dead_lettered": out["dead_lettered"],
        "duplicate_jobs": out["duplicate_jobs"],
        "out_of_order": out["out_of_order"],
        "elapsed_s": out["elapsed_s"],
        "intake_per_s": round(submitted.accepted / intake_s, 1) if intake_s > 0 else 0.0,
        "latency_ms": out["latency_ms"],
        "ceiling": ceiling,
        "cpu_ms_per_case": cpu,
        # what two dedicated cores could sustain if CPU were the only limit: 2 s of CPU per second
        "cpu_bound_cases_per_s": round(2000 / cpu["total"], 1) if cpu.get("total") else None,
        # the same ratio with contention taken out: CPU per empty task over CPU per case
        "cpu_ratio": round(ceiling["cpu_ms_per_task"] / cpu["total"], 3) if cpu.get("total") else None,
        "month_70k_minutes": round(70_000 / out["cases_per_s"] / 60, 1) if out["cases_per_s"] else None,
        "broker": "embedded+sqlite" if embedded else "rabbitmq",
        "store": "sqlite" if embedded else "postgresql",
        "worker": stack.worker_layout(),
        "log_level": log_level,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def stage_costs(cases: int, *, embedded: bool = False) -> dict[str, Any]:
    """Each pipeline step run in this process, no queue: store statements, commits and CPU ms per case.

    This is the profile behind the end-to-end figure with the broker and contention taken out: what a
    case costs the store and the CPU at intake, delivery and the Hub push.
    """
    import os

    from sqlalchemy import event

    from hubbridge.config.settings import get_settings
    from hubbridge.store import engine_for
    from hubbridge.workflows.delivery import deliver_case
    from hubbridge.workflows.intake import accept_case
    from hubbridge.workflows.outbox import push_cases, push_hub
    from hubbridge.workflows.runtime import Runtime
    from hubbridge.workflows.sync import poll_connector

    generated = cases_for(cases, seed=11)
    with BenchStack(embedded=embedded, log_level="WARNING") as stack:
        saved = dict(os.environ)
        os.environ.update(stack.env)
        get_settings.cache_clear()
        try:
            rt = Runtime()
            counts = {"statements": 0, "commits": 0}
            engine = engine_for(rt.url)

            def on_statement(*_: Any) -> None:
                counts["statements"] += 1

            def on_commit(*_: Any) -> None:
                counts["commits"] += 1

            event.listen(engine, "before_cursor_execute", on_statement)
            event.listen(engine, "commit", on_commit)
            stages: dict[str, dict[str, float]] = {
                k: {"statements": 0, "commits": 0, "cpu_ms": 0.0, "wall_ms": 0.0}
                for k in ("intake", "deliver", "push", "sync", "sync_push")
            }

            def timed(stage: str, fn: Any, *args: Any) -> Any:
                before = dict(counts)
                cpu, wall = time.process_time(), time.perf_counter()
                out = fn(*args)
                st = stages[stage]
                st["cpu_ms"] += (time.process_time() - cpu) * 1000
                st["wall_ms"] += (time.perf_counter() - wall) * 1000
                st["statements"] += counts["statements"] - before["statements"]
                st["commits"] += counts["commits"] - before["commits"]
                return out

            # loading mappings and opening connections is start-up, as in a worker: not counted
            rt.warm()
            for case in cases_for(20, seed=5):
                case["ref"] = "WH-2026-9" + case["ref"][-5:]
                accept_case(rt, json.dumps(case))
                deliver_case(rt, case["ref"])
                push_hub(rt, case["ref"])
            for stage in stages.values():
                stage.update(statements=0, commits=0, cpu_ms=0.0, wall_ms=0.0)
            delivered = 0
            for case in generated:
                timed("intake", accept_case, rt, json.dumps(case))
                outcome = timed("deliver", deliver_case, rt, case["ref"])
                if outcome.kind == "done":
                    delivered += 1
                if outcome.push:
                    # the delivery told the Hub itself; a push is left only when the Hub could not take it then
                    timed("push", push_hub, rt, case["ref"], outcome.updates or None)
            # the back offices' feeds now hold each new job: pull them as beat would, then push what they made
            # (each page's Hub updates pushed in one batch, as the poll task does)
            pulled: set[str] = set()
            for name in rt.config.connectors:
                while True:
                    polled = timed("sync", poll_connector, rt, name)
                    pulled.update(polled.push)
                    if polled.push:
                        timed("sync_push", push_cases, rt, polled.push)
                    if not polled.more:
                        break
            rt.close()
        finally:
            os.environ.clear()
            os.environ.update(saved)
            get_settings.cache_clear()
    # every stage per case delivered, so the rows add up to what one case costs
    per = {"intake": cases, "deliver": cases, "push": max(delivered, 1), "sync": max(delivered, 1),
           "sync_push": max(delivered, 1)}
    return {
        "cases": cases,
        "delivered": delivered,
        "sync_pushes": len(pulled),
        "store": "sqlite" if embedded else "postgresql",
        "per_case": {k: {m: round(v / per[k], 2) for m, v in st.items()} for k, st in stages.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    stack_arguments(parser)
    parser.add_argument("--ceiling-tasks", type=int, default=None, help="empty tasks for the ceiling")
    parser.add_argument("--threads", type=int, default=4, help="driver threads posting cases")
    parser.add_argument("--log-level", default="INFO", help="hubbridge log level in the API and worker")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for cases to settle (default: the larger of 600 and cases/2)")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and worker into var/bench/profiles/")
    parser.add_argument("--stages", action="store_true",
                        help="instead: run each pipeline step in-process and count store statements and CPU per case")
    args = parser.parse_args(argv)
    if args.stages:
        stages = stage_costs(args.cases, embedded=args.embedded)
        write_result("stages-embedded" if args.embedded else "stages", stages)
        print(json.dumps(stages, indent=None if args.json else 2))
        return 0
    result = run(args.cases, embedded=args.embedded, concurrency=args.concurrency, pool=args.pool,
                 lanes=args.lanes, ceiling_tasks=args.ceiling_tasks, threads=args.threads, log_level=args.log_level,
                 timeout=args.timeout, profile=args.profile)
    write_result("e2e-embedded" if args.embedded else "e2e", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"end to end : {result['cases_per_s']:>8,.1f} cases/s ({result['acknowledged']} acknowledged, "
              f"{result['lost']} lost, {result['elapsed_s']} s)")
        print(f"ceiling    : {result['ceiling_tasks_per_s']:>8,.1f} empty tasks/s on the same broker")
        print(f"ratio      : {result['ratio']:.2f} (target >= 0.5)")
        print(f"70,000     : {result['month_70k_minutes']} min at this rate (target < 3)")
        print(f"CPU        : {result['cpu_ms_per_case']} ms per case")
    return 1 if result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
