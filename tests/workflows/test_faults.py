"""Fault injection on the production stack: real RabbitMQ and PostgreSQL, worker and beat processes.

Each test runs a batch of Hub cases (and a few jobs raised directly in the back office) while one
fault is injected, then checks the simulators' own records: every case delivered exactly once, every
back-office raised job one Hub case, every update in the Hub once and in order, nothing left
unexplained (no dead letter is expected here). The figures go to var/fault-figures.json.

Each test gets its own RabbitMQ virtual host and PostgreSQL database, so no other run's messages
count; the RabbitMQ restart test leaves the broker running whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from hubbridge.connectors.bartec import BartecSimulator
from hubbridge.connectors.simulator import Request, Response
from hubbridge.store import CaseRow, DeadLetterRow, HubUpdateRow, LinkRow, RaisedCaseRow, session_scope
from hubbridge.workflows.casegen import generate_cases

from .stack import Stack, connectors_yaml

pytestmark = [pytest.mark.services, pytest.mark.faults, pytest.mark.timeout(300)]

N_CASES = 150
N_RAISED = 6
FAILING_CASES = 100
SERVICES = ("refuse.missed-collection",)
SETTLE_SECONDS = 170.0
FIGURES = Path(__file__).resolve().parents[2] / "var" / "fault-figures.json"
WORKER_PROCESSES = {"test_failing_and_down_back_offices_lose_and_duplicate_nothing": 8}
TENANTS = ("bromsgrove", "malvern-hills", "redditch", "worcester", "wychavon", "wyre-forest")


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr[-1000:]}")
    return done


def broker_up() -> None:
    """Make sure RabbitMQ runs and accepts connections (after a restart test, even a failed one)."""
    rabbitmqctl("start_app", check=False)
    rabbitmqctl("await_startup", check=False)


class PartlyDownBartec(BartecSimulator):
    """The Bartec simulator, where whole tenants (one council's system) can be down: HTTP 503."""

    def __init__(self) -> None:
        super().__init__()
        self.down_tenants: set[str] = set()
        self.down_refusals = 0
        self._down_lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        if request.tenant in self.down_tenants:
            with self._down_lock:
                self.down_refusals += 1
            return Response(503, b"Service Unavailable", "text/plain")
        return super().handle(request)


class FaultStack(Stack):
    """The end-to-end stack, with the Bartec simulator able to take one tenant down."""

    def make_simulator(self, plugin: str) -> PartlyDownBartec:
        assert plugin == "bartec"
        bartec = PartlyDownBartec()
        bartec.faults.slow_seconds = 2.0  # past the read timeout below: the job is made, the answer lost
        return bartec

    def adjust_config(self, cfg: Path) -> None:
        # a short read timeout: a timed-out call holds a worker process for less of the test's time
        with connectors_yaml(cfg) as conns:
            for inst in conns["connectors"].values():
                inst["timeouts"] = {"connect": 1, "read": 1.5}

    @property
    def bartec(self) -> PartlyDownBartec:
        sim: PartlyDownBartec = self.sims["bartec"]
        return sim

    @property
    def hub(self) -> Any:
        return self.sims["hub"]


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> Iterator[FaultStack]:
    vhost = f"hubbridge-faults-{uuid.uuid4().hex[:8]}"
    broker_up()
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    # slow back offices hold a worker process for the whole read timeout: such a test runs more of them
    workers = WORKER_PROCESSES.get(request.node.name, 2)
    s = FaultStack(tmp_path, pg_url, f"amqp://guest:guest@127.0.0.1:5672/{vhost}", workers=workers)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        broker_up()
        rabbitmqctl("delete_vhost", vhost, check=False)


# -- the batch, the oracle and the figures --------------------------------------------------------


class Batch:
    """One batch of Hub cases and back-office raised jobs, and what the simulators say became of them."""

    def __init__(self, stack: FaultStack, seed: int, n: int = N_CASES) -> None:
        self.stack = stack
        self.n = n
        self.cases = list(generate_cases(n, services=SERVICES, seed=seed, start_serial=seed * 1000 + 1))
        self.refs = [c["ref"] for c in self.cases]
        self.raised: list[tuple[str, str]] = []  # (tenant, back-office ref)
        self.followups: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def submit(self) -> None:
        counts = self.stack.submit(self.cases)
        assert counts == {"accepted": self.n, "duplicate": 0, "amended": 0, "followups": 0, "rejected": 0}, counts
        # the Hub follows a fifth of the cases up straight away: most wait for their case, some meet the fault
        self.followups = [self._followup(i, c) for i, c in enumerate(self.cases) if i % 5 == 2]
        counts = self.stack.submit(self.followups)
        assert counts["followups"] == len(self.followups) and counts["rejected"] == 0, counts

    @staticmethod
    def _followup(i: int, case: dict[str, Any]) -> dict[str, Any]:
        import base64
        from datetime import UTC, datetime

        from hubbridge.connectors.simulator import SAMPLE_JPEG

        body: dict[str, Any] = {"id": f"fault-{i}", "ref": case["ref"], "occurred_at": datetime.now(UTC).isoformat()}
        if i % 10 == 2:
            return {**body, "kind": "note", "note": f"Customer rang back ({i})"}
        photo = base64.b64encode(SAMPLE_JPEG).decode()
        return {**body, "kind": "evidence",
                "attachments": [{"filename": f"bin-{i}.jpg", "content_type": "image/jpeg", "content": photo}]}

    def followups_pending(self) -> int:
        from hubbridge.store import FollowUpRow

        with session_scope(self.stack.database_url) as s:
            return int(s.scalar(select(func.count()).select_from(FollowUpRow).where(FollowUpRow.state == "pending"))
                       or 0)

    def raise_directly(self, n: int = N_RAISED) -> None:
        """Residents phone their district's depot: jobs the Hub never sent."""
        for i in range(n):
            tenant = TENANTS[(len(self.raised) + i) % len(TENANTS)]
            job = self.stack.bartec.raise_direct(tenant, f"1001200{len(self.raised) + i:05d}", 238 + i % 4)
            self.raised.append((tenant, job.ref))

    def settled(self) -> int:
        """Cases of this batch delivered and acknowledged (or dead); raised jobs' cases are not counted."""
        with session_scope(self.stack.database_url) as s:
            return int(s.scalar(select(func.count()).select_from(CaseRow).where(
                CaseRow.hub_ref.in_(self.refs), CaseRow.stage.in_(("acknowledged", "dead")))) or 0)

    def wait_for(self, settled: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.settled() < settled and time.monotonic() < deadline:
            time.sleep(0.5)

    def _final(self) -> str:
        return self.stack.bartec.store.lifecycle[-1]

    def done(self) -> bool:
        """Everything settled, every job finished in the back office and its last state in the Hub."""
        hub, store = self.stack.hub, self.stack.bartec.store
        if self.settled() < self.n or self.followups_pending():
            return False
        if any(j.status != self._final() for j in store.jobs.values()):
            return False
        with session_scope(self.stack.database_url) as s:
            if s.scalar(select(func.count()).select_from(HubUpdateRow).where(HubUpdateRow.pushed_at.is_(None))):
                return False
            raised = dict(s.execute(select(RaisedCaseRow.backoffice_ref, RaisedCaseRow.hub_ref)).all())
        if any(not raised.get(bo) for _, bo in self.raised):
            return False
        refs = self.refs + [raised[bo] for _, bo in self.raised]
        return all((hub.latest(r) or {}).get("status") == "closed" for r in refs)

    def wait_done(self) -> None:
        deadline = self.started + SETTLE_SECONDS
        while time.monotonic() < deadline and not self.done():
            time.sleep(1.0)

    def check(self, name: str, faults: dict[str, Any], expected_dead: int = 0) -> dict[str, Any]:
        """Compare the simulators' records with the batch; record the figures; fail on anything unexplained."""
        hub, bartec = self.stack.hub, self.stack.bartec
        with session_scope(self.stack.database_url) as s:
            stages = dict(s.execute(select(CaseRow.hub_ref, CaseRow.stage)).all())
            links = {(c, b): h for h, c, b in s.execute(select(LinkRow.hub_ref, LinkRow.connector,
                                                                LinkRow.backoffice_ref)).all()}
            by_ref = {h: b for (_, b), h in links.items()}
            dead = s.scalars(select(DeadLetterRow)).all()
            dead_reasons = sorted(f"{d.stage}/{d.reason}: {d.detail[:120]}" for d in dead)
            pending = s.scalar(select(func.count()).select_from(HubUpdateRow).where(HubUpdateRow.pushed_at.is_(None)))
            raised_rows = dict(s.execute(select(RaisedCaseRow.backoffice_ref, RaisedCaseRow.hub_ref)).all())
        jobs = bartec.store.count_by_hub_ref()
        problems: list[str] = []
        lost = [r for r in self.refs if stages.get(r) != "acknowledged"]
        dup_jobs = [r for r in self.refs if jobs.get(r, 0) > 1]
        no_job = [r for r in self.refs if jobs.get(r, 0) == 0]
        raised_on_hub: dict[str, int] = {}
        for c in hub.raised_cases():
            raised_on_hub[c["backoffice_ref"]] = raised_on_hub.get(c["backoffice_ref"], 0) + 1
        dup_raised = [bo for _, bo in self.raised if raised_on_hub.get(bo, 0) > 1]
        lost_raised = [bo for _, bo in self.raised if raised_on_hub.get(bo, 0) == 0 or not raised_rows.get(bo)]
        gaps, not_final, wrong_ref = [], [], []
        all_refs = self.refs + [raised_rows[bo] for _, bo in self.raised if raised_rows.get(bo)]
        for ref in all_refs:
            ups = hub.updates_for(ref)
            if [u["sequence"] for u in ups] != list(range(1, len(ups) + 1)):
                gaps.append((ref, [u["sequence"] for u in ups]))
            if not ups or ups[-1]["status"] != "closed":
                not_final.append((ref, [u["status"] for u in ups]))
            if hub.backoffice_ref(ref) != by_ref.get(ref):
                wrong_ref.append(ref)
        for what, found in (("lost cases", lost), ("cases with several back-office jobs", dup_jobs),
                            ("cases with no back-office job", no_job),
                            ("raised jobs with several Hub cases", dup_raised),
                            ("raised jobs never on the Hub", lost_raised), ("updates with gaps or repeats", gaps),
                            ("cases whose last Hub status is not closed", not_final),
                            ("cases whose Hub back-office ref differs", wrong_ref),
                            ("updates out of order", hub.out_of_order)):
            if found:
                problems.append(f"{len(found)} {what}: {found[:5]}")
        if lost:
            problems.append("where the lost cases stand: " + self._trail(lost[:3]))
        followups_lost, followups_twice = self._followups_check(by_ref)
        for what, found in (("follow-ups not delivered", followups_lost),
                            ("follow-ups the back office holds more than once", followups_twice)):
            if found:
                problems.append(f"{len(found)} {what}: {found[:5]}")
        if len(dead) != expected_dead:
            problems.append(f"{len(dead)} dead letters, {expected_dead} expected: {dead_reasons[:5]}")
        if pending:
            problems.append(f"{pending} Hub updates never pushed")
        figures = {
            "cases": self.n,
            "raised_in_back_office": len(self.raised),
            "faults": faults,
            "backoffice_faults_injected": dict(bartec.faults.injected),
            "delivered_once": self.n - len(lost) - len(dup_jobs) - len(no_job),
            "lost": len(lost) + len(no_job) + len(lost_raised),
            "duplicated": len(dup_jobs) + len(dup_raised),
            "hub_updates": sum(len(hub.updates_for(r)) for r in all_refs),
            "hub_resends_refused_as_duplicates": len(hub.duplicates),
            "out_of_order": len(hub.out_of_order),
            "followups": len(self.followups),
            "followups_lost": len(followups_lost),
            "followups_duplicated": len(followups_twice),
            "dead_letters": len(dead),
            "dead_letters_expected": expected_dead,
            "seconds": round(time.monotonic() - self.started, 1),
            "passed": not problems,
        }
        record_figures(name, figures)
        print(f"\n{name}: {json.dumps(figures)}")
        assert not problems, "\n".join(problems) + "\n" + self.stack.logs()[-6000:]
        return figures


    def _followups_check(self, by_ref: dict[str, str]) -> tuple[list[str], list[str]]:
        """Follow-ups not delivered by our records, and those the back office's own records hold other than once."""
        from hubbridge.store import FollowUpRow

        with session_scope(self.stack.database_url) as s:
            ours = s.execute(select(FollowUpRow.hub_ref, FollowUpRow.sequence, FollowUpRow.kind, FollowUpRow.state)
                             .where(FollowUpRow.hub_ref.in_(self.refs))).all()
        lost = [f"{ref}/{seq}: {state}" for ref, seq, _, state in ours if state != "delivered"]
        lost += [f["ref"] for f in self.followups if f["ref"] not in {r for r, *_ in ours}]
        wrong = []
        bartec = self.stack.bartec
        for ref, seq, kind, _ in ours:
            backoffice_ref = by_ref.get(ref)
            with bartec.store._lock:
                job = next((j for j in bartec.store.jobs.values() if j.ref == backoffice_ref), None)
            records = [r for r in bartec.followups_for(backoffice_ref, job.tenant)] if job else []
            mine = [r for r in records if r["kind"] == kind]
            if len(mine) != 1:
                wrong.append(f"{ref}/{seq} {kind}: {len(mine)} in the back office")
        return lost, wrong

    def _trail(self, refs: list[str]) -> str:
        from hubbridge.store import EventRow

        out = []
        with session_scope(self.stack.database_url) as s:
            for ref in refs:
                row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
                events = s.execute(select(EventRow.kind, EventRow.at).where(EventRow.hub_ref == ref)
                                   .order_by(EventRow.id)).all()
                if row is not None:
                    out.append(f"{ref}: stage={row.stage} attempts={row.attempts} unknown={row.unknown_outcome} "
                               f"claimed_until={row.claimed_until} next={row.next_attempt_at} "
                               f"error={row.last_error!r} events={[(k, f'{a:%H:%M:%S}') for k, a in events]}")
        return "; ".join(out)


def record_figures(name: str, figures: dict[str, Any]) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(FIGURES.read_text())
    data[name] = figures
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def midway(batch: Batch, inject: Callable[[], None], at: int = N_CASES // 4) -> None:
    """Inject the fault once part of the batch has settled (mid-batch), raising a few jobs around it."""
    batch.raise_directly(N_RAISED // 2)
    batch.wait_for(at)
    assert batch.settled() < batch.n, "the batch finished before the fault: nothing was tested"
    inject()
    batch.raise_directly(N_RAISED - N_RAISED // 2)


# -- the faults -----------------------------------------------------------------------------------


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(stack: FaultStack) -> None:
    batch = Batch(stack, seed=61)
    batch.submit()
    worker = stack.procs["worker"]

    def kill() -> None:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool processes, mid-task
        worker.wait(30)
        stack.start_worker("worker2")

    midway(batch, kill)
    batch.wait_done()
    batch.check("worker_killed", {"kill -9 worker (with its pool)": 1, "settled_before_kill": N_CASES // 4})


def test_a_rabbitmq_restart_mid_batch_loses_and_duplicates_nothing(stack: FaultStack) -> None:
    batch = Batch(stack, seed=62)
    batch.submit()

    def restart() -> None:
        try:
            rabbitmqctl("stop_app")
            time.sleep(5)  # work in flight meets a broker that is not there
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")

    midway(batch, restart)
    batch.wait_done()
    batch.check("rabbitmq_restarted", {"rabbitmq stop_app + start_app": 1, "seconds_down": 5})


def test_failing_and_down_back_offices_lose_and_duplicate_nothing(stack: FaultStack) -> None:
    # fewer cases: with 30% of calls failing, Bartec's chatty sync (one call per changed job) barely
    # gets a page through until the faults stop, and the test must stay within about three minutes
    batch = Batch(stack, seed=63, n=FAILING_CASES)
    # 30% of back-office calls fail: half with a 500 before any work, half doing the work then timing out
    stack.bartec.faults.set_rate(0.3, kinds=("error500", "slow"), seed=63)
    batch.submit()

    def one_down() -> None:
        stack.bartec.down_tenants.add("wychavon")
        time.sleep(20)
        stack.bartec.down_tenants.discard("wychavon")

    midway(batch, one_down, at=FAILING_CASES // 5)
    batch.wait_for(FAILING_CASES, timeout=90)
    stack.bartec.faults.set_rate(0.0)  # the last states reach the Hub without waiting on more bad luck
    batch.wait_done()
    batch.check("backoffices_failing", {"fault rate": 0.3, "down_tenant": "wychavon", "seconds_down": 20,
                                        "down_refusals (HTTP 503)": stack.bartec.down_refusals})


def test_postgresql_connections_dropped_mid_batch_lose_and_duplicate_nothing(stack: FaultStack) -> None:
    import psycopg

    batch = Batch(stack, seed=64)
    batch.submit()
    url = stack.database_url.replace("postgresql+psycopg://", "postgresql://")
    terminated: list[int] = []

    def drop_connections() -> None:
        for _ in range(3):
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
            terminated.append(sum(1 for (ok,) in rows if ok))
            time.sleep(3)

    midway(batch, drop_connections)
    batch.wait_done()
    assert sum(terminated) > 0, "no connection was open to drop: nothing was tested"
    batch.check("postgresql_connections_dropped", {"pg_terminate_backend rounds": len(terminated),
                                                   "connections_terminated": sum(terminated)})
