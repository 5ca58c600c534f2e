"""Random mutations of the shipped config and mapping YAML: loading gives a config or mapping error, never a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbridge.config.loader import load_config
from hubbridge.config.settings import SHIPPED_CONFIG_DIR, SHIPPED_MAPPINGS_DIR, Settings
from hubbridge.errors import ConfigError, ConfigErrors, MappingError
from hubbridge.mappings.compile import load_mapping

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EXPECTED = (ConfigError, ConfigErrors, MappingError)
CONFIG_FILES = sorted(p.name for p in SHIPPED_CONFIG_DIR.glob("*.yaml"))
MAPPING_FILES = sorted(str(p.relative_to(SHIPPED_MAPPINGS_DIR)) for p in SHIPPED_MAPPINGS_DIR.rglob("*.yaml"))
YAML_NOISE = [":", "- ", "[", "]", "{", "}", "#", "&a", "*a", "!!python/object:os.system ", "|", ">", "'", '"',
              "%", "@", "`", "\t", "\n", "  ", "~", "null", "0x1F", "1e999", "<<: *a", "? ", "\u2028", "\x00",
              "!!binary ", "---\n", "...\n"]

mutation = st.tuples(
    st.sampled_from(["delete-line", "duplicate-line", "insert", "replace-char", "truncate", "indent", "swap-lines"]),
    st.floats(0, 1),
    st.floats(0, 1),
    st.sampled_from(YAML_NOISE) | st.text(max_size=8),
)


def mutate(text: str, mutations: list[tuple[str, float, float, str]]) -> str:
    for op, where, other, noise in mutations:
        lines = text.split("\n")
        i, j = int(where * (len(lines) - 1)), int(other * (len(lines) - 1))
        pos = int(where * len(text))
        if op == "delete-line":
            del lines[i]
        elif op == "duplicate-line":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "  " + lines[i]
        elif op == "swap-lines":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            text = text[:pos] + noise + text[pos:]
            continue
        elif op == "replace-char":
            text = text[:pos] + noise + text[pos + 1:]
            continue
        else:
            text = text[:pos]
            continue
        text = "\n".join(lines)
    return text


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "config"
    dest.mkdir()
    for f in SHIPPED_CONFIG_DIR.glob("*.yaml"):
        shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture
def mappings_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SHIPPED_MAPPINGS_DIR, tmp_path / "mappings"))


@FUZZ
@given(name=st.sampled_from(CONFIG_FILES), mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_config_loads_or_raises_a_config_error(config_copy: Path, name: str,
                                                       mutations: list[tuple[str, float, float, str]]) -> None:
    original = (SHIPPED_CONFIG_DIR / name).read_text(encoding="utf-8")
    target = config_copy / name
    target.write_text(mutate(original, mutations), encoding="utf-8")
    try:
        load_config(config_copy, Settings(config_dir=config_copy, mappings_dir=SHIPPED_MAPPINGS_DIR))
    except EXPECTED as exc:
        assert str(exc).strip(), "an error must say what is wrong"
    finally:
        target.write_text(original, encoding="utf-8")


@FUZZ
@given(name=st.sampled_from(MAPPING_FILES), mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_mapping_loads_or_raises_a_mapping_error(mappings_copy: Path, name: str,
                                                         mutations: list[tuple[str, float, float, str]]) -> None:
    original = (SHIPPED_MAPPINGS_DIR / name).read_text(encoding="utf-8")
    target = mappings_copy / name
    target.write_text(mutate(original, mutations), encoding="utf-8")
    try:
        load_mapping(target)
    except EXPECTED as exc:
        assert str(exc).strip(), "an error must say what is wrong"
    finally:
        target.write_text(original, encoding="utf-8")


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00garbage", b"a: b\n\x00\x01", b"x: " + b"[" * 5000])
def test_undecodable_or_absurd_config_bytes(config_copy: Path, raw: bytes) -> None:
    (config_copy / "routes.yaml").write_bytes(raw)
    with pytest.raises(EXPECTED):
        load_config(config_copy, Settings(config_dir=config_copy, mappings_dir=SHIPPED_MAPPINGS_DIR))
