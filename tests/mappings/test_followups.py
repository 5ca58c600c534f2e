"""The `followups:` section of a mapping: compiled once like `outbound:`, run against a follow-up context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hubbridge.case import FollowUpKind, HubCase, HubFollowUp
from hubbridge.errors import ConfigErrors, MappingError
from hubbridge.mappings.cli import SCHEMA_DIR, mapping_files, schemas
from hubbridge.mappings.compile import CompiledMapping, load_mapping
from hubbridge.mappings.compiled import followup_context
from tests.mappings.conftest import SHIPPED, case_data

HEAD = "mapping: t\nservice: refuse.missed-collection\nplugin: bartec\noutbound:\n  fields:\n    X: {source: ref}\n"
PHOTO = {"filename": "bin.jpg", "content_type": "image/jpeg", "url": "https://hub.example.org/files/1/bin.jpg"}
LETTER = {"filename": "letter.pdf", "content_type": "application/pdf", "content": "JVBERi0xLjQK"}
SECRET_NOTE = "Ann Smith at 1 High Street is away until May"

FOLLOWUPS = """
followups:
  fields:
    Kind: {source: kind}
    Text:
      choose:
        - when: {path: kind, equals: evidence}
          template: "Evidence: {document.filename}{note|prefix:' - '} (Hub ref {case.ref})"
        - when: {path: kind, in: [cancel, reopen]}
          template: "{kind|title} by {author|default:'the Hub'}: {note|default:'no reason given'}"
        - when: {path: kind, equals: amendment}
          template: "New description: {changes.description}"
        - template: "{note|default:'-'}"
    Priority:
      when: {path: kind, equals: priority}
      source: priority
      map: {emergency: "1", high: "2", normal: "3", low: "4"}
    MediaUrl: {source: document.url}
    Files:
      each: attachments
      fields:
        FileName: {source: item.filename}
        Type: {source: item.content_type}
        Url: {source: item.url}
    Job: {source: backoffice_ref}
    Key: {source: key}
    Uprn: {source: case.location.uprn, default: none}
    CaseFiles:
      each: case.attachments
      item: {source: item.url}
    At: {source: occurred_at, type: datetime, format: "%Y-%m-%d %H:%M"}
"""


def followup(kind: str, **over: Any) -> HubFollowUp:
    needs: dict[str, dict[str, Any]] = {
        "note": {"note": "Bin is behind the gate"},
        "evidence": {"attachments": [PHOTO, LETTER], "note": "photo of the bin"},
        "amendment": {"changes": {"description": "Green bin not emptied"}},
        "priority": {"priority": "high"},
        "cancel": {"note": "collected after all", "author": "Hub officer"},
        "reopen": {},
    }
    data = {"ref": "WH-2026-000123", "kind": kind, "occurred_at": "2026-07-01T08:15:00+00:00", **needs[kind], **over}
    return HubFollowUp.model_validate(data)


def context(kind: str, case: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    return followup_context(followup(kind, **over), case or case_data(), "SR-778", f"WH-2026-000123/{kind}")


@pytest.fixture
def mapping(write) -> CompiledMapping:
    return load_mapping(write(HEAD + FOLLOWUPS))


COMMON = {"Job": "SR-778", "Uprn": "none", "At": "2026-07-01 09:15"}  # 09:15 in Europe/London summer time


@pytest.mark.parametrize(("kind", "expected"), [
    ("note", {"Text": "Bin is behind the gate"}),
    ("evidence", {
        "Text": "Evidence: bin.jpg - photo of the bin (Hub ref WH-2026-000123)",
        "MediaUrl": PHOTO["url"],
        "Files": [
            {"FileName": "bin.jpg", "Type": "image/jpeg", "Url": PHOTO["url"]},
            {"FileName": "letter.pdf", "Type": "application/pdf"},
        ],
    }),
    ("amendment", {"Text": "New description: Green bin not emptied"}),
    ("priority", {"Text": "-", "Priority": "2"}),
    ("cancel", {"Text": "Cancel by Hub officer: collected after all"}),
    ("reopen", {"Text": "Reopen by the Hub: no reason given"}),
])
def test_each_kind_fills_its_fields(mapping: CompiledMapping, kind: str, expected: dict[str, Any]) -> None:
    assert mapping.has_followups
    fields = mapping.followup(context(kind))
    assert fields == {"Kind": kind, "Key": f"WH-2026-000123/{kind}", **COMMON, **expected}


def test_case_paths_and_a_model_context(mapping: CompiledMapping) -> None:
    case = case_data(location={"uprn": "100120", "description": "by the post box"},
                     attachments=[{"filename": "a.jpg", "content_type": "image/jpeg", "url": "https://h.example/a"}])
    ctx = followup_context(followup("note"), HubCase.model_validate(case), "SR-1", "WH-2026-000123/7")
    fields = mapping.followup(ctx)
    assert fields["Uprn"] == "100120" and fields["CaseFiles"] == ["https://h.example/a"] and fields["Job"] == "SR-1"


def test_document_is_the_first_file_and_a_file_without_url_gives_no_media_url(mapping: CompiledMapping) -> None:
    fields = mapping.followup(context("evidence", attachments=[LETTER, PHOTO]))
    assert "MediaUrl" not in fields and fields["Text"].startswith("Evidence: letter.pdf - ")
    assert [f["FileName"] for f in fields["Files"]] == ["letter.pdf", "bin.jpg"]


def test_the_stored_shape_of_a_followup_reads_too(mapping: CompiledMapping) -> None:
    # the worker stores files without their bytes (a bytes-only file is then a bare name) and adds keys of
    # its own, such as previous_priority
    stored = followup("evidence").dump()
    stored["attachments"] = [{k: v for k, v in a.items() if k != "content"} for a in stored["attachments"]]
    stored["previous_priority"] = "normal"
    fields = mapping.followup(followup_context(stored, case_data(), "SR-778", "WH-2026-000123/4"))
    assert fields["Files"] == [{"FileName": "bin.jpg", "Type": "image/jpeg", "Url": PHOTO["url"]},
                               {"FileName": "letter.pdf", "Type": "application/pdf"}]


def test_previous_priority_is_a_path(write) -> None:
    m = load_mapping(write(HEAD + "followups:\n  fields:\n    T: {template: '{previous_priority} -> {priority}'}\n"))
    stored = {**followup("priority").dump(), "previous_priority": "low"}
    assert m.followup(followup_context(stored, case_data(), "SR-1", "k/1")) == {"T": "low -> high"}


def test_a_mapping_without_the_section_has_no_followups(write) -> None:
    m = load_mapping(write(HEAD))
    assert not m.has_followups and m.followup(context("note")) == {}


def test_the_version_changes_with_the_followups_section(write) -> None:
    first = load_mapping(write(HEAD + FOLLOWUPS)).version
    second = load_mapping(write(HEAD + FOLLOWUPS.replace("default: none", "default: unknown"))).version
    assert first != second


@pytest.mark.parametrize(("field", "line", "message"), [
    ("A: {source: description}", 10, "did you mean 'case.description'?"),
    ("A: {source: customer.nam}", 10, "did you mean 'case.customer.nam'?"),
    ("A: {source: document.filenam}", 10, "did you mean 'document.filename'?"),
    ("A: {source: attachments}", 10, "is a list, not a value"),
    ("A: {source: attachments.0.url}", 10, "goes into a list"),
    ("A: {template: 'x {case.customer.nam}'}", 10, "did you mean 'case.customer.name'?"),
    ("A: {source: item.url}", 10, "only allowed inside 'each:'"),
    ("A: {source: document.content}", 10, "no 'content' in 'document'"),
    ("A:\n      each: notes\n      item: {source: item}", 11, "no 'notes' at the top of the follow-up"),
    ("A:\n      when: {path: kind, equals: evidnce}\n      value: x", 11, "'evidnce' is not a follow-up kind"),
    ("A:\n      when: {path: kind, in: [note, cancelled]}\n      value: x", 11, "'cancelled' is not a follow-up kind"),
])
def test_bad_followup_paths_fail_at_load_with_file_and_line(write, field: str, line: int, message: str) -> None:
    path = write(HEAD + f"followups:\n  fields:\n    B: {{source: kind}}\n    {field}\n")
    with pytest.raises(ConfigErrors) as info:
        load_mapping(path)
    text = str(info.value)
    assert f"{path}:{line}:" in text and message in text


def test_a_case_path_without_case_prefix_gets_the_whole_error(write) -> None:
    path = write(HEAD + "followups:\n  fields:\n    Text: {source: description}\n")
    with pytest.raises(ConfigErrors) as info:
        load_mapping(path)
    assert str(info.value) == (f"{path}:9:12: followups.fields.Text.source: unknown source path 'description': "
                               "no 'description' at the top of the follow-up (did you mean 'case.description'?)")


def test_outbound_paths_are_not_followup_paths(write) -> None:
    # `key` and `document` exist only for follow-ups; `case.` exists only for them too
    path = write(HEAD.replace("X: {source: ref}", "X: {source: document.url}"))
    with pytest.raises(ConfigErrors, match=r"m\.yaml:6:.*no 'document' at the top of the case"):
        load_mapping(path)


def test_a_failure_names_mapping_kind_and_field_but_no_value(write) -> None:
    path = write(HEAD + """followups:
  fields:
    Code:
      source: note
      map: {urgent: U}
    Name: {source: document.filename, required: true}
""")
    m = load_mapping(path)
    with pytest.raises(MappingError) as info:
        m.followup(context("note", note=SECRET_NOTE))
    text = str(info.value)
    assert info.value.mapping == "t" and info.value.field == "followups.Code" and "note follow-up" in text
    assert info.value.ref == "WH-2026-000123/note"
    for value in (SECRET_NOTE, "Ann Smith", "High Street"):
        assert value not in text
    with pytest.raises(MappingError) as info:
        m.followup(context("note", note="urgent"))
    assert info.value.field == "followups.Name" and "required value is missing" in str(info.value)


def test_a_malformed_context_is_one_mapping_error_without_its_values(mapping: CompiledMapping) -> None:
    ctx = context("note")
    ctx["case"] = {**ctx["case"], "customer": {"name": "Ann Smith", "email": "not-an-address Ann Smith"}}
    with pytest.raises(MappingError) as info:
        mapping.followup(ctx)
    text = str(info.value)
    assert "case.customer.email" in text and "note follow-up" in text and "Ann Smith" not in text


def test_admin_text_in_followups_is_data_never_code(write) -> None:
    evil = "x'); __import__('os').system('false'); ('"
    m = load_mapping(write(HEAD + f"""followups:
  fields:
    A: {{value: "{evil}"}}
    B: {{source: changes.__class__}}
    C: {{template: "%s {{{{note}}}} {{note|default:'\\"; raise SystemExit; \\"'}}"}}
"""))
    fields = m.followup(context("amendment", changes={"__class__": "c"}))
    assert fields == {"A": evil, "B": "c", "C": "%s {note} \"; raise SystemExit; \""}


def test_the_schema_has_the_followups_section() -> None:
    generated = schemas()["mapping.schema.json"]
    assert "followups" in generated["properties"] and "FollowUps" in generated["$defs"]
    assert json.loads((SCHEMA_DIR / "mapping.schema.json").read_text()) == generated


SHIPPED_FOLLOWUPS = [p for p in mapping_files([SHIPPED]) if "followups:" in p.read_text()]


def test_the_highways_and_refuse_mappings_have_followups() -> None:
    areas = {p.parent.name for p in SHIPPED_FOLLOWUPS}
    assert {"highways", "refuse"} <= areas and len(SHIPPED_FOLLOWUPS) >= 8


@pytest.mark.parametrize("path", SHIPPED_FOLLOWUPS, ids=lambda p: p.name)
def test_shipped_followups_for_every_kind(path: Path) -> None:
    m = load_mapping(path)
    assert m.has_followups
    case = case_data(ref="WH-2026-000456", service=m.service)
    evidence = m.followup(context("evidence", case))
    for kind in FollowUpKind:
        if kind is not FollowUpKind.EVIDENCE:
            assert m.followup(context(kind.value, case)) == {}, kind  # the Hub's own wording goes instead
    if m.plugin == "open311":
        assert evidence == {
            "media_url": [PHOTO["url"]],  # LETTER was sent as bytes only
            "description": "The customer sent bin.jpg: photo of the bin (Hub ref WH-2026-000456)",
        }
    else:
        assert m.plugin == "bartec"
        assert evidence == {"Name": "bin.jpg", "Comment": "photo of the bin (Hub ref WH-2026-000456)"}
        bare = m.followup(context("evidence", case, note=None, attachments=[LETTER]))
        assert bare == {"Name": "letter.pdf", "Comment": "Evidence from the customer (Hub ref WH-2026-000456)"}


def test_shipped_comment_is_cut_to_bartecs_500_characters() -> None:
    m = load_mapping(SHIPPED / "refuse" / "missed-collection.bartec.yaml")
    result = m.followup_translation(context("evidence", note="word " * 200))
    assert len(result.payload["Comment"]) == 500 and result.warnings == [
        "followups.Comment: truncated from 1024 to 500 characters"]
