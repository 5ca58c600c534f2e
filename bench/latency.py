"""Latency: at a steady rate of Hub cases, how long from intake until the Hub has the back-office reference.

`python -m bench.latency --rate 50 --seconds 60 [--json] [--embedded]` posts cases on a fixed schedule
(rate x seconds cases, mixed across the four service areas) to the intake API of a whole hubbridge on
loopback and reports p50 / p95 / p99 / max of (Hub simulator's receipt of the delivered update) minus
(the case's scheduled intake time). Target: p99 < 250 ms at 50 cases/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.stack import BenchStack, cases_for, cpu_per_case, stack_arguments, write_result


def run(
    rate: float,
    seconds: float,
    *,
    embedded: bool = False,
    concurrency: int | None = None,
    pool: str = "prefork",
    lanes: bool | None = None,
    log_level: str = "INFO",
    profile: bool = False,
) -> dict[str, Any]:
    n = max(1, int(rate * seconds))
    generated = cases_for(n)
    with BenchStack(embedded=embedded, concurrency=concurrency, pool=pool, lanes=lanes,
                    log_level=log_level) as stack:
        stack.start_pipeline()
        # a few cases first, so connection set-up and imports in the worker are not counted as latency
        warm = cases_for(20, seed=99)
        for i, case in enumerate(warm):
            case["ref"] = f"WH-2026-9{i:05d}"
        stack.submit(warm)
        stack.wait_settled(len(warm), 60)
        if profile:
            stack.start_profiles("latency-embedded" if embedded else "latency")
        cpu_before = stack.cpu_snapshot()
        submitted = stack.submit(generated, rate=rate)
        stack.wait_settled(submitted.accepted + len(warm), 120)
        cpu = cpu_per_case(cpu_before, stack.cpu_snapshot(), submitted.accepted)
        out = stack.outcome(submitted)
        stack.stop_profiles()
    span = submitted.last - submitted.first
    return {
        "rate": rate,
        "seconds": seconds,
        "cases": n,
        "offered_per_s": round((len(submitted.at) - 1) / span, 1) if span > 0 else 0.0,
        # below the offered rate, the stack is past its capacity and the queue (and so latency) grows all run
        "delivered_per_s": out["cases_per_s"],
        **out["latency_ms"],
        # at the offered rate, two cores can give each case at most 2000 / rate ms of CPU, the harness included
        "cpu_ms_per_case": cpu,
        # back-office changes (polled, or pushed by webhook) that reached the Hub during the run, and how long
        # after each change
        "sync": out["sync"],
        "lost": out["lost"],
        "acknowledged": out["acknowledged"],
        "dead_lettered": out["dead_lettered"],
        "broker": "embedded+sqlite" if embedded else "rabbitmq",
        "store": "sqlite" if embedded else "postgresql",
        "worker": stack.worker_layout(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="cases per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    stack_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and worker into var/bench/profiles/")
    args = parser.parse_args(argv)
    result = run(args.rate, args.seconds, embedded=args.embedded, concurrency=args.concurrency, pool=args.pool,
                 lanes=args.lanes, log_level=args.log_level, profile=args.profile)
    write_result("latency-embedded" if args.embedded else "latency", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['cases']} cases at {result['offered_per_s']}/s: p50 {result['p50']} ms, "
              f"p95 {result['p95']} ms, p99 {result['p99']} ms (target < 250), max {result['max']} ms; "
              f"lost {result['lost']}; delivered {result['delivered_per_s']}/s; {result['sync']['updates']} "
              f"back-office changes synced, p95 {result['sync']['lag_ms']['p95']} ms after the change")
    return 1 if result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
