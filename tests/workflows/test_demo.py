"""`hubbridge demo --json`, the README's first command, as a person runs it: every service, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubbridge.config.loader import load_config
from hubbridge.config.settings import Settings

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
