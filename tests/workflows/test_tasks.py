"""The Celery tasks themselves (run by Celery's own `apply`): what they do around the pipeline steps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from hubbridge.workflows import pipeline, store, tasks
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.store import CaseRow, session_scope

from .stack import use_config, write_config


@pytest.fixture
def pg_rt(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[Any]:
    hub, bartec = sims
    hub.reset()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    use_config(monkeypatch, cfg, pg_url)
    rt = pipeline.Runtime()
    pipeline.reset_runtime(rt)  # the tasks use the process runtime
    yield rt
    pipeline.reset_runtime(None)


def test_a_store_connection_dropped_under_a_task_makes_it_run_again(
    pg_rt: pipeline.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = next(c for c in generate_cases(12, seed=71, start_serial=71_000)
                if c["service"] == "refuse.missed-collection")
    ref = pipeline.accept_case(pg_rt, json.dumps(case)).hub_ref
    monkeypatch.setattr(store, "IDLE_PING_SECONDS", 3600.0)  # the pooled connection is trusted, not pinged
    plain = pg_rt.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:  # as a PostgreSQL restart would
        dropped = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()
    assert dropped is not None and dropped[0] >= 1
    result = tasks.deliver_case.apply(args=[ref])
    assert result.successful() and result.get() == "done"  # the first run failed on the dead connection
    with session_scope(pg_rt.url) as s:
        assert s.scalar(select(CaseRow.stage).where(CaseRow.hub_ref == ref)) == "acknowledged"


def test_a_pool_process_is_replaced_past_its_memory_limit_and_the_limit_can_be_lifted(tmp_path: Path) -> None:
    from hubbridge.config.settings import Settings
    from hubbridge.workflows.app import make_app

    def limit(**kw: Any) -> Any:
        return make_app(Settings(data_dir=tmp_path, **kw)).conf.worker_max_memory_per_child

    assert limit() == 512 * 1024  # the default: a slow leak costs a fork from the warmed parent, not an outage
    assert limit(worker_max_memory_mib=300) == 300 * 1024  # Celery counts KiB
    assert limit(worker_max_memory_mib=0) is None  # 0: never replace
