"""A running worker records the mapping version per case, picks up edits, and keeps the last good version."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select
from typer.testing import CliRunner

from hubbridge.config.settings import get_settings
from hubbridge.mappings import load_mapping
from hubbridge.store import CaseRow, session_scope
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.delivery import deliver_case
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import Runtime
from hubbridge.workflows.simulated import DEMO_SECRETS, simulator_for
from hubbridge.workflows.trail import case_trail

from ..workflows.stack import use_config, write_config
from .conftest import SHIPPED


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Iterator[tuple[Any, Path, Any]]:
    """An in-process worker runtime whose config carries its own, editable copy of the shipped mappings."""
    from hubbridge.connectors.hub import HubSimulator

    hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    bartec = simulator_for("bartec", 0).start()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    shutil.copytree(SHIPPED, cfg / "mappings")
    use_config(monkeypatch, cfg, sqlite_url)
    rt = Runtime()
    rt.mappings.check_seconds = 0  # look at the file on every case, so the test needs no sleeping
    try:
        yield rt, cfg / "mappings" / "refuse" / "missed-collection.bartec.yaml", bartec
    finally:
        rt.close()
        hub.stop()
        bartec.stop()
        get_settings.cache_clear()


def _edit(path: Path, old: str, new: str, bump: int) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    st = path.stat()  # a later mtime even on coarse-clock file systems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def _deliver(rt: Any, case: dict) -> tuple[str, str | None]:
    ref = accept_case(rt, json.dumps(case)).hub_ref
    assert deliver_case(rt, ref).kind == "done"
    with session_scope(rt.url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        assert row is not None
        return ref, row.mapping_version


def test_version_recorded_edit_picked_up_bad_edit_refused(worker: tuple[Any, Path, Any]) -> None:
    from hubbridge.workflows.cli import app

    rt, path, _ = worker
    cases = [c for c in generate_cases(60, seed=5, start_serial=900_000)
             if c["service"] == "refuse.missed-collection"][:3]
    targets = rt.connector(rt.config.route(cases[0]["authority"], cases[0]["service"]).connector.name).target_fields()
    v1 = load_mapping(path, targets).version

    ref1, got1 = _deliver(rt, cases[0])
    assert got1 == v1
    trail = case_trail(rt.url, ref1)
    assert trail is not None and trail["mapping_version"] == v1
    assert trail["backoffice_refs"][0]["mapping_version"] == v1
    shown = CliRunner().invoke(app, ["status", ref1])
    assert shown.exit_code == 0 and v1 in shown.output

    # an admin edits the mapping: the next case uses it, with no restart
    _edit(path, "default:'Bin'", "default:'Wheelie bin'", 1)
    v2 = load_mapping(path, targets).version
    assert v2 != v1
    _, got2 = _deliver(rt, cases[1])
    assert got2 == v2

    # a broken edit is refused with one clear log line; the last good version keeps translating
    _edit(path, "    CRMID:\n      source: ref", "    CRMID:\n      sorce: ref", 2)
    with structlog.testing.capture_logs() as logs:
        _, got3 = _deliver(rt, cases[2])
    assert got3 == v2
    refused = [e for e in logs if e.get("event") == "mapping refused; last good version stays in service"]
    assert len(refused) == 1 and refused[0]["log_level"] == "error"
    assert refused[0]["serving_version"] == v2 and refused[0]["path"].endswith("missed-collection.bartec.yaml")
    assert any("unknown key 'sorce' (did you mean 'source'?)" in e for e in refused[0]["errors"])
