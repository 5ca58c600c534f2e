"""The benchmark harness runs end to end with a handful of cases and accounts for every one of them.

No timing is asserted (figures belong in the benchmark output); what is checked is that the harness
measures something real: every case reaches the Hub simulator or a dead letter, none twice, and the
ceiling worker really ran every empty task.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import e2e, latency
from bench.__main__ import BENCHMARKS, table

CASES = 8


def _check(result: dict, ceiling_tasks: int) -> None:
    assert result["lost"] == 0, result
    assert result["acknowledged"] + result["dead_lettered"] == CASES, result
    assert result["acknowledged"] > 0, result
    assert result["duplicate_jobs"] == 0 and result["out_of_order"] == 0, result
    assert result["ceiling"]["completed"] == ceiling_tasks, result
    assert result["cases_per_s"] > 0 and result["ceiling_tasks_per_s"] > 0
    assert result["cpu_ms_per_case"]["worker"] > 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]


def test_end_to_end_harness_on_the_embedded_default(tmp_path: Path) -> None:
    result = e2e.run(CASES, embedded=True, ceiling_tasks=20, timeout=180, root=tmp_path / "run")
    _check(result, 20)
    assert result["broker"] == "embedded+sqlite"
    # the embedded default runs one worker on every queue, as `hubbridge demo` does
    assert "lanes" not in result["worker"] and "sync_lane" not in result["cpu_ms_per_case"], result


@pytest.mark.services
def test_end_to_end_harness_on_rabbitmq_and_postgresql(tmp_path: Path) -> None:
    result = e2e.run(CASES, ceiling_tasks=20, timeout=180, root=tmp_path / "run")
    _check(result, 20)
    assert result["broker"] == "rabbitmq" and result["store"] == "postgresql"
    # deployed as the README says: a delivery lane and a sync lane beside it, whose CPU (polls, reconcile,
    # the back offices' updates to the Hub) counts in the case's cost
    from hubbridge.config.settings import Settings

    assert result["worker"]["lanes"] == {"delivery": Settings().resolved_worker_concurrency, "sync": 1}, result
    cpu = result["cpu_ms_per_case"]
    assert cpu["sync_lane"] > 0, result
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k not in ("driver", "total")), abs=0.05)


def test_results_table_marks_targets_met_and_missed() -> None:
    e2e_bench = next(b for b in BENCHMARKS if b.name == "e2e")
    result = {"cases_per_s": 120.0, "ceiling_tasks_per_s": 200.0, "ratio": 0.6, "month_70k_minutes": 9.7,
              "cpu_ms_per_case": {"total": 30.0}, "lost": 0}
    text = table({"e2e": result})
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()[2:]}
    assert rows["RabbitMQ + PostgreSQL: ratio to the ceiling"].endswith("| yes |")
    assert rows["RabbitMQ + PostgreSQL: 70,000 cases at that rate"].endswith("| no |")
    assert len(e2e_bench.rows(result)) == len(rows)


def test_results_table_shows_what_a_latency_run_delivered_against_what_it_offered() -> None:
    result = {"rate": 50.0, "offered_per_s": 50.0, "delivered_per_s": 41.3, "p50": 2400.0, "p95": 6400.0,
              "p99": 6700.0, "max": 7000.0, "lost": 0}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table({"latency": result}).splitlines()[2:]}
    assert "| 41.3 / 50.0 cases/s |" in rows["latency run: delivered / offered"]
    assert rows["latency at 50/s: p99"].endswith("| no |")


def test_sync_lag_runs_from_the_back_offices_change_to_the_hubs_receipt_of_it() -> None:
    from datetime import UTC, datetime, timedelta

    from bench.stack import sync_lags
    from hubbridge.case import CaseUpdate, HubStatus
    from hubbridge.config.models import HubEndpoint
    from hubbridge.connectors.hub import HubConnector, HubSimulator

    ref, now = "WH-2026-000123", datetime.now(UTC)
    with HubSimulator(token="t") as sim, \
            HubConnector(HubEndpoint(endpoint=sim.endpoint, token_env="TOKEN"), env={"TOKEN": "t"}) as hub:
        # delivered a minute ago (the delivery's own latency, not a sync), then a change made 3 s ago
        hub.push_update(CaseUpdate(ref=ref, status=HubStatus.DELIVERED, sequence=1, backoffice_ref="J1",
                                   occurred_at=now - timedelta(minutes=1)))
        hub.push_update(CaseUpdate(ref=ref, status=HubStatus.IN_PROGRESS, sequence=2,
                                   occurred_at=now - timedelta(seconds=3)))
        lags = sync_lags(sim, [ref, "WH-2026-000124"])
    assert len(lags) == 1 and 3.0 <= lags[0] < 30.0


def test_latency_harness_accounts_for_every_case_and_its_cpu() -> None:
    result = latency.run(4, 2, embedded=True)
    assert result["cases"] == 8 and result["lost"] == 0, result
    assert result["acknowledged"] + result["dead_lettered"] == 8, result
    assert result["delivered_per_s"] > 0 and result["p50"] <= result["p99"] <= result["max"]
    # the CPU the cases cost, by process, read from /proc over the scheduled run
    assert result["cpu_ms_per_case"]["worker"] > 0 and result["cpu_ms_per_case"]["api"] > 0, result
    assert result["cpu_ms_per_case"]["total"] >= result["cpu_ms_per_case"]["worker"]
    sync = result["sync"]
    assert sync["lag_ms"]["p50"] <= sync["lag_ms"]["p99"] <= sync["lag_ms"]["max"], result
    # measured as deployed: the worker's own default pool size unless the run asks for another
    from hubbridge.config.settings import Settings

    assert result["worker"]["concurrency"] == Settings().resolved_worker_concurrency


@pytest.mark.services
def test_floor_measures_each_piece_a_case_cannot_do_without() -> None:
    from bench import floor

    result = floor.run(200)  # enough that /proc's 10 ms CPU ticks see every piece
    pieces = result["cpu_ms"]
    assert result["ceiling"]["completed"] == 200  # the broker message is a real task, run by a real worker
    assert pieces["broker_message"] > 0 and pieces["api_request_served"] > 0 and pieces["http_call_made"] > 0
    assert pieces["store_commit"]["client"] > 0 and pieces["store_commit"]["postgresql"] >= 0
    assert result["floor_cpu_ms_per_case"] == pytest.approx(
        pieces["broker_message"] + pieces["api_request_served"] + 2 * pieces["http_call_made"]
        + 2 * pieces["store_commit"]["total"], abs=0.05)


def test_memory_soak_samples_the_worker_and_accounts_for_every_case() -> None:
    from bench import memory

    # three batches, each settled before the next is posted; sampled often enough that a fast run has samples
    result = memory.run(300, embedded=True, batch=100, sample_every=0.1)
    assert result["lost"] == 0, result
    assert result["samples"] >= 4 and result["series"], result
    assert all(n <= 300 for _, n, _ in result["series"]) and result["series"][-1][1] > 0
    # the resident set of a worker and its pool processes is tens of MiB at the least
    assert result["rss_after_warmup_mib"] > 20 and result["rss_peak_mib"] >= result["rss_end_mib"]
    assert result["minutes_to_70k"] is None  # 300 cases never reach a month's


def test_the_driver_posts_again_when_the_api_closed_its_idle_connection(tmp_path: Path) -> None:
    """At a slow rate a driver thread's kept-alive connection sits idle past uvicorn's 5 s keep-alive and is
    closed under it: the case is posted again on a new connection, not counted as refused."""
    from bench.stack import BenchStack, cases_for

    with BenchStack(embedded=True, root=tmp_path / "run") as stack:
        stack.start_pipeline()
        # two driver threads at 0.3 cases/s: the first thread's second case comes 6.7 s after its first
        submitted = stack.submit(cases_for(3), rate=0.3, threads=1)
        assert (submitted.accepted, submitted.refused) == (3, 0)
        stack.wait_settled(3, 120)
        assert stack.acknowledged_and_dead() == (3, 0)
