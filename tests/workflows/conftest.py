"""In-process pipeline fixtures: simulators on loopback, a config pointing at them, a Runtime."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubbridge.workflows import pipeline
from hubbridge.workflows.demo import DEMO_SECRETS, simulator_for

from .stack import use_config, write_config


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
    use_config(monkeypatch, cfg, sqlite_url)
    rt = pipeline.Runtime()
    yield Rig(rt, hub, bartec)
    rt.close()
    assert os.environ.get("HUBBRIDGE_DATABASE_URL") == sqlite_url
