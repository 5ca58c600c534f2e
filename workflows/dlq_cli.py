"""`hubbridge dlq ...`: list, show, replay and discard dead letters."""

from __future__ import annotations

import getpass
import json
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hubbridge.config.settings import get_settings
from hubbridge.errors import HubbridgeError
from hubbridge.store import session_scope
from hubbridge.workflows import deadletters

dlq_app = typer.Typer(
    name="dlq", help="List, show, replay and discard dead letters.", no_args_is_help=True, add_completion=False
)
console = Console(stderr=True)
out = Console()

ServiceOpt = Annotated[str | None, typer.Option("--service", help="Only this service key")]
AuthorityOpt = Annotated[str | None, typer.Option("--authority", help="Only this authority")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only this reason (e.g. refused, unroutable)")]
OlderOpt = Annotated[str | None, typer.Option("--older-than", help="Only those older than this: 90s, 30m, 2h, 3d")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who is doing this, for the audit trail (default: $USER)")]


def _age(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return deadletters.parse_age(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from None


def _who(by: str | None) -> str:
    return by or getpass.getuser()


def _logging() -> None:
    from hubbridge.log import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


def _url() -> str:
    return get_settings().resolved_database_url


@dlq_app.command("list")
def list_command(
    service: ServiceOpt = None,
    authority: AuthorityOpt = None,
    reason: ReasonOpt = None,
    older_than: OlderOpt = None,
    include_closed: Annotated[bool, typer.Option("--all", help="Include replayed and discarded ones")] = False,
    limit: Annotated[int, typer.Option(help="At most this many")] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Open dead letters (oldest first) and how many there are of each reason."""
    with session_scope(_url()) as s:
        rows = deadletters.list_dead(
            s,
            service=service,
            authority=authority,
            reason=reason,
            older_than=_age(older_than),
            include_closed=include_closed,
            limit=limit,
        )
        listed = [deadletters.as_dict(r) for r in rows]
        counts = deadletters.counts_by_reason(s)
    if as_json:
        print(json.dumps({"dead_letters": listed, "open_by_reason": counts}, sort_keys=True))
        return
    table = Table("id", "age", "state", "stage", "reason", "case", "service", "authority", "detail",
                  title=f"dead letters ({len(listed)} shown)")
    for d in listed:
        table.add_row(
            str(d["id"]), d["created_at"][:16].replace("T", " "), d["state"], d["stage"], d["reason"],
            d["hub_ref"] or "-", d["service"] or "-", d["authority"] or "-", (d["detail"] or "")[:80],
        )
    out.print(table)
    if counts:
        out.print("open by reason: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        out.print("no open dead letters")


@dlq_app.command()
def show(
    dead_id: Annotated[int, typer.Argument(help="Dead-letter id")],
    as_json: JsonOpt = False,
) -> None:
    """One dead letter in full, with the input exactly as received (it may hold personal data)."""
    try:
        with session_scope(_url()) as s:
            data = deadletters.as_dict(deadletters.get_dead(s, dead_id), payload=True)
    except HubbridgeError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(data, sort_keys=True))
        return
    grid = Table.grid(padding=(0, 2))
    for key, value in data.items():
        if key != "payload":
            grid.add_row(f"[bold]{key}[/]", "-" if value is None else str(value))
    out.print(grid)
    out.print("[bold]payload[/]")
    try:
        out.print_json(data["payload"])
    except (ValueError, TypeError):
        out.print(data["payload"], markup=False, highlight=False)


@dlq_app.command()
def replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every open one matching the filters")] = False,
    service: ServiceOpt = None,
    authority: AuthorityOpt = None,
    reason: ReasonOpt = None,
    older_than: OlderOpt = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run dead letters: re-take intake, re-queue delivery or the Hub push; never a second back-office job."""
    from hubbridge.workflows.runtime import runtime

    if bool(ids) == replay_all:
        raise typer.BadParameter("give dead-letter ids, or --all (with filters), not both")
    if not replay_all and any(v is not None for v in (service, authority, reason, older_than)):
        raise typer.BadParameter("filters only apply with --all")
    _logging()
    rt = runtime()
    if replay_all:
        with session_scope(rt.url) as s:
            targets = [
                r.id
                for r in deadletters.list_dead(
                    s, service=service, authority=authority, reason=reason, older_than=_age(older_than), limit=10_000
                )
            ]
    else:
        targets = list(ids or [])
    results = [_one(lambda i: deadletters.replay(rt, i, by=_who(by)), i) for i in targets]
    _report(results, as_json, "replayed")


@dlq_app.command()
def discard(
    ids: Annotated[list[int], typer.Argument(help="Dead-letter ids")],
    note: Annotated[str, typer.Option("--note", help="Why it is discarded (kept in the audit trail)")],
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close dead letters without re-running them, with a note saying why."""
    from hubbridge.workflows.runtime import runtime

    _logging()
    rt = runtime()

    def run(i: int) -> str:
        deadletters.discard(rt, i, by=_who(by), note=note)
        return f"dead letter {i} discarded"

    _report([_one(run, i) for i in ids], as_json, "discarded")


def _one(action: Any, dead_id: int) -> dict[str, Any]:
    try:
        return {"id": dead_id, "ok": True, "message": action(dead_id)}
    except HubbridgeError as exc:
        return {"id": dead_id, "ok": False, "message": str(exc)}


def _report(results: list[dict[str, Any]], as_json: bool, verb: str) -> None:
    failed = [r for r in results if not r["ok"]]
    if as_json:
        print(json.dumps({verb: len(results) - len(failed), "failed": len(failed), "results": results}))
    else:
        for r in results:
            if r["ok"]:
                out.print(r["message"], markup=False, highlight=False)
            else:
                console.print(f"[red]{r['id']}:[/] {r['message']}", highlight=False)
        out.print(f"{len(results) - len(failed)} {verb}, {len(failed)} failed")
    raise typer.Exit(1 if failed else 0)
