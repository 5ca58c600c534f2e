"""The compiler of field rules: walks a validated mapping once, checking it, and writes the generated code."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from hubbridge.config.yamlfile import YamlDoc
from hubbridge.connectors.base import TargetField
from hubbridge.errors import ConfigError
from hubbridge.mappings.codegen import (
    GeneratedSource,
    is_safe_attribute,
    missing_hint,
    no_entry,
    not_allowed,
    too_long,
)
from hubbridge.mappings.compiled import FieldFailure, described
from hubbridge.mappings.convert import TARGET_TYPES, converter, is_empty, match_key
from hubbridge.mappings.model import HUB_STATUSES, Condition, FieldSpec, MappingFile, ValueType
from hubbridge.mappings.paths import ITEM_PREFIX, PathProblem, Shape, resolve
from hubbridge.mappings.template import (
    Placeholder,
    TemplateError,
    check_date_format,
    filter_function,
    parse,
)

Loc = Sequence[str | int]


@dataclass(frozen=True, slots=True)
class CompileScope:
    """Where the compiler stands: the key path in the mapping file, the field name errors give, the shapes
    paths are read from, the variable holding the current list item, and the indent of the code written."""

    loc: tuple[str | int, ...]
    field_name: str
    root: Shape
    item: Shape | None = None
    item_var: str = "it"
    indent: int = 0

    def at(self, *keys: str | int) -> CompileScope:
        """The same place, deeper in the mapping file."""
        return replace(self, loc=(*self.loc, *keys))

    def child(self, field_name: str) -> CompileScope:
        """The scope of one field of a record: its key under this one, its name joined to this name."""
        joined = f"{self.field_name}.{field_name}" if self.field_name else field_name
        return replace(self, loc=(*self.loc, field_name), field_name=joined)

    def named(self, field_name: str) -> CompileScope:
        return replace(self, field_name=field_name)

    def at_indent(self, indent: int) -> CompileScope:
        return replace(self, indent=indent)

    def indented(self, levels: int = 1) -> CompileScope:
        return replace(self, indent=self.indent + levels)

    def over_item(self, item: Shape, item_var: str) -> CompileScope:
        """The scope inside an `each:` loop, where `item.` paths read the list element."""
        return replace(self, item=item, item_var=item_var)


class FieldRuleCompiler:
    """Walks the validated model once, checking paths, lookups and target fields, and writes the code."""

    def __init__(self, doc: YamlDoc, spec: MappingFile, lookups: dict[str, dict[str, Any]]) -> None:
        self.doc = doc
        self.spec = spec
        self.lookups = lookups
        self.errors: list[ConfigError] = []
        self.source = GeneratedSource()

    def error(self, message: str, loc: Loc, hint: str | None = None) -> None:
        self.errors.append(self.doc.error(message, loc, hint))

    def const(self, value: Any) -> str:
        return self.source.const(value)

    def emit(self, indent: int, text: str) -> None:
        self.source.add(indent, text)

    # -- reading paths

    def read(self, path: str, scope: CompileScope, *, leaf: bool = True, check: bool = True,
             into: str | None = None) -> str | None:
        """Emit code reading `path` into a variable (None when anything on the way is missing)."""
        try:
            shape = resolve(path, scope.root, scope.item)
        except PathProblem as exc:
            if check:
                self.error(str(exc), scope.loc, exc.hint)
            raise
        if leaf and shape.kind in ("model", "list", "dict"):
            children = ", ".join(sorted(shape.children)) if shape.kind == "model" else None
            self.error(
                f"source path {path!r} is a {'list' if shape.kind == 'list' else 'structure'}, not a value",
                scope.loc,
                f"pick one of its fields: {children}" if children else "use 'each:' for lists",
            )
            return None
        parts = path.split(".")
        at_shape = scope.root
        start = "case"
        if parts[0] == ITEM_PREFIX:
            at_shape, start, parts = scope.item or Shape("leaf", Any), scope.item_var, parts[1:]
        result = into or self.source.var("r")
        if not parts:
            self.emit(scope.indent, f"{result} = {start}")
            return result
        for index, part in enumerate(parts):
            holder = start if index == 0 else result
            if at_shape.kind == "dict":
                expr = f"{holder}.get({self.const(part)})"
                at_shape = at_shape.item or Shape("leaf", Any)
            elif index == 0 and start == "case" and is_safe_attribute(part):
                expr = self.source.prologue.setdefault(part, f"case_{part}")
                at_shape = at_shape.children.get(part) or Shape("leaf", Any)
            else:
                expr = (f"{holder}.{part}" if is_safe_attribute(part)
                        else f"getattr({holder}, {self.const(part)}, None)")
                at_shape = at_shape.children.get(part) or Shape("leaf", Any)
            if index == 0:
                self.emit(scope.indent, f"{result} = {expr}")
            else:
                self.emit(scope.indent, f"if {result} is not None: {result} = {expr}")
        return result

    def try_read(self, path: str, scope: CompileScope, *, leaf: bool = True, into: str | None = None
                 ) -> str | None:
        try:
            return self.read(path, scope, leaf=leaf, into=into)
        except PathProblem:
            return None

    # -- conditions

    def condition(self, cond: Condition, scope: CompileScope) -> str:
        """Emit any statements the test needs and return a Python expression for it."""
        if cond.all is not None or cond.any is not None:
            group = cond.all if cond.all is not None else cond.any
            assert group is not None
            is_all = cond.all is not None
            group_key = "all" if is_all else "any"
            result = self.source.var("c")
            # all: true only if every test passes; any: false only if every test fails
            self.emit(scope.indent, f"{result} = {not is_all}")
            depth = scope.indent
            for index, sub in enumerate(group):
                test = self.condition(sub, scope.at(group_key, index).at_indent(depth))
                self.emit(depth, f"if {test}:" if is_all else f"if not ({test}):")
                depth += 1
            self.emit(depth, f"{result} = {is_all}")
            return result
        if cond.not_ is not None:
            test = self.condition(cond.not_, scope.at("not"))
            return f"(not {test})"
        assert cond.path is not None
        read_var = self.try_read(cond.path, scope.at("path"))
        if read_var is None:
            return "False"
        if cond.present is not None:
            present = f"({read_var} is not None and {read_var} != '' and {read_var} != [])"
            return present if cond.present else f"(not {present})"
        if cond.equals is not None:
            wanted = self.const(match_key(cond.equals))
            python_type = resolve(cond.path, scope.root, scope.item).py
            if isinstance(python_type, type) and issubclass(python_type, str):
                return f"({read_var} == {wanted})"  # text (or a text enum) compares equal to its key as it is
            return f"({read_var} == {wanted} or _key({read_var}) == {wanted})"
        if cond.not_equals is not None:
            return f"(_key({read_var}) != {self.const(match_key(cond.not_equals))})"
        if cond.in_ is not None:
            return f"(_key({read_var}) in {self.const(frozenset(match_key(choice) for choice in cond.in_))})"
        return f"(_key({read_var}) not in {self.const(frozenset(match_key(choice) for choice in cond.not_in or ()))})"

    # -- structures

    def record(self, rules: Mapping[str, FieldSpec], targets: Mapping[str, TargetField] | None,
               scope: CompileScope) -> str:
        """Emit code building one output structure (the payload or a nested complex type) into a dict."""
        if targets is not None:
            for field_name in rules:
                if field_name not in targets:
                    close = difflib.get_close_matches(field_name, list(targets), n=1)
                    hint = (f"did you mean {close[0]!r}?" if close
                            else "the back office accepts: " + ", ".join(sorted(targets)))
                    self.error(f"unknown target field {field_name!r} for plugin {self.spec.plugin!r}",
                               scope.at(field_name).loc, hint)
            for field_name, target in targets.items():
                if target.required and field_name not in rules:
                    self.error(f"target field {field_name!r} is required by {self.spec.plugin!r} but not mapped",
                               scope.loc, f"add '{field_name}:' under this 'fields:'")
        record_var = self.source.var("d")
        self.emit(scope.indent, f"{record_var} = {{}}")
        for field_name, rule in rules.items():
            target = targets.get(field_name) if targets is not None else None
            value_var = self.field(rule, target, scope.child(field_name))
            if value_var is not None:
                self.emit(scope.indent,
                          f"if {value_var} is not None: {record_var}[{self.const(field_name)}] = {value_var}")
        return record_var

    # -- fields

    def field(self, rule: FieldSpec, target: TargetField | None, scope: CompileScope) -> str | None:
        """Emit code computing one field's value; returns the variable holding it (None: not set)."""
        where_const = self.const(scope.field_name)
        self.emit(scope.indent, f"_where = {where_const}")
        body = scope
        result = ""
        if rule.when is not None:
            result = self.source.var("f")
            self.emit(scope.indent, f"{result} = None")
            test = self.condition(rule.when, scope.at("when"))
            self.emit(scope.indent, f"if {test}:")
            body = scope.indented()
        value_var = self.base(rule, target, body)
        if value_var is None:
            return None
        if rule.fields is not None or rule.each is not None or rule.choose is not None or rule.items is not None:
            self.emit(body.indent, f"_where = {where_const}")
        self.post(rule, target, body, value_var)
        if target is not None and target.repeated and rule.each is None and rule.items is None:
            self.emit(body.indent, f"if {value_var} is not None: {value_var} = [{value_var}]")
        if not result:
            return value_var
        self.emit(body.indent, f"{result} = {value_var}")
        return result

    def base(self, rule: FieldSpec, target: TargetField | None, scope: CompileScope) -> str | None:
        """Emit code producing a field's raw value, from whichever of source, template, fields... it gives."""
        key = scope.loc[-1]
        indent = scope.indent
        structured = target is not None and bool(target.children)
        if structured and rule.fields is None and rule.items is None and rule.choose is None:
            self.error(f"target field {key!r} is a structure", scope.loc,
                       "give its parts under 'fields:': " + ", ".join(sorted(target.children)))  # type: ignore[union-attr]
            return None
        if rule.fields is not None and target is not None and not target.children:
            self.error(f"target field {key!r} is a plain value, not a structure", scope.at("fields").loc)
            return None
        if target is not None and rule.each is not None and not target.repeated:
            self.error(f"target field {key!r} is not a list", scope.at("each").loc,
                       "map a single value with source/template instead")
        child_targets = dict(target.children) if target is not None and target.children else None
        value_var = self.source.var()

        if rule.value is not None:
            self.emit(indent, f"{value_var} = {self.const(rule.value)}")
            return value_var
        if rule.source is not None:
            paths = [rule.source] if isinstance(rule.source, str) else rule.source
            readable = True
            depth = indent
            for index, path in enumerate(paths):
                path_scope = scope.at("source") if isinstance(rule.source, str) else scope.at("source", index)
                if index:
                    self.emit(depth, f"if {value_var} is None or {value_var} == '':")
                    depth += 1
                if self.try_read(path, path_scope.at_indent(depth), into=value_var) is None:
                    readable = False
            return value_var if readable else None
        if rule.template is not None:
            return self.template(rule.template, scope.at("template"), value_var)
        if rule.fields is not None and rule.each is None:
            record_var = self.record(rule.fields, child_targets, scope.at("fields"))
            self.emit(indent, f"{value_var} = {record_var} or None")
            return value_var
        if rule.each is not None:
            return self.each(rule, target, child_targets, scope, value_var)
        if rule.items is not None:
            if target is not None and not target.repeated:
                self.error(f"target field {key!r} is not a list", scope.at("items").loc)
            element = TargetField(name=target.name, type=target.type, max_length=target.max_length,
                                  enum=target.enum, children=target.children) if target is not None else None
            list_var = self.source.var("l")
            self.emit(indent, f"{list_var} = []")
            complete = True
            for index, element_rule in enumerate(rule.items):
                element_scope = scope.at("items", index).named(f"{scope.field_name}[{index}]")
                element_var = self.field(element_rule, element, element_scope)
                if element_var is None:
                    complete = False
                else:
                    self.emit(indent, f"if {element_var} is not None: {list_var}.append({element_var})")
            self.emit(indent, f"{value_var} = {list_var} or None")
            return value_var if complete else None
        if rule.choose is not None:
            self.emit(indent, f"{value_var} = None")
            depth = indent
            for index, option in enumerate(rule.choose):
                option_scope = scope.at("choose", index)
                if option.when is not None:
                    test = self.condition(option.when, option_scope.at("when").at_indent(depth))
                    self.emit(depth, f"if {test}:")
                    # the option's own 'when' picked it; compile the option without it
                    option_var = self.field(option.model_copy(update={"when": None}), target,
                                            option_scope.at_indent(depth + 1))
                    if option_var is not None:
                        self.emit(depth + 1, f"{value_var} = {option_var}")
                    self.emit(depth, "else:")
                    depth += 1
                else:
                    option_var = self.field(option, target, option_scope.at_indent(depth))
                    if option_var is not None:
                        self.emit(depth, f"{value_var} = {option_var}")
                    break  # later options can never be picked
            if depth > indent:
                self.emit(depth, "pass")
            return value_var
        # only a default
        self.emit(indent, f"{value_var} = None")
        return value_var

    def each(self, rule: FieldSpec, target: TargetField | None, child_targets: dict[str, TargetField] | None,
             scope: CompileScope, value_var: str) -> str | None:
        """Emit a loop over a list in the case, building one output element per list item."""
        each_scope = scope.at("each")
        assert rule.each is not None
        try:
            shape = resolve(rule.each, scope.root, scope.item)
        except PathProblem as exc:
            self.error(str(exc), each_scope.loc, exc.hint)
            return None
        if shape.kind != "list":
            self.error(f"'each' needs a list; {rule.each!r} is not one", each_scope.loc,
                       "lists in a Hub case: attachments")
            return None
        sequence_var = self.read(rule.each, each_scope, leaf=False)
        item_shape = shape.item or Shape("leaf", Any)
        element_var = self.source.var("it")
        list_var = self.source.var("l")
        indent = scope.indent
        self.emit(indent, f"{value_var} = None")
        self.emit(indent, f"if {sequence_var}:")
        self.emit(indent + 1, f"{list_var} = []")
        self.emit(indent + 1, f"for {element_var} in {sequence_var}:")
        element_scope = scope.over_item(item_shape, element_var).indented(2).named(scope.field_name + "[]")
        if rule.fields is not None:
            one_var: str | None = self.record(rule.fields, child_targets, element_scope.at("fields"))
        else:
            assert rule.item is not None
            item_target = TargetField(name=str(scope.loc[-1]), type=target.type) if target is not None else None
            one_var = self.field(rule.item, item_target, element_scope.at("item"))
            if one_var is None:
                return None
        self.emit(indent + 2, f"if {one_var} is not None: {list_var}.append({one_var})")
        self.emit(indent + 1, f"if {list_var}: {value_var} = {list_var}")
        return value_var

    def template(self, text: str, scope: CompileScope, value_var: str) -> str | None:
        """Emit code rendering a template: placeholders read and filtered, then one %-format of the text."""
        try:
            parts = parse(text)
            for part in parts:
                if isinstance(part, Placeholder):
                    try:
                        resolve(part.path, scope.root, scope.item)
                    except PathProblem as exc:
                        raise TemplateError(str(exc), part.offset, exc.hint) from None
        except TemplateError as exc:
            self.error(f"template: {exc} (at character {exc.offset + 1})", scope.loc, exc.hint)
            return None
        indent = scope.indent
        literal: list[str] = []
        values: list[str] = []
        for part in parts:
            if isinstance(part, str):
                literal.append(part.replace("%", "%%"))
                continue
            # the same placeholder in straight-line code (not inside a condition or loop) is rendered once
            shared = ((part.path, part.filters) if indent == 0 and not part.path.startswith(ITEM_PREFIX + ".")
                      else None)
            if shared is not None and shared in self.source.rendered:
                values.append(self.source.rendered[shared])
                literal.append("%s")
                continue
            read_var = self.read(part.path, scope, leaf=False, check=False)
            assert read_var is not None
            if shared is not None:
                self.source.rendered[shared] = read_var
            for filter_name, argument in part.filters:
                if filter_name == "default":
                    self.emit(indent, f"if {read_var} is None or {read_var} == '': "
                                      f"{read_var} = {self.const(argument)}")
                elif filter_name == "oneline":
                    self.emit(indent, f"{read_var} = ' '.join(({read_var} if type({read_var}) is str "
                                      f"else _to_text({read_var})).split())")
                elif filter_name in ("prefix", "suffix"):
                    affix = self.const(argument)
                    as_text = f"({read_var} if type({read_var}) is str else _to_text({read_var}))"
                    joined = f"{affix} + {as_text}" if filter_name == "prefix" else f"{as_text} + {affix}"
                    self.emit(indent, f"{read_var} = '' if {read_var} is None or {read_var} == '' else {joined}")
                else:
                    filter_fn = self.const(filter_function(filter_name, argument, part.path))
                    self.emit(indent, f"{read_var} = {filter_fn}({read_var})")
            if not part.filters or part.filters[-1][0] in ("default", "required"):
                self.emit(indent, f"if type({read_var}) is not str: {read_var} = _to_text({read_var})")
            values.append(read_var)
            literal.append("%s")
        fmt = "".join(literal)
        if not values:
            self.emit(indent, f"{value_var} = {self.const(fmt.replace('%%', '%'))}")
        elif fmt == "%s":
            self.emit(indent, f"{value_var} = {values[0]}")
        else:
            self.emit(indent, f"{value_var} = {self.const(fmt)} % ({', '.join(values)},)")
        return value_var

    def post(self, rule: FieldSpec, target: TargetField | None, scope: CompileScope, value_var: str) -> None:
        """Emit the checks and conversions after a field's value is read: default, map, type, enum, length."""
        where, indent, loc = scope.field_name, scope.indent, scope.loc
        if rule.fields is not None or rule.each is not None or rule.choose is not None or rule.items is not None:
            if rule.required:
                failure = f"_Fail({self.const('required value is missing')}, {self.const(where)})"
                self.emit(indent, f"if {value_var} is None or {value_var} == '' or {value_var} == []: "
                                  f"raise {failure}")
            return

        table: dict[str, Any] | None = None
        label = ""
        if rule.map is not None:
            table, label = dict(rule.map), "map"
        elif rule.lookup is not None:
            table, label = self.lookup_table(rule.lookup, scope.at("lookup").loc), f"lookup {rule.lookup!r}"
        if table is not None and rule.ignore_case:
            table = {entry_key.casefold(): entry for entry_key, entry in table.items()}

        convert: Callable[[Any], Any] | None = None
        kind = rule.type
        if kind is None and target is not None:
            kind = TARGET_TYPES.get(target.type.lower().split(":")[-1])
        if rule.format is not None:
            try:
                check_date_format(rule.format)
            except TemplateError as exc:
                self.error(str(exc), scope.at("format").loc, exc.hint)
        try:
            zone = ZoneInfo(rule.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(rule.timezone, sorted(available_timezones()), n=1)
            self.error(f"unknown time zone {rule.timezone!r}", scope.at("timezone").loc,
                       f"did you mean {close[0]!r}?" if close else "e.g. Europe/London or UTC")
            zone = ZoneInfo("Europe/London")
        if kind is not None:
            convert = converter(kind, rule.format, zone, where)
            self.check_constants(rule, loc, convert, kind)

        allowed_keys: frozenset[str | None] | None = None
        shown = ""
        allowed = list(rule.enum or ()) or (list(target.enum) if target is not None and target.enum else [])
        if allowed:
            allowed_keys = frozenset(match_key(choice) for choice in allowed)
            shown = ", ".join(str(choice) for choice in allowed)
            for value, value_loc in self.constants(rule, loc):
                try:
                    shown_value = convert(value) if convert is not None else value
                except FieldFailure:
                    continue  # already reported by check_constants
                if match_key(shown_value) not in allowed_keys:
                    self.error(f"{value!r} is not one of the allowed values", value_loc, f"allowed: {shown}")

        limits = [length for length in (rule.max_length, target.max_length if target is not None else None)
                  if length]
        limit = min(limits) if limits else None
        if limit is not None:
            for value, value_loc in self.constants(rule, loc):
                if isinstance(value, str) and len(value) > limit and not rule.truncate:
                    self.error(f"{value!r} is longer than the target's {limit} characters", value_loc,
                               "shorten it, or set truncate: true")

        required = rule.required or (target is not None and target.required)
        if rule.value is not None and table is None:
            # a constant: convert and check it now, once, unless it needs the truncation warning per case
            try:
                folded = convert(rule.value) if convert is not None else rule.value
            except FieldFailure:
                return  # reported by check_constants
            too_long_now = limit is not None and isinstance(folded, str) and len(folded) > limit
            if not too_long_now and not (required and is_empty(folded)):
                # base() wrote `value = <constant>` as the line just before; write the converted one instead
                assert self.source.lines[-1].lstrip().startswith(f"{value_var} = ")
                self.source.lines[-1] = "    " * indent + f"{value_var} = {self.const(folded)}"
                return
        # templates always give text, so the None checks and the text conversion can go
        is_text = rule.template is not None
        empty = f"{value_var} == ''" if is_text else f"{value_var} is None or {value_var} == ''"
        if rule.default is not None:
            self.emit(indent, f"if {empty}: {value_var} = {self.const(rule.default)}")
            is_text = False  # the default may be a number
        if table is not None:
            on_miss = self.const(no_entry(table, label, rule, where))
            key_var = self.source.var("key")
            self.emit(indent, f"if {value_var} is not None:")
            self.emit(indent + 1, f"{key_var} = {value_var} if type({value_var}) is str else _key({value_var})")
            if rule.ignore_case:
                self.emit(indent + 1, f"{key_var} = {key_var}.casefold()")
            self.emit(indent + 1, f"{value_var} = {self.const(table)}.get({key_var}, _MISSING)")
            self.emit(indent + 1, f"if {value_var} is _MISSING: {value_var} = {on_miss}({key_var}, w)")
            is_text = False
        if convert is not None and not (is_text and kind is ValueType.STRING):
            already = {ValueType.STRING: str, ValueType.INTEGER: int, ValueType.NUMBER: float,
                       ValueType.BOOLEAN: bool}.get(kind)  # type: ignore[arg-type]
            if is_text:
                guard = f"if type({value_var}) is not {self.const(already)}: " if already is not None else ""
                self.emit(indent, f"{guard}{value_var} = {self.const(convert)}({value_var})")
                is_text = False
            elif already is not None:
                self.emit(indent, f"if {value_var} is not None and type({value_var}) is not {self.const(already)}: "
                                  f"{value_var} = {self.const(convert)}({value_var})")
            else:
                self.emit(indent, f"if {value_var} is not None: {value_var} = {self.const(convert)}({value_var})")
        if allowed_keys is not None:
            refuse = self.const(not_allowed(where, shown))
            self.emit(indent, f"if {value_var} is not None and _key({value_var}) not in "
                              f"{self.const(allowed_keys)}: raise {refuse}({value_var})")
        if limit is not None:
            self.emit(indent, f"if type({value_var}) is str and len({value_var}) > {int(limit)}: "
                              f"{value_var} = {self.const(too_long(where, limit, rule.truncate))}({value_var}, w)")
        if required:
            failure = (f"_Fail({self.const('required value is missing')}, {self.const(where)}, "
                       f"{self.const(missing_hint(rule))})")
            self.emit(indent, f"if {value_var} == '': raise {failure}" if is_text
                      else f"if {value_var} is None or {value_var} == '': raise {failure}")

    # -- checks on the fixed values in the file

    def constants(self, rule: FieldSpec, loc: Loc) -> list[tuple[Any, list[str | int]]]:
        """The fixed values a field can produce (value, default, map values, fallback), with locations."""
        found: list[tuple[Any, list[str | int]]] = []
        if rule.value is not None:
            found.append((rule.value, [*loc, "value"]))
        if rule.default is not None and rule.map is None and rule.lookup is None:
            found.append((rule.default, [*loc, "default"]))
        if rule.map is not None:
            found.extend((mapped, [*loc, "map", map_key]) for map_key, mapped in rule.map.items()
                         if mapped is not None)
        if rule.has_fallback and rule.fallback is not None:
            found.append((rule.fallback, [*loc, "fallback"]))
        return found

    def check_constants(self, rule: FieldSpec, loc: Loc, convert: Callable[[Any], Any], kind: ValueType) -> None:
        for value, value_loc in self.constants(rule, loc):
            try:
                convert(value)
            except FieldFailure as failure:
                # a constant of the mapping file, not a case value: safe, and needed, to show
                message = failure.message.replace(described(value), repr(value), 1)
                self.error(f"{message} (this field is {kind.value})", value_loc)

    def check_hub_statuses(self, rule: FieldSpec, loc: Loc) -> None:
        """Refuse fixed values and lookup entries of `inbound.status` that are not Hub statuses."""
        for value, value_loc in self.constants(rule, loc):
            if str(value) not in HUB_STATUSES:
                close = difflib.get_close_matches(str(value), HUB_STATUSES, n=1)
                self.error(f"{value!r} is not a Hub status", value_loc,
                           f"did you mean {close[0]!r}?" if close else "Hub statuses: " + ", ".join(HUB_STATUSES))
        if rule.lookup is not None:
            lookup_loc = [*loc, "lookup"]
            for entry_key, value in (self.lookup_table(rule.lookup, lookup_loc) or {}).items():
                if str(value) not in HUB_STATUSES:
                    self.error(f"lookup {rule.lookup!r} maps {entry_key!r} to {value!r}, which is not a Hub status",
                               lookup_loc, "Hub statuses: " + ", ".join(HUB_STATUSES))

    def lookup_table(self, ref: str, loc: Loc) -> dict[str, Any] | None:
        """The table a `lookup:` names (`table` or `table.column`), or None after reporting why not."""
        name, _, column = ref.partition(".")
        if name not in self.lookups:
            close = difflib.get_close_matches(name, list(self.lookups), n=1)
            hint = f"did you mean {close[0]!r}?" if close else (
                "declare it under 'lookups:' at the top of the file" if not self.lookups
                else "declared lookups: " + ", ".join(sorted(self.lookups)))
            self.error(f"unknown lookup table {name!r}", loc, hint)
            return None
        entries = self.lookups[name]
        if not column:
            nested = [entry_key for entry_key, entry in entries.items() if isinstance(entry, dict)]
            if nested:
                columns = sorted({column_name for entry_key in nested for column_name in entries[entry_key]})
                self.error(f"lookup {name!r} has columns; say which one", loc,
                           "e.g. " + ", ".join(f"{name}.{column_name}" for column_name in columns[:3]))
                return None
            return dict(entries)
        table = {}
        for entry_key, entry in entries.items():
            if not isinstance(entry, dict) or column not in entry:
                self.error(f"lookup {name!r} entry {entry_key!r} has no column {column!r}", loc)
                return None
            table[entry_key] = entry[column]
        return table
