"""`hubbridge mappings ...`: validate mapping files, dry-run a case through one, write the JSON Schema."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from hubbridge.connectors.base import Connector, Delivery, TargetField
from hubbridge.errors import ConfigError, ConfigErrors, HubbridgeError
from hubbridge.mappings.compile import CompiledMapping, load_mapping

mappings_app = typer.Typer(
    name="mappings", help="Validate, dry-run and describe the YAML mappings.", no_args_is_help=True,
    add_completion=False,
)

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
LOOKUP_DIR_NAME = "lookups"


# ---------------------------------------------------------------- helpers shared by the commands


def _config(config_dir: Path | None) -> Any | None:
    """The deployment config, or None when it cannot be loaded (a mapping can still be checked alone)."""
    from hubbridge.config.loader import load_config

    try:
        return load_config(config_dir)
    except HubbridgeError:
        return None


def _mappings_dir(config_dir: Path | None) -> Path:
    cfg = _config(config_dir)
    if cfg is not None:
        return Path(cfg.mappings_dir)
    from hubbridge.config.settings import get_settings

    return get_settings().resolved_mappings_dir


def mapping_files(paths: list[Path]) -> list[Path]:
    """Mapping files named or found under directories (lookup tables are checked through their mappings)."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
                if LOOKUP_DIR_NAME not in f.relative_to(p).parts[:-1]:
                    found.append(f)
        else:
            found.append(p)
    return found


def _routes_for(cfg: Any, path: Path) -> list[Any]:
    if cfg is None:
        return []
    target = path.resolve()
    return [r for r in cfg.routes.values() if Path(r.mapping_path).resolve() == target]


def connector_for(plugin: str, cfg: Any | None = None, route: Any | None = None) -> Connector:
    """A connector object for target fields and rendering; never needs secrets or the network."""
    from hubbridge.config.models import ConnectorInstance
    from hubbridge.connectors.base import connector_class

    cls = connector_class(plugin)
    if route is not None:
        instance = route.connector
    else:
        instance = ConnectorInstance(name=f"dry-run-{plugin}"[:63], plugin=plugin, endpoint="http://127.0.0.1:9/")
    return cls(instance, env={})


def target_fields_for(
    plugin: str, cfg: Any | None = None, route: Any | None = None
) -> tuple[Mapping[str, TargetField] | None, Connector | None, str | None]:
    """(target fields, connector, why not) for a plugin; the fields are None when the plugin is unavailable."""
    try:
        conn = connector_for(plugin, cfg, route)
        return conn.target_fields(), conn, None
    except ConfigError as exc:
        return None, None, str(exc)
    except Exception as exc:  # a plugin that is missing or broken must not stop validation of the rest
        return None, None, f"connector plugin {plugin!r} could not be loaded: {type(exc).__name__}: {exc}"


def check_file(path: Path, cfg: Any | None = None) -> tuple[CompiledMapping | None, list[str], list[str]]:
    """Validate one mapping (against its connector's target fields when possible): (mapping, errors, notes)."""
    try:
        alone = load_mapping(path)
    except ConfigErrors as exc:
        return None, [str(e) for e in exc.errors], []
    routes = _routes_for(cfg, path)
    errors: list[str] = []
    notes: list[str] = []
    checked: set[str] = set()
    good: CompiledMapping | None = alone
    candidates = [(r.connector.plugin, r) for r in routes] or [(alone.plugin, None)]
    for plugin, route in candidates:
        if plugin in checked:
            continue
        checked.add(plugin)
        if plugin != alone.plugin:
            where = f"{route.authority}/{route.service}" if route is not None else ""
            errors.append(f"{path}:1:1: plugin: the mapping is for {alone.plugin!r} but route {where} "
                          f"uses a {plugin!r} connector")
            continue
        fields, _, why = target_fields_for(plugin, cfg, route)
        if fields is None:
            notes.append(f"{path}: warning: target fields not checked: {why}")
            continue
        try:
            good = load_mapping(path, fields)
        except ConfigErrors as exc:
            errors.extend(str(e) for e in exc.errors)
            good = None
    return (good if not errors else None), errors, notes


# ---------------------------------------------------------------- commands


@mappings_app.command("validate")
def validate(
    paths: Annotated[list[Path] | None, typer.Argument(help="Mapping files or directories (default: all)")] = None,
    config_dir: Annotated[Path | None, typer.Option(help="Config directory (routes decide the connector)")] = None,
) -> None:
    """Check mapping files; print `path:line:col: message` for each problem; exit 1 if any."""
    cfg = _config(config_dir)
    targets = paths or [_mappings_dir(config_dir)]
    files = mapping_files(targets)
    if not files:
        typer.echo("no mapping files found", err=True)
        raise typer.Exit(1)
    bad = 0
    for f in files:
        if not f.exists():
            typer.echo(f"{f}: file not found")
            bad += 1
            continue
        mapping, errors, notes = check_file(f, cfg)
        for n in notes:
            typer.echo(n, err=True)
        if errors:
            bad += 1
            for e in errors:
                typer.echo(e)
        elif mapping is not None:
            typer.echo(f"{f}: ok ({mapping.name}, version {mapping.version})", err=True)
    typer.echo(f"{len(files) - bad} of {len(files)} mapping files valid", err=True)
    raise typer.Exit(1 if bad else 0)


def _resolve_target(route_or_mapping: str, cfg: Any | None) -> tuple[Path, Any | None]:
    p = Path(route_or_mapping)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists() and cfg is not None and (Path(cfg.mappings_dir) / p).exists():
            p = Path(cfg.mappings_dir) / p
        routes = _routes_for(cfg, p)
        return p, (routes[0] if routes else None)
    for sep in ("/", ":", " "):
        if sep in route_or_mapping:
            authority, service = route_or_mapping.split(sep, 1)
            break
    else:
        raise typer.BadParameter(
            f"{route_or_mapping!r} is neither a mapping file nor a route", param_hint="ROUTE_OR_MAPPING"
        )
    if cfg is None:
        raise typer.BadParameter("the config could not be loaded, so routes are unknown; give a mapping file")
    route = cfg.route(authority, service)
    return Path(route.mapping_path), route


@mappings_app.command("try")
def try_(
    route_or_mapping: Annotated[str, typer.Argument(help="authority/service (e.g. bromsgrove/refuse.missed-collection) "
                                                         "or a mapping file")],
    case_file: Annotated[Path, typer.Argument(help="A Hub case as JSON", metavar="CASE.json")],
    config_dir: Annotated[Path | None, typer.Option(help="Config directory")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Dry run: show the exact back-office request a case becomes, and any warnings. Nothing is sent."""
    from pydantic import ValidationError

    from hubbridge.case import HubCase
    from hubbridge.errors import MappingError

    cfg = _config(config_dir)
    try:
        path, route = _resolve_target(route_or_mapping, cfg)
    except HubbridgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        raw = json.loads(case_file.read_text(encoding="utf-8"))
        case = HubCase.model_validate(raw)
    except OSError as exc:
        typer.echo(f"{case_file}: cannot read: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    except json.JSONDecodeError as exc:
        typer.echo(f"{case_file}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}", err=True)
        raise typer.Exit(1) from None
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = ".".join(str(x) for x in err["loc"])
            typer.echo(f"{case_file}: {loc}: {err['msg']}", err=True)
        raise typer.Exit(1) from None
    plugin_hint = route.connector.plugin if route is not None else None
    try:
        alone = load_mapping(path)
    except ConfigErrors as exc:
        for e in exc.errors:
            typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    fields, conn, why = target_fields_for(plugin_hint or alone.plugin, cfg, route)
    try:
        mapping = load_mapping(path, fields) if fields is not None else alone
    except ConfigErrors as exc:
        for e in exc.errors:
            typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    warnings: list[str] = [] if why is None else [f"target fields not checked: {why}"]
    try:
        tr = mapping.outbound(case)
    except MappingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    warnings.extend(tr.warnings)
    delivery = Delivery(hub_ref=case.ref, authority=case.authority, service=case.service, payload=tr.payload,
                        mapping_version=mapping.version)
    rendered = conn.render(delivery) if conn is not None else json.dumps(tr.payload, indent=2, default=str)
    if as_json:
        typer.echo(json.dumps({
            "mapping": mapping.name, "version": mapping.version, "path": str(path),
            "connector": route.connector.name if route is not None else None,
            "payload": tr.payload, "rendered": rendered, "warnings": warnings,
        }, indent=2, default=str))
        return
    typer.echo(f"# mapping {mapping.name} version {mapping.version} ({path})")
    if route is not None:
        typer.echo(f"# route {route.authority}/{route.service} -> connector {route.connector.name} "
                   f"({route.connector.plugin}); nothing was sent")
    typer.echo(rendered)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)


def schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas of mapping and lookup files, generated from the pydantic models."""
    from hubbridge.mappings.model import LookupFile, MappingFile

    out = {}
    for fname, model, title in (
        ("mapping.schema.json", MappingFile, "hubbridge mapping file"),
        ("lookup.schema.json", LookupFile, "hubbridge lookup table"),
    ):
        schema = model.model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = title
        out[fname] = schema
    return out


@mappings_app.command("schema")
def schema(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the schemas to")] = SCHEMA_DIR,
    check: Annotated[bool, typer.Option(help="Only check that the written schemas are up to date")] = False,
) -> None:
    """Write the JSON Schema of mapping files (and lookup files), for editors to complete and check."""
    stale = 0
    for fname, body in schemas().items():
        text = json.dumps(body, indent=2, sort_keys=True) + "\n"
        target = out_dir / fname
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                typer.echo(f"{target}: out of date; run `hubbridge mappings schema`")
                stale += 1
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        typer.echo(str(target))
    if stale:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - `python -m hubbridge.mappings.cli`
    mappings_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
