"""The Celery tasks themselves (run by Celery's own `apply`): what they do around the pipeline steps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from hubbridge import store
from hubbridge.store import CaseRow, session_scope
from hubbridge.workflows import tasks
from hubbridge.workflows.casegen import generate_cases
from hubbridge.workflows.intake import accept_case
from hubbridge.workflows.runtime import Runtime, reset_runtime

from .stack import use_config, write_config


@pytest.fixture
def pg_rt(tmp_path: Path, sims: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[Any]:
    hub, bartec = sims
    hub.reset()
    cfg = write_config(tmp_path / "config", hub.endpoint, {"bartec": bartec.url}, ["bartec"])
    use_config(monkeypatch, cfg, pg_url)
    rt = Runtime()
    reset_runtime(rt)  # the tasks use the process runtime
    yield rt
    reset_runtime(None)


def test_a_store_connection_dropped_under_a_task_makes_it_run_again(
    pg_rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = next(c for c in generate_cases(12, seed=71, start_serial=71_000)
                if c["service"] == "refuse.missed-collection")
    ref = accept_case(pg_rt, json.dumps(case)).hub_ref
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


def test_the_worker_runs_one_more_pool_process_than_it_has_cpus_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from hubbridge.config.settings import Settings

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.delenv("HUBBRIDGE_WORKER_CONCURRENCY", raising=False)
    assert Settings().resolved_worker_concurrency == cpus + 1
    monkeypatch.setenv("HUBBRIDGE_WORKER_CONCURRENCY", "5")
    assert Settings().resolved_worker_concurrency == 5
    monkeypatch.setenv("HUBBRIDGE_WORKER_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="worker_concurrency"):
        Settings()

    # `hubbridge worker` with no --concurrency, on the embedded broker: count the pool processes it forks
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBRIDGE_")}
    env["HUBBRIDGE_DATA_DIR"] = str(tmp_path / "var")
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hubbridge.workflows.cli", "worker", "--loglevel=INFO"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        children: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if len(children) >= cpus + 1 and "ready" in (tmp_path / "worker.log").read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert len(children) == cpus + 1, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        # SIGTERM to the main process only: it stops its own pool (a pool process killed under it can leave
        # the main process waiting on it for good); then nothing of the group is left behind either way
        proc.terminate()
        try:
            proc.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
