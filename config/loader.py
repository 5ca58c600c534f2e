"""Load the config directory once, check every cross-reference, and answer routing questions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hubbridge.config.models import (
    AuthoritiesFile,
    Authority,
    ConnectorInstance,
    ConnectorsFile,
    FollowUps,
    HubEndpoint,
    Route,
    RoutesFile,
    Service,
    ServicesFile,
)
from hubbridge.config.settings import Settings, get_settings
from hubbridge.config.yamlfile import YamlDoc, load_yaml
from hubbridge.errors import ConfigError, ConfigErrors, RoutingError

CONFIG_FILES = ("authorities.yaml", "services.yaml", "connectors.yaml", "routes.yaml")


@dataclass(frozen=True)
class ResolvedRoute:
    """Where one (authority, service) goes: the connector instance, mapping file and SLA policy."""

    authority: str
    service: str
    connector: ConnectorInstance
    mapping_path: Path
    sla_policy: str
    escalation: str | None
    followups: FollowUps = field(default_factory=lambda: FollowUps())
    """The instance's follow-up settings with the route's own on top."""


@dataclass
class Config:
    """The whole validated config of one deployment."""

    config_dir: Path
    mappings_dir: Path
    authorities: dict[str, Authority]
    services: dict[str, Service]
    hub: HubEndpoint
    connectors: dict[str, ConnectorInstance]
    routes: dict[tuple[str, str], ResolvedRoute] = field(default_factory=dict)

    def route(self, authority: str, service: str) -> ResolvedRoute:
        try:
            return self.routes[(authority, service)]
        except KeyError:
            if authority not in self.authorities:
                hint = "known authorities: " + ", ".join(sorted(self.authorities))
                raise RoutingError(f"unknown authority {authority!r}", hint=hint) from None
            if service not in self.services:
                hint = "known services: " + ", ".join(sorted(self.services))
                raise RoutingError(f"unknown service {service!r}", hint=hint) from None
            raise RoutingError(
                f"no route for {service} in {authority}",
                where=str(self.config_dir / "routes.yaml"),
                hint="add a route for this (authority, service) pair",
            ) from None

    def routes_for_connector(self, name: str) -> list[ResolvedRoute]:
        return [r for r in self.routes.values() if r.connector.name == name]


def _read(config_dir: Path, name: str) -> YamlDoc:
    path = config_dir / name
    if not path.is_file():
        raise ConfigError("file is missing", path=str(path), hint=f"a config directory holds {', '.join(CONFIG_FILES)}")
    return load_yaml(path)


def load_config(config_dir: Path | str | None = None, settings: Settings | None = None) -> Config:
    """Validate every file in `config_dir` (all errors reported together) and resolve the routes."""
    settings = settings or get_settings()
    cdir = Path(config_dir) if config_dir is not None else settings.config_dir
    mdir = settings.mappings_dir or (
        cdir / "mappings" if (cdir / "mappings").is_dir() else settings.resolved_mappings_dir
    )
    errors: list[ConfigError] = []
    docs: dict[str, YamlDoc] = {}
    parsed: dict[str, object] = {}
    for name, model in (
        ("authorities.yaml", AuthoritiesFile),
        ("services.yaml", ServicesFile),
        ("connectors.yaml", ConnectorsFile),
        ("routes.yaml", RoutesFile),
    ):
        try:
            docs[name] = doc = _read(cdir, name)
            parsed[name] = doc.validate(model)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise ConfigErrors(errors)

    authorities = parsed["authorities.yaml"].authorities  # type: ignore[attr-defined]
    services = parsed["services.yaml"].services  # type: ignore[attr-defined]
    cfile: ConnectorsFile = parsed["connectors.yaml"]  # type: ignore[assignment]
    rfile: RoutesFile = parsed["routes.yaml"]  # type: ignore[assignment]
    rdoc = docs["routes.yaml"]

    routes: dict[tuple[str, str], ResolvedRoute] = {}
    for i, route in enumerate(rfile.routes):
        errors.extend(_check_route(rdoc, i, route, authorities, services, cfile, mdir))
        if route.connector not in cfile.connectors:
            continue
        for authority in route.authorities:
            key = (authority, route.service)
            if key in routes:
                errors.append(rdoc.error(f"{authority} / {route.service} is routed twice", ["routes", i]))
                continue
            routes[key] = ResolvedRoute(
                authority=authority,
                service=route.service,
                connector=cfile.connectors[route.connector],
                mapping_path=(mdir / route.mapping),
                sla_policy=route.sla_policy or route.service,
                escalation=route.escalation,
                followups=cfile.connectors[route.connector].followups.merged(route.followups),
            )
    if errors:
        raise ConfigErrors(errors)
    return Config(
        config_dir=cdir,
        mappings_dir=mdir,
        authorities=dict(authorities),
        services=dict(services),
        hub=cfile.hub,
        connectors=dict(cfile.connectors),
        routes=routes,
    )


def _check_route(
    doc: YamlDoc,
    i: int,
    route: Route,
    authorities: dict[str, Authority],
    services: dict[str, Service],
    cfile: ConnectorsFile,
    mdir: Path,
) -> list[ConfigError]:
    import difflib

    def near(word: str, choices: list[str]) -> str | None:
        close = difflib.get_close_matches(word, choices, n=1)
        return f"did you mean {close[0]!r}?" if close else None

    errs = []
    for j, a in enumerate(route.authorities):
        if a not in authorities:
            errs.append(
                doc.error(f"unknown authority {a!r}", ["routes", i, "authorities", j], near(a, list(authorities)))
            )
    if route.service not in services:
        errs.append(
            doc.error(
                f"unknown service {route.service!r}", ["routes", i, "service"], near(route.service, list(services))
            )
        )
    if route.connector not in cfile.connectors:
        errs.append(
            doc.error(
                f"unknown connector instance {route.connector!r}",
                ["routes", i, "connector"],
                near(route.connector, list(cfile.connectors)),
            )
        )
    if not (mdir / route.mapping).is_file():
        errs.append(doc.error(f"mapping file {route.mapping!r} not found in {mdir}", ["routes", i, "mapping"]))
    return errs
