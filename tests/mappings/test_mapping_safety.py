"""Mapping defects of issue 25: errors never quote the case's values; lookups stay inside the mappings directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbridge.case import HubCase
from hubbridge.errors import ConfigError, ConfigErrors, MappingError
from hubbridge.mappings.compile import load_mapping
from tests.mappings.conftest import case_data

HEAD = "mapping: t\nservice: refuse.missed-collection\nplugin: bartec\n"
NAME, STREET = "Ann Smith", "1 High Street"


def write_mapping(root: Path, text: str) -> Path:
    (root / "refuse").mkdir(parents=True, exist_ok=True)
    (root / "lookups").mkdir(exist_ok=True)
    path = root / "refuse" / "m.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("field", [
    "N: {source: customer.name, type: integer}",
    "N: {source: customer.address.line1, type: date}",
    "N: {source: customer.name, enum: [Public, Staff]}",
    "N: {source: customer.address.line1, map: {x: y}}",
])
def test_mapping_errors_name_the_field_and_rule_not_the_value(tmp_path: Path, field: str) -> None:
    m = load_mapping(write_mapping(tmp_path, HEAD + f"outbound:\n  fields:\n    {field}\n"))
    with pytest.raises(MappingError) as info:
        m.outbound(HubCase.model_validate(case_data()))
    text = str(info.value)
    assert info.value.field == "N" and "WH-2026-000123" in text
    for value in (NAME, STREET, "Ann", "High Street"):
        assert value not in text


def test_a_lookup_outside_the_mappings_directory_is_refused_at_load(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    (tmp_path / "secret.yaml").write_text("entries:\n  key: {password: hunter2}\n")
    path = write_mapping(root, HEAD + "lookups:\n  stolen: ../../secret.yaml\n"
                                      "outbound:\n  fields:\n    N: {value: x}\n")
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        load_mapping(path)
    text = str(info.value)
    assert f"{path}:5:" in text and "outside the mappings directory" in text and "hunter2" not in text


def test_a_symlinked_lookup_leading_out_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    (tmp_path / "secret.yaml").write_text("entries:\n  key: {password: hunter2}\n")
    path = write_mapping(root, HEAD + "lookups:\n  stolen: ../lookups/linked.yaml\n"
                                      "outbound:\n  fields:\n    N: {value: x}\n")
    (root / "lookups" / "linked.yaml").symlink_to(tmp_path / "secret.yaml")
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        load_mapping(path)
    assert "outside the mappings directory" in str(info.value)


def test_a_lookup_inside_the_mappings_directory_still_loads(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    path = write_mapping(root, HEAD + "lookups:\n  depots: ../lookups/depots.yaml\n"
                                      "outbound:\n  fields:\n    N: {value: x}\n")
    (root / "lookups" / "depots.yaml").write_text("entries:\n  bromsgrove: {depot: CRAYCOMBE}\n")
    assert load_mapping(path).outbound(HubCase.model_validate(case_data())).payload["N"] == "x"
