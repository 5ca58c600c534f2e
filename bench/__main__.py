"""Every benchmark in turn: `python -m bench [--quick] [--only e2e,latency,...]`.

Runs each as its own process with `--json` (the mapping and SLA benchmarks too), writes each result
to `var/bench/<name>.json` and a markdown table of figures against targets to `var/bench/results.md`
(the table the README and docs/performance.md quote). `--quick` runs small sizes for a smoke check;
without it the sizes are the issue's: 70,000 cases, 60 s at 50 cases/s, a 100,000-case soak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stack import RESULTS_DIR, ROOT


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    rows: Callable[[dict[str, Any]], list[tuple[str, str, str, bool | None]]]


def _e2e_rows(label: str) -> Callable[[dict[str, Any]], list[tuple[str, str, str, bool | None]]]:
    def rows(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
        minutes = r.get("month_70k_minutes")
        return [
            (f"{label}: cases/s (ceiling {r['ceiling_tasks_per_s']} empty tasks/s)", f"{r['cases_per_s']}",
             ">= half the ceiling", r["ratio"] >= 0.5),
            (f"{label}: ratio to the ceiling", f"{r['ratio']}", ">= 0.5", r["ratio"] >= 0.5),
            (f"{label}: 70,000 cases at that rate", f"{minutes} min", "< 3 min",
             minutes is not None and minutes < 3),
            (f"{label}: CPU per case (all components)", f"{r['cpu_ms_per_case']['total']} ms", "", None),
            (f"{label}: lost", f"{r['lost']}", "0", r["lost"] == 0),
        ]

    return rows


BENCHMARKS = (
    Benchmark("mapping", "bench.mapping", (), ("--cases", "5000", "--rounds", "2"), lambda r: [
        ("mapping engine, cases/s on one core", f"{r['engine_per_s']}", ">= 20,000", r["engine_per_s"] >= 20_000),
        ("mapping engine / hand-written", f"{r['ratio']}", ">= 0.5", r["ratio"] >= 0.5),
    ]),
    Benchmark("sla", "bench.sla", (), ("--cases", "50000"), lambda r: [
        (f"SLA sweep over {r['clocks']:,} open clocks", f"{r['sweep_s']} s", "", None),
        (f"SLA report over {r['cases']:,} cases", f"{r['report_s']} s", "", None),
    ]),
    Benchmark("e2e", "bench.e2e", ("--cases", "70000"), ("--cases", "500", "--ceiling-tasks", "2000"),
              _e2e_rows("RabbitMQ + PostgreSQL")),
    Benchmark("e2e-embedded", "bench.e2e", ("--embedded", "--cases", "70000"),
              ("--embedded", "--cases", "300", "--ceiling-tasks", "1000"), _e2e_rows("embedded default")),
    Benchmark("latency", "bench.latency", ("--rate", "50", "--seconds", "60"), ("--rate", "50", "--seconds", "5"),
              lambda r: [
                  (f"latency at {r['rate']:g}/s: p50 / p95", f"{r['p50']} / {r['p95']} ms", "", None),
                  (f"latency at {r['rate']:g}/s: p99", f"{r['p99']} ms", "< 250 ms", r["p99"] < 250),
                  ("latency run: delivered / offered", f"{r.get('delivered_per_s')} / {r['offered_per_s']} cases/s",
                   "", None),
                  ("latency run: lost", f"{r['lost']}", "0", r["lost"] == 0),
              ]),
    Benchmark("memory", "bench.memory", ("--cases", "100000"), ("--cases", "2000", "--batch", "500"), lambda r: [
        (f"worker RSS growth after warm-up ({r['cases']:,} cases)", f"{r['growth_pct']}%", "< 10%",
         r["growth_pct"] < 10),
        ("worker RSS after warm-up / end", f"{r['rss_after_warmup_mib']} / {r['rss_end_mib']} MiB", "", None),
        (f"soak: {r['cases']:,} cases settled at", f"{r.get('cases_per_s')} cases/s", "", None),
        ("soak: the 70,000th case settled after", f"{r.get('minutes_to_70k')} min", "< 3 min",
         r.get("minutes_to_70k") is not None and r["minutes_to_70k"] < 3),
    ]),
    Benchmark("floor", "bench.floor", ("--n", "3000"), ("--n", "300"), lambda r: [
        ("floor: least CPU a case can cost on this stack", f"{r['floor_cpu_ms_per_case']} ms", "", None),
        ("floor: best CPU ratio any pipeline could reach", f"{r['best_cpu_ratio']}", ">= 0.5 reachable",
         r["best_cpu_ratio"] >= 0.5),
        ("floor: 70,000 cases on two cores at best", f"{r['best_month_70k_minutes']} min", "< 3 min reachable",
         r["best_month_70k_minutes"] < 3),
    ]),
)


def run_one(bench: Benchmark, quick: bool, timeout: float) -> dict[str, Any]:
    args = [sys.executable, "-m", bench.module, "--json", *(bench.quick if quick else bench.full)]
    started = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(args[1:])} printed no JSON (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    result["_command"] = "python " + " ".join(args[1:])
    result["_wall_s"] = round(time.monotonic() - started, 1)
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    out = ["| benchmark | measured | target | met |", "|---|---|---|---|"]
    for bench in BENCHMARKS:
        r = results.get(bench.name)
        if r is None:
            continue
        if "error" in r:
            out.append(f"| {bench.name} | failed: {r['error'][:80]} | | no |")
            continue
        for what, value, target, met in bench.rows(r):
            out.append(f"| {what} | {value} | {target} | {'' if met is None else ('yes' if met else 'no')} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for each benchmark")
    args = parser.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    load_before = Path("/proc/loadavg").read_text().split()[0]  # other work on the machine skews every figure
    results: dict[str, dict[str, Any]] = {}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for bench in BENCHMARKS:
        if wanted and bench.name not in wanted:
            continue
        print(f"== {bench.name}", flush=True)
        try:
            results[bench.name] = run_one(bench, args.quick, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            results[bench.name] = {"error": str(exc)}
            print(str(exc)[-2000:], file=sys.stderr)
        (RESULTS_DIR / f"{bench.name}.json").write_text(json.dumps(results[bench.name], indent=2) + "\n")
    header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
              f"({'--quick sizes' if args.quick else 'full sizes'}); load average before: "
              f"{load_before}\n\n")
    text = header + table(results)
    (RESULTS_DIR / "results.md").write_text(text)
    print(text)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
