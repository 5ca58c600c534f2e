"""Pydantic models of the YAML config: validated once at load, then trusted everywhere."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hubbridge.case import SERVICE_KEY_PATTERN, FollowUpKind

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


class FollowUpAction(StrEnum):
    """What becomes of a follow-up kind the back office has no operation for."""

    NOTE = "note"
    """Sent as a note on the job (the back office takes notes)."""
    EMAIL = "email"
    """E-mailed to the service area's inbox."""
    DEAD_LETTER = "dead_letter"
    """Kept as a dead letter for an operator to pass on by hand."""


class FollowUps(Strict):
    """Where follow-ups go when the back office has no operation for their kind."""

    inbox: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = Field(
        None, description="The service area's e-mail inbox, for kinds whose action is `email`")
    otherwise: dict[FollowUpKind, FollowUpAction] = Field(
        default_factory=dict,
        description="Kind -> action, for kinds the back office has no operation for; unlisted kinds are "
        "dead-lettered with that reason",
    )

    @model_validator(mode="after")
    def _inbox_for_email(self) -> FollowUps:
        if FollowUpAction.EMAIL in self.otherwise.values() and self.inbox is None:
            raise ValueError("an `email` action needs `inbox`: the service area's address")
        return self

    def merged(self, override: FollowUps | None) -> FollowUps:
        """These defaults with a route's own settings on top."""
        if override is None:
            return self
        return FollowUps(inbox=override.inbox or self.inbox, otherwise={**self.otherwise, **override.otherwise})


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
    followups: FollowUps = Field(
        default_factory=lambda: FollowUps(),
        description="What becomes of follow-up kinds this back office has no operation for (routes may override)")

    @field_validator("options")
    @classmethod
    def _plugin_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A plugin with a typed options model (Bartec) has its options checked here, when the config loads."""
        if info.data.get("plugin") == "bartec":
            from hubbridge.connectors.bartec.options import BartecOptions  # late: config must load without zeep

            try:
                BartecOptions.model_validate(options)
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise ValueError(f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}") from None
        return options


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
    followups: FollowUps | None = Field(
        None, description="Overrides the connector instance's follow-up settings for this route")


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


class Retention(Strict):
    """How long a closed case keeps its customer's personal data."""

    days_after_closure: Annotated[int, Field(ge=0, le=3650)] = Field(
        description="Days after the case was closed, rejected or cancelled before its personal data is erased"
    )


class PrivacyFile(Strict):
    """Retention of personal data per service; the audit trail is kept, without the personal data."""

    schema_: str | None = Field(None, alias="$schema")
    default: Retention = Field(description="For a service not listed under `services`")
    dead_letter_days: Annotated[int, Field(ge=0, le=3650)] = Field(
        90, description="Days a dead letter with no case of ours (refused at intake, say) keeps its raw payload"
    )
    sweep_batch: Annotated[int, Field(ge=1, le=10000)] = Field(
        500, description="Most items one retention run erases, so one run never holds the store for long"
    )
    services: dict[ServiceKey, Retention] = Field(default_factory=dict)


class ApiClient(Strict):
    """One Hub client of the API: the variable holding its bearer token and the councils it acts for."""

    name: Slug
    token_env: EnvName
    authorities: list[Annotated[str, StringConstraints(pattern=r"^([a-z][a-z0-9-]*|\*)$")]] = Field(
        min_length=1, description="Authority codes this client may send and read cases for; * for every council"
    )

    def serves(self, authority: str | None) -> bool:
        """Whether this client may send or read a case of council `authority`."""
        return authority is not None and any(a == "*" or a == authority for a in self.authorities)


class ApiFile(Strict):
    """`api.yaml`: the API's clients and whether /docs and /metrics are open without a token."""

    schema_: str | None = Field(None, alias="$schema")
    clients: list[ApiClient] = Field(default_factory=list)
    open_docs: bool = Field(False, description="Serve /docs, /redoc and /openapi.json to anyone")
    open_metrics: bool = Field(False, description="Serve /metrics to anyone (else it needs an API token)")

    @field_validator("clients")
    @classmethod
    def _unique(cls, clients: list[ApiClient]) -> list[ApiClient]:
        names = [c.name for c in clients]
        if len(set(names)) != len(names):
            raise ValueError("each client name may appear once")
        return clients
