"""The `hubbridge` command: run the pieces, feed cases, look cases up, and the admin tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hubbridge.config.settings import get_settings
from hubbridge.errors import CaseValidationError, ConfigErrors, HubbridgeError
from hubbridge.workflows.worker import Lane

app = typer.Typer(
    help="hubbridge: Hub cases to back offices and back, on queued workflows with SLAs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def _logging(level: str | None = None) -> None:
    from hubbridge.log import configure_logging

    s = get_settings()
    configure_logging(s.log_format, level or s.log_level)


def _share_metrics() -> None:
    """Write this process's metrics where the API's /metrics adds up every process's; before any metric is made."""
    from hubbridge.workflows.metrics import share_across_processes

    share_across_processes(get_settings().resolved_metrics_dir)


@app.command()
def migrate() -> None:
    """Create or upgrade the store's schema (Alembic) at HUBBRIDGE_DATABASE_URL."""
    from hubbridge.store import migrate as run

    url = get_settings().resolved_database_url
    run(url)
    console.print(f"store at [bold]{_safe_url(url)}[/] is up to date")


@app.command()
def worker(
    lane: Annotated[
        Lane,
        typer.Option(help="all: every queue. delivery: new cases to back offices. sync: back-office changes to the "
                     "Hub, Hub push retries, reconcile; run one of each side by side on a busy machine"),
    ] = Lane.ALL,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes",
                     show_default="sync lane 1; else HUBBRIDGE_WORKER_CONCURRENCY, else CPUs + 1"),
    ] = None,
    queues: Annotated[
        str | None, typer.Option(help="Queues to consume, comma-separated", show_default="the lane's")
    ] = None,
    nice: Annotated[
        int | None,
        typer.Option(help="Niceness the worker adds to itself and its pool, 0-19", show_default="sync lane 10, else 0"),
    ] = None,
    pool: Annotated[str, typer.Option(help="prefork, threads or solo")] = "prefork",
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Start a Celery worker on the configured broker, for one lane of hubbridge's queues."""
    _share_metrics()
    from hubbridge.store import migrate as run
    from hubbridge.workflows.app import app as celery_app
    from hubbridge.workflows.worker import lower_priority, plan

    settings = get_settings()
    try:
        chosen = plan(settings, lane, concurrency=concurrency, queues=queues, nice=nice)
    except HubbridgeError as exc:
        console.print(str(exc), style="red", markup=False)  # the queue names are the operator's text
        raise typer.Exit(2) from None
    run(settings.resolved_database_url)
    lower_priority(chosen.nice)
    celery_app.worker_main(chosen.celery_args(pool, loglevel, Path.cwd().name))


@app.command()
def beat(loglevel: Annotated[str, typer.Option()] = "INFO") -> None:
    """Start Celery beat: reconcile lost work, poll back offices for updates, sweep SLA clocks.

    Run two (on two machines) for fail-over: one holds the store's beat lock and schedules, the other waits for it.
    """
    _share_metrics()
    import os

    from hubbridge.workflows.app import app as celery_app
    from hubbridge.workflows.beatlock import BeatLock, watch_lock

    _logging(loglevel)
    s = get_settings()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    lock = BeatLock(s.resolved_database_url, s.data_dir)
    lock.acquire()
    import structlog

    structlog.get_logger(__name__).info("beat.active", pid=os.getpid())
    # a beat that lost its lock (its store connection dropped) must stop at once: a standby may already schedule
    watch_lock(lock, lambda: os._exit(3))
    celery_app.start(["beat", f"--loglevel={loglevel}", f"--schedule={s.data_dir / 'beat-schedule'}"])


@app.command()
def api(host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the intake API (the Hub CRM posts cases to POST /cases)."""
    _share_metrics()
    import uvicorn

    from hubbridge.store import migrate as run
    from hubbridge.workflows.api import create_app

    _logging()
    run(get_settings().resolved_database_url)
    uvicorn.run(create_app(), host=host, port=port, log_config=None)


@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="JSON Lines of Hub cases and follow-ups ('-' for standard input)")],
    enqueue: Annotated[bool, typer.Option(help="Queue each accepted case for delivery")] = True,
) -> None:
    """Take in a batch of Hub cases and follow-ups (lines with a `kind`) from a JSON Lines file.

    Rejected lines are kept as dead letters; a re-sent case whose content changed becomes an amendment.
    """
    from rich.progress import Progress

    from hubbridge.store import migrate as run
    from hubbridge.workflows.followups import accept_followup
    from hubbridge.workflows.intake import accept_case
    from hubbridge.workflows.runtime import runtime
    from hubbridge.workflows.schedule import mark_unpublished

    _logging()
    rt = runtime()
    run(rt.url)
    lines = (sys.stdin if str(file) == "-" else file.open(encoding="utf-8")).read().splitlines()
    counts = {"accepted": 0, "duplicate": 0, "amended": 0, "followups": 0, "rejected": 0}
    unpublished: dict[str, list[str]] = {"deliver": [], "followup": []}

    def publish(what: str, ref: str) -> None:
        from hubbridge.workflows.tasks import enqueue_delivery, enqueue_followups

        try:
            (enqueue_delivery if what == "deliver" else enqueue_followups)(ref)
        except Exception:  # the broker is down: the work is stored; the next sweep publishes it
            unpublished[what].append(ref)

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("submitting", total=len(lines))
        for n, line in enumerate(lines, 1):
            progress.advance(task)
            if not line.strip():
                continue
            try:
                if _is_followup(line):
                    fu = accept_followup(rt, line, channel="file")
                    counts["duplicate" if fu.duplicate else "followups"] += 1
                    if enqueue and not fu.duplicate:
                        publish("followup", fu.hub_ref)
                    continue
                acc = accept_case(rt, line, channel="file")
            except CaseValidationError as exc:
                counts["rejected"] += 1
                console.print(f"[red]{file}:{n}:[/] {exc}")
                continue
            counts["amended" if acc.amended else "duplicate" if acc.duplicate else "accepted"] += 1
            if enqueue and not acc.duplicate:
                publish("deliver", acc.hub_ref)
            if enqueue and acc.amended:
                publish("followup", acc.hub_ref)
    if unpublished["deliver"] or unpublished["followup"]:
        mark_unpublished(rt, deliver=unpublished["deliver"], followup=unpublished["followup"])
        console.print(f"[yellow]the broker could not be reached for {sum(map(len, unpublished.values()))} "
                      "items: they are stored and beat's next sweep queues them[/]")
    out.print(json.dumps(counts))
    raise typer.Exit(1 if counts["rejected"] else 0)


def _is_followup(line: str) -> bool:
    """A follow-up line names a `kind` and no `service` (a case always names its service)."""
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and "kind" in data and "service" not in data


@app.command()
def status(
    ref: Annotated[str, typer.Argument(help="Hub reference or back-office reference")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a case's whole trail: status, back-office reference, mapping version, events, Hub updates."""
    from hubbridge.workflows.trail import case_trail

    trail = case_trail(get_settings().resolved_database_url, ref)
    if trail is None:
        console.print(f"[red]no case {ref}[/] (checked Hub and back-office references)")
        raise typer.Exit(1)
    if as_json:
        out.print_json(data=trail)
        return
    head = Table.grid(padding=(0, 2))
    for key in (
        "ref",
        "authority",
        "service",
        "priority",
        "status",
        "stage",
        "connector",
        "mapping_version",
        "attempts",
        "last_error",
        "received_at",
    ):
        head.add_row(f"[bold]{key}[/]", str(trail[key]) if trail[key] is not None else "-")
    head.add_row(
        "[bold]back office[/]", ", ".join(f"{b['connector']}: {b['ref']}" for b in trail["backoffice_refs"]) or "-"
    )
    out.print(head)
    events = Table("at", "event", "detail", title="events")
    for e in trail["events"]:
        detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items() if v not in (None, [], ""))
        events.add_row(e["at"][:19], e["kind"], detail[:100])
    out.print(events)
    ups = Table("seq", "status", "pushed", title="updates to the Hub")
    for u in trail["hub_updates"]:
        ups.add_row(str(u["sequence"]), u["status"], (u["pushed_at"] or "pending")[:19])
    out.print(ups)
    if trail["followups"]:
        fus = Table("seq", "kind", "state", "via", "attempts", "received", "delivered", "last error",
                    title="follow-ups to the back office")
        for f in trail["followups"]:
            fus.add_row(str(f["sequence"]), f["kind"], f["state"], f["via"] or "-", str(f["attempts"]),
                        f["received_at"][:19], (f["delivered_at"] or "-")[:19], (f["last_error"] or "")[:60])
        out.print(fus)
    if trail["dead_letters"]:
        dl = Table("id", "stage", "reason", "detail", title="dead letters")
        for d in trail["dead_letters"]:
            dl.add_row(str(d["id"]), d["stage"], d["reason"], d["detail"][:120])
        out.print(dl)


@app.command()
def demo(
    cases: Annotated[int, typer.Option(help="How many generated cases to feed")] = 500,
    areas: Annotated[str, typer.Option(help="Service areas to generate, comma separated")] = (
        "refuse,revenues,highways,planning"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary at the end")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the pipeline to settle")] = 600.0,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 2,
    data_dir: Annotated[Path | None, typer.Option(help="Where the embedded store and broker live")] = None,
    serve: Annotated[bool, typer.Option(help="Afterwards leave the API, console and simulators running until Ctrl-C")]
    = False,
    port: Annotated[int | None, typer.Option(help="The API's and console's port (default: any free one)")] = None,
) -> None:
    """Run everything on the embedded default: simulators, a worker, beat, the intake API and generated cases."""
    from hubbridge.workflows.demo import DEMO_LOGIN, Demo, run_demo

    def ready(demo: Demo) -> None:
        # with --json stdout carries the summary alone, so the invitation goes to stderr
        tell = console if as_json else out
        if as_json:
            print(json.dumps(demo.summary, sort_keys=True), flush=True)
        else:
            _summary_table(demo.summary)
        tell.print(f"console: {demo.console_url}  login: {DEMO_LOGIN[0]} / {DEMO_LOGIN[1]}", soft_wrap=True)
        tell.print(f"intake API: {demo.harness.api_url}/cases  store and logs: {demo.harness.root}", soft_wrap=True)
        tell.print("serving until Ctrl-C", soft_wrap=True)

    _logging("WARNING")  # to stderr, and only what needs a look: stdout carries the summary

    summary = run_demo(
        cases=cases,
        areas=[a.strip() for a in areas.split(",") if a.strip()],
        timeout=timeout,
        workers=workers,
        data_dir=data_dir,
        quiet=as_json,
        console=console,
        serve=serve,
        port=port,
        on_ready=ready,
    )
    if not serve:
        if as_json:
            print(json.dumps(summary, sort_keys=True))
        else:
            _summary_table(summary)
    raise typer.Exit(0 if summary["lost"] == 0 else 1)


def _summary_table(summary: dict[str, Any]) -> None:
    table = Table("service", "submitted", "delivered", "acknowledged", "dead-lettered", "lost", title="hubbridge demo")
    for service, row in sorted(summary["by_service"].items()):
        table.add_row(
            service, *(str(row[k]) for k in ("submitted", "delivered", "acknowledged", "dead_lettered", "lost"))
        )
    table.add_row(
        "[bold]all[/]",
        *(f"[bold]{summary[k]}[/]" for k in ("submitted", "delivered", "acknowledged", "dead_lettered", "lost")),
    )
    out.print(table)
    out.print(
        f"elapsed {summary['elapsed_s']} s, {summary['cases_per_s']} cases/s; "
        f"Hub holds the back-office reference of {summary['hub_has_ref']} cases"
    )


SELF_MIGRATING = frozenset({"migrate", "worker", "api", "submit", "demo", "beat", "mappings"})
"""Commands that bring the store up themselves, or do not touch it: the rest check it first."""


@app.callback()
def _store_ready(ctx: typer.Context) -> None:
    """Before a command that reads the store: create the embedded SQLite store, or stop on an unmigrated server."""
    if (ctx.resilient_parsing or ctx.invoked_subcommand is None or ctx.invoked_subcommand in SELF_MIGRATING
            or {"--help", "-h"} & set(sys.argv)):
        return
    from hubbridge.errors import StoreError

    url = get_settings().resolved_database_url
    try:
        ensure_store(url)
    except StoreError as exc:
        console.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def ensure_store(url: str) -> None:
    """Migrate an embedded SQLite store (it is this machine's own); on a server, raise StoreError unless at head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from hubbridge.errors import StoreError
    from hubbridge.store import engine_for
    from hubbridge.store import migrate as run

    if url.startswith("sqlite"):
        run(url)
        return
    from hubbridge import store

    heads = set(ScriptDirectory(str(Path(store.__file__).parent / "migrations")).get_heads())
    try:
        with engine_for(url).connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        raise StoreError(
            f"cannot reach the store at {_safe_url(url)}: {str(exc).splitlines()[0][:200]}; "
            "check HUBBRIDGE_DATABASE_URL and that the database server runs"
        ) from None
    if not current:
        raise StoreError(
            f"the store at {_safe_url(url)} has not been migrated (no hubbridge tables); "
            "run `hubbridge migrate` with the same HUBBRIDGE_DATABASE_URL, then this command again"
        )
    if current != heads:
        raise StoreError(
            f"the store at {_safe_url(url)} is at schema {', '.join(sorted(current))}, this release needs "
            f"{', '.join(sorted(heads))}; run `hubbridge migrate` (after a backup), then this command again"
        )


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    try:
        app()
    except ConfigErrors as exc:
        for err in exc.errors:
            console.print(f"[red]{err}[/]")
        sys.exit(2)
    except HubbridgeError as exc:
        console.print(f"[red]{exc}[/]")
        sys.exit(2)


def _mount() -> None:
    from hubbridge.mappings.cli import mappings_app
    from hubbridge.sla.cli import sla_app
    from hubbridge.workflows.dlq_cli import dlq_app
    from hubbridge.workflows.privacy_cli import privacy_app

    app.add_typer(mappings_app, name="mappings", help="Validate, dry-run and describe YAML mappings.")
    app.add_typer(sla_app, name="sla", help="SLA report, a case's clocks, due times.")
    app.add_typer(dlq_app, name="dlq", help="List, show, replay and discard dead letters.")
    app.add_typer(privacy_app, name="privacy", help="Export or erase a person's data; run and show retention.")


_mount()


if __name__ == "__main__":
    main()
