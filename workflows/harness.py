"""One whole hubbridge on loopback: store, broker, simulators, config, intake API, worker and beat.

`hubbridge demo`, the end-to-end and fault tests and the benchmarks all start the system through
`Harness`: it migrates the store, starts the simulators (in this process, or in a child process
when the caller measures CPU), writes a config pointed at them, and runs the API, the worker (one,
or a delivery lane and a sync lane) and beat as real `hubbridge` processes, as production does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hubbridge.workflows.simulated import (
    DEMO_SECRETS,
    PLUGINS,
    MailSink,
    SimulatorProcess,
    SimulatorSet,
    WebhookSink,
    demo_environment,
    load,
    simulator_config,
    simulator_for,
    use_mail_sink,
    webhook_variables,
)

CLI = ("-m", "hubbridge.workflows.cli")


def free_port() -> int:
    """A TCP port on loopback nobody listens on at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Submitted:
    """What was posted to the intake API: each accepted ref's intake time (wall clock, seconds) and the outcomes."""

    at: dict[str, float] = field(default_factory=dict)
    accepted: int = 0
    refused: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass
class Harness:
    """hubbridge on loopback; an empty `database_url` / `broker_url` means SQLite files under `root`."""

    root: Path
    database_url: str = ""
    broker_url: str = ""
    plugins: tuple[str, ...] = PLUGINS
    tick_seconds: float | None = 1.0  # the back offices move their jobs on this often (None: never)
    simulators_apart: bool = False  # in a child process, so their CPU and GIL are not the caller's
    config_source: Path | None = None  # the config copied and pointed at the simulators (default: shipped)
    instance: dict[str, Any] = field(default_factory=dict)  # keys set on every connector instance
    sweep_seconds: float = 1.0
    reconcile_after_seconds: float = 20.0
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # the processes' working directory (default: the caller's)
    watch_processes: bool = True  # a process that exits fails a wait (a fault test kills some on purpose)
    sims: SimulatorSet | SimulatorProcess | None = None
    mail: MailSink | None = None
    webhooks: WebhookSink | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    config_dir: Path | None = None
    api_url: str = ""

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> Harness:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> Harness:
        """Migrate the store, start the simulators and write their config; no hubbridge process yet."""
        from hubbridge.store import migrate

        self.root.mkdir(parents=True, exist_ok=True)
        self.database_url = self.database_url or f"sqlite:///{self.root / 'hubbridge.sqlite'}"
        self.broker_url = self.broker_url or f"embedded+sqlite:///{self.root / 'broker.sqlite'}"
        migrate(self.database_url)
        # a run's metrics start from nothing: files left by an earlier run's processes would count in this one's
        shutil.rmtree(self.root / "metrics", ignore_errors=True)
        if self.simulators_apart:
            self.sims = SimulatorProcess(self.plugins, tick_seconds=self.tick_seconds)
        else:
            self.sims = SimulatorSet(self.plugins, tick_seconds=self.tick_seconds, make=self.make_simulator)
        self.config_dir = simulator_config(
            self.root / "config", self.sims.hub_endpoint, self.sims.plugin_urls, source=self.config_source,
            plugins=None if set(self.plugins) == set(PLUGINS) else set(self.plugins), instance=self.instance)
        self.mail = MailSink().start()
        use_mail_sink(self.config_dir, self.mail.port)
        self.webhooks = WebhookSink().start()
        self.adjust_config(self.config_dir)
        self.env = self.environment(self.config_dir)
        return self

    def make_simulator(self, plugin: str) -> Any:
        """The back-office simulator for `plugin`, not yet started; a test's harness may give its own."""
        return simulator_for(plugin, 0)

    def adjust_config(self, cfg: Path) -> None:
        """Change the written config before any process reads it; nothing by default."""

    def environment(self, cfg: Path) -> dict[str, str]:
        """The processes' environment: none of the caller's HUBBRIDGE_ settings, the demo credentials, this run's."""
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")},
            **demo_environment(load(cfg)),
            "HUBBRIDGE_CONFIG_DIR": str(cfg),
            "HUBBRIDGE_DATA_DIR": str(self.root),
            "HUBBRIDGE_DATABASE_URL": self.database_url,
            "HUBBRIDGE_BROKER_URL": self.broker_url,
            "HUBBRIDGE_METRICS_DIR": str(self.root / "metrics"),
            "HUBBRIDGE_LOG_FORMAT": "json",
            "HUBBRIDGE_LOG_LEVEL": self.log_level,
            "HUBBRIDGE_SWEEP_SECONDS": f"{self.sweep_seconds:g}",
            "HUBBRIDGE_RECONCILE_AFTER_SECONDS": f"{self.reconcile_after_seconds:g}",
            # every Teams / Slack channel the SLA escalations post to is the run's webhook sink, one path each
            **({env: self.webhooks.url(env.lower()) for env in webhook_variables(cfg)} if self.webhooks else {}),
            **self.extra_env,
        }

    # -- the hubbridge processes ------------------------------------------------------------------
    def spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """Run `hubbridge <args>` as process `name`, its output in `root/<name>.log`."""
        return self.spawn_command(name, [sys.executable, *CLI, *args])

    def spawn_command(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Run any command in the run's environment as process `name` (its own process group)."""
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(list(argv), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.cwd)
        log.close()
        self.procs[name] = proc
        return proc

    def start_api(self, port: int | None = None, *, wait: bool = True) -> str:
        """Start the intake API (and console), with `wait` until it answers; its base URL."""
        port = port or free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        # escalation messages link to the console this API serves (workers and beat start after it)
        self.env.setdefault("HUBBRIDGE_CONSOLE_BASE_URL", self.api_url)
        self.spawn("api", ["api", "--host", "127.0.0.1", "--port", str(port)])
        if wait:
            self.wait_api()
        return self.api_url

    def start_worker(self, name: str = "worker", *, lane: str | None = None, args: Sequence[str] = ()) -> (
            subprocess.Popen[bytes]):
        """Start a worker on every queue, or on one lane (`delivery`, `sync`)."""
        return self.spawn(name, ["worker", *(("--lane", lane) if lane else ()), *args,
                                 *(() if any(a.startswith("--loglevel") for a in args) else
                                   (f"--loglevel={self.log_level}",))])

    def start_beat(self, name: str = "beat") -> subprocess.Popen[bytes]:
        return self.spawn(name, ["beat", f"--loglevel={self.log_level}"])

    def wait_api(self, timeout: float = 60.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the intake API did not answer within {timeout:.0f} s; see {self.root}/api.log")

    def check_alive(self, ignore: Callable[[str], bool] = lambda name: False) -> None:
        """Raise, with its log's tail, if any process of the run has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None and not ignore(name):
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root}/{name}.log\n"
                                   + self.log_tail(name))

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def logs(self, chars: int = 4000) -> str:
        """The tail of every process's log, for an assertion message."""
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in self.root.glob("*.log"))

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def stop(self) -> None:
        """Stop every process and simulator, and let go of the store's connections."""
        for name in list(self.procs):
            self.stop_process(name)
        if self.sims is not None:
            self.sims.stop()
            self.sims = None
        if self.mail is not None:
            self.mail.stop()
            self.mail = None
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None
        from hubbridge.store import engine_for

        if self.database_url:
            with contextlib.suppress(Exception):
                engine_for(self.database_url).dispose()
        engine_for.cache_clear()

    # -- driving it -------------------------------------------------------------------------------
    def post_cases(
        self,
        cases: Sequence[dict[str, Any]],
        *,
        rate: float | None = None,
        threads: int = 4,
        on_answer: Callable[[dict[str, Any], int], None] | None = None,
    ) -> Submitted:
        """POST each case, signed, to the intake API; at `rate` cases/s on a fixed schedule, else flat out.

        With a rate, a case's intake time is its scheduled time, so a stall in the caller or the API
        counts against latency instead of hiding it (no coordinated omission).
        """
        from http.client import HTTPConnection, HTTPException

        from hubbridge.signing import sign

        secret = self.env.get("HUBBRIDGE_INTAKE_SECRET", DEMO_SECRETS["HUBBRIDGE_INTAKE_SECRET"])
        out = Submitted()
        lock = threading.Lock()
        local = threading.local()
        bodies = [json.dumps(c).encode() for c in cases]
        start = time.time() + 0.2
        api = urlsplit(self.api_url)

        def send(body: bytes, headers: dict[str, str]) -> int:
            # http.client on a kept-alive connection per thread: the caller stands in for the Hub, on another
            # machine in life, so it should take as little of these cores as it can (requests took 1.7 ms a case)
            while True:
                conn = getattr(local, "conn", None)
                fresh = conn is None
                if conn is None:
                    conn = local.conn = HTTPConnection(api.hostname, api.port, timeout=60)
                try:
                    conn.request("POST", "/cases", body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    return resp.status
                except (OSError, HTTPException):
                    conn.close()
                    local.conn = None
                    if fresh:
                        return 0
                    # a kept-alive connection the server closed while idle (uvicorn: after 5 s): once more on a
                    # new one; a case that did get in meanwhile is answered 202 as a duplicate, not taken twice

        def post(i: int) -> None:
            if rate:
                due = start + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                at = due
            else:
                at = time.time()
            body = bodies[i]
            code = send(body, {"Content-Type": "application/json", **sign(body, secret)})
            with lock:
                if code == 202:
                    out.accepted += 1
                    out.at[cases[i]["ref"]] = at
                else:
                    out.refused += 1
                if on_answer is not None:
                    on_answer(cases[i], code)

        # with a rate, enough threads that a slow answer does not hold back the next case's schedule
        n_threads = max(threads, int(rate * 0.5) + 2) if rate else threads
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(post, range(len(cases))))
        if out.at:
            out.first, out.last = min(out.at.values()), max(out.at.values())
        return out

    def post_followups(self, followups: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, int]:
        """POST each follow-up, signed, in order (a case's follow-ups must arrive in the order the Hub made them):
        kind `repost` to /cases (the case again, changed), the others to /cases/{ref}/events. Counts by answer."""
        import requests

        from hubbridge.signing import sign

        secret = self.env.get("HUBBRIDGE_INTAKE_SECRET", DEMO_SECRETS["HUBBRIDGE_INTAKE_SECRET"])
        counts = {"submitted": 0, "duplicate": 0, "refused": 0}
        with requests.Session() as http:
            for kind, body in followups:
                raw = json.dumps(body).encode()
                path = "/cases" if kind == "repost" else f"/cases/{body['ref']}/events"
                resp = http.post(self.api_url + path, data=raw, timeout=60,
                                 headers={"Content-Type": "application/json", **sign(raw, secret)})
                answer = resp.json() if resp.status_code == 202 else {}
                if answer.get("status") in ("accepted", "amended"):
                    counts["submitted"] += len(answer.get("followups", [])) if kind == "repost" else 1
                elif answer.get("status") == "duplicate":
                    counts["duplicate"] += 1
                else:
                    counts["refused"] += 1
        return counts

    def followup_states(self) -> dict[str, int]:
        """How many follow-ups the store holds in each state (pending, delivered, dead)."""
        from hubbridge.store import session_scope
        from hubbridge.workflows.followups import counts

        with session_scope(self.database_url) as s:
            return counts(s)

    def wait_followups(self, timeout: float = 120.0) -> dict[str, int]:
        """Wait until no follow-up is pending (or `timeout`); the states then."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.followup_states()
            if not found.get("pending") or time.monotonic() >= deadline:
                return found
            time.sleep(0.5)

    def submit_file(self, cases: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Hand the cases to `hubbridge submit` as a JSON Lines file; its counts."""
        path = self.root / f"cases-{time.monotonic_ns()}.jsonl"
        path.write_text("".join(json.dumps(c) + "\n" for c in cases))
        done = subprocess.run([sys.executable, *CLI, "submit", str(path)], env=self.env, capture_output=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"hubbridge submit failed: {done.stderr.decode(errors='replace')[-3000:]}")
        counts: dict[str, int] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return counts

    def stages(self) -> dict[str, int]:
        """How many cases the store holds at each stage."""
        from sqlalchemy import func, select

        from hubbridge.store import CaseRow, session_scope

        with session_scope(self.database_url) as s:
            return {str(k): int(v) for k, v in s.execute(select(CaseRow.stage, func.count()).group_by(CaseRow.stage))}

    def acknowledged_and_dead(self) -> tuple[int, int]:
        """(acknowledged, dead) cases in the store."""
        stages = self.stages()
        return stages.get("acknowledged", 0), stages.get("dead", 0)

    def settled(self) -> int:
        """Cases that have reached an end: acknowledged by the Hub, or dead-lettered."""
        return sum(self.acknowledged_and_dead())

    def wait_settled(self, n: int, timeout: float = 240.0, *, on_count: Callable[[int], None] | None = None) -> int:
        """Wait until `n` cases are settled in the store (or `timeout`); how many are.

        With `watch_processes`, a process of the run that exits ends the wait with its log's tail.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            done = self.settled()
            if on_count is not None:
                on_count(done)
            if done >= n or time.monotonic() >= deadline:
                return done
            if self.watch_processes:
                self.check_alive(lambda name: name.startswith("py-spy-"))
            # counting the cases reads the whole table: four times a second it cost PostgreSQL a seventh of
            # the machine by the end of a 100,000-case soak, so after a short wait look once a second
            time.sleep(0.25 if time.monotonic() - started < 10 else 1.0)
