"""`hubbridge privacy ...`: subject access export, erasure on request, retention runs and their status."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from hubbridge.config.settings import SHIPPED_CONFIG_DIR, get_settings
from hubbridge.errors import HubbridgeError

privacy_app = typer.Typer(
    name="privacy", help="Export or erase a person's data; run and show retention.", no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
SCHEMA_DIR = SHIPPED_CONFIG_DIR / "schema"

EmailOpt = Annotated[str | None, typer.Option("--email", help="The person's e-mail address")]
PhoneOpt = Annotated[str | None, typer.Option("--phone", help="The person's phone number, in any format")]
NameOpt = Annotated[str | None, typer.Option("--name", help="The person's name (with --postcode)")]
PostcodeOpt = Annotated[str | None, typer.Option("--postcode", help="The postcode of the person's address")]
RefOpt = Annotated[str | None, typer.Option("--ref", help="One Hub case reference (e.g. WH-2026-000123)")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who is doing this, for the privacy audit (default: $USER)")]


def _subject(email: str | None, phone: str | None, name: str | None, postcode: str | None, ref: str | None) -> Any:
    from hubbridge.privacy import Subject

    try:
        return Subject(email=email, phone=phone, name=name, postcode=postcode, ref=ref)
    except HubbridgeError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None


def _logging() -> None:
    from hubbridge.log import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


@privacy_app.command("export")
def export_command(
    email: EmailOpt = None, phone: PhoneOpt = None, name: NameOpt = None, postcode: PostcodeOpt = None,
    ref: RefOpt = None, by: ByOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON here instead of standard output")] = None,
) -> None:
    """Everything the store holds about one person, table by table, as JSON (a subject access request)."""
    from hubbridge.privacy import export_subject

    _logging()
    subject = _subject(email, phone, name, postcode, ref)
    data = export_subject(get_settings().resolved_database_url, subject, by=by or getpass.getuser())
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"{len(data['cases'])} case(s) exported to {out}", markup=False)


@privacy_app.command("erase")
def erase_command(
    reason: Annotated[str, typer.Option("--reason", help="Why (e.g. 'erasure request of 2026-12-01, ticket 4411')")],
    email: EmailOpt = None, phone: PhoneOpt = None, name: NameOpt = None, postcode: PostcodeOpt = None,
    ref: RefOpt = None, by: ByOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Erase one person's personal data from every table; the audit trail stays, without it."""
    from hubbridge.privacy import erase_subject

    _logging()
    subject = _subject(email, phone, name, postcode, ref)
    if not yes:
        typer.confirm(f"Erase the personal data found by {subject.kind}? This cannot be undone", abort=True)
    try:
        done = erase_subject(get_settings().resolved_database_url, subject, reason=reason, by=by or getpass.getuser())
    except HubbridgeError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"action": done.action_id, "cases": done.cases, "rows": done.rows}))


@privacy_app.command("retention")
def retention_command(
    by: ByOpt = None,
    status: Annotated[bool, typer.Option("--status", help="Only show the periods and what is due")] = False,
) -> None:
    """Erase now what is past its retention period (beat does this hourly), or show the status."""
    from dataclasses import asdict

    from hubbridge.privacy import apply_retention, load_privacy, retention_status

    _logging()
    from hubbridge.config.loader import load_config

    settings = get_settings()
    policy = load_privacy(settings.config_dir, load_config(settings.config_dir, settings).services)
    if status:
        typer.echo(json.dumps(asdict(retention_status(settings.resolved_database_url, policy)), indent=2))
        return
    done = apply_retention(settings.resolved_database_url, policy, by=by or getpass.getuser())
    typer.echo(json.dumps({"action": done.action_id, "cases": len(done.cases), "rows": done.rows}))


@privacy_app.command("schema")
def schema_command(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the schema to")] = SCHEMA_DIR,
) -> None:
    """Write the JSON Schema of privacy.yaml, generated from its pydantic model, for editors to check."""
    from hubbridge.config.models import PrivacyFile

    schema = PrivacyFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "hubbridge privacy and retention"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "privacy.schema.json"
    target.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    typer.echo(str(target))
