"""`hubbridge mappings validate | try | schema`."""

from __future__ import annotations

import json
import re
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


def test_validate_exit_codes_for_directories_and_missing_files(tmp_path: Path) -> None:
    assert runner.invoke(mappings_app, ["validate", str(MISSED)]).exit_code == 0
    broken = runner.invoke(mappings_app, ["validate", str(BROKEN)])
    assert broken.exit_code == 1
    # one `path:line:col: message` line per problem, on stdout, for every broken file
    lines = [x for x in broken.stdout.splitlines() if x.strip()]
    assert {Path(x.split(":", 1)[0]).name for x in lines} == {p.name for p in BROKEN.glob("*.yaml")}
    assert all(re.match(r"^/\S+\.yaml:\d+:\d+: ", x) for x in lines), lines
    missing = runner.invoke(mappings_app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "nope.yaml: file not found" in missing.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(mappings_app, ["validate", str(empty)]).exit_code == 1


def test_try_by_route_prints_the_soap_envelope_and_warns_on_stderr(tmp_path: Path) -> None:
    case = tmp_path / "case.json"
    case.write_text(json.dumps(case_data(description="y" * 400)))
    result = runner.invoke(mappings_app, ["try", "bromsgrove/refuse.missed-collection", str(case)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("# mapping refuse-missed-collection-bartec version ")
    assert ("# route bromsgrove/refuse.missed-collection -> connector refuse-bromsgrove (bartec); "
            "nothing was sent") in out
    assert '<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/">' in out
    assert "<ns0:CRMID>WH-2026-000123</ns0:CRMID>" in out and "<ns0:UPRN>100120</ns0:UPRN>" in out
    assert "warning: serviceLocationDescription: truncated from 419 to 80 characters" in result.stderr


def test_try_rest_connector_prints_its_request(tmp_path: Path) -> None:
    case = tmp_path / "case.json"
    case.write_text(json.dumps(case_data(service="planning.application-enquiry",
                                         attributes={"application_ref": "24/00123/FUL"})))
    result = runner.invoke(mappings_app, ["try", "bromsgrove/planning.application-enquiry", str(case), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["connector"] == "planning-bromsgrove" and out["mapping"] and out["version"]
    assert "<soap-env:Envelope" not in out["rendered"] and "WH-2026-000123" in out["rendered"]


def test_try_refuses_unknown_route_and_broken_mapping(tmp_path: Path) -> None:
    case = tmp_path / "case.json"
    case.write_text(json.dumps(case_data()))
    assert runner.invoke(mappings_app, ["try", "nowhere/refuse.missed-collection", str(case)]).exit_code == 1
    bad = runner.invoke(mappings_app, ["try", str(BROKEN / "misspelt-key.yaml"), str(case)])
    assert bad.exit_code == 1 and "unknown key 'sorce' (did you mean 'source'?)" in bad.stderr
    case.write_text("{not json")
    notjson = runner.invoke(mappings_app, ["try", str(MISSED), str(case)])
    assert notjson.exit_code == 1 and f"{case}:1:2: not JSON" in notjson.stderr


def test_schema_writes_what_the_models_generate(tmp_path: Path) -> None:
    from hubbridge.mappings.cli import schemas

    result = runner.invoke(mappings_app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name, body in schemas().items():
        written = json.loads((tmp_path / name).read_text())
        assert written == body
        assert written["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "outbound" in json.loads((tmp_path / "mapping.schema.json").read_text())["properties"]
    (tmp_path / "mapping.schema.json").write_text("{}\n")
    stale = runner.invoke(mappings_app, ["schema", "--check", "--out", str(tmp_path)])
    assert stale.exit_code == 1 and "out of date" in stale.stdout
