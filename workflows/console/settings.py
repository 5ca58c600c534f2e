"""The console's own config file, `console.yaml`: who may log in, with which role, and how sessions behave.

Passwords are never in the file: each user names an environment variable holding a password hash, or
carries the hash itself (`scrypt$...`, made with `python -m hubbridge.workflows.console hash-password`).
"""

from __future__ import annotations

import fnmatch
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from hubbridge.config.models import EnvName
from hubbridge.config.yamlfile import load_yaml
from hubbridge.errors import ConfigError
from hubbridge.workflows.console.passwords import HASH_PATTERN

CONSOLE_FILE = "console.yaml"

UserName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9._-]{1,62}$")]
ServicePattern = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9-]*(\.[a-z0-9*][a-z0-9*-]*)*$", max_length=80),
    Field(description="A service key (refuse.missed-collection) or a pattern over keys (refuse.*)"),
]
AuthorityPattern = Annotated[
    str,
    StringConstraints(pattern=r"^([a-z][a-z0-9-]*|\*)$", max_length=80),
    Field(description="An authority code (worcester), or * for every council"),
]


class Role(StrEnum):
    """operator: every page and replay; service: only its services, read only; admin: operator + discard."""

    OPERATOR = "operator"
    SERVICE = "service"
    ADMIN = "admin"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsoleUser(_Strict):
    """One person or team who may log in to the console."""

    name: UserName
    role: Role
    services: list[ServicePattern] = Field(default_factory=list, description="Only for role: service")
    authorities: list[AuthorityPattern] = Field(
        default_factory=list, description="Only for role: service: the councils whose cases this user sees"
    )
    password_hash_env: EnvName | None = Field(None, description="Environment variable holding the password hash")
    password_hash: Annotated[str, StringConstraints(pattern=HASH_PATTERN)] | None = Field(
        None, description="The password hash itself (scrypt$...); never a plain password"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ConsoleUser:
        if (self.password_hash_env is None) == (self.password_hash is None):
            raise ValueError("give exactly one of password_hash_env (a variable name) or password_hash (scrypt$...)")
        if self.role is Role.SERVICE and not self.services:
            raise ValueError("a service-area user needs a services list, e.g. [refuse.*]")
        if self.role is Role.SERVICE and not self.authorities:
            # each council is its own data controller: a service-area user is one council's, unless said otherwise
            raise ValueError("a service-area user needs an authorities list, e.g. [worcester] (or ['*'] for all)")
        if self.role is not Role.SERVICE and self.services:
            raise ValueError(f"a {self.role.value} sees every service; services is only for role: service")
        if self.role is not Role.SERVICE and self.authorities:
            raise ValueError(f"a {self.role.value} sees every council; authorities is only for role: service")
        return self

    def sees(self, service: str | None) -> bool:
        """Whether this user may see a case or record of `service` (service-area users: only theirs)."""
        if self.role is not Role.SERVICE:
            return True
        return service is not None and any(fnmatch.fnmatchcase(service, p) for p in self.services)

    def sees_authority(self, authority: str | None) -> bool:
        """Whether this user may see records of council `authority` (service-area users: only theirs)."""
        if self.role is not Role.SERVICE:
            return True
        return authority is not None and any(a == "*" or a == authority for a in self.authorities)

    def sees_case(self, service: str | None, authority: str | None) -> bool:
        """Whether this user may see a case or record of `service` for council `authority`."""
        return self.sees(service) and self.sees_authority(authority)

    def stored_hash(self) -> str | None:
        """The password hash from the environment or the file; None when the variable is unset."""
        if self.password_hash is not None:
            return self.password_hash
        assert self.password_hash_env is not None
        return os.environ.get(self.password_hash_env) or None


class TrackingSettings(_Strict):
    """The public tracking page's brake on guessing: attempts per client address per window."""

    attempts: Annotated[int, Field(ge=1, le=1000)] = 10
    window_seconds: Annotated[int, Field(ge=10, le=86400)] = 600


class ConsoleSettings(_Strict):
    """The whole `console.yaml`."""

    schema_: str | None = Field(None, alias="$schema")
    session_secret_env: EnvName = Field(
        "HUBBRIDGE_CONSOLE_SECRET", description="Variable holding the key that signs session cookies (32+ chars)"
    )
    session_hours: Annotated[float, Field(gt=0, le=24 * 7)] = 8.0
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto", description="Secure cookie flag: auto = when the request came over https"
    )
    same_site: Literal["lax", "strict"] = "lax"
    login_attempts: Annotated[int, Field(ge=1, le=1000)] = Field(
        10, description="Failed logins allowed per client address per 10 minutes"
    )
    login_attempts_per_user: Annotated[int, Field(ge=1, le=1000)] = Field(
        10, description="Failed logins allowed per user name per 10 minutes, from any address"
    )
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    users: list[ConsoleUser] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ConsoleSettings:
        seen: set[str] = set()
        for user in self.users:
            if user.name in seen:
                raise ValueError(f"user {user.name!r} appears twice")
            seen.add(user.name)
        return self

    def user(self, name: str) -> ConsoleUser | None:
        return next((u for u in self.users if u.name == name), None)

    def session_secret(self) -> str | None:
        return os.environ.get(self.session_secret_env) or None


def load_console_settings(config_dir: Path | str) -> ConsoleSettings:
    """Validate `console.yaml` in the config directory; no file means no users (tracking still works)."""
    path = Path(config_dir) / CONSOLE_FILE
    if not path.is_file():
        return ConsoleSettings()
    doc = load_yaml(path)
    if doc.data is None:
        raise ConfigError("file is empty", path=str(path), line=1, col=1, hint="see docs/console.md for an example")
    return doc.validate(ConsoleSettings)
