"""The compiled mapping object: runs the generated functions and turns any failure into one MappingError."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hubbridge.case import FollowUpKind, HubCase, HubFollowUp, HubStatus
from hubbridge.connectors.base import BackOfficeUpdate
from hubbridge.errors import MappingError
from hubbridge.mappings.model import MappingFile
from hubbridge.mappings.paths import FollowUpContext
from hubbridge.mappings.template import to_text

ValueFn = Callable[[Any, Any, list], Any]


def described(value: object) -> str:
    """What a value is, never the value: a mapping error is logged, and case values are personal data."""
    if value is None:
        return "an empty value"
    if isinstance(value, str):
        return f"a text of {len(value)} characters"
    return f"a value of type {type(value).__name__}"


class FieldFailure(Exception):
    """Internal: a field could not be filled; becomes a MappingError naming case, mapping and field."""

    def __init__(self, message: str, field: str, hint: str | None = None) -> None:
        self.message = message
        self.field = field
        self.hint = hint
        super().__init__(message)


@dataclass(slots=True)
class Translation:
    """The back-office payload built for one case, and what the admin should know about it."""

    payload: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class InboundTranslation:
    """A back-office update in Hub terms."""

    status: HubStatus | None
    note: str | None
    resolution: str | None
    warnings: list[str] = field(default_factory=list)


def followup_context(
    followup: HubFollowUp | Mapping[str, Any], case: HubCase | Mapping[str, Any], backoffice_ref: str, key: str
) -> dict[str, Any]:
    """The context `CompiledMapping.followup` reads, from a follow-up and its case (models or their dumps)."""
    followup_data = followup.dump() if isinstance(followup, HubFollowUp) else dict(followup)
    case_data = case.dump() if isinstance(case, HubCase) else dict(case)
    return {**followup_data, "case": case_data, "backoffice_ref": backoffice_ref, "key": key}


class CompiledMapping:
    """A mapping ready to run: `outbound(case)` and `inbound(update)` call generated plain functions."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        path: Path,
        service: str,
        plugin: str,
        service_codes: frozenset[str],
        build: Callable[[Any, Any, list], dict[str, Any]],
        inbound_fns: tuple[ValueFn | None, ValueFn | None, ValueFn | None],
        files: tuple[Path, ...],
        spec: MappingFile,
        followup_build: Callable[[Any, Any, list], dict[str, Any]] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.service = service
        self.plugin = plugin
        self.service_codes = service_codes
        self.files = files
        self.spec = spec
        self._build = build
        self._status, self._note, self._resolution = inbound_fns
        self._followup = followup_build

    def __repr__(self) -> str:
        return f"<CompiledMapping {self.name} {self.version} {self.path}>"

    def outbound(self, case: HubCase) -> Translation:
        """Translate a Hub case into the back-office payload; raises only MappingError."""
        warnings: list[str] = []
        try:
            payload = self._build(case, None, warnings)
        except FieldFailure as failure:
            raise MappingError(
                failure.message, ref=_case_ref(case), mapping=self.name, field=failure.field, hint=failure.hint
            ) from None
        except Exception as exc:  # a bug or an object that is not a HubCase: still one clear error
            raise MappingError(
                # the exception's text is left out: it can quote the case's own values
                f"cannot translate: {type(exc).__name__}", ref=_case_ref(case), mapping=self.name,
                field="outbound",
            ) from exc
        return Translation(payload, warnings)

    @property
    def has_followups(self) -> bool:
        """Whether the mapping has a `followups:` section (without one, `followup` gives no fields)."""
        return self._followup is not None

    def followup(self, context: Mapping[str, Any] | FollowUpContext) -> dict[str, Any]:
        """The fields the `followups:` section builds for one follow-up (see `followup_context`)."""
        return self.followup_translation(context).payload

    def followup_translation(self, context: Mapping[str, Any] | FollowUpContext) -> Translation:
        """Like `followup`, with the warnings (truncations, fallbacks); raises only MappingError."""
        key = context.key if isinstance(context, FollowUpContext) else context.get("key")
        ref = key if isinstance(key, str) else None
        kind = context.kind if isinstance(context, FollowUpContext) else context.get("kind")
        kind_name = kind.value if isinstance(kind, FollowUpKind) else str(kind)
        if kind_name not in FOLLOWUP_KINDS:
            kind_name = "unknown"  # whatever was passed may be case text
        if self._followup is None:
            return Translation({})
        try:
            checked = context if isinstance(context, FollowUpContext) else FollowUpContext.model_validate(context)
        except ValidationError as exc:
            # pydantic's own text quotes the input; only where and what kind of problem is shown
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'context'}: {error['type']}"
                for error in exc.errors()[:5]
            )
            raise MappingError(f"{kind_name} follow-up: the follow-up context is not valid: {problems}",
                               ref=ref, mapping=self.name, field="followups") from None
        warnings: list[str] = []
        try:
            payload = self._followup(checked, None, warnings)
        except FieldFailure as failure:
            raise MappingError(f"{kind_name} follow-up: {failure.message}", ref=ref, mapping=self.name,
                               field=failure.field, hint=failure.hint) from None
        except Exception as exc:
            raise MappingError(f"{kind_name} follow-up: cannot translate: {type(exc).__name__}", ref=ref,
                               mapping=self.name, field="followups") from exc
        return Translation(payload, warnings)

    def inbound(self, update: BackOfficeUpdate) -> InboundTranslation:
        """Translate a back-office update into a Hub status, note and resolution; raises only MappingError."""
        warnings: list[str] = []
        current_part = "inbound.status"
        try:
            status = None
            if self._status is not None:
                raw_status = self._status(update, None, warnings)
                status = None if raw_status is None else HubStatus(raw_status)
            current_part = "inbound.note"
            note = self._note(update, None, warnings) if self._note is not None else None
            current_part = "inbound.resolution"
            resolution = self._resolution(update, None, warnings) if self._resolution is not None else None
        except FieldFailure as failure:
            raise MappingError(
                failure.message, ref=_update_ref(update), mapping=self.name, field=failure.field,
                hint=failure.hint,
            ) from None
        except Exception as exc:
            raise MappingError(
                f"cannot translate update: {type(exc).__name__}: {exc}", ref=_update_ref(update),
                mapping=self.name, field=current_part,
            ) from exc
        return InboundTranslation(
            status,
            None if note is None else to_text(note),
            None if resolution is None else to_text(resolution),
            warnings,
        )


FOLLOWUP_KINDS = frozenset(kind.value for kind in FollowUpKind)


def _case_ref(case: Any) -> str | None:
    ref = getattr(case, "ref", None)
    return ref if isinstance(ref, str) else None


def _update_ref(update: Any) -> str | None:
    hub_ref = getattr(update, "hub_ref", None)
    if isinstance(hub_ref, str):
        return hub_ref
    backoffice_ref = getattr(update, "backoffice_ref", None)
    return f"back-office {backoffice_ref}" if isinstance(backoffice_ref, str) else None
