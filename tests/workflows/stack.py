"""The whole-system harness as the end-to-end tests use it, and the config helpers the tests share."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubbridge.workflows.harness import Harness
from hubbridge.workflows.simulated import demo_environment, load, simulator_config

TEST_TIMINGS: dict[str, Any] = {
    "poll_seconds": 1,
    "timeouts": {"connect": 2, "read": 3},
    "retry": {"max_attempts": 30, "base_seconds": 0.5, "max_seconds": 5},
    "circuit": {"failure_threshold": 50, "reset_seconds": 2},
}
"""Connector timings sized for tests: polls every second, short timeouts, quick retries."""


def write_config(dest: Path, hub_url: str, plugin_urls: dict[str, str], plugins: Iterable[str]) -> Path:
    """The shipped config with only `plugins`' routes, pointed at the simulators, with test-sized timings."""
    return simulator_config(dest, hub_url, plugin_urls, plugins=set(plugins), instance=TEST_TIMINGS)


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
    from hubbridge.config.settings import get_settings

    for k, v in demo_environment(load(cfg)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HUBBRIDGE_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", database_url)
    get_settings.cache_clear()


class Stack(Harness):
    """The harness as the end-to-end tests use it: the given store and broker, simulators in this process,
    test-sized timings, a worker (and beat) started with it, cases handed in through `hubbridge submit`."""

    def __init__(self, root: Path, database_url: str, broker_url: str, plugins: tuple[str, ...] = ("bartec",),
                 workers: int = 2) -> None:
        super().__init__(root, database_url, broker_url, plugins=plugins, instance=dict(TEST_TIMINGS),
                         sweep_seconds=1, reconcile_after_seconds=20, watch_processes=False)
        self.workers = workers

    def start(self, *, beat: bool = True, tick_seconds: float = 1.0) -> Stack:
        self.tick_seconds = tick_seconds
        super().start()
        self.start_worker()
        if beat:
            self.start_beat()
        return self

    def start_worker(self, name: str = "worker", *, lane: str | None = None, args: Sequence[str] = ()) -> (
            subprocess.Popen[bytes]):
        return super().start_worker(name, lane=lane, args=[f"--concurrency={self.workers}", *args])

    def submit(self, cases: list[dict[str, Any]]) -> dict[str, int]:
        return self.submit_file(cases)


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

    from hubbridge.workflows.queues import ALL

    for q in ALL:
        with Connection(amqp_url, connect_timeout=5) as conn, contextlib.suppress(NotFound):
            conn.default_channel.queue_purge(q)
