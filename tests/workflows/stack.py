"""A whole hubbridge on loopback for end-to-end tests: simulators, config, worker and beat processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import func, select

from hubbridge.store import CaseRow, session_scope
from hubbridge.workflows.demo import DEMO_SECRETS, simulator_config, simulator_for


def write_config(dest: Path, hub_url: str, plugin_urls: dict[str, str], plugins: Iterable[str]) -> Path:
    """The shipped config with only `plugins`' routes, pointed at the simulators, with test-sized timings."""
    return simulator_config(dest, hub_url, plugin_urls, plugins=set(plugins), instance={
        "poll_seconds": 1,
        "timeouts": {"connect": 2, "read": 3},
        "retry": {"max_attempts": 30, "base_seconds": 0.5, "max_seconds": 5},
        "circuit": {"failure_threshold": 50, "reset_seconds": 2},
    })


@contextmanager
def connectors_yaml(cfg: Path) -> Iterator[Any]:
    """The config's connectors.yaml to change in the `with` block; written back (comments kept) after it."""
    yaml = YAML()
    conns = yaml.load((cfg / "connectors.yaml").read_text())
    yield conns
    with (cfg / "connectors.yaml").open("w") as fh:
        yaml.dump(conns, fh)


def use_config(monkeypatch: Any, cfg: Path, database_url: str) -> None:
    """Point this process's settings at `cfg` and `database_url`, with the demo credentials its connectors name."""
    from hubbridge.config.loader import load_config
    from hubbridge.config.settings import Settings, get_settings
    from hubbridge.workflows.demo import _credential_names, demo_environment

    for k, v in demo_environment(_credential_names(load_config(cfg, Settings(config_dir=cfg)))).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HUBBRIDGE_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", database_url)
    get_settings.cache_clear()


@dataclass
class Stack:
    """Simulators in this process; worker and beat as real processes on the given broker and store."""

    root: Path
    database_url: str
    broker_url: str
    plugins: tuple[str, ...] = ("bartec",)
    workers: int = 2
    sims: dict[str, Any] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def start(self, *, beat: bool = True, tick_seconds: float = 1.0) -> Stack:
        from hubbridge.connectors.hub import HubSimulator

        self.sims["hub"] = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
        for plugin in self.plugins:
            sim = self.make_simulator(plugin).start()
            sim.auto_advance(tick_seconds, sim.store.advance)
            self.sims[plugin] = sim
        cfg = write_config(self.root / "config", self.sims["hub"].endpoint,
                           {p: self.sims[p].url for p in self.plugins}, self.plugins)
        self.adjust_config(cfg)
        from hubbridge.config.loader import load_config
        from hubbridge.config.settings import Settings
        from hubbridge.workflows.demo import _credential_names, demo_environment

        names = _credential_names(load_config(cfg, Settings(config_dir=cfg)))
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")},
                    **demo_environment(names),
                    "HUBBRIDGE_CONFIG_DIR": str(cfg), "HUBBRIDGE_DATA_DIR": str(self.root / "var"),
                    "HUBBRIDGE_DATABASE_URL": self.database_url, "HUBBRIDGE_BROKER_URL": self.broker_url,
                    "HUBBRIDGE_LOG_FORMAT": "json", "HUBBRIDGE_SWEEP_SECONDS": "1",
                    "HUBBRIDGE_RECONCILE_AFTER_SECONDS": "20"}
        self.start_worker()
        if beat:
            self.spawn("beat", ["beat", "--loglevel=INFO"])
        return self

    def make_simulator(self, plugin: str) -> Any:
        """The back-office simulator for `plugin`, not yet started; a test's stack may give its own."""
        return simulator_for(plugin, 0)

    def adjust_config(self, cfg: Path) -> None:
        """Change the written config before the processes start; nothing by default."""

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        return self.spawn(name, ["worker", f"--concurrency={self.workers}", "--loglevel=INFO"])

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "hubbridge.workflows.cli", *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def submit(self, cases: list[dict[str, Any]]) -> dict[str, int]:
        path = self.root / f"cases-{time.monotonic_ns()}.jsonl"
        path.write_text("".join(json.dumps(c) + "\n" for c in cases))
        done = subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", "submit", str(path)], env=self.env,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    def settled(self) -> int:
        with session_scope(self.database_url) as s:
            return int(s.scalar(select(func.count()).select_from(CaseRow)
                                .where(CaseRow.stage.in_(("acknowledged", "dead")))) or 0)

    def wait_settled(self, n: int, timeout: float = 240.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.settled()
            if done >= n:
                return done
            time.sleep(0.5)
        return self.settled()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(20)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for sim in self.sims.values():
            sim.stop()


def sync_back(stack: Stack, refs: list[str], timeout: float = 60.0) -> None:
    """Jobs move on in the back office (the simulator ticks); beat's poll brings each change to the Hub."""
    hub, bartec = stack.sims["hub"], stack.sims["bartec"]
    deadline = time.monotonic() + timeout
    want = bartec.store.lifecycle[-1]
    while time.monotonic() < deadline:
        if all(j.status == want for j in bartec.store.jobs.values()) and all(
                (hub.latest(r) or {}).get("status") in ("resolved", "closed") for r in refs):
            break
        time.sleep(0.5)
    for ref in refs:
        statuses = [u["status"] for u in hub.updates_for(ref)]
        sequences = [u["sequence"] for u in hub.updates_for(ref)]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        assert statuses[0] == "delivered"
        assert statuses[-1] in ("resolved", "closed"), (ref, statuses, stack.logs())
    assert hub.out_of_order == []


def purge_queues(amqp_url: str) -> None:
    """Empty hubbridge's queues, so another run's leftover messages do not count in this one."""
    import contextlib

    from amqp.exceptions import NotFound
    from kombu import Connection

    for q in ("hubbridge.deliver", "hubbridge.hub", "hubbridge.sync", "hubbridge.control"):
        with Connection(amqp_url, connect_timeout=5) as conn, contextlib.suppress(NotFound):
            conn.default_channel.queue_purge(q)
