"""Memory: the worker's resident memory over a long soak of Hub cases, and how much it grows after warm-up.

`python -m bench.memory --cases 100000 [--json] [--embedded]` posts the cases flat out to a whole
hubbridge on loopback and samples the resident set (VmRSS from /proc) of the worker and its pool
processes once a second. Warm-up is the first 10% of the cases; growth is the mean of the last tenth
of the samples over the mean of the samples taken just after warm-up. Target: growth < 10%.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.stack import BenchStack, cases_for, rss_kib, stack_arguments, write_result


def run(
    cases: int,
    *,
    embedded: bool = False,
    concurrency: int | None = None,
    pool: str = "prefork",
    lanes: bool | None = None,
    log_level: str = "WARNING",
    batch: int = 5000,
    sample_every: float = 1.0,
) -> dict[str, Any]:
    samples: list[tuple[float, int, int]] = []  # (seconds, settled cases, RSS KiB)
    with BenchStack(embedded=embedded, concurrency=concurrency, pool=pool, lanes=lanes,
                    log_level=log_level) as stack:
        stack.start_pipeline()
        stop = threading.Event()
        started = time.monotonic()
        # a soak takes the best part of an hour: show the person waiting how far it is (on stderr, so --json
        # output stays one object)
        progress = Progress(TextColumn("soak"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rss]}"),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        bar = progress.add_task("soak", total=cases, rss="")

        def sample() -> None:
            while not stop.wait(sample_every):
                acked, dead = stack.acknowledged_and_dead()
                rss = rss_kib(stack.worker_pids())  # both lanes, when split
                samples.append((time.monotonic() - started, acked + dead, rss))
                progress.update(bar, completed=acked + dead, rss=f"worker {rss / 1024:.0f} MiB")

        sampler = threading.Thread(target=sample, daemon=True)
        accepted = lost = 0
        with progress:
            sampler.start()
            try:
                # in batches, so the driver never holds 100,000 cases in memory and the queue stays short
                for first in range(0, cases, batch):
                    size = min(batch, cases - first)
                    chunk = cases_for(size, seed=first + 1)
                    for i, case in enumerate(chunk):
                        case["ref"] = f"WH-2026-{first + i + 1:06d}"  # unique across batches
                    sub = stack.submit(chunk)
                    accepted += sub.accepted
                    stack.wait_settled(accepted, 600)
                    lost += stack.outcome(sub)["lost"]
            finally:
                stop.set()
                sampler.join(5)
    warm_cases = cases * 0.1
    after_warm = [s for s in samples if s[1] >= warm_cases]
    if len(after_warm) < 4:
        raise RuntimeError("too few samples after warm-up: run more cases")
    head = after_warm[: max(1, len(after_warm) // 10)]
    tail = after_warm[-max(1, len(after_warm) // 10) :]
    base = sum(s[2] for s in head) / len(head)
    end = sum(s[2] for s in tail) / len(tail)
    month = next((t for t, n, _ in samples if n >= 70_000), None)
    duration = samples[-1][0] if samples else 0.0
    return {
        "cases": cases,
        "lost": lost,
        # the soak is also the longest throughput run: cases settled per second over the whole of it,
        # and when the 70,000th (a month of the Hub) had settled
        "cases_per_s": round(samples[-1][1] / duration, 1) if duration else 0.0,
        "minutes_to_70k": round(month / 60, 1) if month is not None else None,
        "samples": len(samples),
        "rss_after_warmup_mib": round(base / 1024, 1),
        "rss_end_mib": round(end / 1024, 1),
        "rss_peak_mib": round(max(s[2] for s in samples) / 1024, 1),
        "growth_pct": round((end - base) / base * 100, 2),
        "duration_s": round(samples[-1][0], 1) if samples else 0.0,
        "broker": "embedded+sqlite" if embedded else "rabbitmq",
        "worker": stack.worker_layout(),
        "series": [[round(t, 1), n, kib] for t, n, kib in samples[:: max(1, len(samples) // 60)]],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    stack_arguments(parser)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--batch", type=int, default=5000, help="cases posted before waiting for them to settle")
    args = parser.parse_args(argv)
    result = run(args.cases, embedded=args.embedded, concurrency=args.concurrency, pool=args.pool,
                 lanes=args.lanes, log_level=args.log_level, batch=args.batch)
    write_result("memory-embedded" if args.embedded else "memory", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"worker RSS after warm-up {result['rss_after_warmup_mib']} MiB, at the end {result['rss_end_mib']} MiB: "
              f"growth {result['growth_pct']}% (target < 10%); {result['lost']} lost of {result['cases']}")
    return 1 if result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
