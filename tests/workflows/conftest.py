"""In-process pipeline fixtures: simulators on loopback, a config pointing at them, a Runtime."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hubbridge.store import CaseRow, session_scope
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import Runtime
from hubbridge.workflows.simulated import DEMO_SECRETS, simulator_for

from .stack import use_config, write_config


class Rig:
    """Everything a pipeline test drives: the runtime, the Hub and the back-office simulator."""

    def __init__(self, rt: Runtime, hub: Any, backoffice: Any) -> None:
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
    yield from rig_on(sqlite_url, tmp_path, sims, monkeypatch)
    assert os.environ.get("HUBBRIDGE_DATABASE_URL") == sqlite_url


def rig_on(url: str, tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """A Rig on the store at `url`, its simulators reset and a config pointing at them; closed afterwards."""
    hub, bartec = sims
    hub.reset()
    bartec.faults.clear()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    use_config(monkeypatch, cfg, url)
    rt = Runtime()
    yield Rig(rt, hub, bartec)
    rt.close()


# -- what the step tests share ------------------------------------------------------------------

_serials = itertools.count(1, 1000)


def missed_bins(n: int, seed: int = 1) -> list[dict]:
    """Missed-bin cases with refs no other test uses (the simulators live for the whole module)."""
    cases = generate_cases(n * 6, seed=seed, start_serial=next(_serials))
    return [c for c in cases if c["service"] == "refuse.missed-collection"][:n]


def accept(rig: Rig, case: dict) -> str:
    return accept_case(rig.rt, json.dumps(case)).hub_ref


def row(rig: Rig, ref: str) -> CaseRow:
    with session_scope(rig.url) as s:
        found = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert found is not None
        return found


def jobs(rig: Rig, ref: str) -> int:
    return rig.backoffice.store.count_by_hub_ref().get(ref, 0)


def _release(rig: Rig, ref: str) -> None:
    with session_scope(rig.url) as s:
        s.execute(update(CaseRow).where(CaseRow.hub_ref == ref).values(claimed_until=None))


class Commits:
    """Counts the store's commits while it is open, to show how many transactions a step took."""

    def __init__(self, rig: Rig) -> None:
        from hubbridge.store import engine_for

        self.engine, self.n = engine_for(rig.url), 0

    def _count(self, *_: object) -> None:
        self.n += 1

    def __enter__(self) -> Commits:
        from sqlalchemy import event

        event.listen(self.engine, "commit", self._count)
        return self

    def __exit__(self, *_: object) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "commit", self._count)
