"""The mapping engine: shipped mapping, value maps, lookups, templates, conditions, lists, types, safety."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from hubbridge.case import HubCase, HubStatus
from hubbridge.config.yamlfile import MAX_YAML_BYTES, load_yaml, plain
from hubbridge.connectors.base import BackOfficeUpdate
from hubbridge.errors import ConfigErrors, MappingError
from hubbridge.mappings import load_mapping

from .conftest import MISSED, SHIPPED, bartec_targets, case_data

HEAD = "mapping: t\nservice: refuse.missed-collection\nplugin: bartec\n"


def update(status: str | None, note: str | None = None) -> BackOfficeUpdate:
    return BackOfficeUpdate(backoffice_ref="51390", update_id="u1", occurred_at=datetime.now(UTC),
                            status_code=status, note=note, hub_ref="WH-2026-000123")


def test_shipped_missed_collection_outbound(case: HubCase) -> None:
    m = load_mapping(MISSED, bartec_targets())
    tr = m.outbound(case)
    p = tr.payload
    assert p["UPRN"] == 100120
    types = plain(load_yaml(SHIPPED / "lookups" / "bartec-service-types.yaml").data)["entries"]
    assert p["ServiceTypeID"] == types["recycling"]["missed_collection"]  # from the shared lookup table
    assert p["CrewID"] == 11  # bromsgrove depot
    assert p["DateRequested"] == "2026-03-01T09:30:00"  # GMT in March
    assert p["CRMID"] == "WH-2026-000123"
    assert p["serviceLocationDescription"] == "front of property: Bin not emptied"
    details, callback = p["extendedData"]["ServiceRequest_CreateServiceRequest_CreateFields"]
    assert details["FieldName"] == "HUB_DETAILS" and "Hub ref WH-2026-000123" in details["FieldValue"]
    assert callback == {"FieldName": "CALLBACK", "FieldValue": "Ann Smith 01527 881288 / ann@example.org"}
    assert p["ServiceRequest_Location"] == {"Metric": {"Latitude": 52.33, "Longitude": -2.06}}
    assert p["reporterContact"] == {"Forename": "Ann", "Surname": "Smith", "Email": "ann@example.org",
                                    "Telephone": "01527 881288", "ReporterType": "Public"}
    assert tr.warnings == []
    assert len(m.version) == 12 and m.service == "refuse.missed-collection" and m.plugin == "bartec"
    assert str(types["refuse"]["missed_collection"]) in m.service_codes


def test_summer_time_and_conditions(case: HubCase) -> None:
    m = load_mapping(MISSED)
    c = HubCase.model_validate(case_data(created_at="2026-07-01T09:30:00+00:00", location={},
                                         channel="back-office"))
    p = m.outbound(c).payload
    assert p["DateRequested"] == "2026-07-01T10:30:00"  # BST
    assert "ServiceRequest_Location" not in p
    assert p["reporterContact"]["ReporterType"] == "Staff"


def test_truncation_is_flagged() -> None:
    m = load_mapping(MISSED, bartec_targets())
    c = HubCase.model_validate(case_data(description="x" * 600))
    tr = m.outbound(c)
    assert len(tr.payload["serviceLocationDescription"]) == 80
    assert any("serviceLocationDescription: truncated from" in w for w in tr.warnings)


def test_missing_required_names_case_mapping_and_field() -> None:
    m = load_mapping(MISSED)
    data = case_data(location={})
    del data["customer"]["address"]
    with pytest.raises(MappingError) as info:
        m.outbound(HubCase.model_validate(data))
    e = info.value
    assert (e.ref, e.mapping, e.field) == ("WH-2026-000123", "refuse-missed-collection-bartec", "UPRN")
    assert "WH-2026-000123 refuse-missed-collection-bartec UPRN: required value is missing" in str(e)


def test_unknown_lookup_key_without_fallback_is_an_error() -> None:
    m = load_mapping(MISSED)
    with pytest.raises(MappingError) as info:
        m.outbound(HubCase.model_validate(case_data(attributes={"container": "skip"})))
    assert info.value.field == "ServiceTypeID"
    # the rule and the kind of value, never the case's own value (it may be personal data)
    assert "no lookup 'service_types.missed_collection' entry for a text of 4 characters" in str(info.value)
    assert "skip" not in str(info.value)


def test_inbound_status_note_resolution() -> None:
    m = load_mapping(MISSED)
    tr = m.inbound(update("IN PROGRESS", "crew on the way"))
    assert tr.status is HubStatus.IN_PROGRESS and tr.note == "crew on the way" and tr.resolution is None
    tr = m.inbound(update("CLOSED", "collected 10:02"))
    assert tr.status is HubStatus.CLOSED
    assert tr.resolution == "Closed: collected 10:02"
    tr = m.inbound(update("ON HOLD"))
    assert tr.status is HubStatus.IN_PROGRESS
    assert tr.warnings == ["inbound.status: no lookup 'statuses' entry for 'on hold'; used fallback 'in_progress'"]


def test_value_map_fallback_each_types_and_nesting(write) -> None:
    path = write(HEAD + """
outbound:
  fields:
    UPRN: {source: customer.address.uprn}
    ServiceTypeID:
      source: attributes.container
      map: {refuse: 1, recycling: 2}
      fallback: 99
    Priority:
      source: priority
      map: {emergency: "1", high: "2"}
      fallback: "3"
    Urgent: {source: priority, map: {emergency: yes}, fallback: no, type: boolean}
    Created: {source: created_at, type: date, format: "%d/%m/%Y"}
    Count: {source: attributes.count, type: integer, default: 0}
    Attachments:
      each: attachments
      fields:
        FileName: {source: item.filename, max_length: 8, truncate: true}
        Url: {source: item.url}
        Ref: {template: "{ref}/{item.filename}"}
    Urls: {each: attachments, item: {source: item.url}}
    Choice:
      choose:
        - when: {all: [{path: channel, in: [web, chatbot]}, {not: {path: customer.email, present: false}}]}
          value: online-with-email
        - when: {any: [{path: priority, equals: high}, {path: attributes.count, not_in: [1, 2]}]}
          value: other
""")
    m = load_mapping(path)
    att = [{"filename": "photo-of-bin.jpg", "content_type": "image/jpeg", "url": "https://hub.example/a.jpg"}]
    c = HubCase.model_validate(case_data(channel="web", attachments=att, attributes={"container": "garden",
                                                                                      "count": "3"}))
    tr = m.outbound(c)
    p = tr.payload
    assert p["ServiceTypeID"] == 99 and p["Priority"] == "3" and p["Urgent"] is False
    assert p["Created"] == "01/03/2026" and p["Count"] == 3
    assert p["Attachments"] == [{"FileName": "photo-of", "Url": "https://hub.example/a.jpg",
                                 "Ref": "WH-2026-000123/photo-of-bin.jpg"}]
    assert p["Urls"] == ["https://hub.example/a.jpg"]
    assert p["Choice"] == "online-with-email"
    assert len(tr.warnings) == 4  # three fallbacks and one truncation
    c2 = HubCase.model_validate(case_data(channel="phone", attributes={"count": 1}))
    p2 = m.outbound(c2).payload
    assert "Choice" not in p2 and "Attachments" not in p2 and p2["Count"] == 1


def test_bad_integer_at_runtime_names_field(write) -> None:
    path = write(HEAD + "outbound:\n  fields:\n    N: {source: attributes.n, type: integer}\n")
    m = load_mapping(path)
    with pytest.raises(MappingError) as info:
        m.outbound(HubCase.model_validate(case_data(attributes={"n": "twelve"})))
    assert info.value.field == "N" and "cannot convert a text of 6 characters to an integer" in str(info.value)
    assert "twelve" not in str(info.value)


def test_over_length_without_truncate_is_an_error(write) -> None:
    path = write(HEAD + "outbound:\n  fields:\n    D: {source: description, max_length: 5}\n")
    with pytest.raises(MappingError, match="longer than the maximum 5"):
        load_mapping(path).outbound(HubCase.model_validate(case_data()))


def test_template_filters(write) -> None:
    path = write(HEAD + """outbound:
  fields:
    T:
      template: "{{{customer.name|upper}}} {customer.name|lower|title} {location.uprn|default:'n/a'} \
{created_at|date:'%d %b %Y %H:%M'} {customer.phone|prefix:'tel '|suffix:'.'} 100%"
""")
    out = load_mapping(path).outbound(HubCase.model_validate(case_data(created_at="2026-06-01T12:00:00Z")))
    assert out.payload["T"] == "{ANN SMITH} Ann Smith n/a 01 Jun 2026 13:00 tel 01527 881288. 100%"


def test_required_filter_in_template(write) -> None:
    path = write(HEAD + "outbound:\n  fields:\n    T: {template: \"{location.usrn|required}\"}\n")
    with pytest.raises(MappingError, match=r"required value 'location\.usrn' is missing"):
        load_mapping(path).outbound(HubCase.model_validate(case_data()))


def test_not_a_case_gives_mapping_error() -> None:
    m = load_mapping(MISSED)
    with pytest.raises(MappingError):
        m.outbound(object())  # type: ignore[arg-type]


def test_version_changes_with_lookup_file(tmp_path: Path) -> None:
    (tmp_path / "l.yaml").write_text("entries: {a: 1}\n")
    (tmp_path / "m.yaml").write_text(HEAD + "lookups: {t: l.yaml}\noutbound:\n  fields:\n"
                                     "    X: {source: attributes.k, lookup: t}\n")
    v1 = load_mapping(tmp_path / "m.yaml").version
    (tmp_path / "l.yaml").write_text("entries: {a: 2}\n")
    assert load_mapping(tmp_path / "m.yaml").version != v1


def test_alias_bomb_and_oversize_are_refused(write) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for i in range(120):
        lines.append(f"b{i}: &b{i} [*{prev}, *{prev}]")
        prev = f"b{i}"
    with pytest.raises(ConfigErrors, match="aliases"):
        load_mapping(write("\n".join(lines) + "\n"))
    with pytest.raises(ConfigErrors, match="larger than"):
        load_mapping(write("#" * (MAX_YAML_BYTES + 10) + "\n", "big.yaml"))


def test_lookup_file_errors_point_into_the_lookup(write) -> None:
    write("entries:\n  a: 1\nentrys: {}\n", "lk.yaml")
    path = write(HEAD + "lookups: {t: lk.yaml}\noutbound:\n  fields:\n    X: {source: ref}\n")
    with pytest.raises(ConfigErrors) as info:
        load_mapping(path)
    assert "lk.yaml:3:1: entrys: unknown key 'entrys' (did you mean 'entries'?)" in str(info.value)


def test_admin_text_is_data_never_code(write) -> None:
    """Values, map keys, dict keys and template text that look like Python reach the payload verbatim."""
    evil = "x'); __import__('os').system('false'); ('"
    path = write(HEAD + f"""
outbound:
  fields:
    A: {{value: "{evil}"}}
    B:
      source: attributes.kind
      map: {{"{evil}": "matched", "__class__": "dunder"}}
      fallback: "none"
    C: {{template: "%s %(x)s {{{{ref}}}} {{ref|default:'\\"; raise SystemExit; \\"'}}"}}
    D: {{source: attributes.__class__}}
    E:
      choose:
        - when: {{path: attributes.kind, equals: "{evil}"}}
          value: chosen
        - value: other
""")
    m = load_mapping(path)
    p = m.outbound(HubCase.model_validate(case_data(attributes={"kind": evil, "__class__": "c"}))).payload
    assert p == {"A": evil, "B": "matched", "C": "%s %(x)s {ref} WH-2026-000123", "D": "c", "E": "chosen"}
    p2 = m.outbound(HubCase.model_validate(case_data(attributes={"kind": "__class__"}))).payload
    assert p2["B"] == "dunder" and p2["E"] == "other" and "D" not in p2


def test_conditions_lists_and_choose_fall_through(write) -> None:
    path = write(HEAD + """
outbound:
  fields:
    Pick:
      choose:
        - when: {not: {any: [{path: channel, equals: web}, {path: priority, in: [high, emergency]}]}}
          value: quiet
        - when: {all: [{path: customer.email, present: true}, {path: attributes.n, not_equals: 2}]}
          template: "mail {customer.email}"
    Phones:
      items:
        - {source: customer.phone}
        - {source: attributes.second_phone}
    First: {source: [attributes.a, attributes.b, customer.name]}
    Names: {each: attachments, item: {template: "{item.filename|upper}"}}
""")
    m = load_mapping(path)
    att = [{"filename": "a.jpg", "content_type": "image/jpeg", "url": "https://h/a"},
           {"filename": "b.jpg", "content_type": "image/jpeg", "url": "https://h/b"}]
    p = m.outbound(HubCase.model_validate(case_data(channel="web", attachments=att,
                                                    attributes={"b": "bee", "n": 3}))).payload
    assert p == {"Pick": "mail ann@example.org", "Phones": ["01527 881288"], "First": "bee",
                 "Names": ["A.JPG", "B.JPG"]}
    p = m.outbound(HubCase.model_validate(case_data(channel="web", attributes={"n": 2}))).payload
    assert "Pick" not in p and "Names" not in p and p["First"] == "Ann Smith"
    assert m.outbound(HubCase.model_validate(case_data())).payload["Pick"] == "quiet"
