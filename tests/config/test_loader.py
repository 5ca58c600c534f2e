"""Config is validated once at load; every error names file, line, column and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hubbridge.config.loader import load_config
from hubbridge.config.settings import SHIPPED_CONFIG_DIR, SHIPPED_MAPPINGS_DIR, Settings
from hubbridge.errors import ConfigError, ConfigErrors, RoutingError


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "config"
    dest.mkdir()
    for name in ("authorities.yaml", "services.yaml", "connectors.yaml", "routes.yaml", "sla.yaml"):
        if (SHIPPED_CONFIG_DIR / name).exists():
            shutil.copy(SHIPPED_CONFIG_DIR / name, dest / name)
    return dest


def load(path: Path):  # type: ignore[no-untyped-def]
    return load_config(path, Settings(config_dir=path, mappings_dir=SHIPPED_MAPPINGS_DIR))


def errors_of(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as exc:
        load(path)
    return exc.value.errors


def test_shipped_config_loads_and_routes_every_partner() -> None:
    cfg = load_config(SHIPPED_CONFIG_DIR, Settings())
    assert set(cfg.authorities) == {"worcestershire", "bromsgrove", "malvern-hills", "redditch", "worcester",
                                    "wychavon", "wyre-forest"}
    route = cfg.route("bromsgrove", "refuse.missed-collection")
    assert route.connector.plugin == "bartec"
    assert route.mapping_path.is_file()
    assert route.sla_policy == "refuse.missed-collection"


def test_env_var_names_only_never_secrets(config_copy: Path) -> None:
    text = (config_copy / "connectors.yaml").read_text()
    (config_copy / "connectors.yaml").write_text(
        text.replace("username: BROMSGROVE_BARTEC_USER", "username: hunter2-password", 1))
    errs = errors_of(config_copy)
    assert len(errs) == 1
    err = errs[0]
    assert err.path and err.path.endswith("connectors.yaml")
    assert err.key == "connectors.refuse-bromsgrove.credentials.username"
    line_no = next(i for i, ln in enumerate(text.splitlines(), 1) if "BROMSGROVE_BARTEC_USER" in ln)
    assert err.line == line_no
    assert "should match pattern" in str(err)


def test_misspelt_key_says_did_you_mean(config_copy: Path) -> None:
    text = (config_copy / "connectors.yaml").read_text()
    (config_copy / "connectors.yaml").write_text(text.replace("    poll_seconds: 2", "    pol_seconds: 2", 1))
    (err,) = errors_of(config_copy)
    assert "unknown key 'pol_seconds'" in str(err)
    assert "did you mean 'poll_seconds'?" in str(err)
    assert err.col == 5


def test_route_to_unknown_things_is_reported_with_positions(config_copy: Path) -> None:
    text = (config_copy / "routes.yaml").read_text()
    text = text.replace("  - authorities: [bromsgrove]", "  - authorities: [bromsgove]", 1)
    text = text.replace("connector: refuse-redditch", "connector: refuse-reditch", 1)
    (config_copy / "routes.yaml").write_text(text)
    errs = errors_of(config_copy)
    messages = [str(e) for e in errs]
    assert any("unknown authority 'bromsgove'" in m and "did you mean 'bromsgrove'?" in m for m in messages)
    assert any("unknown connector instance 'refuse-reditch'" in m for m in messages)
    assert all(e.line and e.line > 1 for e in errs)


def test_yaml_syntax_error_points_at_the_line(config_copy: Path) -> None:
    (config_copy / "services.yaml").write_text("services:\n  a.b: {name: x\n")
    (err,) = errors_of(config_copy)
    assert err.path and err.path.endswith("services.yaml")
    assert err.line == 3 or err.line == 2
    assert "YAML syntax" in str(err)


def test_python_tags_are_refused(config_copy: Path) -> None:
    (config_copy / "authorities.yaml").write_text(
        "authorities:\n  x:\n    name: !!python/object/apply:os.system ['echo pwned']\n    kind: county\n")
    errs = errors_of(config_copy)
    assert any("python" in str(e).lower() or "tag" in str(e).lower() for e in errs)


def test_alias_bomb_and_oversize_files_are_refused(config_copy: Path) -> None:
    prev = ["a", *(f"b{i}" for i in range(119))]
    bomb = "a: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*{prev[i]}, *{prev[i]}]\n" for i in range(120))
    (config_copy / "services.yaml").write_text(bomb)
    (err,) = errors_of(config_copy)
    assert "aliases" in str(err)
    (config_copy / "services.yaml").write_text("services: {}\n#" + "x" * 1_100_000)
    (err,) = errors_of(config_copy)
    assert "larger than" in str(err)


def test_missing_file_is_named(config_copy: Path) -> None:
    (config_copy / "routes.yaml").unlink()
    (err,) = errors_of(config_copy)
    assert "routes.yaml" in str(err) and "missing" in str(err)


def test_unrouted_pair_says_what_is_unknown() -> None:
    cfg = load_config(SHIPPED_CONFIG_DIR, Settings())
    with pytest.raises(RoutingError, match="unknown authority 'atlantis'"):
        cfg.route("atlantis", "refuse.missed-collection")
    with pytest.raises(RoutingError, match="unknown service"):
        cfg.route("bromsgrove", "refuse.flying-bins")
