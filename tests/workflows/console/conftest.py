"""Console fixtures: a console.yaml with one user of each role, and cases taken in from the simulators."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.console.passwords import hash_password
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.outbox import push_hub
from hubbridge.workflows.runtime import Runtime

SECRET = "console-test-secret-" + "x" * 24
PASSWORDS = {"olive": "operator-password-1", "ada": "admin-password-12", "rufus": "refuse-password-1"}
_serials = itertools.count(500_001, 1000)


def write_console_yaml(config_dir: Path, *, extra: str = "", tracking_attempts: int = 10) -> dict[str, str]:
    """Users olive (operator, hash in a variable), ada (admin, hash inline) and rufus (missed bins, every council)."""
    hashes = {name: hash_password(pw, log2_n=12) for name, pw in PASSWORDS.items()}
    (config_dir / "console.yaml").write_text(
        f"""session_secret_env: TEST_CONSOLE_SECRET
cookie_secure: auto
same_site: lax
login_attempts: 5
tracking: {{attempts: {tracking_attempts}, window_seconds: 600}}
users:
  - {{name: olive, role: operator, password_hash_env: TEST_OLIVE_HASH}}
  - {{name: ada, role: admin, password_hash: "{hashes['ada']}"}}
  - {{name: rufus, role: service, services: [refuse.missed-collection], authorities: ['*'],
      password_hash_env: TEST_RUFUS_HASH}}
{extra}"""
    )
    return hashes


def cases_of(service: str, n: int = 1) -> list[dict[str, Any]]:
    """Generated Hub cases of one service with refs no other test in this process uses."""
    return list(generate_cases(n, services=[service], start_serial=next(_serials), seed=next(_serials)))


def take_in(rt: Runtime, case: dict[str, Any], *, deliver: bool = True) -> str:
    """Accept a case and, if asked, deliver it to the back-office simulator and tell the Hub."""
    ref = accept_case(rt, json.dumps(case)).hub_ref
    if deliver:
        assert deliver_case(rt, ref).kind == "done"
        assert push_hub(rt, ref).kind == "done"
    return ref


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CONSOLE_SECRET", SECRET)
