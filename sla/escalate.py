"""Sending SLA warnings and breaches to the people of their escalation: e-mail, Teams / Slack webhooks, chases.

The sweep writes one `sla_escalation_sends` row per firing and target in its own transaction. Here each row is
claimed (a lease, so two senders never send it twice), sent, and its outcome recorded at once: `sent`, or a
retry time with full-jitter backoff (`escalation_retry` in sla.yaml), or `dead` with a dead letter (stage
`escalate`) saying why. A crash between sending and recording is the one way a message goes twice; e-mail then
carries the same Message-ID. A chase row adds a follow-up note (and a priority raise) for the back office,
written in the same transaction that marks the row sent, so it is added exactly once.

Messages carry the case reference, service, council, clock, due time, lateness, who holds the case and the
console link: never the customer's details.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import requests
import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from hubbridge.config.settings import Settings
from hubbridge.errors import ConfigError, FollowUpValidationError, HubbridgeError, PermanentError, TransientError
from hubbridge.sla.enforce import CHASE_CHANNEL
from hubbridge.sla.policy import EmailTarget, SlaConfig, WebhookTarget
from hubbridge.sla.tables import SEND_DEAD, SEND_PENDING, SEND_SENT, SlaEscalationSendRow
from hubbridge.store import CaseRow, DeadLetterRow, record_event, session_scope
from hubbridge.workflows import retry
from hubbridge.workflows.mail import MailSender, SmtpServer, is_loopback

if TYPE_CHECKING:
    from hubbridge.workflows.runtime import Runtime

log = structlog.get_logger(__name__)

ESCALATE_STAGE = "escalate"
LEASE = timedelta(minutes=5)
"""A claimed batch must be sent within this; a sender that died releases its rows when it runs out."""
BATCH = 20
BUDGET_SECONDS = 30.0
"""One run stops claiming after this long, so a slow relay never holds a worker for long."""
WEBHOOK_TIMEOUT = (5.0, 15.0)
LONDON = ZoneInfo("Europe/London")
ENDED_STATUSES = ("resolved", "closed", "rejected", "cancelled")
PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2, "emergency": 3}
PROMISE_TEXT = {"customer": "the customer's SLA (from the Hub routing the case)",
                "service_area": "the service area's own operational level (from delivery to its back office)"}
SERVICE_AREAS = {"refuse": "refuse & recycling", "revenues": "revenues & benefits", "highways": "highways",
                 "planning": "planning"}

Chaser = Callable[[Session, str, str, str, str | None, str], int | None]
"""Adds a follow-up in the caller's transaction: (session, hub_ref, kind, note, priority, followup_id)."""


def followup_chaser(rt: Runtime) -> Chaser:
    """The chaser that adds the follow-up through `hubbridge.workflows.followups` (delivered by its own task)."""
    from hubbridge.workflows.followups import add_followup

    def chase(s: Session, hub_ref: str, kind: str, note: str, priority: str | None, followup_id: str) -> int | None:
        return add_followup(rt, s, hub_ref, kind, note=note, priority=priority, channel="sla", followup_id=followup_id)

    return chase


@dataclass
class SendReport:
    """What one run of the sender did."""

    sent: int = 0
    chased: int = 0
    retried: int = 0
    dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "chased": self.chased, "retried": self.retried, "dead": self.dead,
                "reasons": dict(self.reasons)}


@dataclass(frozen=True)
class Claimed:
    """A claimed send with what its message needs, read in the claiming transaction."""

    id: int
    hub_ref: str
    clock: str
    kind: str
    service: str
    authority: str
    escalation: str
    target: str
    channel: str
    priority: str | None
    due_at: datetime | None
    attempts: int
    stage: str | None
    status: str | None
    connector: str | None
    case_priority: str | None


# -- the message ---------------------------------------------------------------------------------------------


def console_link(base_url: str, hub_ref: str) -> str:
    """The console's page of one case."""
    return f"{base_url.rstrip('/')}/console/cases?ref={quote(hub_ref, safe='')}"


def holder_of(stage: str | None, status: str | None, connector: str | None, service: str) -> str:
    """Who the delay sits with: hubbridge (not delivered, dead-lettered), the back office, or the customer."""
    area = SERVICE_AREAS.get(service.split(".", 1)[0], service.split(".", 1)[0])
    system = connector or "its back office"
    if stage is None:
        return "unknown: the case is no longer in the store"
    if stage == "dead":
        return f"hubbridge operators: delivery to {system} failed and waits as a dead letter"
    if stage == "received":
        return f"hubbridge: not yet delivered to {system} ({area})"
    if status == "awaiting_customer":
        return f"the customer: {area} ({system}) is waiting for them"
    return f"{area} back office ({system})"


def span(delta: timedelta) -> str:
    """A duration as people say it: '2 d 3 h', '1 h 05 min', '4 min'."""
    minutes = int(abs(delta).total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {mins:02d} min"
    return f"{mins} min"


@dataclass(frozen=True)
class Notice:
    """One escalation message, rendered for e-mail, Slack or Teams."""

    send_id: int
    kind: str
    hub_ref: str
    service: str
    authority: str
    clock: str
    due_at: datetime | None
    at: datetime
    holder: str
    escalated_to: str
    link: str
    promise: str = "customer"

    @property
    def lateness(self) -> str:
        if self.due_at is None:
            return "no due time"
        late = self.at - self.due_at
        if late >= timedelta(minutes=1):
            return f"{span(late)} late"
        if late > -timedelta(minutes=1):
            return "due now"
        return f"due in {span(late)}"

    @property
    def due_text(self) -> str:
        if self.due_at is None:
            return "-"
        return self.due_at.astimezone(LONDON).strftime("%a %d %b %Y %H:%M") + " UK time"

    @property
    def title(self) -> str:
        what = "SLA breach" if self.kind == "breach" else "SLA warning"
        return f"{what}: {self.hub_ref} {self.clock} clock {self.lateness}"

    def facts(self) -> list[tuple[str, str]]:
        return [("Case", self.hub_ref), ("Service", self.service), ("Council", self.authority),
                ("Clock", self.clock), ("Promise", PROMISE_TEXT.get(self.promise, self.promise)),
                ("Due", self.due_text), ("How late", self.lateness),
                ("Held by", self.holder), ("Escalated to", self.escalated_to)]

    def text(self) -> str:
        lines = [self.title, ""]
        lines += [f"{name}: {value}" for name, value in self.facts()]
        lines += ["", f"Open the case in the console: {self.link}", "",
                  "Sent by hubbridge; this mailbox is not read."]
        return "\n".join(lines) + "\n"

    def email(self, sender: str, to: list[str]) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"[{self.kind.upper()}] {self.title} ({self.service}, {self.authority})"
        msg["From"] = sender
        msg["To"] = ", ".join(to)
        msg["Date"] = format_datetime(self.at.astimezone(UTC))
        # the same id on a resend (a crash after sending), so a mail client can fold the two into one
        msg["Message-ID"] = f"<hubbridge-sla-{self.send_id}@{sender.rsplit('@', 1)[-1]}>"
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies to a robot
        msg["X-Auto-Response-Suppress"] = "All"
        msg.set_content(self.text())
        return msg

    def slack(self) -> dict[str, Any]:
        def esc(value: str) -> str:  # Slack mrkdwn's three control characters
            return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        body = "\n".join(f"*{name}:* {esc(value)}" for name, value in self.facts())
        return {"text": f"*{esc(self.title)}*\n{body}\n<{self.link}|Open {esc(self.hub_ref)} in the console>"}

    def teams(self) -> dict[str, Any]:
        # Teams Workflows ("When a Teams webhook request is received") posts the Adaptive Card it is given
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {"type": "TextBlock", "text": self.title, "weight": "Bolder", "size": "Medium", "wrap": True,
                 "color": "Attention" if self.kind == "breach" else "Warning"},
                {"type": "FactSet", "facts": [{"title": n, "value": v} for n, v in self.facts()]},
            ],
            "actions": [{"type": "Action.OpenUrl", "title": "Open in the console", "url": self.link}],
        }
        return {"type": "message", "summary": self.title, "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


def chase_note(c: Claimed, at: datetime, promise: str = "customer") -> str:
    due = c.due_at.astimezone(LONDON).strftime("%d %b %Y %H:%M") + " UK time" if c.due_at else "its due time"
    late = f", {span(at - c.due_at)} ago" if c.due_at and at - c.due_at >= timedelta(minutes=1) else ""
    return (f"SLA breach: the {c.clock} target for this {c.service} case passed at {due}{late}; it is "
            f"{PROMISE_TEXT.get(promise, promise)}. Please action it or update the case (Hub reference {c.hub_ref}).")


# -- sending -------------------------------------------------------------------------------------------------


def smtp_server(sla: SlaConfig, settings: Settings) -> SmtpServer | None:
    """The SMTP server from sla.yaml `smtp:`, host and port overridable by settings (HUBBRIDGE_SMTP_HOST/PORT)."""
    smtp = sla.file.smtp
    if smtp is None:
        return None
    return SmtpServer(host=settings.smtp_host or smtp.host, port=settings.smtp_port or smtp.port,
                      sender=smtp.from_, security=smtp.security, username_env=smtp.username_env,
                      password_env=smtp.password_env, timeout_seconds=smtp.timeout_seconds)


def webhook_url(target: WebhookTarget, environ: Mapping[str, str]) -> str:
    """The target's URL from its environment variable: https, or plain http only to this machine."""
    url = (environ.get(target.url_env) or "").strip()
    if not url:
        raise ConfigError(f"webhook URL is not set: {target.url_env}",
                          hint="set the environment variable to the incoming-webhook URL for the worker")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        raise ConfigError(f"{target.url_env} must be an https:// URL", hint="webhook URLs carry a secret")
    return url


def post_webhook(http: requests.Session, url: str, body: dict[str, Any]) -> None:
    """POST one message; the URL (a secret) never appears in an error, only its host."""
    host = urlsplit(url).hostname or "?"
    try:
        resp = http.post(url, json=body, timeout=WEBHOOK_TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        raise TransientError(f"webhook at {host}: {type(exc).__name__}", instance=host) from None
    if 200 <= resp.status_code < 300:
        return
    said = " ".join(resp.text.split())[:200]
    if resp.status_code in (408, 425, 429) or resp.status_code >= 500:
        raise TransientError(f"webhook at {host} answered {resp.status_code} {said}", instance=host,
                             retry_after=_retry_after(resp.headers.get("Retry-After")))
    raise PermanentError(f"webhook at {host} refused the message: {resp.status_code} {said}", instance=host)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def send_escalations(url: str, sla: SlaConfig, settings: Settings, *, chaser: Chaser | None = None,
                     now: Callable[[], datetime] | None = None, environ: Mapping[str, str] | None = None,
                     http: requests.Session | None = None, batch: int = BATCH,
                     budget_seconds: float = BUDGET_SECONDS) -> SendReport:
    """Send every due escalation (chases too, given a `chaser`), batch by batch, for up to `budget_seconds`."""
    clock = now or (lambda: datetime.now(UTC))
    env = os.environ if environ is None else environ
    server = smtp_server(sla, settings)
    mailer = MailSender(server, env) if server is not None else None
    own_http = http is None
    http = http or requests.Session()
    report = SendReport()
    began = time.monotonic()
    try:
        while time.monotonic() - began < budget_seconds:
            with session_scope(url) as s:
                claimed = claim(s, clock(), batch, chases=chaser is not None)
            if not claimed:
                break
            for c in claimed:
                _send_one(url, sla, settings, c, report, clock, env, mailer, http, chaser)
    finally:
        if own_http:
            http.close()
    if report.sent or report.chased or report.retried or report.dead:
        log.info("sla.escalations.sent", **report.as_dict())
    return report


def claim(s: Session, now: datetime, limit: int, *, chases: bool = True) -> list[Claimed]:
    """Claim up to `limit` due sends (the lease is the claim) and read what their messages need."""
    e = SlaEscalationSendRow
    free = or_(e.claimed_until.is_(None), e.claimed_until < now)
    due = select(e.id).where(e.state == SEND_PENDING, e.next_attempt_at <= now, free)
    if not chases:
        due = due.where(e.channel != CHASE_CHANNEL)
    due = due.order_by(e.next_attempt_at, e.id).limit(limit)
    if s.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)  # concurrent senders take different rows
    ids = list(s.scalars(due))
    if not ids:
        return []
    # re-checked in the UPDATE: on SQLite a second sender waits for this one's write lock, then matches nothing
    got = list(s.scalars(
        update(e).where(e.id.in_(ids), e.state == SEND_PENDING, free)
        .values(claimed_until=now + LEASE, attempts=e.attempts + 1).returning(e.id)
    ))
    if not got:
        return []
    rows = s.execute(
        select(e, CaseRow.stage, CaseRow.status, CaseRow.connector, CaseRow.priority)
        .join(CaseRow, CaseRow.hub_ref == e.hub_ref, isouter=True).where(e.id.in_(got)).order_by(e.id)
        .execution_options(populate_existing=True)
    ).all()
    return [Claimed(id=r.id, hub_ref=r.hub_ref, clock=r.clock, kind=r.kind, service=r.service,
                    authority=r.authority, escalation=r.escalation, target=r.target, channel=r.channel,
                    priority=r.priority, due_at=r.due_at, attempts=r.attempts, stage=stage, status=status,
                    connector=connector, case_priority=case_priority)
            for r, stage, status, connector, case_priority in rows]


def _send_one(url: str, sla: SlaConfig, settings: Settings, c: Claimed, report: SendReport,
              clock: Callable[[], datetime], env: Mapping[str, str], mailer: MailSender | None,
              http: requests.Session, chaser: Chaser | None) -> None:
    policy = sla.file.escalation_retry
    try:
        if c.channel == CHASE_CHANNEL:
            assert chaser is not None  # claim() leaves chases alone without one
            _chase(url, c, chaser, clock(), sla.promise_of(c.clock))
            report.chased += 1
            return
        esc = sla.escalations.get(c.escalation)
        target = esc.target(c.target) if esc is not None else None
        if esc is None or target is None:
            raise ConfigError(f"escalation {c.escalation!r} has no target {c.target!r} in sla.yaml any more",
                              hint="restore the target and replay the dead letter, or discard it")
        at = clock()
        notice = Notice(send_id=c.id, kind=c.kind, hub_ref=c.hub_ref, service=c.service, authority=c.authority,
                        clock=c.clock, due_at=c.due_at, at=at,
                        holder=holder_of(c.stage, c.status, c.connector, c.service),
                        escalated_to=esc.description, link=console_link(settings.console_base_url, c.hub_ref),
                        promise=sla.promise_of(c.clock))
        if isinstance(target, EmailTarget):
            if mailer is None:
                raise ConfigError("e-mail targets need the smtp: section of sla.yaml")
            mailer.send(notice.email(mailer.server.sender, list(target.to)))
        else:
            body = notice.slack() if target.format == "slack" else notice.teams()
            post_webhook(http, webhook_url(target, env), body)
    except ConfigError as exc:
        _dead(url, c, "escalation_unconfigured", str(exc), report)
    except PermanentError as exc:
        _dead(url, c, "escalation_rejected", str(exc), report)
    except Exception as exc:  # TransientError, and anything unforeseen: retried, then kept as a dead letter
        detail = str(exc) if isinstance(exc, HubbridgeError) else f"{type(exc).__name__}: {str(exc)[:300]}"
        if retry.exhausted(policy, c.attempts):
            _dead(url, c, "escalation_retries_exhausted", f"{c.attempts} attempts; last: {detail}", report)
        else:
            # at least base_seconds: full jitter can draw a wait so short that this same run would try again
            wait = max(retry.backoff(policy, c.attempts, getattr(exc, "retry_after", None)), policy.base_seconds)
            _retry(url, c, clock() + timedelta(seconds=wait), detail, report)
    else:
        _sent(url, c, clock())
        report.sent += 1


def _sent(url: str, c: Claimed, at: datetime) -> None:
    e = SlaEscalationSendRow
    with session_scope(url) as s:
        s.execute(update(e).where(e.id == c.id).values(state=SEND_SENT, sent_at=at, claimed_until=None,
                                                       last_error=None))
        record_event(s, c.hub_ref, "sla.escalation.sent", fired=c.kind, clock=c.clock, escalation=c.escalation,
                     target=c.target, channel=c.channel, attempts=c.attempts)


def _chase(url: str, c: Claimed, chaser: Chaser, at: datetime, promise: str = "customer") -> None:
    """The follow-up(s) and the row marked sent, in one transaction: a chase is added once."""
    from hubbridge.case import FollowUpKind

    e = SlaEscalationSendRow
    with session_scope(url) as s:
        note = chase_note(c, at, promise)
        added: list[str] = []
        if c.status in ENDED_STATUSES:  # resolved (or withdrawn) since the breach: nothing left to chase
            s.execute(update(e).where(e.id == c.id).values(state=SEND_SENT, sent_at=at, claimed_until=None))
            record_event(s, c.hub_ref, "sla.chase_skipped", clock=c.clock, status=c.status, send=c.id)
            return
        try:
            if chaser(s, c.hub_ref, FollowUpKind.NOTE.value, note, None, f"sla-breach-{c.clock}-{c.id}") is not None:
                added.append("note")
            raise_to = c.priority
            # only ever raised: a job already at (or above) the asked priority is left as it is
            lower = raise_to is not None and PRIORITY_RANK.get(c.case_priority or "normal", 1) < PRIORITY_RANK[raise_to]
            if lower and chaser(s, c.hub_ref, FollowUpKind.PRIORITY.value, note, raise_to,
                                f"sla-priority-{c.clock}-{c.id}") is not None:
                added.append(f"priority:{raise_to}")
        except FollowUpValidationError as exc:  # the case is gone, or the follow-up itself was refused
            raise PermanentError(f"the chase was refused: {exc}") from None
        s.execute(update(e).where(e.id == c.id).values(state=SEND_SENT, sent_at=at, claimed_until=None,
                                                       last_error=None))
        record_event(s, c.hub_ref, "sla.chased", clock=c.clock, added=added, send=c.id)


def _retry(url: str, c: Claimed, when: datetime, detail: str, report: SendReport) -> None:
    e = SlaEscalationSendRow
    with session_scope(url) as s:
        s.execute(update(e).where(e.id == c.id).values(next_attempt_at=when, claimed_until=None,
                                                       last_error=detail[:2000]))
    report.retried += 1
    log.warning("sla.escalation.retry", send=c.id, hub_ref=c.hub_ref, channel=c.channel, target=c.target,
                attempts=c.attempts, error=detail[:300])


def _dead(url: str, c: Claimed, reason: str, detail: str, report: SendReport) -> None:
    from hubbridge.workflows.deadletters import dead_letter

    e = SlaEscalationSendRow
    with session_scope(url) as s:
        dl = dead_letter(s, stage=ESCALATE_STAGE, reason=reason,
                         detail=f"{c.kind} of the {c.clock} clock to {c.escalation}/{c.target} ({c.channel}): {detail}",
                         payload={"send_id": c.id, "kind": c.kind, "clock": c.clock, "escalation": c.escalation,
                                  "target": c.target, "channel": c.channel, "attempts": c.attempts},
                         hub_ref=c.hub_ref, service=c.service, authority=c.authority)
        s.flush()
        s.execute(update(e).where(e.id == c.id).values(state=SEND_DEAD, claimed_until=None, last_error=detail[:2000],
                                                       dead_letter_id=dl.id))
    report.dead += 1
    report.reasons[reason] = report.reasons.get(reason, 0) + 1


# -- operators -----------------------------------------------------------------------------------------------


def replay_escalation(s: Session, dead: DeadLetterRow) -> str:
    """Make a dead-lettered escalation due again (fresh retries); for `deadletters._replay_in_store`."""
    import json

    try:
        send_id = int(json.loads(dead.payload)["send_id"])
    except (ValueError, KeyError, TypeError):
        from hubbridge.errors import DeadLetterReplayError

        raise DeadLetterReplayError(f"dead letter {dead.id} names no escalation send") from None
    e = SlaEscalationSendRow
    done = s.execute(update(e).where(e.id == send_id, e.state == SEND_DEAD).values(
        state=SEND_PENDING, attempts=0, next_attempt_at=datetime.now(UTC), claimed_until=None)).rowcount
    if not done:
        return f"dead letter {dead.id}: escalation send {send_id} is not dead-lettered; nothing done"
    return f"dead letter {dead.id}: escalation send {send_id} queued to be sent again"


def escalation_totals(s: Session) -> dict[str, int]:
    """Sends by state across the store: `delivered` (sent), `lost` (dead-lettered), `pending`; chases apart."""
    e = SlaEscalationSendRow
    out = {"delivered": 0, "lost": 0, "pending": 0, "chases": 0}
    names = {SEND_SENT: "delivered", SEND_DEAD: "lost", SEND_PENDING: "pending"}
    for state, channel, count in s.execute(select(e.state, e.channel, func.count()).group_by(e.state, e.channel)):
        if channel == CHASE_CHANNEL:
            if state == SEND_SENT:
                out["chases"] += count
            continue
        out[names.get(state, state)] = out.get(names.get(state, state), 0) + count
    return out
