"""`hubbridge mappings validate | try | schema`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from hubbridge.mappings.cli import SCHEMA_DIR, mappings_app

from .conftest import MISSED, SHIPPED, case_data

runner = CliRunner()
BROKEN = Path(__file__).parent / "broken"


def test_validate_shipped_ok() -> None:
    result = runner.invoke(mappings_app, ["validate", str(SHIPPED)])
    assert result.exit_code == 0, result.output


def test_validate_broken_exit_1_with_positions() -> None:
    result = runner.invoke(mappings_app, ["validate", str(BROKEN / "misspelt-key.yaml"), str(MISSED)])
    assert result.exit_code == 1
    line = next(x for x in result.stdout.splitlines() if "misspelt-key.yaml" in x)
    assert line.endswith("misspelt-key.yaml:7:7: outbound.fields.UPRN.sorce: unknown key 'sorce' "
                         "(did you mean 'source'?)")


def test_try_shows_payload_and_warnings(tmp_path: Path) -> None:
    case = tmp_path / "case.json"
    case.write_text(json.dumps(case_data(description="y" * 400)))
    result = runner.invoke(mappings_app, ["try", str(MISSED), str(case), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["payload"]["CRMID"] == "WH-2026-000123"
    assert "ServiceRequest_Create" in out["rendered"]  # the SOAP envelope from the connector
    assert any("truncated" in w for w in out["warnings"])
    assert out["version"]


def test_try_bad_case(tmp_path: Path) -> None:
    case = tmp_path / "case.json"
    case.write_text(json.dumps(case_data(ref="nope")))
    result = runner.invoke(mappings_app, ["try", str(MISSED), str(case)])
    assert result.exit_code == 1
    assert "ref" in result.output


def test_schema_is_up_to_date_and_validates_shipped(tmp_path: Path) -> None:
    result = runner.invoke(mappings_app, ["schema", "--check"])
    assert result.exit_code == 0, result.output
    import jsonschema

    from hubbridge.config.yamlfile import load_yaml, plain

    schema = json.loads((SCHEMA_DIR / "mapping.schema.json").read_text())
    for p in SHIPPED.rglob("*.yaml"):
        if "lookups" in p.parts:
            continue
        assert "$schema=../../schema/mapping.schema.json" in p.read_text().splitlines()[0]
        jsonschema.validate(plain(load_yaml(p).data), schema)
    runner.invoke(mappings_app, ["schema", "--out", str(tmp_path)])
    assert (tmp_path / "mapping.schema.json").exists() and (tmp_path / "lookup.schema.json").exists()
