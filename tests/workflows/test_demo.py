"""`hubbridge demo --json`, the README's first command, as a person runs it: every service, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from hubbridge.config.loader import load_config
from hubbridge.config.settings import Settings
from hubbridge.store import CaseRow, session_scope

SHIPPED_CONFIG = Path(__file__).parents[2] / "config"


@pytest.mark.timeout(420)
def test_demo_runs_every_service_area_and_loses_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "hubbridge.workflows.cli", "demo", "--cases", "60", "--json",
         "--data-dir", str(tmp_path / "demo"), "--timeout", "300"],
        capture_output=True, text=True, env=env, timeout=400, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is the summary alone; logs go to stderr
    assert summary["submitted"] == 60 and summary["lost"] == 0
    assert summary["delivered"] + summary["dead_lettered"] == 60
    assert summary["hub_has_ref"] == summary["delivered"]
    areas = {service.split(".")[0] for service in summary["by_service"]}
    assert areas == {"refuse", "revenues", "highways", "planning"}
    assert all(s["lost"] == 0 for s in summary["by_service"].values())
    routed = {service for (_, service) in load_config(SHIPPED_CONFIG, Settings()).routes}
    assert set(summary["by_service"]) <= routed
    # about a fifth of the cases were followed up; each reached its back office once, or a dead letter
    fu = summary["followups"]
    assert fu["submitted"] >= 5 and fu["lost"] == 0 and fu["duplicated"] == 0
    assert fu["delivered"] + fu["dead_lettered"] == fu["submitted"]
    assert sum(fu["dead_letter_reasons"].values()) == fu["dead_lettered"]  # each with its reason
    # the back offices' own records hold one entry per follow-up sent to them; the inboxes one mail per e-mailed
    assert fu["backoffice_records"] == fu["via"].get("operation", 0) + fu["via"].get("note", 0)
    assert fu["emails_received"] == fu["via"].get("email", 0)
    # some back-office jobs are left untouched: their clocks breach, people are told, the back office chased
    sla = summary["sla"]
    assert sla["breaches"] > 0 and sla["escalations_lost"] == 0 and sla["escalations_dead_lettered"] == 0
    assert sla["emails_received"] == sla["webhooks_received"] == sla["warnings"] + sla["breaches"]
    assert sla["chases_delivered"] == sla["chases"] > 0
    assert sla["breaches_by_promise"]["customer"] > 0 and sla["breaches_by_promise"]["service_area"] > 0


def _processes_of(data: Path) -> list[int]:
    """Live processes whose environment points at this demo's data directory."""
    mark = f"HUBBRIDGE_DATA_DIR={data}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(300)
def test_demo_serve_leaves_a_console_to_log_in_to_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    import contextlib
    import queue
    import re
    import signal
    import threading

    import requests

    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubbridge.workflows.cli", "demo", "--cases", "8", "--json", "--serve",
         "--data-dir", str(data), "--timeout", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    try:
        invitation = None
        seen: list[str] = []
        while invitation is None:
            line = lines.get(timeout=240)
            seen.append(line)
            invitation = re.search(r"console: (http://127\.0\.0\.1:\d+/console)\s+login: (\S+) / (\S+)", line)
        console_url, name, password = invitation.groups()
        assert _processes_of(data), "the demo's processes should still be serving"
        summary = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert summary["submitted"] == 8 and summary["lost"] == 0

        with requests.Session() as http:
            form = http.get(f"{console_url}/login", timeout=10)
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf, form.text[:500]
            resp = http.post(f"{console_url}/login", data={"name": name, "password": password,
                                                          "csrf": csrf.group(1), "next": "/console/cases"},
                             timeout=10, allow_redirects=False)
            assert resp.status_code == 303, resp.text[:500]
            with session_scope(f"sqlite:///{data / 'hubbridge.sqlite'}") as s:
                ref = s.scalars(select(CaseRow.hub_ref).where(CaseRow.stage == "acknowledged")).first()
            assert ref is not None
            page = http.get(f"{console_url}/cases", params={"ref": ref}, timeout=10)
            assert page.status_code == 200 and ref in page.text and "acknowledged" in page.text, page.text[:1000]

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0, "".join(seen)
        with pytest.raises(requests.ConnectionError):
            requests.get(console_url, timeout=5)
        assert _processes_of(data) == []
    finally:
        if proc.poll() is None:
            # a failed assertion above still lets the demo stop what it started, as Ctrl-C would
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for pid in _processes_of(data):  # anything the demo could not stop must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
