"""The whole-system harness as the benchmarks use it, and what they measure with it.

Everything runs as it does in production, each piece in its own process (see `hubbridge.workflows.harness`):
the simulators in a child process so their HTTP handling does not share the driver's GIL, the intake
API, the worker and beat as `hubbridge` subprocesses. Each run gets its own PostgreSQL database and
RabbitMQ virtual host (or SQLite files for the embedded default), dropped afterwards, so other users of
the local services neither see nor disturb its messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hubbridge.workflows.harness import Harness, Submitted, free_port
from hubbridge.workflows.simulated import PLUGINS, SimulatorProcess, sync_lags

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "var" / "bench"
PG_ADMIN_URL = os.environ.get("HUBBRIDGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("HUBBRIDGE_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
AREAS = ("refuse", "revenues", "highways", "planning")

__all__ = ["PLUGINS", "BenchStack", "Submitted", "free_port", "sync_lags"]


# -- store and broker for one run -----------------------------------------------------------------


def _pg_create() -> tuple[str, str]:
    import psycopg

    name = f"hubbridge_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    return name, url


def _pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> bool:
    try:
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _vhost_create() -> str | None:
    """A private virtual host, so the run's queues are not shared with tests running at the same time."""
    vhost = f"hubbridge-bench-{uuid.uuid4().hex[:8]}"
    user = urlsplit(AMQP_BASE).username or "guest"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
        return vhost
    return None


# -- the stack ------------------------------------------------------------------------------------


def _run_root() -> Path:
    return RESULTS_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


@dataclass
class BenchStack(Harness):
    """One hubbridge deployment on loopback for a benchmark; `embedded` selects SQLite + the embedded broker."""

    root: Path = field(default_factory=_run_root)
    embedded: bool = False
    concurrency: int | None = None  # None: the worker's own default (HUBBRIDGE_WORKER_CONCURRENCY, else CPUs + 1)
    # a delivery lane and a sync lane (None: on RabbitMQ; the embedded default runs one worker, as `hubbridge demo`)
    lanes: bool | None = None
    pool: str = "prefork"
    tick_seconds: float | None = None
    simulators_apart: bool = True
    instance: dict[str, Any] = field(default_factory=lambda: {"poll_seconds": 5.0})
    sweep_seconds: float = 2.0
    # a generous lease: the benchmark measures the queue path, not reconcile's re-queueing
    reconcile_after_seconds: float = 300.0
    cwd: Path | None = ROOT
    extra_env: dict[str, str] = field(
        default_factory=lambda: {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    _pg_name: str | None = None
    _vhost: str | None = None

    # lifecycle
    def __exit__(self, exc_type: object, *_: object) -> None:
        self.stop()
        if exc_type is None and self.root.parent == RESULTS_DIR:
            # a clean run leaves only its results; a failed one keeps its logs and config to read
            shutil.rmtree(self.root, ignore_errors=True)

    def start(self) -> BenchStack:
        if threading.current_thread() is threading.main_thread():
            # a `timeout` or Ctrl-C must still stop the worker, API and beat and drop the database
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        if not self.embedded:
            self._pg_name, self.database_url = _pg_create()
            self._vhost = _vhost_create()
            self.broker_url = f"{AMQP_BASE}/{self._vhost}" if self._vhost else f"{AMQP_BASE}//"
        super().start()
        if not self._vhost and not self.embedded:
            self.purge_queues()
        return self

    def start_pipeline(self) -> None:
        """Start the intake API, the worker and beat, and wait until the API answers."""
        self.start_api(wait=False)
        if self.split_lanes:
            # as the README deploys it: a delivery lane and, beside it, a sync lane at its own defaults
            self.start_worker(lane="delivery", args=self.worker_args())
            self.start_worker("sync-lane", lane="sync", args=[f"--pool={self.pool}", "--loglevel=WARNING"])
        else:
            self.start_worker(args=self.worker_args())
        self.spawn("beat", ["beat", "--loglevel=WARNING"])
        # the API starts slowest: by the time it answers the worker and beat are up, so their start-up CPU is
        # not counted against the cases
        self.wait_api()

    def start_profiles(self, label: str, names: Sequence[str] = ("api", "worker")) -> None:
        """Sample the named processes (and their pool children) with py-spy until they stop."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            raise RuntimeError("py-spy is not installed: pip install -e '.[dev]'")
        out = RESULTS_DIR / "profiles"
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            proc = self.procs[name]
            self.spawn_command(f"py-spy-{name}", [
                spy, "record", "--pid", str(proc.pid), "--subprocesses", "--format", "raw", "--rate", "200",
                "--nonblocking", "-o", str(out / f"{label}-{name}.txt")])

    def stop_profiles(self) -> None:
        """Stop py-spy the way it expects (SIGINT), so it writes its samples."""
        for name in [n for n in self.procs if n.startswith("py-spy-")]:
            proc = self.procs.pop(name)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)

    @property
    def split_lanes(self) -> bool:
        return (not self.embedded) if self.lanes is None else self.lanes

    def worker_args(self) -> list[str]:
        return [f"--concurrency={self.workers}", f"--pool={self.pool}", "--loglevel=WARNING"]

    def worker_layout(self) -> dict[str, Any]:
        """How the run's workers were laid out, for its result."""
        layout: dict[str, Any] = {"pool": self.pool, "concurrency": self.workers}
        if self.split_lanes:
            from hubbridge.config.settings import Settings
            from hubbridge.workflows.worker import Lane, plan

            # the sync lane runs at its own default, as `start_pipeline` starts it
            layout["lanes"] = {"delivery": self.workers, "sync": plan(Settings(), Lane.SYNC).concurrency}
        return layout

    def worker_pids(self) -> list[int]:
        """Every worker process of the run, lanes and pool processes included."""
        return [pid for name in ("worker", "sync-lane") if name in self.procs
                for pid in _descendants(self.procs[name].pid)]

    @property
    def workers(self) -> int:
        """Pool processes (or threads) of the worker: as given, else what `hubbridge worker` would start."""
        from hubbridge.config.settings import Settings

        return self.concurrency or Settings().resolved_worker_concurrency

    def stop(self, keep: bool = False) -> None:
        self.stop_profiles()
        super().stop()
        if self._pg_name and not keep:
            with contextlib.suppress(Exception):
                _pg_drop(self._pg_name)
            self._pg_name = None
        if self._vhost and not keep:
            _rabbitmqctl("delete_vhost", self._vhost)
            self._vhost = None
        if not keep:
            for f in self.root.glob("*.sqlite*"):
                f.unlink()

    def purge_queues(self) -> None:
        from amqp.exceptions import NotFound
        from kombu import Connection

        from hubbridge.workflows.queues import ALL

        for q in (*ALL, CEILING_QUEUE):
            with Connection(self.broker_url, connect_timeout=5) as conn, contextlib.suppress(NotFound):
                conn.default_channel.queue_purge(q)

    # measuring it
    def submit(self, cases: Sequence[dict[str, Any]], *, rate: float | None = None, threads: int = 4) -> Submitted:
        """POST the cases to the intake API as the Hub would (see `Harness.post_cases`)."""
        return self.post_cases(cases, rate=rate, threads=threads)

    def cpu_components(self) -> dict[str, list[int]]:
        """The processes whose CPU a case costs, by component: ours, the simulators, our PostgreSQL backends."""
        comps: dict[str, list[int]] = {"driver": [os.getpid()]}
        for name in ("api", "worker", "sync-lane", "beat"):
            if name in self.procs:
                comps[name.replace("-", "_")] = list(_descendants(self.procs[name].pid))
        if isinstance(self.sims, SimulatorProcess) and self.sims.proc.pid:
            comps["simulators"] = [self.sims.proc.pid]
        if self._pg_name:
            import psycopg

            with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self._pg_name,)).fetchall()
                comps["postgresql"] = [int(r[0]) for r in rows]
        return comps

    def cpu_snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pids) for name, pids in self.cpu_components().items()}

    def outcome(self, submitted: Submitted) -> dict[str, Any]:
        """What the Hub recorded for the submitted cases: throughput, latencies, lost, duplicates."""
        from sqlalchemy import select

        from hubbridge.store import DeadLetterRow, session_scope

        assert self.sims is not None
        acks = {r: datetime.fromisoformat(t) if t else None for r, t in self.sims.acks(submitted.at).items()}
        anomalies = self.sims.hub_anomalies()
        with session_scope(self.database_url) as s:
            dead = set(s.scalars(select(DeadLetterRow.hub_ref).where(DeadLetterRow.hub_ref.is_not(None))).all())
        jobs = self.sims.job_counts()
        lags = self.sims.sync_lags(submitted.at)
        latencies = sorted(
            (t.timestamp() - submitted.at[r]) for r, t in acks.items() if t is not None
        )
        acked = [t.timestamp() for t in acks.values() if t is not None]
        lost = sum(1 for r, t in acks.items() if t is None and r not in dead)
        elapsed = (max(acked) - submitted.first) if acked else 0.0
        return {
            "submitted": len(submitted.at),
            "refused_at_intake": submitted.refused,
            "acknowledged": len(acked),
            "dead_lettered": len(dead & set(submitted.at)),
            "lost": lost + submitted.refused,
            "duplicate_jobs": sum(1 for r in submitted.at if jobs.get(r, 0) > 1),
            "out_of_order": anomalies["out_of_order"],
            "elapsed_s": round(elapsed, 2),
            "cases_per_s": round(len(acked) / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": percentiles(latencies),
            # the back offices' own changes (polled, or pushed by webhook): how many reached the Hub by the end of
            # the run, and how long after the change
            "sync": {"updates": len(lags), "lag_ms": percentiles(lags)},
        }


def stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark that starts a stack takes: output, broker and store, the worker's shape."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--embedded", action="store_true", help="embedded SQLite broker and store, no servers")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="worker processes (or threads); default as `hubbridge worker`: CPUs + 1")
    parser.add_argument("--pool", default="prefork", choices=("prefork", "threads", "solo"))
    parser.add_argument("--one-worker", dest="lanes", action="store_false", default=None,
                        help="one worker on every queue, not a delivery lane and a sync lane (the default on RabbitMQ)")


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of sorted seconds, in milliseconds."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(values[-1] * 1000, 1)}


def cases_for(n: int, seed: int = 2026) -> list[dict[str, Any]]:
    """`n` generated Hub cases mixed across the four service areas, refs unique to this run."""
    from hubbridge.workflows.casegen import generate_cases

    return list(generate_cases(n, areas=AREAS, seed=seed))


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def rss_kib(pids: Iterable[int]) -> int:
    """Resident memory (KiB) of these processes, read from /proc."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_per_case(before: dict[str, float], after: dict[str, float], cases: int) -> dict[str, float]:
    """CPU milliseconds per case by component; contention on a shared machine does not inflate these."""
    out = {k: round((after[k] - before.get(k, 0.0)) * 1000 / max(cases, 1), 2) for k in after}
    out["total"] = round(sum(v for k, v in out.items() if k != "driver"), 2)
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of live processes (from /proc/PID/stat), each counted once."""
    total = 0
    for pid in set(pids):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _descendants(root_pid: int) -> Iterator[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        yield pid
        todo.extend(children.get(pid, []))


# -- the ceiling: an empty task on the same broker with the same reliability settings -------------

CEILING_QUEUE = "hubbridge.bench"


def ceiling_app() -> Any:
    """hubbridge's own Celery app (same acks, confirms, persistence, prefetch) plus one empty task."""
    from kombu import Queue

    from hubbridge.config.settings import get_settings
    from hubbridge.workflows.app import make_app

    app = make_app(get_settings())
    deliver = next(q for q in app.conf.task_queues if q.name == "hubbridge.deliver")
    # the same exchange and queue arguments as the delivery queue, under a name of its own
    app.conf.task_queues = [*app.conf.task_queues, Queue(CEILING_QUEUE, deliver.exchange, routing_key="bench",
                                                         durable=True, queue_arguments=deliver.queue_arguments)]
    app.conf.task_routes = {**app.conf.task_routes, "bench.noop": {"queue": CEILING_QUEUE, "routing_key": "bench"}}
    counter = os.environ.get("HUBBRIDGE_BENCH_COUNTER", "")
    fds: dict[int, int] = {}

    @app.task(name="bench.noop", shared=False)  # one per app: several runs may share a process
    def noop(i: int) -> None:
        # one appended byte per task: the file's size counts completions exactly, at a syscall's cost
        fd = fds.get(os.getpid())
        if fd is None:
            fd = fds[os.getpid()] = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b".")

    return app


def _ceiling_worker(argv: list[str]) -> None:
    app = ceiling_app()
    app.worker_main(["worker", *argv, f"--queues={CEILING_QUEUE}", "--without-gossip", "--without-mingle",
                     "-n", f"bench-ceiling-{os.getpid()}@%h"])


def measure_ceiling(stack: BenchStack, tasks: int, timeout: float = 240.0) -> dict[str, Any]:
    """Publish `tasks` empty tasks while a worker like hubbridge's consumes them; tasks per second."""
    counter = stack.root / "ceiling.count"
    counter.unlink(missing_ok=True)
    counter.touch()
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in stack.env.items() if k.startswith("HUBBRIDGE_")})
    os.environ["HUBBRIDGE_BENCH_COUNTER"] = str(counter)
    stack.env["HUBBRIDGE_BENCH_COUNTER"] = str(counter)
    from hubbridge.config.settings import get_settings

    get_settings.cache_clear()
    try:
        app = ceiling_app()
        noop = app.tasks["bench.noop"]
        stack.spawn_command("ceiling", [sys.executable, "-m", "bench.stack", "ceiling-worker", *stack.worker_args()])
        # warm up: the worker is consuming before the clock starts
        noop.apply_async(args=[-1])
        deadline = time.monotonic() + 60
        while counter.stat().st_size < 1:
            stack.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("the ceiling worker took no task within 60 s\n" + stack.log_tail("ceiling"))
            time.sleep(0.05)
        ceiling_pids = [os.getpid(), *_descendants(stack.procs["ceiling"].pid)]
        cpu_before = cpu_seconds(ceiling_pids)
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for i in range(tasks):
                noop.apply_async(args=[i], producer=producer)
        published = time.monotonic() - started
        deadline = time.monotonic() + timeout
        while counter.stat().st_size < tasks + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        done = counter.stat().st_size - 1
        cpu_ms = (cpu_seconds(ceiling_pids) - cpu_before) * 1000 / max(done, 1)
    finally:
        stack.stop_process("ceiling")
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()
    return {
        "tasks": tasks,
        "completed": done,
        "publish_per_s": round(tasks / published, 1) if published else 0.0,
        "ceiling_tasks_per_s": round(done / elapsed, 1) if elapsed else 0.0,
        # publisher + worker CPU per task (RabbitMQ's own not counted, as for the cases)
        "cpu_ms_per_task": round(cpu_ms, 3),
        "cpu_bound_tasks_per_s": round(2000 / cpu_ms, 1) if cpu_ms else None,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["ceiling-worker"]:
        _ceiling_worker(sys.argv[2:])
    else:
        sys.exit("usage: python -m bench.stack ceiling-worker [celery worker options]")
