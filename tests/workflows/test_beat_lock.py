"""The one-active-beat lock on both stores, and the poll tasks' log correlation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import structlog
from celery.signals import task_prerun

from hubbridge.workflows import tasks
from hubbridge.workflows.beatlock import BeatLock
from tests.conftest import PG_ADMIN_URL


def _holder(url: str, data_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the beat lock of `url` until it is killed; it prints `held` once it does."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from hubbridge.workflows.beatlock import BeatLock
            lock = BeatLock({url!r}, Path({str(data_dir)!r}))
            assert lock.try_acquire()
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )


def test_only_one_beat_holds_the_postgres_lock_until_it_lets_go(pg_url: str, tmp_path: Path) -> None:
    first, second = BeatLock(pg_url, tmp_path / "a"), BeatLock(pg_url, tmp_path / "b")
    assert first.try_acquire()
    assert first.held()
    assert not second.try_acquire()
    assert not second.held()
    first.release()
    assert second.try_acquire()
    assert second.held()
    second.release()


def test_a_killed_holder_frees_the_postgres_lock(pg_url: str, tmp_path: Path) -> None:
    holder = _holder(pg_url, tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        standby = BeatLock(pg_url, tmp_path)
        assert not standby.try_acquire()
        holder.kill()  # SIGKILL: no clean-up runs, the server sees the session end
        holder.wait()
        assert standby.acquire(retry_seconds=0.2, stop=_give_up_after(150))
        standby.release()
    finally:
        holder.kill()


def test_a_dropped_session_is_seen_as_a_lost_lock(pg_url: str, tmp_path: Path) -> None:
    lock = BeatLock(pg_url, tmp_path)
    assert lock.try_acquire()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                      (0x68756262,))
    assert not lock.held()
    lock.release()


def test_a_dropped_session_is_taken_back_unless_another_beat_got_there_first(pg_url: str, tmp_path: Path) -> None:
    from hubbridge.workflows.beatlock import regain

    def drop_holder() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objid = %s", (0x68756262,))

    lock, standby = BeatLock(pg_url, tmp_path / "a"), BeatLock(pg_url, tmp_path / "b")
    assert lock.try_acquire()
    drop_holder()  # as a PostgreSQL restart or the fault test's pg_terminate_backend does
    assert not lock.held()
    assert regain(lock) and lock.held()  # nobody else held it: this beat goes on, on a new session
    assert not standby.try_acquire()
    drop_holder()
    assert standby.try_acquire()  # this time the standby is first
    assert not regain(lock, tries=1) and not lock.held()  # so the old beat gives way
    lock.release()
    standby.release()


def test_the_sqlite_default_locks_a_file_beside_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hubbridge.sqlite'}"
    holder = _holder(url, tmp_path)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        standby = BeatLock(url, tmp_path)
        assert not standby.try_acquire()
        holder.kill()
        holder.wait()
        assert standby.try_acquire()
        assert (tmp_path / "beat.lock").read_text().strip().isdigit()
        standby.release()
    finally:
        holder.kill()


def _give_up_after(tries: int) -> object:
    count = iter(range(tries))
    return lambda: next(count, None) is None


def test_a_poll_binds_its_connector_not_a_hub_ref() -> None:
    task_prerun.send(sender=tasks.poll_connector, task=tasks.poll_connector, args=["revenues-wyre-forest"], kwargs={})
    bound = structlog.contextvars.get_contextvars()
    assert bound["connector"] == "revenues-wyre-forest"
    assert "hub_ref" not in bound
    task_prerun.send(sender=tasks.deliver_case, task=tasks.deliver_case, args=["HUB-1234"], kwargs={})
    bound = structlog.contextvars.get_contextvars()
    assert bound["hub_ref"] == "HUB-1234"
    assert "connector" not in bound
    structlog.contextvars.clear_contextvars()
