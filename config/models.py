"""Pydantic models of the YAML config: validated once at load, then trusted everywhere."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from hubbridge.case import SERVICE_KEY_PATTERN

EnvName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{1,80}$"),
    Field(description="Name of an environment variable holding the secret (never the secret itself)"),
]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
ServiceKey = Annotated[str, StringConstraints(pattern=SERVICE_KEY_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AuthorityKind(StrEnum):
    COUNTY = "county"
    DISTRICT = "district"


class Authority(Strict):
    name: str = Field(description="The council's full name")
    kind: AuthorityKind
    postcode_areas: list[str] = Field(default_factory=list, description="Postcode districts it covers (e.g. B60)")


class ServiceArea(StrEnum):
    REVENUES = "revenues"
    HIGHWAYS = "highways"
    REFUSE = "refuse"
    PLANNING = "planning"


class Service(Strict):
    name: str
    area: ServiceArea
    lgsl: int | None = Field(None, description="Local Government Service List code, where one exists")
    emergency: bool = Field(False, description="Handled 24/7 (e.g. a dangerous highway defect)")


class Timeouts(Strict):
    connect: Annotated[float, Field(gt=0, le=60)] = 5.0
    read: Annotated[float, Field(gt=0, le=300)] = 30.0


class RetryPolicy(Strict):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 10
    base_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    max_seconds: Annotated[float, Field(gt=0, le=86400)] = 1800.0


class RateLimit(Strict):
    per_second: Annotated[float, Field(gt=0)] | None = Field(None, description="Most requests a second")
    concurrency: Annotated[int, Field(ge=1)] | None = Field(None, description="Most requests in flight at once")


class CircuitBreaker(Strict):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    reset_seconds: Annotated[float, Field(gt=0)] = 30.0


class ConnectorInstance(Strict):
    """One back office reachable through one plugin; several routes may share it."""

    name: Slug = Field("", description="Filled from the key in connectors.yaml")
    plugin: str = Field(description="Entry-point name of the connector plugin (e.g. bartec)")
    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    timeouts: Timeouts = Field(default_factory=Timeouts)
    credentials: dict[str, EnvName] = Field(
        default_factory=dict, description="Credential role -> environment variable name"
    )
    verify_tls: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="Plugin-specific settings")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    rate_limit: RateLimit = Field(default_factory=RateLimit)
    circuit: CircuitBreaker = Field(default_factory=CircuitBreaker)
    poll_seconds: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description="How often to pull updates, in seconds; each instance polls at its own offset within the "
        "interval, so instances do not all poll at once",
    )
    webhook_secret_env: EnvName | None = Field(None, description="HMAC secret for pushed updates")


class HubEndpoint(Strict):
    """The Hub CRM's REST API, to which updates and back-office-raised cases are sent."""

    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    token_env: EnvName | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    verify_tls: bool = True
    ref_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = "WH"


class Route(Strict):
    """(authority, service) -> connector instance + mapping + SLA policy."""

    authorities: list[Slug] = Field(min_length=1)
    service: ServiceKey
    connector: Slug
    mapping: str = Field(description="Mapping file, relative to the mappings directory")
    sla_policy: str | None = Field(None, description="SLA policy name; defaults to the service key")
    escalation: str | None = Field(None, description="Where breaches are escalated (an escalation name)")


class AuthoritiesFile(Strict):
    schema_: str | None = Field(None, alias="$schema")
    authorities: dict[Slug, Authority]


class ServicesFile(Strict):
    schema_: str | None = Field(None, alias="$schema")
    services: dict[ServiceKey, Service]


class ConnectorsFile(Strict):
    schema_: str | None = Field(None, alias="$schema")
    hub: HubEndpoint
    connectors: dict[Slug, ConnectorInstance]

    @field_validator("connectors", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in value.items()}
        return value


class RoutesFile(Strict):
    schema_: str | None = Field(None, alias="$schema")
    routes: list[Route]
