"""What the door offers: its config, who may ask, and the services and their definitions (from the mappings)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubbridge.config.open311_door import Open311Client, Open311File, load_open311_file
from hubbridge.errors import ConfigError
from hubbridge.workflows.open311_door.wire import GeoReportError

if TYPE_CHECKING:
    from hubbridge.config.loader import ResolvedRoute
    from hubbridge.workflows.runtime import Runtime


# -- the door's config, read once per config directory -----------------------------------------------------


@dataclass(frozen=True)
class DoorConfig:
    """`open311.yaml` with what it needs from the loaded config: jurisdictions and postcode districts."""

    file: Open311File
    jurisdictions: dict[str, str]
    postcode_areas: dict[str, str]


_configs: dict[tuple[str, float], DoorConfig | None] = {}
_configs_lock = threading.Lock()


def door_config(rt: Runtime) -> DoorConfig:
    """The door's config for this runtime; GeoReportError 404 while there is no `open311.yaml`."""
    cdir = Path(rt.settings.config_dir)
    path = cdir / "open311.yaml"
    key = (str(cdir), path.stat().st_mtime if path.is_file() else 0.0)
    with _configs_lock:
        if key not in _configs:
            _configs[key] = _load(rt, cdir)
        conf = _configs[key]
    if conf is None:
        raise GeoReportError(404, "the Open311 door is not configured: add open311.yaml to the config directory")
    return conf


def _load(rt: Runtime, cdir: Path) -> DoorConfig | None:
    file = load_open311_file(cdir)
    if file is None:
        return None
    where = str(cdir / "open311.yaml")
    for client in file.clients:
        if client.ref_prefix == rt.config.hub.ref_prefix:
            raise ConfigError(f"client {client.name}'s ref_prefix {client.ref_prefix} is the Hub CRM's own",
                              path=where, hint="give each Open311 client a prefix the Hub does not use")
        for a in client.authorities:
            if a != "*" and a not in rt.config.authorities:
                raise ConfigError(f"client {client.name}: unknown authority {a!r}", path=where)
    for jid, authority in file.jurisdictions.items():
        if authority not in rt.config.authorities:
            raise ConfigError(f"jurisdiction {jid}: unknown authority {authority!r}", path=where)
    for service in file.services:
        if service not in rt.config.services:
            raise ConfigError(f"unknown service {service!r}", path=where, hint="services are the keys of services.yaml")
    jurisdictions = {a: a for a in rt.config.authorities} | dict(file.jurisdictions)
    areas = {area.upper(): code for code, auth in rt.config.authorities.items() for area in auth.postcode_areas}
    return DoorConfig(file, jurisdictions, areas)


# -- service definitions, derived from the catalogue and the mappings ------------------------------------------


@dataclass
class Question:
    """A case attribute a mapping reads, as a GeoReport attribute."""

    code: str
    description: str
    values: list[str]
    required: bool
    datatype: str


def _specs(fields: dict[str, Any]) -> Iterable[Any]:
    for spec in fields.values():
        yield spec
        for nested in (spec.fields or {}, {str(i): c for i, c in enumerate(spec.choose or [])},
                       {str(i): c for i, c in enumerate(spec.items or [])}):
            yield from _specs(nested)
        if spec.item is not None:
            yield from _specs({"item": spec.item})


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.]*)")


def _sources(spec: Any) -> list[str]:
    paths = [spec.source] if isinstance(spec.source, str) else list(spec.source or [])
    if spec.template:
        paths += _PLACEHOLDER.findall(spec.template)
    if spec.when is not None and spec.when.path:
        paths.append(spec.when.path)
    return paths


_mapping_files: dict[tuple[str, float], Any] = {}


def _mapping(path: Path) -> Any:
    from hubbridge.config.yamlfile import load_yaml
    from hubbridge.mappings.model import MappingFile

    key = (str(path), path.stat().st_mtime)
    if key not in _mapping_files:
        _mapping_files[key] = load_yaml(path).validate(MappingFile)
    return _mapping_files[key]


def _label(key: str) -> str:
    return {"true": "Yes", "false": "No"}.get(key, key.replace("-", " ").replace("_", " ").capitalize())


def questions(mapping: Any, require: Sequence[str]) -> tuple[list[Question], set[str]]:
    """The case attributes a mapping reads (with their allowed answers), and the location paths it reads."""
    found: dict[str, Question] = {}
    located: set[str] = set()
    for spec in _specs(mapping.outbound.fields):
        for path in _sources(spec):
            if path.startswith("location."):
                located.add(path)
            if not path.startswith("attributes."):
                continue
            code = path.split(".")[1]
            q = found.setdefault(code, Question(code, _label(code), [], False, "string"))
            if spec.map and path in ([spec.source] if isinstance(spec.source, str) else spec.source or []):
                q.values = list(dict.fromkeys([*q.values, *spec.map]))
                q.datatype = "singlevaluelist"
            if spec.description and q.description == _label(code):
                q.description = spec.description
            if spec.required:
                q.required = True
    for q in found.values():
        q.required = q.required or q.code in require
    return list(found.values()), located


def _route_of(rt: Runtime, service: str, authority: str | None) -> ResolvedRoute:
    if authority is not None:
        return rt.config.route(authority, service)
    routes = sorted((r for (a, s), r in rt.config.routes.items() if s == service), key=lambda r: r.authority)
    if not routes:
        raise GeoReportError(404, f"service {service} has no route: it cannot be reported here")
    return routes[0]


SERVER_SET = {"location.easting": ("easting", "number", "Easting (British National Grid)"),
              "location.northing": ("northing", "number", "Northing (British National Grid)"),
              "location.description": ("closest_address", "string", "Closest address")}
HIDDEN = {"location.usrn": ("site_code", "string", "Street (USRN)")}
LOCATION_ATTRIBUTES = {"easting": "easting", "northing": "northing", "site_code": "usrn", "usrn": "usrn",
                       "uprn": "uprn"}
"""Attributes a client fills itself (server_set) or from an asset layer (hidden_field) -> Hub location fields."""


def definition(rt: Runtime, conf: DoorConfig, service: str, client: Open311Client | None,
               authority: str | None = None) -> tuple[list[dict[str, Any]], list[Question]]:
    """The GeoReport attributes of a service, in FixMyStreet's conventions, and its questions."""
    route = _route_of(rt, service, authority)
    entry = conf.file.services[service]
    asked, located = questions(_mapping(route.mapping_path), entry.require)
    attrs: list[dict[str, Any]] = []

    def add(code: str, datatype: str, description: str, *, required: bool = False, variable: bool = True,
            automated: str | None = None, values: list[str] | None = None) -> None:
        row: dict[str, Any] = {"variable": variable, "code": code, "datatype": datatype, "required": required,
                               "datatype_description": "", "order": len(attrs) + 1, "description": description}
        if automated:
            row["automated"] = automated
        if values:
            row["values"] = [{"key": v, "name": _label(v)} for v in values]
        attrs.append(row)

    id_attrs = {c.client_id_attribute for c in ([client] if client else conf.file.clients) if c.client_id_attribute}
    for code in sorted(id_attrs):
        add(code, "string", "The client's own id for the report (a resend with it makes no second case)",
            variable=False, automated="server_set")
    for path, (code, datatype, description) in SERVER_SET.items():
        if path in located:
            add(code, datatype, description, variable=False, automated="server_set")
    for path, (code, datatype, description) in HIDDEN.items():
        if path in located:
            add(code, datatype, description, automated="hidden_field")
    for q in asked:
        add(q.code, q.datatype, q.description, required=q.required, values=q.values or None)
    return attrs, asked


# -- who is asking -----------------------------------------------------------------------------------------


def client_of(conf: DoorConfig, params: dict[str, str], *, required: bool = True) -> Open311Client | None:
    """The client whose api_key the request carries; 403 in the spec's form when it has none or a wrong one."""
    key = params.get("api_key", "")
    if not key:
        if not required:
            return None
        raise GeoReportError(403, "api_key was not provided")
    if not conf.file.keyed_clients():
        raise GeoReportError(403, "no client of this door has its key set: set the variable named by its key_env")
    client = conf.file.client_for_key(key)
    if client is None:
        raise GeoReportError(403, "api_key is invalid")
    return client


def reader_of(conf: DoorConfig, params: dict[str, str]) -> Open311Client | None:
    """Who reads: a client (its requests only) or, where public reads are on, anyone (every request)."""
    return client_of(conf, params, required=not conf.file.public_reads)


# -- services, service definitions and discovery ---------------------------------------------------------


def discovery(url: str) -> dict[str, Any]:
    """The Open311 service discovery document: one GeoReport v2 endpoint, in both formats."""
    return {"changeset": CHANGESET, "contact": "Your council's Hub team", "key_service": "Ask the Hub team for a key",
            "endpoints": [{"specification": "http://wiki.open311.org/GeoReport_v2", "url": url,
                           "changeset": CHANGESET, "type": "production",
                           "formats": ["text/xml", "application/json"]}]}


CHANGESET = "2026-12-08T00:00:00Z"
"""When this door's interface last changed (discovery's `changeset`)."""


def _jurisdiction(conf: DoorConfig, params: dict[str, str]) -> str | None:
    jid = params.get("jurisdiction_id", "").strip()
    if not jid:
        return None
    if jid not in conf.jurisdictions:
        raise GeoReportError(404, f"jurisdiction_id {jid} was not found")
    return conf.jurisdictions[jid]


def services(rt: Runtime, conf: DoorConfig, params: dict[str, str]) -> list[dict[str, Any]]:
    """GET services: the door's services (routed for the jurisdiction, when one is given)."""
    authority = _jurisdiction(conf, params)
    out = []
    for key, entry in conf.file.services.items():
        if authority is not None and (authority, key) not in rt.config.routes:
            continue
        svc = rt.config.services[key]
        try:
            description = _mapping(_route_of(rt, key, authority).mapping_path).description or svc.name
        except GeoReportError:
            continue
        out.append({"service_code": conf.file.code_of(key), "service_name": svc.name, "description": description,
                    "metadata": True, "type": "realtime", "keywords": ",".join(entry.keywords),
                    "group": svc.area.value.capitalize()})
    return out


def service_definition(rt: Runtime, conf: DoorConfig, code: str, params: dict[str, str]) -> dict[str, Any]:
    service = conf.file.service_for_code(code)
    if service is None:
        raise GeoReportError(404, f"service_code {code} was not found")
    authority = _jurisdiction(conf, params)
    if authority is not None and (authority, service) not in rt.config.routes:
        raise GeoReportError(404, f"service_code {code} is not offered in jurisdiction {authority}")
    attrs, _ = definition(rt, conf, service, None, authority)
    return {"service_code": code, "attributes": attrs}
