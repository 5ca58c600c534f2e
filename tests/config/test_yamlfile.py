"""Safe YAML loading: no tags of any kind, alias floods and oversize files refused, errors at file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from hubbridge.config.yamlfile import MAX_ALIASES, MAX_DEPTH, MAX_YAML_BYTES, load_yaml, parse_yaml, plain
from hubbridge.errors import ConfigError, ConfigErrors


@pytest.mark.parametrize(
    ("text", "tag", "line", "col"),
    [
        ("a: 1\nb: !!python/object/apply:os.system ['true']\n", "!!python/object/apply:os.system", 2, 4),
        ("a: !!python/name:os.system ''\n", "!!python/name:os.system", 1, 4),
        ("a: !!python/object:collections.OrderedDict {}\n", "!!python/object:collections.OrderedDict", 1, 4),
        ("x:\n  !!python/tuple [1, 2]: 3\n", "!!python/tuple", 2, 3),
        ("- ok\n- [1, !!python/bytes 'eA==']\n", "!!python/bytes", 2, 7),
        ("a: !!binary aGVsbG8=\n", "!!binary", 1, 4),
        ("a: !!set {x, y}\n", "!!set", 1, 4),
        ("a: !include other.yaml\n", "!include", 1, 4),
        ("%TAG !e! tag:example.com,2000:\n---\na: !e!thing 1\n", "tag:example.com,2000:thing", 3, 4),
        ("a: !<tag:yaml.org,2002:python/none> ''\n", "!!python/none", 1, 4),
        ("a: !!str 5\n", "!!str", 1, 4),
    ],
)
def test_every_explicit_tag_is_refused_with_its_position(text: str, tag: str, line: int, col: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "conf.yaml")
    err = info.value
    assert (err.path, err.line, err.col) == ("conf.yaml", line, col)
    assert str(err).startswith(f"conf.yaml:{line}:{col}: YAML tag {tag} is not allowed")


def test_plain_data_loads_with_implicit_types() -> None:
    doc = parse_yaml("a: 1\nb: [x, 'y']\nc: {d: true, e: null, f: 2.5}\n", "ok.yaml")
    assert plain(doc.data) == {"a": 1, "b": ["x", "y"], "c": {"d": True, "e": None, "f": 2.5}}


def test_aliases_up_to_the_limit_load_and_one_more_is_refused_where_it_is() -> None:
    ok = "a: &a 1\n" + "".join(f"k{i}: *a\n" for i in range(MAX_ALIASES))
    assert plain(parse_yaml(ok).data)[f"k{MAX_ALIASES - 1}"] == 1
    with pytest.raises(ConfigError) as info:
        parse_yaml(ok + "last: *a\n", "many.yaml")
    assert (info.value.line, info.value.col) == (MAX_ALIASES + 2, 7)
    assert f"more than {MAX_ALIASES} YAML aliases" in str(info.value)


def test_billion_laughs_is_refused_without_expanding() -> None:
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 60):
        lines.append(f"lol{i}: &lol{i} [*lol{i - 1}, *lol{i - 1}, *lol{i - 1}, *lol{i - 1}, *lol{i - 1}]")
    with pytest.raises(ConfigError, match="YAML aliases"):
        parse_yaml("\n".join(lines) + "\n", "bomb.yaml")


def test_merge_key_bomb_is_refused() -> None:
    lines = ["base: &m0 {a: 1}"]
    for i in range(1, 120):
        lines.append(f"m{i}: &m{i}\n  <<: [*m{i - 1}, *m{i - 1}]\n  k: {i}")
    with pytest.raises(ConfigError, match="YAML aliases"):
        parse_yaml("\n".join(lines) + "\n", "merge.yaml")


def test_oversize_text_and_file_are_refused(tmp_path: Path) -> None:
    big = "# " + "x" * MAX_YAML_BYTES + "\na: 1\n"
    with pytest.raises(ConfigError, match=f"larger than {MAX_YAML_BYTES} bytes"):
        parse_yaml(big, "big.yaml")
    f = tmp_path / "big.yaml"
    f.write_text(big)
    with pytest.raises(ConfigError) as info:
        load_yaml(f)
    assert str(info.value).startswith(f"{f}:1:1: file is larger than {MAX_YAML_BYTES} bytes")


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(f)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_yaml(tmp_path / "absent.yaml")


def test_syntax_and_duplicate_key_errors_have_positions() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: [1, 2\nb: 3\n", "s.yaml")
    assert str(info.value).startswith("s.yaml:") and "YAML syntax" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\nb: 2\na: 3\n", "d.yaml")
    assert str(info.value).startswith("d.yaml:3:1: YAML syntax: found duplicate key \"a\"")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    colour: str
    size: int = 1


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: dict[str, _Inner]


def test_validation_errors_point_at_the_key_and_suggest_the_right_one() -> None:
    doc = parse_yaml("items:\n  one:\n    colour: red\n  two:\n    color: blue\n    size: big\n", "v.yaml")
    with pytest.raises(ConfigErrors) as info:
        doc.validate(_Outer)
    got = sorted(str(e) for e in info.value.errors)
    assert "v.yaml:5:5: items.two.color: unknown key 'color' (did you mean 'colour'?)" in got
    assert "v.yaml:4:3: items.two.colour: required key is missing" in got
    assert any(g.startswith("v.yaml:6:5: items.two.size: ") for g in got)


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deep_nesting_is_refused_at_the_level_that_crosses_the_limit(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = "x: " + opener * 5000 + "1" + closer * 5000 + "\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "deep.yaml")
    err = info.value
    assert (err.path, err.line) == ("deep.yaml", 1)
    assert err.col == len("x: ") + 1 + (MAX_DEPTH - 1) * len(opener)  # the opener one level too deep
    assert f"nested more than {MAX_DEPTH} levels deep" in str(err)


def test_nesting_up_to_the_limit_loads() -> None:
    text = "x: " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n"
    value = plain(parse_yaml(text, "ok.yaml").data)["x"]
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == 1
