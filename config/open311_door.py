"""The model of `open311.yaml`: the GeoReport v2 clients of the Open311 front door, their keys and councils."""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from hubbridge.config.models import EnvName, ServiceKey, Slug, Strict
from hubbridge.config.yamlfile import load_yaml
from hubbridge.errors import ConfigError

OPEN311_FILE = "open311.yaml"

AttributeCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
ServiceCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
JurisdictionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]


class Open311Client(Strict):
    """One GeoReport v2 client (FixMyStreet, say): its key's variable, its councils and its reference prefix."""

    name: Slug
    key_env: EnvName = Field(description="Variable holding the client's api_key (never the key itself)")
    authorities: list[Annotated[str, StringConstraints(pattern=r"^([a-z][a-z0-9-]*|\*)$")]] = Field(
        min_length=1, description="Authority codes this client may report to; * for every council")
    ref_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = Field(
        description="The first two letters of the Hub references given to this client's requests")
    client_id_attribute: AttributeCode | None = Field(
        "fixmystreet_id", description="attribute[...] carrying the client's own id: a resend of it makes no new case")
    respond_with: Annotated[str, StringConstraints(pattern=r"^(id|token)$")] = Field(
        "id", description="Answer POST requests with the service_request_id (id) or only a token to look it up")

    def serves(self, authority: str) -> bool:
        return any(a in ("*", authority) for a in self.authorities)

    @property
    def single_authority(self) -> str | None:
        """The one council this client reports to, when it has exactly one."""
        return self.authorities[0] if len(self.authorities) == 1 and self.authorities[0] != "*" else None


class Open311Service(Strict):
    """A Hub service offered through the door; its definition comes from the catalogue and its mapping."""

    code: ServiceCode | None = Field(None, description="The GeoReport service_code published (default: the Hub key)")
    require: list[AttributeCode] = Field(
        default_factory=list, description="Attributes the door requires although the mapping has a default")
    agency: str | None = Field(None, description="agency_responsible in answers (default: the council's name)")
    keywords: list[str] = Field(default_factory=list)


class Open311File(Strict):
    """`open311.yaml`: who may use the GeoReport v2 door and which Hub services it offers."""

    schema_: str | None = Field(None, alias="$schema")
    clients: list[Open311Client] = Field(default_factory=list)
    jurisdictions: dict[JurisdictionId, Slug] = Field(
        default_factory=dict, description="jurisdiction_id -> authority code (each authority code is one too)")
    services: dict[ServiceKey, Open311Service] = Field(default_factory=dict)
    public_reads: bool = Field(
        False, description="GET requests, requests/{id} and tokens without an api_key (public fields only)")
    service_notice: str | None = Field(None, description="service_notice sent with each accepted request")

    @field_validator("services", mode="before")
    @classmethod
    def _empty_entries(cls, value: object) -> object:
        # `highways.pothole:` with nothing under it offers the service as it is
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _unique(self) -> Open311File:
        names = [c.name for c in self.clients]
        if len(set(names)) != len(names):
            raise ValueError("each client name may appear once")
        prefixes = [c.ref_prefix for c in self.clients]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("each client needs its own ref_prefix: references must never collide")
        codes = [s.code or key for key, s in self.services.items()]
        if len(set(codes)) != len(codes):
            raise ValueError("each service needs its own code")
        return self

    def service_for_code(self, code: str) -> str | None:
        """The Hub service key behind a published service_code."""
        return next((key for key, s in self.services.items() if (s.code or key) == code), None)

    def code_of(self, service: str) -> str:
        entry = self.services.get(service)
        return (entry.code if entry is not None else None) or service

    def client_for_key(self, api_key: str) -> Open311Client | None:
        """The client whose key (read from its variable now) this is; every key is compared, in constant time."""
        found = None
        for client in self.clients:
            key = os.environ.get(client.key_env)
            if key and hmac.compare_digest(api_key.encode(), key.encode()) and found is None:
                found = client
        return found

    def keyed_clients(self) -> list[Open311Client]:
        return [c for c in self.clients if os.environ.get(c.key_env)]


def load_open311_file(config_dir: Path | str) -> Open311File | None:
    """Validate `open311.yaml` in the config directory; None when there is none (the door is closed)."""
    path = Path(config_dir) / OPEN311_FILE
    if not path.is_file():
        return None
    doc = load_yaml(path)
    if doc.data is None:
        raise ConfigError("file is empty", path=str(path), line=1, col=1,
                          hint="list clients (name, key_env, authorities, ref_prefix) or delete the file")
    return doc.validate(Open311File)
