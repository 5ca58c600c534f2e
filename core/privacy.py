"""Personal data under control: subject access export, erasure on request and retention after closure.

Each council is its own controller. Erasure replaces a person's values wherever the store holds them (every
text and JSON column of every table) and keeps the audit trail of what happened, without the personal data;
each export, erasure and retention run is itself recorded in `privacy_actions`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import JSON, BigInteger, String, Table, Text, cast, exists, func, or_, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from hubbridge.case import HubStatus
from hubbridge.config.models import PrivacyFile
from hubbridge.config.settings import SHIPPED_CONFIG_DIR
from hubbridge.config.yamlfile import load_yaml
from hubbridge.errors import ConfigErrors, UsageError
from hubbridge.log import case_values, forget_case, values_pattern
from hubbridge.store import (
    ID,
    Base,
    CaseRow,
    DeadLetterRow,
    FollowUpFileRow,
    FollowUpRow,
    RaisedCaseRow,
    record_event,
    session_scope,
    utcnow,
)

log = structlog.get_logger(__name__)

ERASED = "[erased]"
FINAL_STATUSES = tuple(s.value for s in HubStatus if s.is_final)
SHIPPED_PRIVACY = SHIPPED_CONFIG_DIR / "privacy.yaml"
# keys of a raised job's kept update that say what happened, not who to
_RAISED_UPDATE_KEYS = ("backoffice_ref", "update_id", "occurred_at", "status_code", "hub_ref", "service_code")
# Hub update fields written by people (a back office's note to the customer)
_UPDATE_TEXT_KEYS = ("note", "resolution")


class PrivacyActionRow(Base):
    """One export, erasure or retention run: what, why, by whom, when and which cases (no personal values)."""

    __tablename__ = "privacy_actions"

    id: Mapped[int] = mapped_column(ID, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(16))  # export | erase | retention
    subject: Mapped[str | None] = mapped_column(String(24))  # email | phone | name+postcode | ref
    hub_refs: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text)
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ErasedRow(Base):
    """An item whose personal data is gone (`case` by hub ref, `dead` / `raised` by id), so no run does it twice."""

    __tablename__ = "privacy_erased"

    kind: Mapped[str] = mapped_column(String(12), primary_key=True)
    key: Mapped[str] = mapped_column(String(140), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)
    action_id: Mapped[int | None] = mapped_column(BigInteger)


@dataclass(frozen=True)
class Subject:
    """Whom a request is about: an e-mail, a phone number, a name with a postcode, or one case reference."""

    email: str | None = None
    phone: str | None = None
    name: str | None = None
    postcode: str | None = None
    ref: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("email", "phone", "ref") if getattr(self, k)] + (["name"] if self.name else [])
        if len(given) != 1:
            raise UsageError("give exactly one of --email, --phone, --name with --postcode, or --ref",
                             hint="e.g. hubbridge privacy export --email someone@example.org")
        if bool(self.name) != bool(self.postcode):
            raise UsageError("a name is only matched together with a postcode (--name and --postcode)")
        if self.phone is not None and len(_digits(self.phone)) < 7:
            raise UsageError(f"{self.phone!r} is not a phone number", hint="give at least 7 digits")
        if self.email is not None and "@" not in self.email:
            raise UsageError(f"{self.email!r} is not an e-mail address")

    @property
    def kind(self) -> str:
        return "name+postcode" if self.name else next(k for k in ("email", "phone", "ref") if getattr(self, k))

    def given_values(self) -> set[str]:
        """The request's own identifying values (the ref is not personal, so it is never scrubbed)."""
        if self.email:
            return {self.email}
        if self.phone:
            return case_values({"customer": {"phone": self.phone}})
        if self.name:
            return {self.name}
        return set()


def _digits(text: str) -> str:
    digits = re.sub(r"\D", "", text)
    return "0" + digits[2:] if digits.startswith("44") else digits


def _postcode(text: str) -> str:
    return re.sub(r"\s", "", text).upper()


def _customer(payload: Any) -> Mapping[str, Any]:
    customer = payload.get("customer") if isinstance(payload, Mapping) else None
    return customer if isinstance(customer, Mapping) else {}


def matches(payload: Any, subject: Subject) -> bool:
    """Whether a case payload is about the subject (e-mail case-insensitively, phone by its digits)."""
    customer = _customer(payload)
    if subject.email:
        return str(customer.get("email") or "").strip().lower() == subject.email.strip().lower()
    if subject.phone:
        phone = customer.get("phone")
        return isinstance(phone, str) and _digits(phone) == _digits(subject.phone) != ""
    if subject.name and subject.postcode:
        address = customer.get("address") if isinstance(customer.get("address"), Mapping) else {}
        name = " ".join(str(customer.get("name") or "").split()).casefold()
        return (name == " ".join(subject.name.split()).casefold()
                and _postcode(str(address.get("postcode") or "")) == _postcode(subject.postcode))
    return False


def _like(column: Any, value: str) -> Any:
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(cast(column, Text)).like(f"%{escaped}%", escape="\\")


def find_cases(s: Session, subject: Subject) -> list[CaseRow]:
    """The cases about the subject; text prefilters keep the scan to candidate rows on both stores."""
    if subject.ref:
        return list(s.scalars(select(CaseRow).where(CaseRow.hub_ref == subject.ref)))
    query = select(CaseRow).where(_candidates(CaseRow.payload, subject))
    return [row for row in s.scalars(query.execution_options(yield_per=500)) if matches(row.payload, subject)]


def _candidates(column: Any, subject: Subject) -> Any:
    """A text condition every stored payload about the subject meets (few others do): checked in Python after."""
    if subject.email:
        return _like(column, subject.email.strip())
    if subject.postcode:
        # the outward code is in the stored text however the postcode was spaced
        return _like(column, _postcode(subject.postcode)[:-3])
    # the last group of a number is written together however the rest is spaced
    return _like(column, _digits(subject.phone or "")[-3:])


def _scope(s: Session, subject: Subject) -> tuple[list[str], set[str]]:
    """The subject's case refs and personal values: from their cases, and from dead letters whose raw payload is
    their case (refused at intake, so never a case row)."""
    cases = find_cases(s, subject)
    refs = {row.hub_ref for row in cases}
    values = subject.given_values().union(*(case_values(row.payload, attributes=False) for row in cases))
    conditions = [DeadLetterRow.hub_ref.in_(sorted(refs | ({subject.ref} if subject.ref else set())))]
    if not subject.ref:
        conditions.append(_candidates(DeadLetterRow.payload, subject))
    for hub_ref, raw in s.execute(select(DeadLetterRow.hub_ref, DeadLetterRow.payload).where(or_(*conditions))):
        data = _payload_of(raw)
        if data is not None and ((subject.ref and hub_ref == subject.ref) or matches(data, subject)):
            values |= case_values(data, attributes=False)
            if hub_ref:
                refs.add(hub_ref)
    return sorted(refs), values


def _tables() -> list[Table]:
    import hubbridge.sla.tables  # noqa: F401  (its tables are part of the store)

    return list(Base.metadata.sorted_tables)


def _text_columns(table: Table) -> list[Any]:
    """A table's columns that can hold free text: text, JSON and unbounded strings. Short strings are codes (a
    status, a connector's name, a back-office ref): a name part that happens to equal one must not change it."""
    return [c for c in table.columns if not c.primary_key and c.name != "hub_ref" and (
        isinstance(c.type, Text | JSON) or (isinstance(c.type, String) and c.type.length is None))]


def _searchable(values: Iterable[str]) -> set[str]:
    """The forms a value takes in stored text: as is, and as JSON escapes it (non-ASCII as \\uXXXX)."""
    forms: set[str] = set()
    for value in values:
        forms.add(value)
        forms.add(json.dumps(value)[1:-1])
    return {f for f in forms if len(f) >= 3}


def _distinctive(values: set[str]) -> set[str]:
    """Values that identify the person by themselves (a postcode or a first name alone is shared with others)."""
    return {v for v in values if len(v) >= 6 and not re.fullmatch(r"[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}", v, re.I)}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _rows_holding(s: Session, values: set[str], refs: Iterable[str], *,
                  scan: bool = True) -> Iterator[tuple[Table, Mapping[str, Any]]]:
    """Every row of every table bound to one of `refs`, or (with `scan`) holding one of `values` in a text or
    JSON column."""
    forms = _searchable(_distinctive(values)) if scan else set()
    refs = sorted(set(refs))
    for table in _tables():
        conditions = []
        if refs and "hub_ref" in table.c:
            conditions.append(table.c.hub_ref.in_(refs))
        for column in _text_columns(table) if forms else []:
            conditions.extend(_like(column, form) for form in forms)
        if not conditions:
            continue
        for row in s.execute(select(table).where(or_(*conditions))).mappings():
            yield table, row


def export_subject(url: str, subject: Subject, *, by: str) -> dict[str, Any]:
    """Everything the store holds about the subject, table by table, as JSON-ready data; the export is audited."""
    with session_scope(url) as s:
        refs, values = _scope(s, subject)
        tables: dict[str, list[dict[str, Any]]] = {}
        for table, row in _rows_holding(s, values, refs):
            if table.name == PrivacyActionRow.__tablename__:
                continue
            tables.setdefault(table.name, []).append({k: _jsonable(v) for k, v in row.items()})
        s.add(PrivacyActionRow(action="export", subject=subject.kind, hub_refs=refs, by=by, at=utcnow(),
                               counts={name: len(rows) for name, rows in tables.items()}))
    log.info("privacy.exported", subject=subject.kind, cases=len(refs), rows=sum(map(len, tables.values())))
    return {"subject": subject.kind, "generated_at": utcnow().isoformat(), "cases": refs, "tables": tables}


def scrub(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """`value` with every match of `pattern` in its text (nested JSON included) replaced by the erased marker."""
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub(ERASED, value)
    if isinstance(value, Mapping):
        return {k: scrub(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, pattern) for v in value]
    return value


def erased_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a case payload keeps once erased: what kind of case it was and when, nothing about the customer."""
    kept = {k: payload[k] for k in ("ref", "authority", "service", "channel", "priority", "created_at", "updated_at")
            if k in payload}
    return {**kept, "customer": {"name": ERASED}, "description": ERASED, "erased": True}


def _scrubbed_row(table: Table, row: Mapping[str, Any], pattern: re.Pattern[str] | None,
                  bound: bool) -> dict[str, Any]:
    """The new values of one row's columns (only those that change); `bound` says the row is the person's case's."""
    changes: dict[str, Any] = {}
    for column in _text_columns(table):
        old = row[column.name]
        new = scrub(old, pattern)
        if table.name == "cases" and column.name == "payload" and isinstance(old, Mapping) and bound:
            new = erased_payload(old)
        elif table.name == "dead_letters" and column.name == "payload":
            new = ERASED  # the raw input is the person's whole case: nothing of it is kept
        elif table.name == "hub_updates" and column.name == "payload" and isinstance(new, Mapping) and bound:
            new = {k: (ERASED if k in _UPDATE_TEXT_KEYS else v) for k, v in new.items()}
        elif table.name == "followups" and column.name == "payload" and isinstance(old, Mapping) and bound:
            # what the Hub said of the customer's case (notes, changed details, file names): none of it is kept
            new = {k: old[k] for k in ("ref", "kind", "priority", "occurred_at") if k in old} | {"erased": True}
        elif table.name == "raised_cases" and column.name == "updates" and isinstance(new, list):
            new = [{k: u.get(k) for k in _RAISED_UPDATE_KEYS} if isinstance(u, Mapping) else ERASED for u in new]
        if new != old:
            changes[column.name] = new
    if table.name == "cases" and bound and row.get("stage") == "received":
        # an erased case cannot be translated any more: it stops here rather than failing in every delivery
        changes.update(stage="dead", next_attempt_at=None, last_error="personal data erased before delivery")
    if table.name == "followups" and bound and row.get("state") == "pending":
        changes.update(state="dead", next_attempt_at=None, last_error="personal data erased before delivery")
    if table.name == "dead_letters" and row.get("replayed_at") is None and row.get("discarded_at") is None:
        changes["discarded_at"] = utcnow()  # an erased dead letter can never be replayed
    return changes


@dataclass
class Erasure:
    """What one erasure or retention run changed."""

    action_id: int | None = None
    cases: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def _erase(s: Session, values: set[str], refs: list[str], erasure: Erasure, *, scan: bool = True) -> None:
    """Scrub the person's values (and their cases' rows) in every table, within the session's transaction; without
    `scan` only the rows bound to `refs` (retention, where a scan of every table per case would cost too much)."""
    pattern = values_pattern(_searchable(values))
    now = utcnow()
    for table, row in list(_rows_holding(s, values, refs, scan=scan)):
        if table.name in (PrivacyActionRow.__tablename__, ErasedRow.__tablename__):
            continue
        changes = _scrubbed_row(table, row, pattern, bound="hub_ref" in table.c and row["hub_ref"] in refs)
        if not changes:
            continue
        keys = [c for c in table.primary_key.columns]
        s.execute(update(table).where(*(c == row[c.name] for c in keys)).values(**changes))
        erasure.rows[table.name] = erasure.rows.get(table.name, 0) + 1
        if table.name == "dead_letters":
            s.merge(ErasedRow(kind="dead", key=str(row["id"]), erased_at=now))
            if "discarded_at" in changes:
                record_event(s, row["hub_ref"], "dead_letter.discarded", dead_letter_id=row["id"], by="privacy",
                             note="personal data erased")
        elif table.name == "raised_cases":
            s.merge(ErasedRow(kind="raised", key=str(row["id"]), erased_at=now))
    if refs:
        # a follow-up's files are bound to its case through the follow-up: their bytes and names go with it
        files = s.execute(update(FollowUpFileRow).where(
            FollowUpFileRow.followup_id.in_(select(FollowUpRow.id).where(FollowUpRow.hub_ref.in_(refs))),
            FollowUpFileRow.filename != ERASED,
        ).values(content=None, url=None, filename=ERASED, erased_at=now)).rowcount
        if files:
            erasure.rows[FollowUpFileRow.__tablename__] = erasure.rows.get(FollowUpFileRow.__tablename__, 0) + files
    for ref in refs:
        s.merge(ErasedRow(kind="case", key=ref, erased_at=now))
        record_event(s, ref, "privacy.erased")
    erasure.cases.extend(refs)


def erase_subject(url: str, subject: Subject, *, reason: str, by: str) -> Erasure:
    """Erase the subject's personal data from every table, recording the reason, who and when."""
    if not reason.strip():
        raise UsageError("an erasure needs a reason (--reason), kept in the privacy audit")
    erasure = Erasure()
    with session_scope(url) as s:
        refs, values = _scope(s, subject)
        _erase(s, values, refs, erasure)
        action = PrivacyActionRow(action="erase", subject=subject.kind, hub_refs=refs, by=by, at=utcnow(),
                                  reason=scrub(reason.strip(), values_pattern(values)), counts=erasure.rows)
        s.add(action)
        s.flush()
        erasure.action_id = action.id
        s.execute(update(ErasedRow).where(ErasedRow.action_id.is_(None)).values(action_id=action.id))
    for ref in refs:
        forget_case(ref)
    log.info("privacy.erased", subject=subject.kind, cases=len(refs), rows=sum(erasure.rows.values()),
             action=erasure.action_id)
    return erasure


def load_privacy(config_dir: Path | None, services: Iterable[str] | None = None) -> PrivacyFile:
    """The retention settings: `privacy.yaml` in the config directory, else the shipped one; given the service
    catalogue, a period for a service it does not hold is a config error (a typo would keep data for ever)."""
    path = config_dir / "privacy.yaml" if config_dir is not None else SHIPPED_PRIVACY
    if not path.is_file():
        path = SHIPPED_PRIVACY
    doc = load_yaml(path)
    policy = doc.validate(PrivacyFile)
    known = set(services) if services is not None else None
    unknown = sorted(set(policy.services) - known) if known is not None else []
    if unknown:
        raise ConfigErrors([doc.error(f"{key} is not a service in services.yaml", ["services", key],
                                      hint="correct the service key or remove its retention period")
                            for key in unknown])
    return policy


def _not_erased(kind: str, key: Any) -> Any:
    return ~exists().where(ErasedRow.kind == kind, ErasedRow.key == key)


def _payload_of(raw: str) -> Mapping[str, Any] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, Mapping) else None


def _periods(policy: PrivacyFile) -> list[tuple[str | None, int]]:
    """Each listed service's retention in days, then the default's (None: every service not listed)."""
    return [*((svc, r.days_after_closure) for svc, r in sorted(policy.services.items())),
            (None, policy.default.days_after_closure)]


def apply_retention(url: str, policy: PrivacyFile, *, now: datetime | None = None, by: str = "retention") -> Erasure:
    """Erase the personal data of cases closed longer ago than their service's retention, and of old dead letters
    and raised jobs with no case; one run takes at most `sweep_batch` items."""
    now = now or utcnow()
    erasure = Erasure()
    budget = policy.sweep_batch
    listed = set(policy.services)
    with session_scope(url) as s:
        for service, days in _periods(policy):
            if budget <= 0:
                break
            query = select(CaseRow).where(
                CaseRow.status.in_(FINAL_STATUSES),
                CaseRow.status_at < now - timedelta(days=days),
                _not_erased("case", CaseRow.hub_ref),
                CaseRow.service == service if service is not None else CaseRow.service.notin_(listed),
            ).order_by(CaseRow.status_at).limit(budget)
            for row in list(s.scalars(query)):
                _erase(s, case_values(row.payload, attributes=False), [row.hub_ref], erasure, scan=False)
                budget -= 1
        cutoff = now - timedelta(days=policy.dead_letter_days)
        orphans = select(DeadLetterRow).where(
            DeadLetterRow.created_at < cutoff,
            _not_erased("dead", cast(DeadLetterRow.id, String)),
            ~exists().where(CaseRow.hub_ref == DeadLetterRow.hub_ref),
        ).order_by(DeadLetterRow.id).limit(max(budget, 0))
        for dead in list(s.scalars(orphans)) if budget > 0 else []:
            # a refused case's raw payload may still parse: its own values go from the rest of the store too
            values = case_values(_payload_of(dead.payload), attributes=False)
            refs = [dead.hub_ref] if dead.hub_ref else []
            _erase(s, values, refs, erasure, scan=False)
            s.execute(update(DeadLetterRow).where(DeadLetterRow.id == dead.id).values(
                payload=ERASED, detail=scrub(dead.detail, values_pattern(_searchable(values))),
                discarded_at=dead.discarded_at or dead.replayed_at or now))
            s.merge(ErasedRow(kind="dead", key=str(dead.id), erased_at=now))
            erasure.rows["dead_letters"] = erasure.rows.get("dead_letters", 0) + 1
            budget -= 1
        raised = select(RaisedCaseRow).where(
            RaisedCaseRow.hub_ref.is_(None), RaisedCaseRow.state == "dead", RaisedCaseRow.seen_at < cutoff,
            _not_erased("raised", cast(RaisedCaseRow.id, String)),
        ).limit(max(budget, 0))
        for job in list(s.scalars(raised)) if budget > 0 else []:
            job.updates = [{k: u.get(k) for k in _RAISED_UPDATE_KEYS} for u in job.updates if isinstance(u, Mapping)]
            job.last_error = ERASED if job.last_error else None
            s.merge(ErasedRow(kind="raised", key=str(job.id), erased_at=now))
            erasure.rows["raised_cases"] = erasure.rows.get("raised_cases", 0) + 1
            budget -= 1
        if erasure.cases or erasure.rows:
            action = PrivacyActionRow(action="retention", subject=None, hub_refs=erasure.cases, by=by, at=now,
                                      reason="retention period after closure", counts=erasure.rows)
            s.add(action)
            s.flush()
            erasure.action_id = action.id
            s.execute(update(ErasedRow).where(ErasedRow.action_id.is_(None)).values(action_id=action.id))
    for ref in erasure.cases:
        forget_case(ref)
    if erasure.cases or erasure.rows:
        log.info("privacy.retention", cases=len(erasure.cases), rows=sum(erasure.rows.values()),
                 action=erasure.action_id)
    return erasure


@dataclass(frozen=True)
class RetentionStatus:
    """What the console shows: each service's period, what is erased and what is due now."""

    periods: dict[str, int]
    default_days: int
    dead_letter_days: int
    erased: dict[str, int]
    due_cases: int
    last_runs: list[dict[str, Any]]


def retention_status(url: str, policy: PrivacyFile, *, now: datetime | None = None) -> RetentionStatus:
    """The retention settings and their effect so far, read-only."""
    now = now or utcnow()
    listed = set(policy.services)
    with session_scope(url) as s:
        erased = dict(s.execute(select(ErasedRow.kind, func.count()).group_by(ErasedRow.kind)).all())
        due = 0
        for service, days in _periods(policy):
            due += int(s.scalar(select(func.count()).select_from(CaseRow).where(
                CaseRow.status.in_(FINAL_STATUSES), CaseRow.status_at < now - timedelta(days=days),
                _not_erased("case", CaseRow.hub_ref),
                CaseRow.service == service if service is not None else CaseRow.service.notin_(listed),
            )) or 0)
        runs = [
            {"at": r.at.isoformat(), "action": r.action, "by": r.by, "cases": len(r.hub_refs or []),
             "rows": sum((r.counts or {}).values())}
            for r in s.scalars(select(PrivacyActionRow).order_by(PrivacyActionRow.id.desc()).limit(10))
        ]
    return RetentionStatus(
        periods={k: v.days_after_closure for k, v in sorted(policy.services.items())},
        default_days=policy.default.days_after_closure, dead_letter_days=policy.dead_letter_days,
        erased={str(k): int(v) for k, v in erased.items()}, due_cases=due, last_runs=runs,
    )
