"""`hubbridge sla ...`: the SLA report, one case's clocks, and the due times a case would get."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hubbridge.case import Priority
from hubbridge.config.settings import get_settings
from hubbridge.errors import HubbridgeError
from hubbridge.sla.calendar import LONDON

sla_app = typer.Typer(help="SLA clocks: report, show a case, compute due times.", no_args_is_help=True)


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def _fail(exc: Exception) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    return typer.Exit(2)


def _instant(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{what} must be ISO 8601, e.g. 2026-03-02T09:00:00+00:00; got {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=LONDON)  # a wall-clock time is read in Europe/London
    return value.astimezone(UTC)


def _date(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{what} must be a date like 2026-03-01; got {text!r}") from None


def _engine(config_dir: Path | None):
    from hubbridge.sla.engine import SlaEngine

    return SlaEngine.from_config(config_dir or get_settings().config_dir)


def _local(value: datetime | None) -> str:
    return value.astimezone(LONDON).strftime("%a %d %b %Y %H:%M %Z") if value else "-"


def _hours(seconds: int | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f}"


@sla_app.command()
def due(
    policy: str = typer.Option(..., "--policy", help="SLA policy (the service key, e.g. refuse.missed-collection)"),
    priority: Priority = typer.Option(Priority.NORMAL, "--priority", help="Case priority"),
    start: str = typer.Option(..., "--start", help="When the case is routed, ISO 8601 (no offset: Europe/London)"),
    as_json: bool = typer.Option(False, "--json", help='Print {"clocks": {name: ISO 8601}}'),
    config_dir: Path | None = typer.Option(None, "--config-dir", help="Config directory (default: settings)"),
) -> None:
    """The due time of every clock of a case started at START."""
    at = _instant(start, "--start")
    try:
        engine = _engine(config_dir)
        dues = engine.due(policy, priority, at, promise=None)
        specs = engine.specs(policy, priority)
    except HubbridgeError as exc:
        raise _fail(exc) from None
    if as_json:
        sys.stdout.write(json.dumps({"clocks": {k: v.isoformat() for k, v in dues.items()}}) + "\n")
        return
    table = Table(title=f"{policy} ({priority.value}) started {_local(at)}",
                  caption="customer clocks start when the case is routed, service_area ones when it is delivered")
    for col in ("clock", "promise", "target", "calendar", "warn at", "due (Europe/London)", "due (UTC)"):
        table.add_column(col)
    for name, when in dues.items():
        spec = specs[name]
        table.add_row(name, spec.promise, spec.target_text, spec.calendar.name,
                      _local(spec.calendar.add(at, spec.warn_after)), _local(when), when.isoformat())
    Console(width=200).print(table)


@sla_app.command()
def show(
    ref: str = typer.Argument(..., help="Hub reference, e.g. WH-2026-000123"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    now: str | None = typer.Option(None, "--now", help="Standing as at this instant (default: now)"),
    database_url: str | None = typer.Option(None, "--database-url", help="Store URL (default: settings)"),
    config_dir: Path | None = typer.Option(None, "--config-dir", help="Config directory (default: settings)"),
) -> None:
    """A case's clocks: state, pauses, due times and standing."""
    from hubbridge.store import session_scope

    at = _instant(now, "--now") if now else datetime.now(UTC)
    try:
        engine = _engine(config_dir)
        with session_scope(database_url or get_settings().resolved_database_url) as session:
            views = engine.show(session, ref, at)
    except HubbridgeError as exc:
        raise _fail(exc) from None
    if not views:
        raise _fail(HubbridgeError(f"no SLA clocks for {ref}", hint="clocks start when the case is routed"))
    if as_json:
        sys.stdout.write(json.dumps({"ref": ref, "at": at.isoformat(),
                                     "clocks": [v.as_dict() for v in views]}, indent=2) + "\n")
        return
    table = Table(title=f"SLA clocks of {ref} at {_local(at)}")
    for col in ("clock", "state", "standing", "priority", "calendar", "target h", "spent h", "started",
                "due", "stopped", "pauses"):
        table.add_column(col)
    for v in views:
        pauses = "; ".join(
            f"{p['status']} {_local(datetime.fromisoformat(p['paused_at']))} -> "
            f"{_local(datetime.fromisoformat(p['resumed_at'])) if p['resumed_at'] else 'now'}"
            for p in v.pauses) or "-"
        table.add_row(v.clock, v.state, v.standing, v.priority, v.calendar, _hours(v.target_s), _hours(v.spent_s),
                      _local(v.started_at), _local(v.due_at),
                      f"{_local(v.stopped_at)} ({v.stop_status})" if v.stopped_at else "-", pauses)
    Console(width=200).print(table)


@sla_app.command()
def report(
    from_: str = typer.Option(..., "--from", help="First day (Europe/London), e.g. 2026-03-01"),
    to: str = typer.Option(..., "--to", help="Last day, included"),
    by: str = typer.Option("service,authority", "--by", help="Group by: service, authority, priority, policy"),
    fmt: Format = typer.Option(Format.TABLE, "--format", help="table, csv or json"),
    now: str | None = typer.Option(None, "--now", help="Standing of open clocks as at this instant"),
    database_url: str | None = typer.Option(None, "--database-url", help="Store URL (default: settings)"),
    config_dir: Path | None = typer.Option(None, "--config-dir", help="Config directory (default: settings)"),
) -> None:
    """Per clock: volume, met %, breached, at risk, open, median and p90 business time; then both promises
    (the customer's SLA and the service area's own level) side by side, and who holds the delay."""
    from hubbridge.sla.policy import load_sla_config
    from hubbridge.sla.report import COLUMNS, HEADINGS, build_promises, build_report, to_csv, to_json
    from hubbridge.store import session_scope

    start, end = _date(from_, "--from"), _date(to, "--to")
    keys = [k.strip() for k in by.split(",") if k.strip()]
    at = _instant(now, "--now") if now else datetime.now(UTC)
    try:
        promises = load_sla_config(config_dir or get_settings().config_dir).promises
        with session_scope(database_url or get_settings().resolved_database_url) as session:
            rows = build_report(session, start, end, keys, now=at, promises=promises)
            sides = build_promises(session, start, end, promises, keys, now=at) if fmt is not Format.CSV else []
    except HubbridgeError as exc:
        raise _fail(exc) from None
    if fmt is Format.CSV:
        sys.stdout.write(to_csv(rows, keys))
        return
    if fmt is Format.JSON:
        sys.stdout.write(to_json(rows, start, end, keys, sides) + "\n")
        return
    table = Table(title=f"SLA report {start} to {end} (business hours)")
    for col in [*keys, "clock", "promise", *(HEADINGS[c] for c in COLUMNS[:7])]:
        table.add_column(col, justify="left" if col in (*keys, "clock", "promise") else "right")
    for r in rows:
        flat = r.flat()
        table.add_row(*(str(flat[k]) for k in keys), r.clock, r.promise,
                      *("-" if flat[c] is None else str(flat[c]) for c in COLUMNS[:7]))
    console = Console(width=200)
    console.print(table)
    side = Table(title="Both promises per case: the customer's SLA (from routing), the service area's own level "
                       "(from delivery), and who holds the delay")
    for col in [*keys, "cases", "customer met / at risk / breached", "service area met / at risk / breached",
                "not delivered", "open, held by hub / service area / customer", "breaches: hub's / service area's",
                "handover mean / max h"]:
        side.add_column(col, justify="left" if col in keys else "right", no_wrap=col in keys)
    for p in sides:
        cu, sa, held, blame = p.customer, p.service_area, p.held_by, p.breaches_held_by
        hand = " / ".join("-" if p.handover[k] is None else str(p.handover[k]) for k in ("mean_h", "max_h"))
        side.add_row(*(str(p.group[k]) for k in keys), str(p.cases),
                     f"{cu['met']} / {cu['at_risk']} / {cu['breached']}",
                     f"{sa['met']} / {sa['at_risk']} / {sa['breached']}", str(sa["not_started"]),
                     f"{held['hub']} / {held['service_area']} / {held['customer']}",
                     f"{blame['hub']} / {blame['service_area']}", hand)
    console.print(side)


calendars_app = typer.Typer(help="Business calendars: check that their closure days do not run out.",
                            no_args_is_help=True)
sla_app.add_typer(calendars_app, name="calendars")


@calendars_app.command("check")
def calendars_check(
    months: int = typer.Option(12, "--months", min=1, max=120, help="How far ahead closure days must be known"),
    today: str | None = typer.Option(None, "--today", help="Check as on this day (default: today), e.g. 2027-06-01"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    config_dir: Path | None = typer.Option(None, "--config-dir", help="Config directory (default: settings)"),
) -> None:
    """Each calendar's closure days against the months ahead; exits 1 when any runs out within them."""
    from hubbridge.sla.policy import closure_coverage, load_sla_config, months_after

    day = _date(today, "--today") if today else date.today()
    try:
        coverage = closure_coverage(load_sla_config(config_dir or get_settings().config_dir), day, months)
    except HubbridgeError as exc:
        raise _fail(exc) from None
    short = [c for c in coverage if c.short]
    if as_json:
        sys.stdout.write(json.dumps({"needed_until": str(months_after(day, months)),
                                     "calendars": [{"calendar": c.calendar, "always_open": c.always_open,
                                                    "known_until": str(c.known_until) if c.known_until else None,
                                                    "short": c.short, "problem": c.problem()} for c in coverage]},
                                    indent=2) + "\n")
    else:
        table = Table(title=f"Closure days known, needed until {months_after(day, months)}")
        for col in ("calendar", "closures known until", "status"):
            table.add_column(col)
        for c in coverage:
            status = "24/7" if c.always_open else ("[red]runs out[/]" if c.short else "[green]ok[/]")
            table.add_row(c.calendar, "-" if c.always_open else str(c.known_until or "none"), status)
        Console(width=200).print(table)
        for c in short:
            Console(stderr=True).print(f"[yellow]warning:[/] {c.problem()}", soft_wrap=True, highlight=False)
    raise typer.Exit(1 if short else 0)

