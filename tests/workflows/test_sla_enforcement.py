"""SLAs that act, on RabbitMQ + PostgreSQL: each breach reaches its inbox and channel once, and chases the job.

Back-office jobs that nobody picks up (the simulator's bad day) breach short demo policies; what counts is what
the receiving servers got (an SMTP server and a webhook receiver on loopback) and what the back office's own
records hold, never what hubbridge says it sent.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hubbridge.case import LONDON
from hubbridge.sla.escalate import escalation_totals
from hubbridge.sla.tables import SlaClockRow
from hubbridge.store import CaseRow, FollowUpRow, LinkRow, session_scope
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.demo import short_policies, wait_enforced
from hubbridge.workflows.simulated import simulator_for

from .stack import Stack

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

ACKNOWLEDGE_S, RESOLVE_S = 6, 12


class EnforcingStack(Stack):
    """The stack with every fourth Bartec job left untouched and policies of seconds, 24/7."""

    def make_simulator(self, plugin: str) -> Any:
        sim = simulator_for(plugin, 0)
        sim.store.stall_every = 4
        return sim

    def adjust_config(self, cfg: Path) -> None:
        short_policies(cfg, ACKNOWLEDGE_S, RESOLVE_S)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=120, check=True)


@pytest.fixture
def stack(tmp_path: Path, pg_url: str) -> Iterator[EnforcingStack]:
    vhost = f"hubbridge-sla-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    s = EnforcingStack(tmp_path, pg_url, f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
    try:
        s.start(tick_seconds=1.0)
        yield s
    finally:
        s.stop()
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=120, check=False)


def test_every_breach_reaches_its_people_once_and_chases_the_back_office(stack: EnforcingStack) -> None:
    cases = list(generate_cases(24, services=("refuse.missed-collection",), seed=77, start_serial=77001))
    assert stack.submit(cases)["accepted"] == len(cases)
    assert stack.wait_settled(len(cases), 120) == len(cases)
    wait_enforced(stack, RESOLVE_S + 90)
    with session_scope(stack.database_url) as s:
        breached = s.execute(select(SlaClockRow.hub_ref, SlaClockRow.clock).where(SlaClockRow.breached.is_(True))
                             ).all()
        warned = s.execute(select(SlaClockRow.hub_ref, SlaClockRow.clock).where(SlaClockRow.warned.is_(True))).all()
        sends = escalation_totals(s)
        stages = dict(s.execute(select(CaseRow.hub_ref, CaseRow.stage)).all())
        links = dict(s.execute(select(LinkRow.hub_ref, LinkRow.backoffice_ref)).all())
        chases = s.execute(select(FollowUpRow.hub_ref, FollowUpRow.state).where(FollowUpRow.channel == "sla")).all()
    assert breached, "no clock breached: nothing was enforced"
    assert sends["pending"] == 0 and sends["lost"] == 0, sends  # escalations_lost 0, none dead-lettered

    # at the receiving servers: one e-mail and one webhook message per warning and per breach
    assert stack.mail is not None and stack.webhooks is not None
    mails = Counter(_fired(m["subject"]) for m in stack.mail.received() if "SLA " in m["subject"])
    hooks = Counter(_fired(h["body"]["summary"]) for h in stack.webhooks.received())
    for ref, clock in breached:
        assert mails[("breach", ref, clock)] == 1, (ref, clock, mails)
        assert hooks[("breach", ref, clock)] == 1, (ref, clock, hooks)
    for ref, clock in warned:
        assert mails[("warning", ref, clock)] == 1 and hooks[("warning", ref, clock)] == 1, (ref, clock)
    assert sum(mails.values()) == sum(hooks.values()) == len(breached) + len(warned)

    # in the back office's own records: one chase note per breach of a case it holds
    bartec = stack.sims["bartec"]
    for ref, clock in breached:
        assert stages[ref] in ("delivered", "acknowledged")
        with bartec.store._lock:
            job = next(j for j in bartec.store.jobs.values() if j.ref == links[ref])
        notes = [r for r in bartec.followups_for(job.ref, job.tenant)
                 if r["kind"] == "note" and f"the {clock} target" in r["text"]]
        assert len(notes) == 1, (ref, clock, notes)
    assert all(state == "delivered" for _, state in chases) and len(chases) == len(breached)

    # the report shows both promises: the customer's SLA and the service area's own level, who holds the delay
    today = datetime.now(UTC).astimezone(LONDON).date().isoformat()
    done = subprocess.run([sys.executable, "-m", "hubbridge.workflows.cli", "sla", "report", "--from", today,
                           "--to", today, "--format", "json"], env=stack.env, capture_output=True, text=True,
                          timeout=120, check=True)
    report = json.loads(done.stdout)
    assert {row["promise"] for row in report["rows"]} == {"customer", "service_area"}
    groups = report["promises"]  # one per (service, authority)
    assert sum(g["customer"]["breached"] for g in groups) > 0 and sum(g["service_area"]["breached"] for g in groups)
    # the untouched jobs: the back office holds the delay, and the report says so
    assert sum(g["breaches_held_by"]["service_area"] for g in groups) > 0


_TITLE = re.compile(r"SLA (breach|warning): (\S+) (\S+) clock")


def _fired(text: str) -> tuple[str, str, str]:
    """(kind, case ref, clock) from a message's title."""
    found = _TITLE.search(text)
    assert found, text
    kind, ref, clock = found.groups()
    return kind, ref, clock
