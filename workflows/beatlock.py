"""The one-active-beat lock: several beats may run, only the holder of this lock schedules work.

On PostgreSQL it is a session advisory lock, held on a connection kept open for the beat's life; on the
embedded SQLite default it is an exclusive `flock` on a file beside the store. Both are released by the
operating system or the database the moment the holder dies (even `kill -9`), so a standby beat waiting
for the lock takes over within its retry interval.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog

log = structlog.get_logger(__name__)

BEAT_LOCK_KEY = 0x6875_6262  # "hubb": the advisory lock id shared by every beat on one store
RETRY_SECONDS = 2.0
"""How often a standby beat asks for the lock; a take-over happens within this of the holder's death."""
CHECK_SECONDS = 5.0
"""How often the active beat checks it still holds the lock (a dropped PostgreSQL connection loses it)."""


class BeatLock:
    """Exclusive right to run beat on one store; `acquire` waits for it, `held` says whether it is still ours."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self._conn: Any = None
        self._file: IO[str] | None = None

    @property
    def on_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True if this process holds it now."""
        if self.on_postgres:
            return self._try_advisory()
        return self._try_flock()

    def acquire(self, retry_seconds: float = RETRY_SECONDS, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until this process holds the lock (False only if `stop` said to give up)."""
        told = False
        while not stop():
            try:
                if self.try_acquire():
                    return True
            except Exception as exc:  # the store may be restarting: keep waiting, say why
                log.warning("beat.lock_unavailable", error=str(exc)[:200])
                self._drop_connection()
            if not told:
                log.info("beat.standby", retry_seconds=retry_seconds)
                told = True
            time.sleep(retry_seconds)
        return False

    def held(self) -> bool:
        """Whether the lock is still ours (on PostgreSQL: whether its session is still alive)."""
        if self.on_postgres:
            if self._conn is None:
                return False
            try:
                with self._conn.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                        "AND pid = pg_backend_pid() AND granted",
                        (BEAT_LOCK_KEY,),
                    )
                    return bool(cur.fetchone()[0])
            except Exception:
                return False
        return self._file is not None

    def release(self) -> None:
        self._drop_connection()
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def _try_advisory(self) -> bool:
        if self._conn is None:
            self._conn = self._own_connection()
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (BEAT_LOCK_KEY,))
            got = bool(cur.fetchone()[0])
        self._conn.commit()
        return got

    def _own_connection(self) -> Any:
        from hubbridge.store import engine_for

        raw = engine_for(self.database_url).raw_connection()
        raw.detach()  # never returned to the pool, so no other transaction shares the lock's session
        return raw

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _try_flock(self) -> bool:
        if self._file is not None:
            return True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        handle = (self.data_dir / "beat.lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True


def regain(lock: BeatLock, tries: int = 30, every: float = 1.0) -> bool:
    """After the lock's session was lost: take the lock again if no other beat has (True), else False.

    A dropped connection (a PostgreSQL restart, `pg_terminate_backend`) loses the lock without any other
    beat holding it; this beat takes it back on a new session rather than leave the store with none. While
    the store cannot be reached it keeps trying; a standby that got there first makes it give way.
    """
    lock._drop_connection()
    for _ in range(tries):
        try:
            return lock.try_acquire()
        except Exception as exc:  # the store is not back yet
            log.warning("beat.lock_unavailable", error=str(exc)[:200])
            lock._drop_connection()
            time.sleep(every)
    return False


def watch_lock(lock: BeatLock, on_lost: Callable[[], None], every: float = CHECK_SECONDS) -> threading.Thread:
    """Check the lock in the background; when it is lost, take it back or, if another beat has it, call `on_lost`."""

    def run() -> None:
        while True:
            time.sleep(every)
            if lock.held():
                continue
            if regain(lock):
                log.warning("beat.lock_regained", hint="the lock's session was dropped; no other beat held it")
                continue
            log.error("beat.lock_lost", hint="another beat is active: this one stops; its supervisor restarts it")
            on_lost()
            return

    thread = threading.Thread(target=run, name="beat-lock-watch", daemon=True)
    thread.start()
    return thread
