"""Running it like a service, on RabbitMQ + PostgreSQL: two beats with one active, and a broker blip.

Beat: two run, one holds the store's beat lock; `kill -9` it and the standby takes over within 30 s, and the
two never schedule at the same time. Broker blip: every process reaches RabbitMQ through a TCP proxy on
loopback; the proxy is stopped for 10 s (every connection dropped, new ones refused) while the Hub posts
cases, and every case accepted meanwhile must be delivered within 15 s of the broker's return. The figure
goes to var/fault-figures.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hubbridge.store import CaseRow, session_scope
from hubbridge.workflows.casegen import generate_cases

from .stack import Stack
from .test_faults import FIGURES, SERVICES, broker_up, rabbitmqctl

pytestmark = [pytest.mark.services, pytest.mark.faults, pytest.mark.timeout(300)]

TAKEOVER_SECONDS = 30.0
OUTAGE_SECONDS = 10.0
BLIP_DELIVERY_SECONDS = 15.0


class BrokerProxy:
    """A TCP forwarder to RabbitMQ on a fixed loopback port, which can be taken down and brought back."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one, as a broker that went away does."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    vhost = f"hubbridge-failover-{uuid.uuid4().hex[:8]}"
    broker_up()
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost, check=False)


def record_figure(name: str, figure: dict[str, float | int]) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = figure
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def wait_for_line(path: Path, needle: str, timeout: float) -> float | None:
    """Seconds until `needle` shows in the log at `path`, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if path.exists() and needle in path.read_text(errors="replace"):
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def cases(n: int, seed: int) -> list[dict[str, object]]:
    return list(generate_cases(n, services=SERVICES, seed=seed, start_serial=seed * 1000 + 1))


def test_a_standby_beat_takes_over_from_a_killed_one_and_they_never_run_together(
        tmp_path: Path, pg_url: str) -> None:
    with private_vhost() as vhost:
        stack = Stack(tmp_path, pg_url, f"amqp://guest:guest@127.0.0.1:5672/{vhost}", plugins=("bartec",), workers=2)
        try:
            stack.start(beat=False)
            first = stack.spawn("beat-a", ["beat", "--loglevel=INFO"])
            assert wait_for_line(tmp_path / "beat-a.log", "beat.active", 60) is not None, stack.logs()
            stack.spawn("beat-b", ["beat", "--loglevel=INFO"])
            assert wait_for_line(tmp_path / "beat-b.log", "beat.standby", 60) is not None, stack.logs()
            # the active beat schedules; the standby sends nothing while it waits
            assert wait_for_line(tmp_path / "beat-a.log", "hubbridge.reconcile", 30) is not None, stack.logs()
            time.sleep(3)  # a few of beat's ticks: the standby must stay silent through them
            standby_log = (tmp_path / "beat-b.log").read_text(errors="replace")
            assert "beat.active" not in standby_log and "Sending due task" not in standby_log

            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
            took = wait_for_line(tmp_path / "beat-b.log", "beat.active", TAKEOVER_SECONDS)
            assert took is not None, stack.logs()
            assert wait_for_line(tmp_path / "beat-b.log", "hubbridge.reconcile", 30) is not None, stack.logs()

            # cases stored but never queued reach the back office only through beat's reconcile, now the new beat's
            batch = cases(20, seed=26)
            path = tmp_path / "unqueued.jsonl"
            path.write_text("".join(json.dumps(c) + "\n" for c in batch))
            done = subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", "submit", "--no-enqueue",
                                   str(path)], env=stack.env, capture_output=True, timeout=300)
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
            assert stack.wait_settled(len(batch), timeout=150) == len(batch), stack.logs()
            refs = [str(c["ref"]) for c in batch]
            with session_scope(pg_url) as s:
                rows = s.execute(select(CaseRow.hub_ref, CaseRow.stage).where(CaseRow.hub_ref.in_(refs)))
                stages = {ref: stage for ref, stage in rows.all()}
            assert len(stages) == len(batch) and set(stages.values()) == {"acknowledged"}
            record_figure("beat_failover", {"takeover_s": round(took, 1), "cases": len(batch)})
        finally:
            stack.stop()


def test_cases_taken_during_a_broker_outage_are_delivered_seconds_after_it_returns(
        tmp_path: Path, pg_url: str) -> None:
    proxy = BrokerProxy()
    proxy.start()
    with private_vhost() as vhost:
        stack = Stack(tmp_path, pg_url, f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}", plugins=("bartec",),
                      workers=2)
        try:
            stack.start(beat=False)
            stack.spawn("beat", ["beat", "--loglevel=INFO"])
            stack.start_api()
            warm = cases(10, seed=1)
            assert stack.post_cases(warm).accepted == len(warm)
            assert stack.wait_settled(len(warm), timeout=120) == len(warm), stack.logs()

            proxy.stop()
            outage_started = time.monotonic()
            during = cases(60, seed=2)
            sent = stack.post_cases(during, rate=60 / (OUTAGE_SECONDS - 2))
            assert sent.accepted == len(during), f"the API refused {sent.refused} cases while the broker was down"
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
            proxy.start()
            back = time.monotonic()
            total = len(warm) + len(during)
            settled = stack.wait_settled(total, timeout=BLIP_DELIVERY_SECONDS)
            after = time.monotonic() - back
            assert settled == total, (
                f"{total - settled} of the {len(during)} cases taken during a {OUTAGE_SECONDS:.0f} s outage were not "
                f"delivered {BLIP_DELIVERY_SECONDS:.0f} s after the broker's return\n" + stack.logs())
            assert "intake.enqueue_failed" in (tmp_path / "api.log").read_text(errors="replace")
            record_figure("broker_blip", {"outage_s": OUTAGE_SECONDS, "cases_during_outage": len(during),
                                          "all_delivered_after_return_s": round(after, 1)})
        finally:
            stack.stop()
            proxy.stop()
