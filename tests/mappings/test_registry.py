"""Hot reload: changed files are picked up; a bad new version is refused and the last good one serves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from hubbridge.errors import ConfigErrors
from hubbridge.mappings import MappingCache

HEAD = "mapping: t\nservice: refuse.missed-collection\nplugin: bartec\n"
GOOD = HEAD + "outbound:\n  fields:\n    X: {value: one}\n"
GOOD2 = HEAD + "outbound:\n  fields:\n    X: {value: two}\n"
BAD = HEAD + "outbound:\n  fields:\n    X: {valeu: three}\n"


def _touch(p: Path, text: str, bump: int) -> None:
    p.write_text(text)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_reload_and_keep_last_good(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    _touch(p, GOOD, 0)
    cache = MappingCache(check_seconds=0)
    m1 = cache.get(p)
    assert cache.get(p) is m1
    _touch(p, GOOD2, 1)
    m2 = cache.get(p)
    assert m2.version != m1.version and m2.spec.outbound.fields["X"].value == "two"
    with structlog.testing.capture_logs() as logs:
        _touch(p, BAD, 2)
        assert cache.get(p) is m2
        assert cache.get(p) is m2  # logged once, not on every case
    refused = [e for e in logs if e["log_level"] == "error"]
    assert len(refused) == 1
    assert refused[0]["serving_version"] == m2.version
    assert "unknown key 'valeu'" in refused[0]["errors"][0]
    _touch(p, GOOD, 3)
    assert cache.get(p).version == m1.version


def test_never_good_raises(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(BAD)
    with pytest.raises(ConfigErrors):
        MappingCache(check_seconds=0).get(p)


def test_lookup_change_reloads(tmp_path: Path) -> None:
    lk = tmp_path / "l.yaml"
    _touch(lk, "entries: {a: 1}\n", 0)
    p = tmp_path / "m.yaml"
    p.write_text(HEAD + "lookups: {t: l.yaml}\noutbound:\n  fields:\n    X: {source: attributes.k, lookup: t}\n")
    cache = MappingCache(check_seconds=0)
    v1 = cache.get(p).version
    _touch(lk, "entries: {a: 2}\n", 1)
    assert cache.get(p).version != v1


def test_check_interval_serves_cached(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    _touch(p, GOOD, 0)
    cache = MappingCache(check_seconds=3600)
    m1 = cache.get(p)
    _touch(p, GOOD2, 1)
    assert cache.get(p) is m1
