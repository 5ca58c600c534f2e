"""Every broken mapping is refused with the exact file:line:col, key, problem and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubbridge.errors import ConfigErrors
from hubbridge.mappings import load_mapping

from .conftest import bartec_targets

BROKEN = Path(__file__).parent / "broken"

EXPECTED = {
    "misspelt-key.yaml": "misspelt-key.yaml:7:7: outbound.fields.UPRN.sorce: unknown key 'sorce' "
                         "(did you mean 'source'?)",
    "misspelt-source-path.yaml": "misspelt-source-path.yaml:7:7: outbound.fields.UPRN.source: unknown source "
                                 "path 'customer.adress.uprn': no 'adress' in 'customer' "
                                 "(did you mean 'customer.address'?)",
    "misspelt-target.yaml": "misspelt-target.yaml:7:5: outbound.fields.ServiceTypeId: unknown target field "
                            "'ServiceTypeId' for plugin 'bartec' (did you mean 'ServiceTypeID'?)",
    "two-values.yaml": "two-values.yaml:6:5: outbound.fields.UPRN: Value error, give exactly one of source, "
                       "value, template, fields, each, choose, items (found: source, value)",
    "bad-template.yaml": "bad-template.yaml:8:7: outbound.fields.serviceLocationDescription.template: template: "
                         "unknown filter 'uper' (at character 1) (did you mean 'upper'?)",
    "code-in-template.yaml": "code-in-template.yaml:8:7: outbound.fields.serviceLocationDescription.template: "
                             "template: 'ref.__class__.__mro__': 'ref' is a value and has no '__class__'",
    "unknown-lookup.yaml": "unknown-lookup.yaml:7:51: outbound.fields.ServiceTypeID.lookup: unknown lookup "
                           "table 'containers'",
    "bad-status.yaml": "bad-status.yaml:10:11: inbound.status.map.OPEN: 'acknowleged' is not a Hub status "
                       "(did you mean 'acknowledged'?)",
    "not-in-enum.yaml": "not-in-enum.yaml:9:24: outbound.fields.reporterContact.fields.ReporterType.value: "
                        "'Resident' is not one of the allowed values (allowed: Public, Councillor, Staff)",
    "constant-too-long.yaml": "constant-too-long.yaml:7:25: outbound.fields.ExternalReference.value: "
                              "'1234567890123456' is longer than the target's 12 characters",
    "missing-required-target.yaml": "missing-required-target.yaml:5:3: outbound.fields: target field 'UPRN' is "
                                    "required by 'bartec' but not mapped",
    "each-not-list.yaml": "each-not-list.yaml:8:7: outbound.fields.Attachments.each: 'each' needs a list; "
                          "'customer' is not one",
    "bad-integer.yaml": "bad-integer.yaml:7:14: outbound.fields.CrewID.value: cannot convert 'eleven' to an "
                        "integer",
    "structure-as-value.yaml": "structure-as-value.yaml:6:12: outbound.fields.UPRN.source: source path "
                               "'customer.address' is a structure, not a value",
    "yaml-syntax.yaml": "yaml-syntax.yaml:7:1: YAML syntax: expected ',' or '}', but got '<stream end>'",
    "python-tag.yaml": "python-tag.yaml:6:11: YAML tag !!python/object/apply:os.system is not allowed "
                       "(config holds plain data only; remove the tag, and quote the value if it is text)",
    "custom-tag.yaml": "custom-tag.yaml:7:12: YAML tag !include is not allowed (config holds plain data only; "
                       "remove the tag, and quote the value if it is text)",
    "misspelt-when.yaml": "misspelt-when.yaml:10:7: outbound.fields.CRMID.whne: unknown key 'whne' "
                          "(did you mean 'when'?)",
    "unknown-timezone.yaml": "unknown-timezone.yaml:8:41: outbound.fields.DateRequested.timezone: unknown time "
                             "zone 'Europe/Londn' (did you mean 'Europe/London'?)",
    "duplicate-key.yaml": "duplicate-key.yaml:8:5: YAML syntax: found duplicate key \"UPRN\"",
    "alias-bomb.yaml": "alias-bomb.yaml:52:12: more than 100 YAML aliases (aliases can expand exponentially; "
                       "write the values out)",
}


def test_every_broken_file_has_an_expectation() -> None:
    assert {p.name for p in BROKEN.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_is_refused_with_a_precise_message(name: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_mapping(BROKEN / name, bartec_targets())
    messages = [str(e) for e in info.value.errors]
    assert any(m.endswith(EXPECTED[name]) or f"/{EXPECTED[name]}" in m for m in messages), messages
    for e in info.value.errors:
        assert e.path and e.path.endswith(name)
        assert e.line is not None and e.line >= 1


def test_misspelt_target_only_fails_with_target_fields() -> None:
    # without the connector's declaration the mapping cannot know the field is misspelt
    load_mapping(BROKEN / "misspelt-target.yaml")
