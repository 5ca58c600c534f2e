"""The small typed interface every back-office connector implements, and how plugins are found."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from hubbridge.case import FollowUpKind
from hubbridge.errors import ConfigError, NotSupported

if TYPE_CHECKING:
    from hubbridge.config.models import ConnectorInstance

ENTRY_POINT_GROUP = "hubbridge.connectors"


@dataclass(frozen=True)
class Delivery:
    """One translated case on its way to a back office; `hub_ref` doubles as the idempotency key."""

    hub_ref: str
    authority: str
    service: str
    payload: dict[str, Any]
    mapping_version: str = ""
    known_new: bool = False
    """True when the caller knows the back office has no job for `hub_ref` yet (no earlier attempt can have
    reached it, or `find` has just answered None), so `create` need not look first: one call instead of two."""


@dataclass(frozen=True)
class CreateResult:
    """What the back office said when it took the case: its own reference and, if given, a status."""

    backoffice_ref: str
    status_code: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackOfficeUpdate:
    """A change the back office reports for one of its jobs, in the back office's own terms.

    `update_id` is unique per instance and lets sync deduplicate; `hub_ref` is the Hub reference the
    job carries (None for jobs raised directly in the back office). `service_code` routes a job raised in the
    back office; a connector may leave it None when `hub_ref` is set and finding it costs a call.
    """

    backoffice_ref: str
    update_id: str
    occurred_at: datetime
    status_code: str | None = None
    note: str | None = None
    hub_ref: str | None = None
    service_code: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdatePage:
    """One page of updates, oldest first; pass `cursor` back to get the next page."""

    updates: list[BackOfficeUpdate]
    cursor: str
    has_more: bool = False


@dataclass(frozen=True)
class Document:
    """A file sent with an evidence follow-up: its bytes (when the Hub sent them) and/or where it can be fetched."""

    filename: str
    content_type: str
    content: bytes | None = field(default=None, repr=False)
    url: str | None = None


@dataclass(frozen=True)
class FollowUp:
    """One follow-up on its way to the back-office job of a delivered case.

    `key` (`hub_ref/sequence`) is unique per follow-up: a connector puts it where `find_follow_up` can see it
    again (a note's text, the back office's own reference field), so a lost answer never makes a second note.
    `text` is what the service area reads, already worded; `fields` are what the mapping's `followups:` section
    built, for connectors whose requests take more than text (e.g. a document's name, a `media_url`).
    """

    hub_ref: str
    backoffice_ref: str
    key: str
    kind: FollowUpKind
    text: str
    occurred_at: datetime
    priority: str | None = None
    documents: tuple[Document, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    known_new: bool = False
    """True when no earlier attempt can have reached the back office, so nothing need be looked up first."""


@dataclass(frozen=True)
class FollowUpResult:
    """What the back office said when it took a follow-up: its own id for it (note, document, update), if any."""

    backoffice_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetField:
    """A field the back office accepts, so mappings can be checked before a case is sent."""

    name: str
    type: str = "string"
    max_length: int | None = None
    required: bool = False
    repeated: bool = False
    enum: tuple[str, ...] = ()
    children: Mapping[str, TargetField] = field(default_factory=dict)


class Connector(ABC):
    """A back-office system reached through its real protocol.

    Implementations raise only `hubbridge.errors.ConnectorError` subclasses: `TransientError` for
    faults worth retrying, `PermanentError` for refusals, `BadResponseError` for garbage answers.
    """

    plugin: ClassVar[str]
    supports_cancel: ClassVar[bool] = False
    supports_notes: ClassVar[bool] = False
    supports_webhooks: ClassVar[bool] = False
    """True when the back office pushes signed change notifications that `parse_webhook` reads."""
    supports_raised_details: ClassVar[bool] = False
    """True when `raised_details` fills in Hub-case fields for jobs raised directly in the back office."""
    followup_kinds: ClassVar[frozenset[FollowUpKind]] = frozenset()
    """The follow-up kinds the back office has a real operation for; the route's config says what becomes of
    the others (sent as a note, e-mailed to the service area, or dead-lettered for an operator)."""

    def __init__(self, instance: ConnectorInstance, env: Mapping[str, str] | None = None) -> None:
        self.instance = instance
        self.name = instance.name
        self._env = os.environ if env is None else env

    def secret(self, env_name: str | None) -> str | None:
        """Read a credential from the environment by the variable name the config gives."""
        if env_name is None:
            return None
        value = self._env.get(env_name)
        if value is None:
            raise ConfigError(
                f"environment variable {env_name} is not set",
                key=f"connectors.{self.name}.credentials",
                hint=f"export {env_name}=... before starting hubbridge",
            )
        return value

    @abstractmethod
    def create(self, delivery: Delivery) -> CreateResult:
        """Create the back-office job for a case, or return the existing one for the same `hub_ref`.

        A delivery marked `known_new` has nothing to find, so the look-up may be skipped.
        """

    @abstractmethod
    def find(self, hub_ref: str, delivery: Delivery | None = None) -> CreateResult | None:
        """Look up the job made for `hub_ref`, used after an unknown outcome before creating again.

        `delivery` (when known) gives what a back office without a look-up by our reference needs to search
        by (location, service, date); raise `OutcomeUnknown` when the answer cannot be certain.
        """

    @abstractmethod
    def updates_since(self, cursor: str | None, limit: int = 100) -> UpdatePage:
        """Changes after `cursor` (None: from the start), oldest first, at most `limit`."""

    @abstractmethod
    def target_fields(self) -> Mapping[str, TargetField]:
        """The request fields `create` accepts in `Delivery.payload`."""

    def render(self, delivery: Delivery) -> str:
        """The exact request `create` would send, for dry runs; never sends anything."""
        import json

        return json.dumps(delivery.payload, indent=2, sort_keys=True, default=str)

    def cancel(self, backoffice_ref: str, reason: str) -> None:
        """Cancel the back-office job; only when `supports_cancel`."""
        raise NotSupported(f"{self.plugin} does not support cancellation", instance=self.name)

    def add_note(self, backoffice_ref: str, note: str) -> None:
        """Add a note to the back-office job; only when `supports_notes`."""
        raise NotSupported(f"{self.plugin} does not support notes", instance=self.name)

    def follow_up(self, followup: FollowUp) -> FollowUpResult:
        """Send one follow-up to the job through the back office's own operation for its kind.

        Raises `NotSupported` for a kind not in `followup_kinds`; the `ConnectorError` classes as `create` does.
        """
        raise NotSupported(f"{self.plugin} takes no {followup.kind.value} follow-ups", instance=self.name)

    def landed_before(self, followup: FollowUp) -> FollowUpResult | None:
        """Unless the follow-up is `known_new`, what an earlier attempt of it left in the back office (read with
        `find_follow_up`): a back office that is not idempotent must be looked in before it is sent again."""
        if followup.known_new:
            return None
        found = self.find_follow_up(followup)
        if found is not None:
            structlog.get_logger(__name__).info(
                "followup.exists", plugin=self.plugin, instance=self.name, key=followup.key,
                kind=followup.kind.value, backoffice_ref=followup.backoffice_ref)
        return found

    def find_follow_up(self, followup: FollowUp) -> FollowUpResult | None:
        """After an unknown outcome: the back office's record of this follow-up (by its `key`), or None if it
        never landed; raise `OutcomeUnknown` when the back office cannot tell."""
        raise NotSupported(f"{self.plugin} takes no {followup.kind.value} follow-ups", instance=self.name)

    @classmethod
    def parse_webhook(
        cls, headers: Mapping[str, str], body: bytes, secret: str, *, now: float | None = None
    ) -> list[BackOfficeUpdate]:
        """Verify and parse a pushed change notification; only when `supports_webhooks`.

        Implementations are staticmethods (no instance is needed); this default is a classmethod only so
        that it can name the plugin that has no webhooks.
        """
        raise NotSupported(f"{cls.plugin} does not take pushed updates (webhooks)")

    def raised_details(self, update: BackOfficeUpdate) -> dict[str, Any]:
        """Partial Hub-case fields (authority, customer, location, description, attributes) for a job raised
        directly in the back office, when the update feed does not carry them; only when `supports_raised_details`.
        """
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and sockets."""


def connector_classes() -> dict[str, type[Connector]]:
    """Every connector plugin installed, by plugin name, found through the entry-point group."""
    found: dict[str, type[Connector]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found


def connector_class(plugin: str) -> type[Connector]:
    """Load one plugin by name (only that one, so a broken third-party plugin cannot stop the others)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=plugin):
        return ep.load()
    known = ", ".join(sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))) or "none installed"
    raise ConfigError(
        f"unknown connector plugin {plugin!r}",
        hint=f"installed plugins: {known}; a third-party plugin registers in the "
        f"{ENTRY_POINT_GROUP!r} entry-point group",
    )
