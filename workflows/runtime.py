"""Per-process state every step needs (config, connectors, mappings, the Hub, the SLA engine) and what a step did."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING

import structlog

from hubbridge.config.loader import Config, ResolvedRoute, load_config
from hubbridge.config.settings import Settings, get_settings
from hubbridge.connectors.base import Connector, TargetField, connector_class

if TYPE_CHECKING:
    from hubbridge.connectors.hub import HubConnector
    from hubbridge.mappings import MappingCache
    from hubbridge.mappings.compile import CompiledMapping
    from hubbridge.sla.engine import SlaEngine
    from hubbridge.store import HubUpdateRow

log = structlog.get_logger(__name__)


class OutcomeKind(StrEnum):
    """What became of a step's work; a str, so it compares equal to the names tasks and tests use."""

    DONE = "done"
    SKIPPED = "skipped"
    RETRY = "retry"
    DEAD = "dead"


@dataclass
class Outcome:
    """What a step did, for the caller (a task) to act on."""

    kind: OutcomeKind
    detail: str = ""
    retry_in: float | None = None
    push: list[str] = field(default_factory=list)
    more: bool = False
    updates: list[HubUpdateRow] = field(default_factory=list)  # outbox rows just written, when all it has pending

    def __post_init__(self) -> None:
        self.kind = OutcomeKind(self.kind)


class Runtime:
    """Per-process state: config, connector instances, mapping cache, Hub connector, SLA engine."""

    def __init__(self, settings: Settings | None = None, config: Config | None = None) -> None:
        self.settings = settings or get_settings()
        self.config = config or load_config(self.settings.config_dir, self.settings)
        self.url = self.settings.resolved_database_url
        self._connectors: dict[str, Connector] = {}
        self._targets: dict[str, Mapping[str, TargetField]] = {}
        self._lock = threading.Lock()

    @cached_property
    def mappings(self) -> MappingCache:
        from hubbridge.mappings import MappingCache

        return MappingCache()

    @cached_property
    def hub(self) -> HubConnector:
        from hubbridge.connectors.hub import HubConnector

        return HubConnector(self.config.hub)

    @cached_property
    def sla(self) -> SlaEngine:
        from hubbridge.sla.engine import SlaEngine

        return SlaEngine.from_config(self.config.config_dir)

    def connector(self, name: str) -> Connector:
        with self._lock:
            conn = self._connectors.get(name)
            if conn is None:
                instance = self.config.connectors[name]
                conn = self._connectors[name] = connector_class(instance.plugin)(instance)
            return conn

    def mapping_for(self, authority: str, service: str) -> tuple[ResolvedRoute, Connector, CompiledMapping]:
        route = self.config.route(authority, service)
        conn = self.connector(route.connector.name)
        targets = self._targets.get(conn.name)
        if targets is None:  # a connector's fields do not change while it lives; some build them per call
            targets = self._targets[conn.name] = conn.target_fields()
        return route, conn, self.mappings.get(route.mapping_path, targets)

    def warm(self) -> int:
        """Load the SLA policies, every connector and every route's mapping now; returns the routes loaded.

        A worker does this once before it forks its pool, so no process pays for it on its first cases. A
        route that cannot load is left for its cases to dead-letter with the reason, and a Hub connector that
        cannot start (a missing token) for the tasks to report, as before the warm start.
        """
        try:
            _ = self.sla, self.hub
        except Exception as exc:
            log.warning("runtime.not_loaded", error=str(exc)[:300])
        loaded = 0
        for authority, service in self.config.routes:
            try:
                self.mapping_for(authority, service)
                loaded += 1
            except Exception as exc:  # one broken route must not keep the worker from starting
                log.warning("runtime.route_not_loaded", authority=authority, service=service, error=str(exc)[:300])
        return loaded

    def close(self) -> None:
        for conn in self._connectors.values():
            conn.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


def reset_runtime(rt: Runtime | None = None) -> None:
    global _runtime
    if _runtime is not None and _runtime is not rt:
        _runtime.close()
    _runtime = rt


