"""A Hub case in, a back-office job out, its status back in the Hub: real worker and beat processes.

Runs on the embedded default (SQLite store, SQLite broker) and, marked `services`, on the real
RabbitMQ and PostgreSQL on localhost. The simulators' own records are the oracle.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hubbridge.store import CaseRow, LinkRow, session_scope
from hubbridge.workflows.casegen import generate_cases
from tests.conftest import AMQP_URL

from .stack import Stack, purge_queues, sync_back

N_CASES = 40
REFUSE = ("refuse.missed-collection",)


def _check(stack: Stack, refs: list[str]) -> None:
    hub, bartec = stack.sims["hub"], stack.sims["bartec"]
    with session_scope(stack.database_url) as s:
        stages = dict(s.execute(select(CaseRow.hub_ref, CaseRow.stage)).all())
        links = dict(s.execute(select(LinkRow.hub_ref, LinkRow.backoffice_ref)).all())
    assert {stages[r] for r in refs} == {"acknowledged"}, stack.logs()
    jobs = bartec.store.count_by_hub_ref()
    for ref in refs:
        assert jobs.get(ref) == 1, f"{ref} made {jobs.get(ref)} back-office jobs"
        # the Hub holds exactly the reference the back office gave
        assert hub.backoffice_ref(ref) == links[ref]
        assert bartec.store.by_ref(bartec.store.by_hub_ref(_tenant(bartec, ref), ref)[0].tenant,
                                   links[ref]) is not None
    assert hub.out_of_order == []
    _check_logs(stack)


_CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\s*\w+\s*\] ")


def _check_logs(stack: Stack) -> None:
    """With HUBBRIDGE_LOG_FORMAT=json every log line goes through the one configured chain (JSON, redacted)."""
    for path in stack.root.glob("*.log"):
        stray = [line for line in path.read_text(errors="replace").splitlines() if _CONSOLE_LINE.match(line)]
        assert stray == [], f"{path.name}: log lines that bypassed the JSON renderer and redaction: {stray[:3]}"


def _tenant(sim, ref: str) -> str:  # type: ignore[no-untyped-def]
    return next(j.tenant for j in sim.store.jobs.values() if j.hub_ref == ref)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, f"sqlite:///{tmp_path / 'store.sqlite'}",
                  f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}")
    from hubbridge.store import migrate

    migrate(stack.database_url)
    yield stack.start()
    stack.stop()


def test_refuse_cases_flow_end_to_end_on_the_embedded_default(embedded: Stack) -> None:
    cases = list(generate_cases(N_CASES, services=REFUSE))
    assert embedded.submit(cases) == {"accepted": N_CASES, "duplicate": 0, "amended": 0, "followups": 0, "rejected": 0}
    refs = [c["ref"] for c in cases if c["service"] == "refuse.missed-collection"]
    assert embedded.wait_settled(N_CASES) >= N_CASES, embedded.logs()
    _check(embedded, refs)
    sync_back(embedded, refs)


@pytest.fixture
def on_services(tmp_path: Path, pg_url: str) -> Iterator[Stack]:
    stack = Stack(tmp_path, pg_url, AMQP_URL)
    purge_queues(AMQP_URL)
    yield stack.start()
    stack.stop()


@pytest.mark.services
def test_refuse_cases_flow_end_to_end_on_rabbitmq_and_postgresql(on_services: Stack) -> None:
    cases = list(generate_cases(N_CASES, services=REFUSE, seed=7))
    assert on_services.submit(cases)["accepted"] == N_CASES
    refs = [c["ref"] for c in cases if c["service"] == "refuse.missed-collection"]
    assert on_services.wait_settled(N_CASES) >= N_CASES, on_services.logs()
    _check(on_services, refs)
    sync_back(on_services, refs)
