"""The store's connections: one that sat idle is tested before use, a busy one is trusted; a fork gets its own."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from hubbridge import store
from hubbridge.store import session_scope


def _backend_pid(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(text("SELECT pg_backend_pid()")))


def _terminate(url: str, pid: int) -> None:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_connection_dropped_while_idle_is_replaced_before_use(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = _backend_pid(pg_url)
    _terminate(pg_url, pid)  # as a server restart or an idle timeout would
    monkeypatch.setattr(store, "IDLE_PING_SECONDS", 0.0)  # it has now been idle "long enough"
    assert _backend_pid(pg_url) != pid  # the ping found it dead and the pool connected afresh


def test_a_connection_in_steady_use_is_trusted_and_a_drop_costs_one_failed_transaction(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(store, "IDLE_PING_SECONDS", 3600.0)  # every connection counts as just used
    pid = _backend_pid(pg_url)
    _terminate(pg_url, pid)
    with pytest.raises(OperationalError) as caught:  # not pinged: the dead connection is only found in use
        _backend_pid(pg_url)
    assert caught.value.connection_invalidated
    assert _backend_pid(pg_url) != pid  # the pool was invalidated: the next transaction connects afresh


def test_a_session_after_the_engine_cache_is_cleared_uses_the_new_engine(sqlite_url: str) -> None:
    # what a forked pool process does (app._fresh_connections): it must not reuse its parent's engine
    with session_scope(sqlite_url) as s:
        before = s.get_bind()
    store.engine_for.cache_clear()
    with session_scope(sqlite_url) as s:
        after = s.get_bind()
    assert after is store.engine_for(sqlite_url) and after is not before
