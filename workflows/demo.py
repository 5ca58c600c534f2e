"""`hubbridge demo`: the whole system on one machine, embedded default, with generated cases.

Starts the whole-system harness on the embedded SQLite store and broker (the back-office and Hub
simulators, the intake API and console, a worker and beat as separate processes), posts signed
generated cases, waits for them to settle and counts what happened from the store and the Hub. With
`serve`, everything stays up afterwards for a person to look around, until Ctrl-C.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from hubbridge.config.settings import Settings
from hubbridge.store import CaseRow, DeadLetterRow, session_scope
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.harness import Harness

DEMO_LOGIN = ("operator", "demo-operator-password")
"""The console login `demo --serve` prints: the shipped operator user, with a demo-only password."""


@dataclass
class Demo:
    """A demo run's harness and what the summary needs once it is over."""

    harness: Harness
    summary: dict[str, Any]

    @property
    def console_url(self) -> str:
        return f"{self.harness.api_url}/console"


def demo_harness(data: Path) -> Harness:
    """The harness on the embedded default in `data`, with a console a person can log in to."""
    from hubbridge.workflows.console.passwords import hash_password

    return Harness(
        root=data,
        config_source=Settings().config_dir,
        tick_seconds=3.0,  # jobs move on in the back offices while a person watches
        sweep_seconds=1,
        reconcile_after_seconds=60,
        log_level="WARNING",
        extra_env={
            "HUBBRIDGE_CONSOLE_SECRET": "demo-console-session-secret-not-for-production",
            "HUBBRIDGE_CONSOLE_OPERATOR_HASH": hash_password(DEMO_LOGIN[1]),
        },
    )


def run_demo(
    *,
    cases: int,
    areas: list[str],
    timeout: float,
    workers: int,
    data_dir: Path | None,
    quiet: bool,
    console: Console,
    serve: bool = False,
    port: int | None = None,
    on_ready: Any = None,
) -> dict[str, Any]:
    """Run the demo and return its summary; with `serve`, call `on_ready(demo)` and stay up until interrupted."""
    data = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="hubbridge-demo-"))
    say = (lambda *a: None) if quiet else console.print
    harness = demo_harness(data)
    stop_asked = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop_asked.set()) if serve else None
    try:
        harness.start()
        say(f"[bold]hubbridge demo[/]: {cases} cases ({', '.join(areas)}), store and broker in {data}")
        harness.start_api(port)
        harness.start_worker(args=[f"--concurrency={workers}"])
        harness.start_beat()
        submitted: Counter[str] = Counter()
        started = time.monotonic()
        generated = list(generate_cases(cases, areas=areas, seed=int(time.time()) % 100000))
        with _progress(quiet, console) as progress:
            t_sub = progress.add_task("submitting", total=len(generated))

            def answered(case: dict[str, Any], status: int) -> None:
                if status == 202:
                    submitted[case["service"]] += 1
                progress.advance(t_sub)

            harness.post_cases(generated, on_answer=answered)
            t_done = progress.add_task("delivered and acknowledged", total=sum(submitted.values()))
            harness.wait_settled(sum(submitted.values()), timeout,
                                 on_count=lambda n: progress.update(t_done, completed=n))
        elapsed = time.monotonic() - started
        assert harness.sims is not None
        held = harness.sims.backoffice_refs(_acknowledged(harness.database_url))
        summary = _summary(harness.database_url, submitted, held, elapsed, data)
        if serve:
            if on_ready is not None:
                on_ready(Demo(harness, summary))
            try:
                while not stop_asked.wait(0.5):
                    harness.check_alive()
            except KeyboardInterrupt:
                pass
        return summary
    finally:
        harness.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _progress(quiet: bool, console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def _acknowledged(url: str) -> list[str]:
    with session_scope(url) as s:
        return list(s.scalars(select(CaseRow.hub_ref).where(CaseRow.stage == "acknowledged")))


def _summary(
    url: str, submitted: Counter[str], held: dict[str, str | None], elapsed: float, data: Path
) -> dict[str, Any]:
    """Totals and one row per service; `hub_has_ref` counts acknowledged cases whose reference the Hub holds."""
    counts = ("submitted", "delivered", "acknowledged", "dead_lettered", "lost", "hub_has_ref")
    by_service: dict[str, dict[str, Any]] = {}
    authorities: dict[str, set[str]] = {}
    with session_scope(url) as s:
        rows = s.execute(select(CaseRow.hub_ref, CaseRow.service, CaseRow.stage, CaseRow.authority)).all()
        dead_refs = set(s.scalars(select(DeadLetterRow.hub_ref).where(DeadLetterRow.hub_ref.is_not(None))).all())

    def row_for(service: str) -> dict[str, Any]:
        return by_service.setdefault(service, dict.fromkeys(counts, 0))

    for service, n in submitted.items():
        row_for(service)["submitted"] = n
    for ref, service, stage, authority in rows:
        row = row_for(service)
        authorities.setdefault(service, set()).add(authority)
        if stage in ("delivered", "acknowledged"):
            row["delivered"] += 1
        if stage == "acknowledged":
            row["acknowledged"] += 1
            if held.get(ref):
                row["hub_has_ref"] += 1
        if stage == "dead" and ref in dead_refs:
            row["dead_lettered"] += 1
    for service, row in by_service.items():
        row["lost"] = max(0, row["submitted"] - row["delivered"] - row["dead_lettered"])
        # which councils' front offices the cases came from (highways: all seven; the rest: districts)
        row["authorities"] = sorted(authorities.get(service, ()))
    total = {k: sum(r[k] for r in by_service.values()) for k in counts}
    return {
        **total,
        "by_service": dict(sorted(by_service.items())),
        "elapsed_s": round(elapsed, 1),
        "cases_per_s": round(total["submitted"] / elapsed, 1) if elapsed else 0.0,
        "data_dir": str(data),
    }
