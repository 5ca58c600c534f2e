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
from hubbridge.workflows.casegen import generate_cases, generate_followups
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


DEMO_ACKNOWLEDGE_SECONDS = 20
DEMO_RESOLVE_SECONDS = 45
STALL_EVERY = 10
"""One back-office job in this many sits untouched, so its clocks warn and breach while a person watches."""


@dataclass
class DemoHarness(Harness):
    """The whole system with demo SLA policies short enough to warn and breach during the run, and back
    offices that leave some jobs untouched (a bad day), so enforcement has something to do."""

    stall_every: int = STALL_EVERY

    def make_simulator(self, plugin: str) -> Any:
        from hubbridge.workflows.simulated import simulator_for

        sim = simulator_for(plugin, 0)
        sim.store.stall_every = self.stall_every
        return sim

    def adjust_config(self, cfg: Path) -> None:
        short_policies(cfg, DEMO_ACKNOWLEDGE_SECONDS, DEMO_RESOLVE_SECONDS)


def short_policies(cfg: Path, acknowledge_s: float, resolve_s: float) -> None:
    """Rewrite the copied sla.yaml so every policy's clocks run 24/7 for seconds, not working days: an
    acknowledging clock `acknowledge_s`, the others `resolve_s`; priority overrides are dropped."""
    from ruamel.yaml import YAML

    yaml = YAML()
    path = cfg / "sla.yaml"
    data = yaml.load(path.read_text())
    for policy in data["policies"].values():
        policy["calendar"] = "always"
        policy.pop("priorities", None)
        for name, clock in (policy.get("clocks") or {}).items():
            seconds = acknowledge_s if "acknowledge" in name else resolve_s
            clock["target"] = {"elapsed_hours": round(seconds / 3600, 6)}
            clock.pop("calendar", None)
    with path.open("w") as fh:
        yaml.dump(data, fh)


def demo_harness(data: Path) -> Harness:
    """The harness on the embedded default in `data`, with a console a person can log in to."""
    from hubbridge.workflows.console.passwords import hash_password

    return DemoHarness(
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
            # the Hub follows about a fifth of its cases up while they are on their way
            followups = generate_followups(generated, share=0.2, seed=len(generated))
            t_fu = progress.add_task("follow-ups", total=len(followups))
            sent = harness.post_followups(followups)
            progress.update(t_fu, completed=len(followups))
            t_done = progress.add_task("delivered and acknowledged", total=sum(submitted.values()))
            harness.wait_settled(sum(submitted.values()), timeout,
                                 on_count=lambda n: progress.update(t_done, completed=n))
            harness.wait_followups(timeout=max(60.0, timeout / 4))
            # the untouched jobs' clocks warn and breach; their escalations and chases go out
            t_sla = progress.add_task("SLA escalations", total=None)
            wait_enforced(harness, DEMO_RESOLVE_SECONDS + 60.0)
            progress.update(t_sla, total=1, completed=1)
        elapsed = time.monotonic() - started
        assert harness.sims is not None
        held = harness.sims.backoffice_refs(_acknowledged(harness.database_url))
        summary = _summary(harness.database_url, submitted, held, elapsed, data)
        summary["followups"] = followup_summary(harness.database_url, sent, harness.sims.followup_records())
        assert harness.mail is not None
        summary["followups"]["emails_received"] = sum(
            1 for m in harness.mail.received() if m["message_id"].startswith("<followup."))
        summary["sla"] = sla_summary(harness)
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


def followup_summary(url: str, sent: dict[str, int], records: list[dict[str, Any]]) -> dict[str, Any]:
    """What became of the follow-ups the Hub sent: from the store, and from the back offices' own records.

    `duplicated` counts back-office records that appear more than once for one follow-up (its key heads the
    text where the back office keeps text); `lost` is what was taken in and is neither delivered nor dead-lettered.
    """
    from sqlalchemy import func

    from hubbridge.store import FollowUpRow

    with session_scope(url) as s:
        states = dict(s.execute(select(FollowUpRow.state, func.count()).group_by(FollowUpRow.state)).all())
        by_kind = dict(s.execute(select(FollowUpRow.kind, func.count()).group_by(FollowUpRow.kind)).all())
        by_channel = dict(s.execute(select(FollowUpRow.channel, func.count()).group_by(FollowUpRow.channel)).all())
        via = dict(s.execute(select(FollowUpRow.via, func.count()).where(FollowUpRow.state == "delivered")
                             .group_by(FollowUpRow.via)).all())
        dead_reasons = dict(s.execute(
            select(DeadLetterRow.reason, func.count())
            .where(DeadLetterRow.stage == "followup", DeadLetterRow.replayed_at.is_(None))
            .group_by(DeadLetterRow.reason)).all())
        total = sum(states.values())
    keys = Counter((r["plugin"], r["backoffice_ref"], r["kind"], r["text"], tuple(r["documents"])) for r in records)
    delivered, dead = states.get("delivered", 0), states.get("dead", 0)
    return {
        "submitted": total,
        "delivered": delivered,
        "dead_lettered": dead,
        "pending": states.get("pending", 0),
        "lost": total - delivered - dead,  # still pending when the run ended counts: it never arrived
        "refused_at_intake": sent.get("refused", 0),
        "by_kind": dict(sorted(by_kind.items())),
        "by_channel": dict(sorted(by_channel.items())),  # api: from the Hub; sla: hubbridge's own chases
        "via": {str(k): v for k, v in sorted(via.items(), key=lambda kv: str(kv[0]))},
        "dead_letter_reasons": dict(sorted(dead_reasons.items())),
        "backoffice_records": len(records),
        "duplicated": sum(n - 1 for n in keys.values() if n > 1),
    }


def _enforcement(url: str) -> tuple[int, int, int]:
    """(clocks running that have not breached yet, escalation messages not yet sent, chases not yet delivered)."""
    from sqlalchemy import func

    from hubbridge.sla.escalate import escalation_totals
    from hubbridge.sla.tables import SlaClockRow
    from hubbridge.store import FollowUpRow

    with session_scope(url) as s:
        running = s.scalar(select(func.count()).select_from(SlaClockRow).where(
            SlaClockRow.state == "running", SlaClockRow.breached.is_(False))) or 0
        pending = escalation_totals(s)["pending"]
        chasing = s.scalar(select(func.count()).select_from(FollowUpRow).where(
            FollowUpRow.channel == "sla", FollowUpRow.state == "pending")) or 0
    return int(running), int(pending), int(chasing)


def wait_enforced(harness: Harness, timeout: float) -> None:
    """Wait until every clock still running has breached and every escalation and chase has gone out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _enforcement(harness.database_url) == (0, 0, 0):
            return
        time.sleep(1.0)


def sla_summary(harness: Harness) -> dict[str, Any]:
    """Warnings, breaches and what enforcement did, from the store and from the receiving servers themselves."""
    from sqlalchemy import func

    from hubbridge.sla.escalate import escalation_totals
    from hubbridge.sla.policy import load_sla_config
    from hubbridge.sla.tables import SlaClockRow
    from hubbridge.store import FollowUpRow

    assert harness.config_dir is not None
    promise_of = load_sla_config(harness.config_dir).promises
    with session_scope(harness.database_url) as s:
        warnings = s.scalar(select(func.count()).select_from(SlaClockRow).where(SlaClockRow.warned.is_(True)))
        breaches = s.scalar(select(func.count()).select_from(SlaClockRow).where(SlaClockRow.breached.is_(True)))
        by_clock = s.execute(select(SlaClockRow.clock, func.count()).where(SlaClockRow.breached.is_(True))
                             .group_by(SlaClockRow.clock)).all()
        sends = escalation_totals(s)
        chases = dict(s.execute(select(FollowUpRow.state, func.count()).where(FollowUpRow.channel == "sla")
                                .group_by(FollowUpRow.state)).all())
    assert harness.mail is not None and harness.webhooks is not None
    mails = [m for m in harness.mail.received() if not m["message_id"].startswith("<followup.")]
    return {
        "warnings": int(warnings or 0),
        "breaches": int(breaches or 0),
        # the customer's SLA and the service area's own level: who held the delay
        "breaches_by_promise": _by_promise(by_clock, promise_of),
        "escalations_delivered": sends["delivered"],
        "escalations_dead_lettered": sends["lost"],
        "escalations_lost": sends["pending"],  # still unsent when the run ended
        "emails_received": len(mails),
        "webhooks_received": len(harness.webhooks.received()),
        "chases": sum(chases.values()),
        "chases_delivered": chases.get("delivered", 0),
        "stalled_jobs_one_in": STALL_EVERY,
    }


def _by_promise(by_clock: Any, promise_of: dict[str, str]) -> dict[str, int]:
    out = {"customer": 0, "service_area": 0}
    for clock, n in by_clock:
        promise = promise_of.get(clock, "customer")
        out[promise] = out.get(promise, 0) + int(n)
    return out


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
