"""Escalations reach people: each warning and breach once per e-mail / webhook target, retried, dead-lettered.

A real SMTP server (aiosmtpd) and a real HTTP server on loopback receive the messages; the store is SQLite and
PostgreSQL. The back-office chase goes through the real follow-ups path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from hubbridge.config.models import RetryPolicy
from hubbridge.config.settings import SHIPPED_CONFIG_DIR, Settings
from hubbridge.errors import ConfigError, ConfigErrors, PermanentError
from hubbridge.sla.engine import SlaEngine
from hubbridge.sla.escalate import (
    Notice,
    claim,
    escalation_totals,
    followup_chaser,
    replay_escalation,
    send_escalations,
)
from hubbridge.sla.policy import SlaConfig, SmtpConfig, load_sla_config
from hubbridge.sla.tables import SlaClockRow, SlaEscalationSendRow
from hubbridge.store import CaseRow, DeadLetterRow, EventRow, FollowUpRow
from hubbridge.workflows.mail import MailSender, SmtpServer
from tests.sla.conftest import add_case, utc

H = timedelta(hours=1)
START = utc(2026, 3, 2, 7, 0)  # a Monday; the depot calendar opens 07:00-15:00 (UTC = UK time in March)
REF = "WH-2026-000001"
CONSOLE = "https://hubbridge.worcestershire.gov.uk"
SECRET = "T0SECRET/B0SECRET/xoxo-not-to-be-logged"
PERSONAL = ("Ada Lovelace", "12 Acacia Avenue", "07700 900123")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """An aiosmtpd handler keeping what it accepted; replies can be scripted to fail."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.data_replies: list[str] = []
        self.refused: set[str] = set()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refused:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=email_policy)
        self.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 2.0.0 accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


class Hooks:
    """What the webhook server received, and the answers it is told to give."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.answers: list[tuple[int, str]] = []
        self.lock = threading.Lock()


@pytest.fixture
def hooks() -> Iterator[tuple[Hooks, int]]:
    state = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            assert self.headers.get("Content-Type") == "application/json"
            with state.lock:
                status, text = state.answers.pop(0) if state.answers else (200, "ok")
                if status < 300:
                    state.received.append((self.path, json.loads(body)))
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, server.server_address[1]
    server.shutdown()
    server.server_close()


def configured(base: SlaConfig, port: int, *, retry: RetryPolicy | None = None, refuse_format: str = "teams",
               **smtp: Any) -> SlaConfig:
    """The shipped SLA config with its relay on loopback (plain SMTP) and, optionally, other retries or format."""
    relay = SmtpConfig.model_validate({"host": "127.0.0.1", "port": port, "from": "hubbridge-sla@worcestershire.gov.uk",
                                       "security": "none", "timeout_seconds": 5, **smtp})
    escalations = dict(base.file.escalations)
    refuse = escalations["refuse-supervisors"]
    targets = [t.model_copy(update={"format": refuse_format}) if t.type == "webhook" else t for t in refuse.targets]
    escalations["refuse-supervisors"] = refuse.model_copy(update={"targets": targets})
    update: dict[str, Any] = {"smtp": relay, "escalations": escalations}
    if retry is not None:
        update["escalation_retry"] = retry
    return dataclasses.replace(base, file=base.file.model_copy(update=update))


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def env(port: int) -> dict[str, str]:
    return {f"HUBBRIDGE_SLA_WEBHOOK_{area}": f"http://127.0.0.1:{port}/{area.lower()}/{SECRET}"
            for area in ("REFUSE", "REVENUES", "HIGHWAYS", "PLANNING")}


SETTINGS = Settings(console_base_url=CONSOLE)


def new_case(s: Session, sla: SlaEngine, ref: str = REF, *, service: str = "refuse.missed-collection",
             authority: str = "bromsgrove", stage: str = "received", priority: str = "normal") -> None:
    add_case(s, ref, service=service, authority=authority, priority=priority)
    row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
    assert row is not None
    row.stage, row.connector = stage, "bartec-bromsgrove"
    row.payload = {"customer": {"name": PERSONAL[0], "phone": PERSONAL[2]}, "location": {"address": PERSONAL[1]}}
    sla.start(s, ref, service, authority, priority, START)
    s.commit()


def sends(s: Session) -> list[SlaEscalationSendRow]:
    s.expire_all()
    return list(s.scalars(select(SlaEscalationSendRow).order_by(SlaEscalationSendRow.id)))


def no_personal_data(*texts: str) -> None:
    for text in texts:
        for item in PERSONAL:
            assert item not in text


# -- e-mail and webhook, once each ---------------------------------------------------------------------------


def test_warning_and_breach_each_reach_email_and_webhook_once(
        sla: SlaEngine, store: Engine, smtp: tuple[Inbox, int], hooks: tuple[Hooks, int]) -> None:
    inbox, sport = smtp
    hook, hport = hooks
    config = configured(sla.config, sport)
    url = url_of(store)
    with Session(store) as s:
        new_case(s, sla)
        warn = sla.sweep(s, START + 3 * H)  # 75% of the 4 working hours to acknowledge
        s.commit()
        assert (warn.warnings, warn.sends, warn.chases) == (1, 2, 0)  # bromsgrove's inbox and the Teams channel
        sent = send_escalations(url, config, SETTINGS, now=lambda: START + 3 * H + timedelta(seconds=5),
                                environ=env(hport))
        assert (sent.sent, sent.retried, sent.dead) == (2, 0, 0)
        breach = sla.sweep(s, START + 4 * H + timedelta(minutes=7))
        s.commit()
        assert (breach.breaches, breach.sends) == (1, 2)
        sent = send_escalations(url, config, SETTINGS, now=lambda: START + 4 * H + timedelta(minutes=7),
                                environ=env(hport))
        assert sent.sent == 2
        # nothing fires again, and nothing is sent again
        assert sla.sweep(s, START + 4 * H + timedelta(minutes=30)).sends == 0
        s.commit()
        again = send_escalations(url, config, SETTINGS, now=lambda: START + 5 * H, environ=env(hport))
        assert (again.sent, again.retried, again.dead) == (0, 0, 0)
        assert [r.state for r in sends(s)] == ["sent"] * 4
        assert s.scalar(select(func.count()).select_from(EventRow).where(EventRow.kind == "sla.escalation.sent")) == 4
        assert escalation_totals(s) == {"delivered": 4, "lost": 0, "pending": 0, "chases": 0}

    assert [to for to, _ in inbox.messages] == [["waste.supervisors@bromsgrove.gov.uk"]] * 2
    (_, warning), (_, breached) = inbox.messages
    assert warning["Subject"].startswith(f"[WARNING] SLA warning: {REF} acknowledge clock due in 59 min")
    assert breached["Subject"] == (f"[BREACH] SLA breach: {REF} acknowledge clock 7 min late "
                                   "(refuse.missed-collection, bromsgrove)")
    assert breached["From"] == "hubbridge-sla@worcestershire.gov.uk"
    assert breached["Auto-Submitted"] == "auto-generated"
    assert breached["Message-ID"].endswith("@worcestershire.gov.uk>")
    body = breached.get_content()
    assert f"Case: {REF}" in body and "Clock: acknowledge" in body and "How late: 7 min late" in body
    assert "Due: Mon 02 Mar 2026 11:00 UK time" in body
    assert "Held by: hubbridge: not yet delivered to bartec-bromsgrove (refuse & recycling)" in body
    assert f"{CONSOLE}/console/cases?ref={REF}" in body
    no_personal_data(body, warning.get_content())

    assert [path.split("/")[1] for path, _ in hook.received] == ["refuse", "refuse"]
    card = hook.received[1][1]
    assert card["type"] == "message"
    [attachment] = card["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.4"
    facts = {f["title"]: f["value"] for f in content["body"][1]["facts"]}
    assert facts["Case"] == REF and facts["Clock"] == "acknowledge" and facts["How late"] == "7 min late"
    assert facts["Held by"].startswith("hubbridge: not yet delivered")
    assert content["actions"] == [{"type": "Action.OpenUrl", "title": "Open in the console",
                                   "url": f"{CONSOLE}/console/cases?ref={REF}"}]
    no_personal_data(json.dumps(hook.received))


def test_slack_format_and_the_councils_own_inbox(sla: SlaEngine, sqlite_store: Engine, smtp: tuple[Inbox, int],
                                                 hooks: tuple[Hooks, int]) -> None:
    inbox, sport = smtp
    hook, hport = hooks
    config = configured(sla.config, sport, refuse_format="slack")
    engine = SlaEngine(config)
    with Session(sqlite_store) as s:
        new_case(s, engine, "WH-2026-000002", authority="redditch", stage="delivered")
        assert engine.sweep(s, START + 4 * H).breaches == 1
        s.commit()
    report = send_escalations(url_of(sqlite_store), config, SETTINGS, now=lambda: START + 4 * H, environ=env(hport))
    assert report.sent == 2
    assert [to for to, _ in inbox.messages] == [["waste.supervisors@redditchbc.gov.uk"]]
    [(_, body)] = hook.received
    assert set(body) == {"text"}
    assert body["text"].startswith("*SLA breach: WH-2026-000002 acknowledge clock due now*")
    assert "*Held by:* refuse &amp; recycling back office (bartec-bromsgrove)" in body["text"]
    assert body["text"].endswith(f"<{CONSOLE}/console/cases?ref=WH-2026-000002|Open WH-2026-000002 in the console>")


# -- retries and dead letters --------------------------------------------------------------------------------


def test_a_deferring_relay_and_a_failing_webhook_are_retried_until_they_take_it(
        sla: SlaEngine, store: Engine, smtp: tuple[Inbox, int], hooks: tuple[Hooks, int]) -> None:
    inbox, sport = smtp
    hook, hport = hooks
    inbox.data_replies = ["451 4.3.0 try again later"]
    hook.answers = [(503, "busy"), (429, "slow down")]
    config = configured(sla.config, sport)
    url = url_of(store)
    at = START + 4 * H
    with Session(store) as s:
        new_case(s, sla)
        sla.sweep(s, at)
        s.commit()
        first = send_escalations(url, config, SETTINGS, now=lambda: at, environ=env(hport))
        assert (first.sent, first.retried) == (0, 2)
        rows = sends(s)
        assert [(r.state, r.attempts) for r in rows] == [("pending", 1), ("pending", 1)]
        assert all(r.next_attempt_at > at and r.claimed_until is None for r in rows)
        assert "451" in (rows[0].last_error or "")
        assert SECRET not in (rows[1].last_error or "") and "503" in (rows[1].last_error or "")
        # not yet due: nothing is tried
        assert send_escalations(url, config, SETTINGS, now=lambda: at, environ=env(hport)).retried == 0
        second = send_escalations(url, config, SETTINGS, now=lambda: at + 2 * H, environ=env(hport))
        assert (second.sent, second.retried) == (1, 1)  # the relay took it; the webhook said 429
        third = send_escalations(url, config, SETTINGS, now=lambda: at + 4 * H, environ=env(hport))
        assert third.sent == 1
        assert [(r.state, r.attempts) for r in sends(s)] == [("sent", 2), ("sent", 3)]
    assert len(inbox.messages) == 1 and len(hook.received) == 1


def test_retries_run_out_into_a_dead_letter_that_can_be_replayed(sla: SlaEngine, store: Engine,
                                                                 smtp: tuple[Inbox, int]) -> None:
    _, sport = smtp
    closed = free_port()  # nothing listens: every post is refused
    config = configured(sla.config, sport, retry=RetryPolicy(max_attempts=3, base_seconds=1, max_seconds=2))
    url = url_of(store)
    at = START + 4 * H
    with Session(store) as s:
        new_case(s, sla)
        sla.sweep(s, at)
        s.commit()
        for i in range(3):
            report = send_escalations(url, config, SETTINGS, now=lambda i=i: at + i * H, environ=env(closed))
        assert (report.dead, report.reasons) == (1, {"escalation_retries_exhausted": 1})
        [mail, hook] = sends(s)
        assert mail.state == "sent" and (hook.state, hook.attempts) == ("dead", 3)
        dead = s.get(DeadLetterRow, hook.dead_letter_id)
        assert dead is not None and dead.stage == "escalate" and dead.reason == "escalation_retries_exhausted"
        assert dead.hub_ref == REF and "refuse-supervisors/hub-channel (webhook)" in dead.detail
        assert "ConnectionError" in dead.detail and SECRET not in dead.detail + dead.payload
        assert json.loads(dead.payload)["send_id"] == hook.id
        assert escalation_totals(s)["lost"] == 1

        assert "queued to be sent again" in replay_escalation(s, dead)
        s.commit()
        [_, hook] = sends(s)
        assert (hook.state, hook.attempts) == ("pending", 0)
        assert "not dead-lettered" in replay_escalation(s, dead)


def test_refused_recipients_unset_urls_and_removed_targets_dead_letter_at_once(
        sla: SlaEngine, sqlite_store: Engine, smtp: tuple[Inbox, int], hooks: tuple[Hooks, int]) -> None:
    inbox, sport = smtp
    hook, hport = hooks
    inbox.refused = {"waste.supervisors@bromsgrove.gov.uk"}
    config = configured(sla.config, sport)
    url = url_of(sqlite_store)
    with Session(sqlite_store) as s:
        new_case(s, sla)
        new_case(s, sla, "WH-2026-000003", authority="wychavon")
        sla.sweep(s, START + 4 * H)
        s.commit()
        without_refuse = {k: v for k, v in env(hport).items() if not k.endswith("REFUSE")}
        report = send_escalations(url, config, SETTINGS, now=lambda: START + 4 * H, environ=without_refuse)
        assert report.dead == 3 and report.sent == 1  # wychavon's inbox took its message
        assert report.reasons == {"escalation_rejected": 1, "escalation_unconfigured": 2}
        dead = list(s.scalars(select(DeadLetterRow).order_by(DeadLetterRow.id)))
        assert [d.reason for d in dead] == ["escalation_rejected", "escalation_unconfigured", "escalation_unconfigured"]
        assert "550" in dead[0].detail and "bromsgrove (email)" in dead[0].detail
        assert all("HUBBRIDGE_SLA_WEBHOOK_REFUSE" in d.detail for d in dead[1:])
        # a target taken out of sla.yaml after its escalation was queued
        sla.sweep(s, START + 50 * H + timedelta(minutes=1))  # Wednesday 09:01: the resolve clocks warn
        s.commit()
        esc = config.escalations["refuse-supervisors"]
        fewer = dataclasses.replace(config, file=config.file.model_copy(update={"escalations": {
            **config.escalations, "refuse-supervisors": esc.model_copy(update={"targets": esc.targets[:-1]})}}))
        report = send_escalations(url, fewer, SETTINGS, now=lambda: START + 51 * H, environ=env(hport))
        assert report.reasons == {"escalation_unconfigured": 2, "escalation_rejected": 1} and report.sent == 1
        assert "has no target 'hub-channel'" in (s.scalars(
            select(DeadLetterRow.detail).order_by(DeadLetterRow.id.desc())).first() or "")
        # a webhook that answers 404 (a deleted channel) will not take it later either
        hook.answers = [(404, "no_service")]
        sla.sweep(s, START + 56 * H)  # Wednesday 15:00: the resolve clocks breach
        s.commit()
        report = send_escalations(url, config, SETTINGS, now=lambda: START + 56 * H, environ=env(hport))
        assert report.reasons == {"escalation_rejected": 2} and report.sent == 2
        assert "refused the message: 404 no_service" in (s.scalars(
            select(DeadLetterRow.detail).where(DeadLetterRow.detail.contains("404"))).first() or "")
    assert len(hook.received) == 1
    assert len(inbox.messages) == 3 and {to[0] for to, _ in inbox.messages} == {"waste.supervisors@wychavon.gov.uk"}


def test_a_claimed_send_is_not_claimed_twice(sla: SlaEngine, store: Engine) -> None:
    with Session(store) as s:
        new_case(s, sla)
        sla.sweep(s, START + 4 * H)
        s.commit()
        first = claim(s, START + 4 * H, 10)
        s.commit()
        assert len(first) == 2
        assert claim(s, START + 4 * H + timedelta(minutes=1), 10) == []
        s.commit()
        # a sender that died: its lease runs out and another takes the rows (an attempt each)
        later = claim(s, START + 5 * H, 10)
        s.commit()
        assert [c.attempts for c in later] == [2, 2]


# -- chasing the back office ---------------------------------------------------------------------------------


def test_a_breach_on_a_delivered_case_chases_the_back_office_once(sla: SlaEngine, store: Engine,
                                                                  smtp: tuple[Inbox, int], hooks: tuple[Hooks, int],
                                                                  tmp_path: Path) -> None:
    from hubbridge.workflows.runtime import Runtime

    inbox, sport = smtp
    _, hport = hooks
    config = configured(sla.config, sport)
    url = url_of(store)
    rt = Runtime(Settings(database_url=url, data_dir=tmp_path / "var"))
    ref, waiting, done = "WH-2026-000010", "WH-2026-000011", "WH-2026-000012"
    with Session(store) as s:
        new_case(s, sla, ref, service="highways.pothole", authority="worcestershire", stage="delivered")
        new_case(s, sla, waiting, service="highways.pothole", authority="worcestershire")  # not delivered yet
        new_case(s, sla, done, service="highways.pothole", authority="worcestershire", stage="delivered")
        result = sla.sweep(s, START + 2 * 24 * H)  # two days on: acknowledge (1 working day) has breached
        s.commit()
        assert (result.breaches, result.chases) == (3, 2)
        resolved = s.scalar(select(CaseRow).where(CaseRow.hub_ref == done))
        assert resolved is not None
        resolved.status = "resolved"  # fixed between the breach and the chase: nothing to chase
        s.commit()
        report = send_escalations(url, config, SETTINGS, chaser=followup_chaser(rt), now=lambda: START + 48 * H,
                                  environ=env(hport))
        assert (report.chased, report.sent, report.dead) == (2, 6, 0)
        assert s.scalar(select(func.count()).select_from(FollowUpRow).where(FollowUpRow.hub_ref == done)) == 0
        s.expire_all()
        made = list(s.scalars(select(FollowUpRow).where(FollowUpRow.hub_ref == ref).order_by(FollowUpRow.sequence)))
        assert [(f.kind, f.channel) for f in made] == [("note", "sla"), ("priority", "sla")]
        assert made[0].client_id is not None and made[0].client_id.startswith("sla-breach-acknowledge-")
        note = made[0].payload["note"]
        assert note.startswith("SLA breach: the acknowledge target for this highways.pothole case passed at")
        assert ref in note
        no_personal_data(json.dumps([f.payload for f in made]))
        assert made[1].payload["priority"] == "high"
        # the job is asked for a higher priority; the promise to the customer (the case's own priority) stays
        assert s.scalar(select(CaseRow.priority).where(CaseRow.hub_ref == ref)) == "normal"
        assert s.scalar(select(func.count()).select_from(FollowUpRow).where(FollowUpRow.hub_ref == waiting)) == 0

        # sent once: another run adds nothing
        again = send_escalations(url, config, SETTINGS, chaser=followup_chaser(rt), now=lambda: START + 49 * H,
                                 environ=env(hport))
        assert (again.chased, again.sent) == (0, 0)
        # the chase's priority is the back office's business: the case's clocks keep theirs; nothing chases twice
        assert set(s.scalars(select(SlaClockRow.priority).where(SlaClockRow.hub_ref == ref))) == {"normal"}
        assert sla.sweep(s, START + 49 * H).chases == 0
        s.commit()
        assert escalation_totals(s)["chases"] == 2
    rt.close()
    assert {to[0] for to, _ in inbox.messages} == {"highways.dutyofficer@worcestershire.gov.uk"}


def test_chase_follows_the_policy_and_waits_without_a_chaser(sqlite_store: Engine, tmp_path: Path) -> None:
    # a council whose planning managers want only late acknowledgements chased (the shipped config chases all)
    narrowed = ("may narrow this with `clocks:`)\n    chase: {}",
                "may narrow this with `clocks:`)\n    chase: {clocks: [acknowledge, backoffice-acknowledge]}")
    sla = SlaEngine(load_sla_config(sla_yaml(tmp_path, narrowed)))
    with Session(sqlite_store) as s:
        new_case(s, sla, "WH-2026-000020", service="planning.breach-report", authority="wychavon", stage="delivered")
        first = sla.sweep(s, START + 6 * 24 * H)  # acknowledge (5 working days) breached
        s.commit()
        assert (first.breaches, first.chases) == (1, 1)
        later = sla.sweep(s, START + 60 * 24 * H)  # resolve breached
        s.commit()
        assert (later.breaches, later.chases) == (1, 0)
        # without a chaser the sender leaves chases for one that can add follow-ups
        assert [c.channel for c in claim(s, START + 61 * 24 * H, 50, chases=False)] == ["email", "webhook"] * 2
        s.commit()
        assert [c.channel for c in claim(s, START + 61 * 24 * H, 50)] == ["chase"]


# -- config and the SMTP sender ------------------------------------------------------------------------------


def sla_yaml(tmp_path: Path, replace: tuple[str, str]) -> Path:
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    assert replace[0] in text
    (tmp_path / "sla.yaml").write_text(text.replace(*replace, 1))
    return tmp_path


@pytest.mark.parametrize(("old", "new", "message"), [
    ("security: starttls ", "security: tls ", "security"),
    ("url_env: HUBBRIDGE_SLA_WEBHOOK_REFUSE", "url_env: https://hooks.example/secret", "url_env"),
    ("{name: redditch, type: email", "{name: bromsgrove, type: email", "target names must differ"),
    ("to: [waste.supervisors@redditchbc.gov.uk]", "to: [not-an-address]", "to"),
    ("format: teams, url_env: HUBBRIDGE_SLA_WEBHOOK_REFUSE", "format: discord, url_env: X", "format"),
    ("authorities: [wyre-forest], to: [waste", "authorities: [wyre-forrest], to: [waste", "did you mean 'wyre-forest'"),
])
def test_config_mistakes_are_reported(tmp_path: Path, old: str, new: str, message: str) -> None:
    shutil.copy(SHIPPED_CONFIG_DIR / "authorities.yaml", tmp_path / "authorities.yaml")
    with pytest.raises((ConfigError, ConfigErrors)) as err:
        load_sla_config(sla_yaml(tmp_path, (old, new)))
    assert message in str(err.value)


def test_email_targets_need_an_smtp_section(tmp_path: Path) -> None:
    text = (SHIPPED_CONFIG_DIR / "sla.yaml").read_text()
    start = text.index("smtp:\n")
    end = text.index("\n\n", start)
    (tmp_path / "sla.yaml").write_text(text[:start] + text[end + 2:])
    with pytest.raises(ConfigErrors) as err:
        load_sla_config(tmp_path)
    assert "an e-mail target needs the smtp: section" in str(err.value)
    assert "sla.yaml:" in str(err.value)  # with its file position


def test_the_shipped_targets_and_chases() -> None:
    config = load_sla_config(SHIPPED_CONFIG_DIR)
    assert config.file.smtp is not None and config.file.smtp.security == "starttls"
    for name, esc in config.escalations.items():
        assert any(t.type == "email" for t in esc.targets), name
        assert [t.type for t in esc.targets].count("webhook") == 1, name
        for t in esc.targets:
            if t.type == "email":
                assert all(a.endswith(".gov.uk") for a in t.to)
    assert config.chase("highways.pothole", "highways-duty-officer").raise_priority == "high"  # type: ignore[union-attr]
    # every breach is chased, planning's included (done-when of issue 24: one chase per breach)
    assert config.chase("planning.breach-report", "planning-managers").clocks is None  # type: ignore[union-attr]


def test_smtp_login_and_credentials_only_from_the_environment() -> None:
    inbox = Inbox()
    port = free_port()

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"hubbridge", b"s3cret")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=check, auth_require_tls=False,
                            auth_exclude_mechanism=["LOGIN"])  # smtplib's LOGIN after a failed PLAIN hangs aiosmtpd
    controller.start()
    try:
        server = SmtpServer("127.0.0.1", port, "hubbridge-sla@worcestershire.gov.uk", security="none",
                            username_env="SMTP_USER", password_env="SMTP_PASS")
        notice = Notice(send_id=7, kind="breach", hub_ref=REF, service="refuse.missed-collection",
                        authority="bromsgrove", clock="resolve", due_at=START, at=START + 26 * H,
                        holder="refuse & recycling back office (bartec-bromsgrove)", escalated_to="supervisors",
                        link=f"{CONSOLE}/console/cases?ref={REF}")
        message = notice.email(server.sender, ["waste.supervisors@bromsgrove.gov.uk"])
        assert "How late: 1 d 2 h late" in message.get_content()
        MailSender(server, {"SMTP_USER": "hubbridge", "SMTP_PASS": "s3cret"}).send(message)
        assert len(inbox.messages) == 1
        with pytest.raises(PermanentError, match="535"):
            MailSender(server, {"SMTP_USER": "hubbridge", "SMTP_PASS": "wrong"}).send(message)
        with pytest.raises(ConfigError, match="SMTP_USER and SMTP_PASS"):
            MailSender(server, {}).send(message)
        # a password never crosses the network in clear text
        remote = dataclasses.replace(server, host="smtp.worcestershire.gov.uk")
        with pytest.raises(ConfigError, match="clear text"):
            MailSender(remote, {"SMTP_USER": "hubbridge", "SMTP_PASS": "s3cret"}).send(message)
        # asking for STARTTLS of a server without it is a config fault, not something to retry
        plain = dataclasses.replace(server, security="starttls", username_env=None, password_env=None)
        with pytest.raises(PermanentError, match="STARTTLS"):
            MailSender(plain, {}).send(message)
    finally:
        controller.stop()


# -- the migration -------------------------------------------------------------------------------------------


def _migrated_matches_the_table(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from hubbridge.store import Base, engine_for, migrate

    migrate(url)
    engine = engine_for(url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    ours = [d for d in diffs if "sla_escalation_sends" in repr(d)]
    assert ours == []
    engine.dispose()


def test_migration_0009_makes_the_table_on_sqlite(tmp_path: Path) -> None:
    _migrated_matches_the_table(f"sqlite:///{tmp_path / 'migrated.sqlite'}")


@pytest.mark.services
def test_migration_0009_makes_the_table_on_postgresql() -> None:
    import psycopg

    from tests.sla.conftest import PG_ADMIN, _pg_available

    if not _pg_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = "hubbridge_escalation_migration_test"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        _migrated_matches_the_table(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the beat task -------------------------------------------------------------------------------------------


def test_the_beat_task_sends_with_the_process_settings(sla: SlaEngine, sqlite_store: Engine, tmp_path: Path,
                                                       smtp: tuple[Inbox, int], hooks: tuple[Hooks, int],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from hubbridge.config.settings import get_settings
    from hubbridge.workflows.app import make_app
    from hubbridge.workflows.runtime import reset_runtime
    from hubbridge.workflows.tasks import send_escalations as task

    inbox, sport = smtp
    hook, hport = hooks
    cfg = tmp_path / "config"
    shutil.copytree(SHIPPED_CONFIG_DIR, cfg, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    (cfg / "sla.yaml").write_text((cfg / "sla.yaml").read_text().replace("security: starttls ", "security: none ", 1))
    for key, value in {**env(hport), "HUBBRIDGE_CONFIG_DIR": str(cfg), "HUBBRIDGE_DATABASE_URL": url_of(sqlite_store),
                       "HUBBRIDGE_SMTP_HOST": "127.0.0.1", "HUBBRIDGE_SMTP_PORT": str(sport),
                       "HUBBRIDGE_CONSOLE_BASE_URL": CONSOLE}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    reset_runtime()
    assert make_app(get_settings()).conf.beat_schedule["send-escalations"]["task"] == task.name
    with Session(sqlite_store) as s:
        new_case(s, sla)
        sla.sweep(s, START + 4 * H)
        s.commit()
    try:
        assert task()["sent"] == 2
    finally:
        reset_runtime()
    [(to, msg)] = inbox.messages
    assert to == ["waste.supervisors@bromsgrove.gov.uk"] and f"{CONSOLE}/console/cases?ref={REF}" in msg.get_content()
    assert len(hook.received) == 1
