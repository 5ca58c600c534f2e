"""In-process pipeline fixtures: simulators on loopback, a config pointing at them, a Runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubbridge.config.loader import load_config
from hubbridge.config.settings import Settings, get_settings
from hubbridge.workflows import pipeline
from hubbridge.workflows.demo import DEMO_SECRETS, _credential_names, demo_environment, simulator_for

from .stack import write_config


class Rig:
    """Everything a pipeline test drives: the runtime, the Hub and the back-office simulator."""

    def __init__(self, rt: pipeline.Runtime, hub: Any, backoffice: Any) -> None:
        self.rt, self.hub, self.backoffice = rt, hub, backoffice

    @property
    def url(self) -> str:
        return self.rt.url


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Any, Any]]:
    from hubbridge.connectors.hub import HubSimulator

    hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    bartec = simulator_for("bartec", 0).start()
    yield hub, bartec
    hub.stop()
    bartec.stop()


@pytest.fixture
def rig(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Iterator[Rig]:
    hub, bartec = sims
    hub.reset()
    bartec.faults.clear()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    env = demo_environment(_credential_names(load_config(cfg, Settings(config_dir=cfg))))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HUBBRIDGE_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("HUBBRIDGE_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    rt = pipeline.Runtime()
    yield Rig(rt, hub, bartec)
    rt.close()
    assert os.environ.get("HUBBRIDGE_DATABASE_URL") == sqlite_url
