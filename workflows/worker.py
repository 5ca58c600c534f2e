"""The worker: which queues a `hubbridge worker` process consumes, with how many pool processes, at what CPU priority.

A worker runs one lane. `all` takes every queue. On a busy machine, run a `delivery` lane and a `sync` lane side
by side instead: a poll or a page of Hub pushes then never holds a pool process a new case is waiting for, and the
sync lane's lower CPU priority lets the kernel run deliveries first whenever both want the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from hubbridge.config.settings import Settings
from hubbridge.errors import UsageError
from hubbridge.workflows import queues as queue_names


class Lane(StrEnum):
    ALL = "all"
    DELIVERY = "delivery"
    SYNC = "sync"


LANE_QUEUES: dict[Lane, tuple[str, ...]] = {
    Lane.ALL: queue_names.ALL,
    # new cases to their back offices: the work the Hub's users wait on
    Lane.DELIVERY: (queue_names.DELIVER,),
    # back-office changes to the Hub, retried Hub pushes, beat's reconcile and poll scheduling
    Lane.SYNC: (queue_names.HUB, queue_names.SYNC, queue_names.CONTROL),
}
SYNC_LANE_NICE = 10
"""The sync lane's niceness by default: about a tenth of a core's share against deliveries when both want it."""


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker process runs: its lane's queues, its pool size and the niceness it adds to itself."""

    lane: Lane
    queues: tuple[str, ...]
    concurrency: int
    nice: int

    def celery_args(self, pool: str, loglevel: str, node: str) -> list[str]:
        return [
            "worker",
            f"--concurrency={self.concurrency}",
            f"--queues={','.join(self.queues)}",
            f"--pool={pool}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"hubbridge-{self.lane.value}-%h-{node}",
        ]


def plan(
    settings: Settings,
    lane: Lane = Lane.ALL,
    *,
    concurrency: int | None = None,
    queues: str | None = None,
    nice: int | None = None,
) -> WorkerPlan:
    """The worker for `lane`; `queues`, `concurrency` and `nice` override the lane's own."""
    chosen = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else LANE_QUEUES[lane]
    unknown = [q for q in chosen if q not in LANE_QUEUES[Lane.ALL]]
    if unknown or not chosen:
        raise UsageError(f"unknown queue {', '.join(unknown) or '(none given)'}", where="hubbridge worker --queues",
                         hint=f"hubbridge's queues are {','.join(LANE_QUEUES[Lane.ALL])}")
    if concurrency is None:
        # the sync lane's work is a few polls a second: one process, so it never takes a CPU deliveries need
        concurrency = 1 if lane is Lane.SYNC else settings.resolved_worker_concurrency
    if nice is None:
        nice = SYNC_LANE_NICE if lane is Lane.SYNC else 0
    if not 0 <= nice <= 19:
        raise UsageError(f"niceness {nice} is outside 0-19", where="hubbridge worker --nice",
                         hint="a worker can lower its own CPU priority, not raise it")
    return WorkerPlan(lane=lane, queues=chosen, concurrency=concurrency, nice=nice)


def lower_priority(nice: int) -> None:
    """Add `nice` to this process's niceness; the pool processes forked later inherit it."""
    if nice:
        os.nice(nice)
