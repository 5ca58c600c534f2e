"""The one error hierarchy of hubbridge: every error says what failed, where, and what to do."""

from __future__ import annotations


class HubbridgeError(Exception):
    """Root of every error hubbridge raises on purpose."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(HubbridgeError):
    """A YAML config or mapping file is invalid; `where` is `path:line:col`."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        col: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.col = col
        self.key = key
        where = None
        if path is not None:
            where = path
            if line is not None:
                where += f":{line}:{col or 1}"
        if key:
            message = f"{key}: {message}"
        super().__init__(message, where=where, hint=hint)


class ConfigErrors(HubbridgeError):
    """Several config errors found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class CaseValidationError(HubbridgeError):
    """A Hub case failed validation; `fields` maps each failing field path to its problem."""

    def __init__(self, fields: dict[str, str], *, ref: str | None = None) -> None:
        self.fields = fields
        listed = "; ".join(f"{k}: {v}" for k, v in fields.items())
        super().__init__(f"invalid Hub case: {listed}", where=ref, hint="correct the named fields and resend")


class FollowUpValidationError(CaseValidationError):
    """A follow-up failed validation (or names a case hubbridge does not hold); `fields` names each problem."""

    def __init__(self, fields: dict[str, str], *, ref: str | None = None, unknown_case: bool = False) -> None:
        self.unknown_case = unknown_case
        HubbridgeError.__init__(
            self, "invalid follow-up: " + "; ".join(f"{k}: {v}" for k, v in fields.items()), where=ref,
            hint="send the case before its follow-ups; this one was kept as a dead letter and can be replayed"
            if unknown_case else "correct the named fields and resend")
        self.fields = fields


class UsageError(HubbridgeError):
    """A command was called wrongly (an option out of range, a missing argument); `where` names the option."""


class RoutingError(HubbridgeError):
    """No route exists for a case's (authority, service)."""


class MappingError(HubbridgeError):
    """A case could not be translated; names the case, the mapping and the field."""

    def __init__(
        self,
        message: str,
        *,
        ref: str | None = None,
        mapping: str | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.ref = ref
        self.mapping = mapping
        self.field = field
        parts = [p for p in (ref, mapping, field) if p]
        super().__init__(message, where=" ".join(parts) or None, hint=hint)


class ConnectorError(HubbridgeError):
    """A back office (or the Hub) could not be talked to as expected."""

    def __init__(self, message: str, *, instance: str | None = None, hint: str | None = None) -> None:
        self.instance = instance
        super().__init__(message, where=instance, hint=hint)


class TransientError(ConnectorError):
    """Worth retrying later: connection refused, timeout, 5xx, SOAP server fault, 429."""

    def __init__(
        self,
        message: str,
        *,
        instance: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, instance=instance, hint=hint or "will be retried")


class UnknownOutcomeError(TransientError):
    """The request was sent but no answer came back: look the case up before sending it again."""


class BackOfficeUnavailable(TransientError):
    """The connector's circuit is open: the back office is down and work waits in the queue."""


class PermanentError(ConnectorError):
    """Retrying will not help: the back office refused the request itself (client fault, 4xx)."""


class BadResponseError(TransientError):
    """The back office answered something that is not a valid response (garbage, truncated, hostile XML).

    Transient, because a proxy error page or a cut connection looks the same; it dead-letters when the
    retries run out.
    """


class OutcomeUnknown(PermanentError):
    """A lost answer left it uncertain whether the back office holds the case, and its look-up cannot tell.

    Never retried (a blind second create could make a second job): the case waits as a dead letter for an
    operator, who checks `candidates` (back-office references that might be this case) before replaying.
    """

    def __init__(
        self, message: str, *, instance: str | None = None, candidates: list[str] | None = None, hint: str | None = None
    ) -> None:
        self.candidates = list(candidates or [])
        listed = f"; candidates: {', '.join(self.candidates)}" if self.candidates else "; no candidate found"
        super().__init__(f"outcome unknown: {message}{listed}", instance=instance,
                         hint=hint or "check the back office for this case before replaying or discarding it")


class NotSupported(PermanentError):
    """The back office does not offer this operation (cancel, notes)."""


class SecurityError(HubbridgeError):
    """A request failed authentication or signature checks."""


class StoreError(HubbridgeError):
    """The store is missing something the caller relied on."""


class DeadLetterNotFound(HubbridgeError):
    """No dead letter has the id an operator gave."""


class DeadLetterClosed(HubbridgeError):
    """The dead letter was already discarded (or replayed), so it cannot be replayed or discarded now."""


class DeadLetterReplayError(HubbridgeError):
    """Replaying a dead letter failed: its input is still invalid, or there is nothing that can be re-run."""
