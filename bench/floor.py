"""The floor: the least CPU one case can cost on this stack, whatever hubbridge's own code does.

`python -m bench.floor [--n N] [--json]`. A case must at least be received over HTTP, pass through
the broker once, be written to the store when it arrives and when it is delivered, and be sent over
HTTP to its back office and to the Hub. Each of those is measured here on its own, with nothing of
hubbridge's pipeline in it, on the same services the end-to-end benchmark uses:

- one message through RabbitMQ with hubbridge's reliability settings: the ceiling's empty task
  (publisher + worker CPU per task, `bench.stack.measure_ceiling`);
- one HTTP request served by the intake API's own stack (uvicorn + FastAPI, `GET /healthz`), the
  API process's CPU per request;
- one HTTP POST with `requests` to a loopback simulator in another process, the client's CPU;
- one store transaction inserting one row and committing (SQLAlchemy Core on PostgreSQL), the
  client's CPU plus its PostgreSQL backend's (from /proc).

`floor_cpu_ms_per_case` adds them up (one message, one request served, two calls made, two commits).
Its ratio to the empty task is the best `cpu_ratio` any implementation could reach here, and
2000 / floor is the most cases a second two dedicated cores could carry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from bench.stack import BenchStack, cpu_seconds, measure_ceiling, write_result


def _api_request_cpu_ms(stack: BenchStack, n: int) -> float:
    import requests

    stack.start_api()
    api = stack.procs["api"]
    with requests.Session() as http:
        for _ in range(50):  # warm: imports, first connections
            http.get(f"{stack.api_url}/healthz", timeout=10)
        before = cpu_seconds([api.pid])
        for _ in range(n):
            http.get(f"{stack.api_url}/healthz", timeout=10)
        after = cpu_seconds([api.pid])
    stack.stop_process("api")
    return (after - before) * 1000 / n


def _http_call_cpu_ms(url: str, n: int) -> float:
    import requests

    body = json.dumps({"ref": "WH-2026-000001", "sequence": 1, "status": "delivered",
                       "occurred_at": "2026-11-23T10:00:00+00:00", "backoffice_ref": "SR00001000"})
    headers = {"Authorization": "Bearer hub-demo-token", "Content-Type": "application/json"}
    with requests.Session() as http:
        http.trust_env = False  # as hubbridge's client: the environment is not re-read per request
        for _ in range(50):
            resp = http.post(url, data=body, headers=headers, timeout=10)
            if resp.status_code not in (200, 201, 202, 204, 409):  # measure real work, not a refusal
                raise RuntimeError(f"the Hub simulator answered {resp.status_code}: {resp.text[:200]}")
        started = time.process_time()
        for _ in range(n):
            http.post(url, data=body, headers=headers, timeout=10)
        return (time.process_time() - started) * 1000 / n


def _store_commit_cpu_ms(database_url: str, n: int) -> dict[str, float]:
    from sqlalchemy import create_engine, insert, text

    from hubbridge.store import EventRow, utcnow

    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        stmt = insert(EventRow)
        for i in range(50):
            with engine.begin() as conn:
                conn.execute(stmt, {"hub_ref": None, "kind": "bench.floor", "detail": {"i": i}, "at": utcnow()})
        server_before, started = cpu_seconds([backend]), time.process_time()
        for i in range(n):
            with engine.begin() as conn:
                conn.execute(stmt, {"hub_ref": None, "kind": "bench.floor", "detail": {"i": i}, "at": utcnow()})
        client = (time.process_time() - started) * 1000 / n
        server = (cpu_seconds([backend]) - server_before) * 1000 / n
    finally:
        engine.dispose()
    return {"client": round(client, 3), "postgresql": round(server, 3), "total": round(client + server, 3)}


def run(n: int = 2000) -> dict[str, Any]:
    with BenchStack(log_level="WARNING") as stack:
        ceiling = measure_ceiling(stack, n)
        assert stack.sims is not None
        hub_url = stack.sims.hub_endpoint.rstrip("/") + "/cases/WH-2026-000001/updates"
        http_ms = _http_call_cpu_ms(hub_url, n)
        commit = _store_commit_cpu_ms(stack.database_url, n)
        api_ms = _api_request_cpu_ms(stack, n)
    task_ms = ceiling["cpu_ms_per_task"]
    floor = task_ms + api_ms + 2 * http_ms + 2 * commit["total"]
    return {
        "n": n,
        "cpu_ms": {
            "broker_message": round(task_ms, 3),
            "api_request_served": round(api_ms, 3),
            "http_call_made": round(http_ms, 3),
            "store_commit": commit,
        },
        "floor_cpu_ms_per_case": round(floor, 2),
        "best_cpu_ratio": round(task_ms / floor, 3),
        "best_cases_per_s_on_2_cores": round(2000 / floor, 1),
        "best_month_70k_minutes": round(70_000 / (2000 / floor) / 60, 1),
        "ceiling": ceiling,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="repetitions of each piece")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    os.environ.setdefault("HUBBRIDGE_LOG_LEVEL", "WARNING")
    result = run(args.n)
    write_result("floor", result)
    if args.json:
        print(json.dumps(result))
    else:
        c = result["cpu_ms"]
        print(f"one broker message (empty task) : {c['broker_message']:.2f} ms CPU")
        print(f"one HTTP request served (API)   : {c['api_request_served']:.2f} ms")
        print(f"one HTTP call made (requests)   : {c['http_call_made']:.2f} ms")
        print(f"one store commit (+PostgreSQL)  : {c['store_commit']['total']:.2f} ms")
        print(f"floor per case                  : {result['floor_cpu_ms_per_case']:.2f} ms "
              f"(1 message + 1 request + 2 calls + 2 commits)")
        print(f"best possible CPU ratio         : {result['best_cpu_ratio']:.2f} (target >= 0.5)")
        print(f"best on two cores               : {result['best_cases_per_s_on_2_cores']:.0f} cases/s, "
              f"70,000 in {result['best_month_70k_minutes']} min (target < 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
