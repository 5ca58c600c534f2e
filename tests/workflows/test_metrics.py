"""Every process's metrics on the API's /metrics: real worker, beat and API processes, scraped over HTTP.

The deliveries are counted in Celery pool processes and the SLA sweep in another; the API adds up the metric
files they write. The store is the oracle for what the counts must be.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from hubbridge.store import CaseRow, DeadLetterRow, session_scope
from hubbridge.workflows import queues
from hubbridge.workflows.casegen import generate_cases
from tests.conftest import AMQP_URL

from .stack import Stack, purge_queues

REFUSE = ("refuse.missed-collection",)
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(stack: Stack) -> Samples:
    """Every sample /metrics serves, by (name, labels)."""
    answer = requests.get(f"{stack.api_url}/metrics", timeout=30,
                          headers={"Authorization": f"Bearer {stack.env['HUBBRIDGE_API_TOKEN']}"})
    assert answer.status_code == 200, answer.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def by_case(stack: Stack) -> dict[tuple[str, str, str], int]:
    """Delivered cases per (connector, service, authority), from the store."""
    with session_scope(stack.database_url) as s:
        rows = s.execute(select(CaseRow.connector, CaseRow.service, CaseRow.authority, func.count())
                         .where(CaseRow.stage.in_(("delivered", "acknowledged")))
                         .group_by(CaseRow.connector, CaseRow.service, CaseRow.authority)).all()
    return {(c, sv, a): int(n) for c, sv, a, n in rows}


def refused_cases(stack: Stack, n: int, start_serial: int) -> list[dict]:
    """Cases the back office refuses (a UPRN not in its gazetteer): each dead-lettered at deliver, `refused`."""
    bad = sorted(stack.sims["bartec"].unknown_uprns)[0]
    cases = list(generate_cases(n, services=REFUSE, start_serial=start_serial))
    for case in cases:
        case["location"]["uprn"] = bad
        case["customer"]["address"]["uprn"] = bad
    return cases


def kill_worker(stack: Stack) -> None:
    """SIGKILL the worker and its pool: no shutdown hook runs, as when a machine dies."""
    proc = stack.procs.pop("worker")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(20)


def wait_scraped(stack: Stack, name: str, want: float, timeout: float = 30.0) -> Samples:
    """Scrape until `name` totals `want` (a count is added after the commit the store shows first)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(stack)
        if total(samples, name) >= want or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def check_every_process_counts(stack: Stack) -> None:
    good = list(generate_cases(12, services=REFUSE, seed=31, start_serial=1))
    bad = refused_cases(stack, 3, start_serial=101)
    assert stack.submit(good + bad)["accepted"] == 15
    assert stack.wait_settled(15) >= 15, stack.logs()

    samples = wait_scraped(stack, "hubbridge_deliveries_total", 12)
    delivered = by_case(stack)
    assert sum(delivered.values()) == 12
    for (connector, service, authority), n in delivered.items():
        labels = {"connector": connector, "service": service, "authority": authority}
        # counted in the worker's pool processes, not in the API that serves them
        assert total(samples, "hubbridge_deliveries_total", **labels) == n, (labels, stack.logs())
        assert total(samples, "hubbridge_delivery_seconds_count", **labels) == n
        assert total(samples, "hubbridge_delivery_seconds_sum", **labels) > 0
        assert total(samples, "hubbridge_intake_to_delivery_seconds_count", **labels) == n
        assert total(samples, "hubbridge_hub_push_seconds_count", **labels) >= n
        assert total(samples, "hubbridge_hub_pushes_total", outcome="sent", **labels) >= n
    assert total(samples, "hubbridge_dead_letters_total", stage="deliver", reason="refused") == 3
    assert total(samples, "hubbridge_dead_letters_open", reason="refused") == 3
    # an unlabelled histogram made at import in the worker: the set-up came before any metric was made
    assert total(samples, "hubbridge_sla_sweep_seconds_count") > 0
    # read at the scrape: the circuit from the store, the queues from the broker
    connector = next(iter(delivered))[0]
    assert total(samples, "hubbridge_circuit_state", connector=connector, state="closed") == 1
    assert total(samples, "hubbridge_circuit_state", connector=connector, state="open") == 0
    assert total(samples, "hubbridge_broker_up") == 1
    assert {q for q in queues.ALL if ("hubbridge_queue_depth", frozenset({("queue", q)})) in samples} == set(queues.ALL)
    assert total(samples, "hubbridge_queue_depth", queue=queues.DELIVER) == 0  # all delivered

    # a worker killed outright and started again: what the dead one counted stays, the new one adds to it
    kill_worker(stack)
    assert total(scrape(stack), "hubbridge_deliveries_total") == 12
    stack.start_worker()
    more = list(generate_cases(8, services=REFUSE, seed=33, start_serial=201))
    assert stack.submit(more)["accepted"] == 8
    assert stack.wait_settled(23) >= 23, stack.logs()
    samples = wait_scraped(stack, "hubbridge_deliveries_total", 20)
    assert total(samples, "hubbridge_deliveries_total") == sum(by_case(stack).values()) == 20
    assert total(samples, "hubbridge_delivery_seconds_count") == 20
    with session_scope(stack.database_url) as s:
        dead = s.scalar(select(func.count()).select_from(DeadLetterRow))
    assert total(samples, "hubbridge_dead_letters_total") == dead == 3


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}",
                  f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}")
    stack.start()
    stack.start_api()
    yield stack
    stack.stop()


def test_workers_counts_reach_the_apis_metrics_on_the_embedded_default(embedded: Stack) -> None:
    check_every_process_counts(embedded)
    # every process wrote its own files to the run's metrics directory, not to the API's memory
    assert len(list((embedded.root / "metrics").glob("counter_*.db"))) >= 3


class ShortSlaStack(Stack):
    """Missed-bin clocks of seconds on the 24/7 calendar, without an escalation: they warn and breach in the run."""

    def adjust_config(self, cfg: Path) -> None:
        from ruamel.yaml import YAML

        yaml = YAML()
        sla = yaml.load((cfg / "sla.yaml").read_text())
        sla["policies"]["refuse.missed-collection"] = {
            "calendar": "always",
            "clocks": {"acknowledge": {"target": {"elapsed_hours": 0.001}},  # 3.6 s
                       "resolve": {"target": {"elapsed_hours": 0.002}}},
        }
        with (cfg / "sla.yaml").open("w") as fh:
            yaml.dump(sla, fh)


def test_sla_warnings_and_breaches_the_workers_sweep_counts_reach_metrics(tmp_path: Path) -> None:
    from hubbridge.sla.tables import SlaClockRow

    stack = ShortSlaStack(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}",
                          f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}")
    try:
        stack.start(tick_seconds=30.0)  # the back office sits on its jobs: the clocks run out
        stack.start_api()
        assert stack.submit(list(generate_cases(6, services=REFUSE, start_serial=301)))["accepted"] == 6
        assert stack.wait_settled(6) >= 6, stack.logs()
        with session_scope(stack.database_url) as s:
            deadline = time.monotonic() + 30
            # the back office acknowledges as it creates the job: the resolve clocks are the ones that run out
            while s.scalar(select(func.count()).where(SlaClockRow.breached.is_(True))) < 6:
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.5)
                s.rollback()
        stack.stop_process("beat")  # no more sweeps: the counts and the store can be compared
        time.sleep(3)
        with session_scope(stack.database_url) as s:
            rows = s.execute(select(SlaClockRow.service, SlaClockRow.authority, SlaClockRow.clock,
                                    SlaClockRow.warned, SlaClockRow.breached)).all()
        samples = scrape(stack)
        for service, authority, clock in {(r[0], r[1], r[2]) for r in rows}:
            labels = {"service": service, "authority": authority, "clock": clock}
            mine = [r for r in rows if (r[0], r[1], r[2]) == (service, authority, clock)]
            assert total(samples, "hubbridge_sla_breaches_total", **labels) == sum(bool(r[4]) for r in mine)
            assert total(samples, "hubbridge_sla_warnings_total", **labels) == sum(bool(r[3]) for r in mine)
        assert total(samples, "hubbridge_sla_breaches_total", clock="resolve") == 6
        assert total(samples, "hubbridge_sla_warnings_total", clock="resolve") == 6
        # the standing gauges come from the store, not from whichever process swept last
        assert total(samples, "hubbridge_sla_clocks_breached") == sum(
            1 for r in rows if r[4] and r[2] == "resolve")
    finally:
        stack.stop()


@pytest.fixture
def on_services(tmp_path: Path, pg_url: str) -> Iterator[Stack]:
    stack = Stack(tmp_path, pg_url, AMQP_URL)
    purge_queues(AMQP_URL)
    stack.start()
    stack.start_api()
    yield stack
    stack.stop()


@pytest.mark.services
def test_workers_counts_reach_the_apis_metrics_on_rabbitmq_and_postgresql(on_services: Stack) -> None:
    check_every_process_counts(on_services)
    # the broker's dead-letter queue is watched too, on RabbitMQ only, once it exists (beat's drain declares it)
    from kombu import Connection

    from hubbridge.config.settings import Settings
    from hubbridge.workflows.broker import DEAD_LETTER_QUEUE, queue_declarations

    dead = next(q for q in queue_declarations(Settings(broker_url=AMQP_URL)) if q.name == DEAD_LETTER_QUEUE)
    with Connection(AMQP_URL) as conn:
        dead.bind(conn.default_channel).declare()
    assert total(scrape(on_services), "hubbridge_queue_depth", queue=DEAD_LETTER_QUEUE) == 0
    assert ("hubbridge_queue_depth", frozenset({("queue", DEAD_LETTER_QUEUE)})) in scrape(on_services)


def test_a_broker_that_does_not_answer_is_broker_up_zero_not_a_failed_scrape(sqlite_url: str) -> None:
    from prometheus_client import generate_latest

    from hubbridge.workflows.metrics import scrape_registry

    text = generate_latest(scrape_registry(sqlite_url, "amqp://guest:guest@127.0.0.1:1//")).decode()
    assert "hubbridge_broker_up 0.0" in text and "hubbridge_queue_depth{" not in text


# -- the alert rules (promtool checks them in tests/test_deployment.py) --------------------------------------
def test_the_alert_rules_name_only_metrics_hubbridge_exports(sqlite_url: str) -> None:
    """A misspelt metric in a rule never fires: every hubbridge_ name a rule reads is one /metrics can serve."""
    from prometheus_client import REGISTRY
    from ruamel.yaml import YAML

    import hubbridge.sla.metrics  # noqa: F401  (its metrics on the default registry)
    from hubbridge.workflows.metrics import scrape_registry

    served: set[str] = set()
    for registry in (REGISTRY, scrape_registry(sqlite_url, "amqp://guest:guest@127.0.0.1:1//")):
        for family in registry.collect():
            served.add(family.name)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ())
            served.update(family.name + s for s in suffixes)
    named: set[str] = set()
    for path in RULES.glob("*.rules.yml"):
        for group in YAML(typ="safe").load(path.read_text())["groups"]:
            for rule in group["rules"]:
                named.update(re.findall(r"\bhubbridge_[a-z_]+", rule["expr"]))
    assert named and named <= served, sorted(named - served)


def test_the_metrics_dir_is_every_process_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hubbridge.config.settings import Settings

    monkeypatch.setenv("HUBBRIDGE_DATA_DIR", str(tmp_path))
    assert Settings().resolved_metrics_dir == tmp_path / "metrics"
    monkeypatch.setenv("HUBBRIDGE_METRICS_DIR", str(tmp_path / "elsewhere"))
    assert Settings().resolved_metrics_dir == tmp_path / "elsewhere"
