"""Load a mapping file and its lookups, and compile them into plain Python functions.

No YAML model is walked per case: the field rules compile once (see `fieldrules` and `codegen`) into a
`CompiledMapping`. `CompiledMapping`, `Translation` and `InboundTranslation` are importable from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hubbridge.case import FollowUpKind
from hubbridge.config.yamlfile import YamlDoc, plain, read_yaml_source
from hubbridge.connectors.base import TargetField
from hubbridge.errors import ConfigError, ConfigErrors
from hubbridge.mappings.codegen import GeneratedSource
from hubbridge.mappings.compiled import (
    CompiledMapping,
    FollowUpContext,
    InboundTranslation,
    Translation,
    ValueFn,
    followup_context,
)
from hubbridge.mappings.fieldrules import CompileScope, FieldRuleCompiler, Loc
from hubbridge.mappings.model import Condition, FieldSpec, LookupFile, MappingFile
from hubbridge.mappings.paths import CASE_SHAPE, FOLLOWUP_SHAPE, UPDATE_SHAPE

__all__ = [
    "CompiledMapping",
    "FollowUpContext",
    "InboundTranslation",
    "Translation",
    "content_version",
    "followup_context",
    "load_mapping",
]

INBOUND_PARTS = ("status", "note", "resolution")
FOLLOWUP_KIND_VALUES = tuple(kind.value for kind in FollowUpKind)


def load_lookups(
    doc: YamlDoc, spec: MappingFile, base: Path
) -> tuple[dict[str, dict[str, Any]], list[tuple[Path, bytes]]]:
    """Read every lookup file the mapping declares: its entries by table name, and each file's bytes."""
    tables: dict[str, dict[str, Any]] = {}
    files: list[tuple[Path, bytes]] = []
    errors: list[ConfigError] = []
    for name, relative in spec.lookups.items():
        if Path(relative).is_absolute():
            errors.append(doc.error("lookup files are given relative to the mapping file", ["lookups", name]))
            continue
        lookup_path = (base / relative).resolve()
        # the mappings directory is the one holding the area folders (lookups sit in its `lookups/`): a path out
        # of it (../../, a symlink) could read any YAML on the host and send its values to a back office
        root = base.resolve().parent
        if not lookup_path.is_relative_to(root):
            errors.append(doc.error(f"lookup file {relative!r} is outside the mappings directory {root}",
                                    ["lookups", name]))
            continue
        if not lookup_path.is_file():
            errors.append(doc.error(f"lookup file {relative!r} not found (looked at {lookup_path})",
                                    ["lookups", name]))
            continue
        try:
            lookup_doc, data = read_yaml_source(lookup_path)
            lookup_spec = lookup_doc.validate(LookupFile)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        except ConfigError as exc:
            errors.append(exc)
            continue
        tables[name] = dict(plain(lookup_spec.entries))
        files.append((lookup_path, data))
    if errors:
        raise ConfigErrors(errors)
    return tables, files


def check_kind_conditions(compiler: FieldRuleCompiler, rules: dict[str, FieldSpec], loc: Loc) -> None:
    """Refuse a condition on `kind` naming no follow-up kind: a misspelt kind would silently never match."""

    def check_condition(cond: Condition, at: list[str | int]) -> None:
        if cond.path == "kind":
            named: list[tuple[list[str | int], object]] = [(["equals"], cond.equals),
                                                           (["not_equals"], cond.not_equals)]
            named += [(["in", index], value) for index, value in enumerate(cond.in_ or ())]
            named += [(["not_in", index], value) for index, value in enumerate(cond.not_in or ())]
            for keys, value in named:
                if value is not None and str(value) not in FOLLOWUP_KIND_VALUES:
                    compiler.error(f"{value!r} is not a follow-up kind", [*at, *keys],
                                   "follow-up kinds: " + ", ".join(FOLLOWUP_KIND_VALUES))
        for group_key in ("all", "any"):
            for index, sub in enumerate(getattr(cond, group_key) or ()):
                check_condition(sub, [*at, group_key, index])
        if cond.not_ is not None:
            check_condition(cond.not_, [*at, "not"])

    def check_rule(rule: FieldSpec, at: list[str | int]) -> None:
        if rule.when is not None:
            check_condition(rule.when, [*at, "when"])
        for name, child in (rule.fields or {}).items():
            check_rule(child, [*at, "fields", name])
        for list_key in ("choose", "items"):
            for index, option in enumerate(getattr(rule, list_key) or ()):
                check_rule(option, [*at, list_key, index])
        if rule.item is not None:
            check_rule(rule.item, [*at, "item"])

    for name, rule in rules.items():
        check_rule(rule, [*loc, name])


def content_version(contents: Sequence[tuple[Path, bytes]]) -> str:
    """The mapping version: first 12 hex digits of a sha256 over the mapping file and its lookups."""
    digest = hashlib.sha256()
    for path, data in contents:
        digest.update(path.name.encode())
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:12]


def load_mapping(path: Path | str, target_fields: Mapping[str, TargetField] | None = None) -> CompiledMapping:
    """Validate and compile one mapping file; raises ConfigErrors listing every problem with file:line:col.

    With `target_fields` (from the connector) every output field is checked against what the back office
    accepts; without it only the mapping itself and its source paths are checked.
    """
    mapping_path = Path(path)
    try:
        doc, data = read_yaml_source(mapping_path)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    if not isinstance(doc.data, dict):
        raise ConfigErrors([doc.error("a mapping file is a YAML mapping with 'mapping:', 'service:', "
                                      "'plugin:' and 'outbound:'")])
    spec = doc.validate(MappingFile)
    lookups, lookup_files = load_lookups(doc, spec, mapping_path.resolve().parent)
    compiler = FieldRuleCompiler(doc, spec, lookups)
    outbound_scope = CompileScope(loc=("outbound", "fields"), field_name="", root=CASE_SHAPE)
    payload_var = compiler.record(spec.outbound.fields, target_fields, outbound_scope)
    outbound_source = compiler.source

    inbound_sources: list[tuple[GeneratedSource, str, str] | None] = []
    for part in INBOUND_PARTS:
        rule: FieldSpec | None = getattr(spec.inbound, part)
        if rule is None:
            inbound_sources.append(None)
            continue
        if part == "status":
            compiler.check_hub_statuses(rule, ["inbound", part])
        compiler.source = GeneratedSource()
        scope = CompileScope(loc=("inbound", part), field_name=f"inbound.{part}", root=UPDATE_SHAPE)
        result_var = compiler.field(rule, None, scope)
        inbound_sources.append(None if result_var is None else (compiler.source, result_var, f"inbound.{part}"))

    followup_source: GeneratedSource | None = None
    followup_var = ""
    if spec.followups is not None:
        # connectors declare no follow-up request fields, so target names and types are not checked here
        compiler.source = followup_source = GeneratedSource()
        followup_scope = CompileScope(loc=("followups", "fields"), field_name="followups", root=FOLLOWUP_SHAPE)
        followup_var = compiler.record(spec.followups.fields, None, followup_scope)
        check_kind_conditions(compiler, spec.followups.fields, ["followups", "fields"])
    if compiler.errors:
        raise ConfigErrors(compiler.errors)
    build = outbound_source.function(payload_var, "outbound")
    status_fn, note_fn, resolution_fn = (
        None if compiled is None else compiled[0].function(compiled[1], compiled[2]) for compiled in inbound_sources
    )
    inbound_fns: tuple[ValueFn | None, ValueFn | None, ValueFn | None] = (status_fn, note_fn, resolution_fn)
    followup_build = None if followup_source is None else followup_source.function(followup_var, "followups")
    contents = [(mapping_path.resolve(), data), *lookup_files]
    return CompiledMapping(
        name=spec.mapping,
        version=content_version(contents),
        path=mapping_path,
        service=spec.service,
        plugin=spec.plugin,
        service_codes=frozenset(spec.inbound.service_codes),
        build=build,
        inbound_fns=inbound_fns,
        files=tuple(file_path for file_path, _ in contents),
        spec=spec,
        followup_build=followup_build,
    )
