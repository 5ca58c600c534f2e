"""Worker lanes: a delivery lane and a sync lane between them consume every queue, each at its own CPU priority."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubbridge.config.settings import Settings
from hubbridge.errors import HubbridgeError
from hubbridge.workflows.app import app as celery_app
from hubbridge.workflows.broker import QUEUES
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.worker import LANE_QUEUES, SYNC_LANE_NICE, Lane, plan
from tests.conftest import AMQP_URL

from .stack import Stack, purge_queues, sync_back


def test_the_delivery_and_sync_lanes_split_every_queue_between_them() -> None:
    every = {f"hubbridge.{name}" for name in QUEUES}
    delivery, sync = set(LANE_QUEUES[Lane.DELIVERY]), set(LANE_QUEUES[Lane.SYNC])
    assert delivery | sync == every == set(LANE_QUEUES[Lane.ALL])
    assert not delivery & sync  # a queue consumed by both lanes would let polls back into the delivery lane
    # every task lands on a queue some lane consumes, and only deliveries on the delivery lane's
    routed = {task: route["queue"] for task, route in celery_app.conf.task_routes.items()}
    assert set(routed.values()) <= every
    # a follow-up is a call to a back office the Hub waits on too: it rides with the deliveries
    assert {task for task, queue in routed.items() if queue in delivery} == {"hubbridge.deliver_case",
                                                                              "hubbridge.deliver_followups"}


def test_each_lane_has_its_own_pool_size_and_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUBBRIDGE_WORKER_CONCURRENCY", raising=False)
    settings = Settings()
    cpus = settings.resolved_worker_concurrency
    everything = plan(settings)
    assert (everything.queues, everything.concurrency, everything.nice) == (LANE_QUEUES[Lane.ALL], cpus, 0)
    delivery = plan(settings, Lane.DELIVERY)
    assert (delivery.queues, delivery.concurrency, delivery.nice) == (("hubbridge.deliver",), cpus, 0)
    sync = plan(settings, Lane.SYNC)
    assert (sync.queues, sync.concurrency, sync.nice) == (LANE_QUEUES[Lane.SYNC], 1, SYNC_LANE_NICE)
    # what the operator says wins over the lane's own
    tuned = plan(settings, Lane.SYNC, concurrency=2, nice=0, queues="hubbridge.sync")
    assert (tuned.queues, tuned.concurrency, tuned.nice) == (("hubbridge.sync",), 2, 0)
    args = sync.celery_args("prefork", "INFO", "site")
    assert "--queues=hubbridge.hub,hubbridge.sync,hubbridge.control" in args and "--concurrency=1" in args
    assert args[-1] == "hubbridge-sync-%h-site"  # two lanes on one host need distinct node names


def test_a_misspelt_queue_or_a_negative_niceness_is_refused_naming_the_option() -> None:
    with pytest.raises(HubbridgeError, match=r"hubbridge worker --queues: unknown queue hubbridge\.delivr") as err:
        plan(Settings(), queues="hubbridge.delivr,hubbridge.hub")
    assert "hubbridge.deliver,hubbridge.hub,hubbridge.sync,hubbridge.control" in str(err.value)
    with pytest.raises(HubbridgeError, match="--nice: niceness -5 is outside 0-19"):
        plan(Settings(), nice=-5)

    from hubbridge.workflows.cli import app as cli

    result = CliRunner().invoke(cli, ["worker", "--queues", "hubbridge.[nope]"])
    assert result.exit_code == 2
    assert "unknown queue hubbridge.[nope]" in result.output  # printed as given, not read as markup
    assert CliRunner().invoke(cli, ["worker", "--lane", "bulk"]).exit_code == 2


def _niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def _pool(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _waiting(queue: str) -> int:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


class _DeliveryLaneFirst(Stack):
    """Starts only a delivery lane; the test starts the sync lane when it is ready to."""

    def start_worker(self, name: str = "delivery") -> object:
        return self.spawn(name, ["worker", "--lane", "delivery", "--concurrency=2", "--loglevel=INFO"])


@pytest.fixture
def lanes(tmp_path: Path, pg_url: str) -> Iterator[Stack]:
    stack = _DeliveryLaneFirst(tmp_path, pg_url, AMQP_URL)
    purge_queues(AMQP_URL)
    yield stack.start()
    stack.stop()


@pytest.mark.services
def test_deliveries_go_on_without_the_sync_lane_and_the_sync_lane_brings_the_changes_back(lanes: Stack) -> None:
    cases = list(generate_cases(12, services=("refuse.missed-collection",), seed=11))
    refs = [c["ref"] for c in cases]
    assert lanes.submit(cases)["accepted"] == len(cases)
    # the delivery lane alone takes every case to the back office and tells the Hub `delivered`
    assert lanes.wait_settled(len(cases)) >= len(cases), lanes.logs()
    hub = lanes.sims["hub"]
    # beat keeps sending its sweeps and poll scheduling, but nothing consumes the control queue yet: no poll runs
    deadline = time.monotonic() + 30
    while _waiting("hubbridge.control") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _waiting("hubbridge.control") >= 2, lanes.logs()
    assert {u["status"] for r in refs for u in hub.updates_for(r)} == {"delivered"}
    delivery_pid = lanes.procs["delivery"].pid
    assert {_niceness(p) for p in [delivery_pid, *_pool(delivery_pid)]} == {_niceness(0)}

    sync_lane = lanes.spawn("sync", ["worker", "--lane", "sync", "--loglevel=INFO"])
    sync_back(lanes, refs)
    # the sync lane and its pool process run at a lower CPU priority than the delivery lane
    assert _pool(sync_lane.pid), lanes.logs()
    assert {_niceness(p) for p in [sync_lane.pid, *_pool(sync_lane.pid)]} == {
        min(19, _niceness(0) + SYNC_LANE_NICE)}
