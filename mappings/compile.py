"""Compile a validated mapping file into plain Python functions: no YAML model is walked per case."""

from __future__ import annotations

import difflib
import hashlib
import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from hubbridge.case import HubCase, HubStatus
from hubbridge.config.yamlfile import MAX_YAML_BYTES, YamlDoc, parse_yaml, plain
from hubbridge.connectors.base import BackOfficeUpdate, TargetField
from hubbridge.errors import ConfigError, ConfigErrors, MappingError
from hubbridge.mappings.model import HUB_STATUSES, Condition, FieldSpec, LookupFile, MappingFile, ValueType
from hubbridge.mappings.paths import CASE_SHAPE, ITEM_PREFIX, UPDATE_SHAPE, PathProblem, Shape, resolve
from hubbridge.mappings.template import (
    Placeholder,
    TemplateError,
    TemplateValueMissing,
    check_date_format,
    filter_function,
    parse,
    to_text,
)

ValueFn = Callable[[Any, Any, list], Any]
Loc = list[str | int]

_TARGET_TYPES = {
    "string": ValueType.STRING, "str": ValueType.STRING, "token": ValueType.STRING,
    "normalizedstring": ValueType.STRING, "text": ValueType.STRING,
    "int": ValueType.INTEGER, "integer": ValueType.INTEGER, "long": ValueType.INTEGER,
    "short": ValueType.INTEGER, "unsignedint": ValueType.INTEGER,
    "decimal": ValueType.NUMBER, "float": ValueType.NUMBER, "double": ValueType.NUMBER,
    "number": ValueType.NUMBER,
    "boolean": ValueType.BOOLEAN, "bool": ValueType.BOOLEAN,
    "date": ValueType.DATE,
    "datetime": ValueType.DATETIME,
}


class _Fail(Exception):
    """Internal: a field could not be filled; becomes a MappingError naming case, mapping and field."""

    def __init__(self, message: str, field: str, hint: str | None = None) -> None:
        self.message = message
        self.field = field
        self.hint = hint
        super().__init__(message)


@dataclass(slots=True)
class Translation:
    """The back-office payload built for one case, and what the admin should know about it."""

    payload: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class InboundTranslation:
    """A back-office update in Hub terms."""

    status: HubStatus | None
    note: str | None
    resolution: str | None
    warnings: list[str] = field(default_factory=list)


class CompiledMapping:
    """A mapping ready to run: `outbound(case)` and `inbound(update)` call generated plain functions."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        path: Path,
        service: str,
        plugin: str,
        service_codes: frozenset[str],
        build: Callable[[Any, Any, list], dict[str, Any]],
        inbound_fns: tuple[ValueFn | None, ValueFn | None, ValueFn | None],
        files: tuple[Path, ...],
        spec: MappingFile,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.service = service
        self.plugin = plugin
        self.service_codes = service_codes
        self.files = files
        self.spec = spec
        self._build = build
        self._status, self._note, self._resolution = inbound_fns

    def __repr__(self) -> str:
        return f"<CompiledMapping {self.name} {self.version} {self.path}>"

    def outbound(self, case: HubCase) -> Translation:
        """Translate a Hub case into the back-office payload; raises only MappingError."""
        warnings: list[str] = []
        try:
            payload = self._build(case, None, warnings)
        except _Fail as fail:
            raise MappingError(
                fail.message, ref=_ref(case), mapping=self.name, field=fail.field, hint=fail.hint
            ) from None
        except Exception as exc:  # a bug or an object that is not a HubCase: still one clear error
            raise MappingError(
                f"cannot translate: {type(exc).__name__}: {exc}", ref=_ref(case), mapping=self.name,
                field="outbound",
            ) from exc
        return Translation(payload, warnings)

    def inbound(self, update: BackOfficeUpdate) -> InboundTranslation:
        """Translate a back-office update into a Hub status, note and resolution; raises only MappingError."""
        warnings: list[str] = []
        which = "inbound.status"
        try:
            status = None
            if self._status is not None:
                raw = self._status(update, None, warnings)
                status = None if raw is None else HubStatus(raw)
            which = "inbound.note"
            note = self._note(update, None, warnings) if self._note is not None else None
            which = "inbound.resolution"
            resolution = self._resolution(update, None, warnings) if self._resolution is not None else None
        except _Fail as fail:
            raise MappingError(
                fail.message, ref=_update_ref(update), mapping=self.name, field=fail.field, hint=fail.hint
            ) from None
        except Exception as exc:
            raise MappingError(
                f"cannot translate update: {type(exc).__name__}: {exc}", ref=_update_ref(update),
                mapping=self.name, field=which,
            ) from exc
        return InboundTranslation(
            status,
            None if note is None else to_text(note),
            None if resolution is None else to_text(resolution),
            warnings,
        )


def _ref(case: Any) -> str | None:
    ref = getattr(case, "ref", None)
    return ref if isinstance(ref, str) else None


def _update_ref(update: Any) -> str | None:
    hub = getattr(update, "hub_ref", None)
    if isinstance(hub, str):
        return hub
    bo = getattr(update, "backoffice_ref", None)
    return f"back-office {bo}" if isinstance(bo, str) else None


# ---------------------------------------------------------------- value helpers


def _key(v: Any) -> str | None:
    """How a value is matched against map keys, lookup keys and condition values."""
    if v is None:
        return None
    t = type(v)
    if t is str:
        return v
    if t is bool:
        return "true" if v else "false"
    if isinstance(v, Enum):
        return str(v.value)
    if t is float and v.is_integer():
        return str(int(v))
    return str(v)


def _empty(v: Any) -> bool:
    return v is None or v == "" or v == []


_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


def _converter(kind: ValueType, fmt: str | None, tz: ZoneInfo, where: str) -> Callable[[Any], Any]:
    """A function converting a present value to `kind`, raising _Fail when it cannot."""

    def bad(v: Any, what: str) -> _Fail:
        shown = repr(v)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return _Fail(f"cannot convert {shown} to {what}", where)

    if kind is ValueType.STRING:
        def to_string(v: Any) -> str:
            if type(v) is str:
                return v
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, Enum):
                return str(v.value)
            if isinstance(v, datetime):
                return v.astimezone(tz).isoformat()
            if isinstance(v, float) and v.is_integer():
                return str(int(v))
            return str(v)

        return to_string
    if kind is ValueType.INTEGER:
        def to_int(v: Any) -> int:
            t = type(v)
            if t is int:
                return v
            if t is bool:
                return int(v)
            if t is float and v.is_integer():
                return int(v)
            if t is str:
                s = v.strip()
                if s.lstrip("-").isdigit() and len(s) < 30:
                    return int(s)
            raise bad(v, "an integer")

        return to_int
    if kind is ValueType.NUMBER:
        def to_number(v: Any) -> float | int:
            t = type(v)
            if t is int or t is float:
                return v
            if t is str:
                try:
                    f = float(v)
                except ValueError:
                    raise bad(v, "a number") from None
                if f == f and f not in (float("inf"), float("-inf")):
                    return f
            raise bad(v, "a number")

        return to_number
    if kind is ValueType.BOOLEAN:
        def to_bool(v: Any) -> bool:
            if type(v) is bool:
                return v
            k = _key(v)
            if k is not None:
                k = k.strip().lower()
                if k in _TRUE:
                    return True
                if k in _FALSE:
                    return False
            raise bad(v, "a boolean (true/false, yes/no, 1/0)")

        return to_bool
    if kind is ValueType.DATETIME:
        def to_datetime(v: Any) -> str:
            if isinstance(v, str):
                try:
                    v = datetime.fromisoformat(v)
                except ValueError:
                    raise bad(v, "a date and time") from None
            if isinstance(v, datetime):
                local = v.astimezone(tz) if v.tzinfo is not None else v.replace(tzinfo=tz)
                return local.strftime(fmt) if fmt else local.isoformat()
            raise bad(v, "a date and time")

        return to_datetime
    if kind is ValueType.DATE:
        def to_date(v: Any) -> str:
            if isinstance(v, str):
                try:
                    v = datetime.fromisoformat(v) if "T" in v or " " in v else date.fromisoformat(v)
                except ValueError:
                    raise bad(v, "a date") from None
            if isinstance(v, datetime):
                v = v.astimezone(tz).date() if v.tzinfo is not None else v.date()
            if isinstance(v, date):
                return v.strftime(fmt) if fmt else v.isoformat()
            raise bad(v, "a date")

        return to_date
    raise AssertionError(kind)  # pragma: no cover

# ---------------------------------------------------------------- the compiler
#
# A mapping compiles into the Python source of one straight-line function per direction, turned into a
# callable with exec() once at load time. Admin text never becomes source text: every value that comes
# from a mapping or lookup file (constants, map tables, dict keys, messages, formats) reaches the code
# as a closure variable `_kN`; the source holds only names this compiler made up, names of fields of
# the Hub case model (checked to be identifiers) and integers. Straight-line code costs no call per
# field, which is what lets the engine keep up with a hand-written translation.


def _unexpected(exc: Exception, where: str) -> _Fail:
    """Turn anything a field raised into the one internal failure that names the field."""
    if isinstance(exc, _Fail):
        return exc
    if isinstance(exc, TemplateValueMissing):
        return _Fail(f"required value {exc.path!r} is missing", where)
    return _Fail(f"{type(exc).__name__}: {exc}", where)


_MISSING = object()
_GLOBALS: dict[str, Any] = {
    "__builtins__": {"type": type, "len": len, "str": str, "getattr": getattr, "Exception": Exception},
    "_Fail": _Fail,
    "_unexpected": _unexpected,
    "_key": _key,
    "_to_text": to_text,
    "_MISSING": _MISSING,
}


class _Source:
    """The source of one generated function: lines, and the constants it reads as closure variables."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[Any] = []
        self.count = 0
        self.prologue: dict[str, str] = {}  # top-level case attributes, read once per call
        self.rendered: dict[tuple[str, tuple], str] = {}  # placeholder -> variable holding its text

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"_k{len(self.consts) - 1}"

    def var(self, prefix: str = "v") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def add(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def function(self, result: str, where: str) -> ValueFn:
        """Compile the collected lines into `fn(case, it, w)` returning `result`."""
        where_k = self.const(where)
        params = ", ".join(f"_k{i}" for i in range(len(self.consts)))
        lines = [f"{name} = case.{attr}" for attr, name in self.prologue.items()] + self.lines
        body = "\n".join("            " + line for line in lines) or "            pass"
        src = (
            f"def _make({params}):\n"
            f"    def _run(case, it, w):\n"
            f"        _where = {where_k}\n"
            f"        try:\n{body}\n"
            f"        except _Fail:\n"
            f"            raise\n"
            f"        except Exception as _e:\n"
            f"            raise _unexpected(_e, _where) from _e\n"
            f"        return {result}\n"
            f"    return _run\n"
        )
        self.text = src
        namespace = dict(_GLOBALS)
        # the source holds only generated names and integers; admin text arrives as `_kN` arguments
        exec(compile(src, f"<mapping {where}>", "exec"), namespace)
        fn: ValueFn = namespace["_make"](*self.consts)
        return fn


def _attr_ok(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")


class _Compiler:
    """Walks the validated model once, checking paths, lookups and target fields, and writes the code."""

    def __init__(self, doc: YamlDoc, spec: MappingFile, lookups: dict[str, dict[str, Any]]) -> None:
        self.doc = doc
        self.spec = spec
        self.lookups = lookups
        self.errors: list[ConfigError] = []
        self.src = _Source()

    def err(self, message: str, loc: Loc, hint: str | None = None) -> None:
        self.errors.append(self.doc.error(message, loc, hint))

    def k(self, value: Any) -> str:
        return self.src.const(value)

    def add(self, indent: int, text: str) -> None:
        self.src.add(indent, text)

    # -- reading paths

    def read(self, path: str, loc: Loc, root: Shape, item: Shape | None, iv: str, ind: int,
             leaf: bool = True, check: bool = True, into: str | None = None) -> str | None:
        """Emit code reading `path` into a variable (None when anything on the way is missing)."""
        try:
            shape = resolve(path, root, item)
        except PathProblem as exc:
            if check:
                self.err(str(exc), loc, exc.hint)
            raise
        if leaf and shape.kind in ("model", "list", "dict"):
            kids = ", ".join(sorted(shape.children)) if shape.kind == "model" else None
            self.err(
                f"source path {path!r} is a {'list' if shape.kind == 'list' else 'structure'}, not a value",
                loc,
                f"pick one of its fields: {kids}" if kids else "use 'each:' for lists",
            )
            return None
        parts = path.split(".")
        at = root
        start = "case"
        if parts[0] == ITEM_PREFIX:
            at, start, parts = item or Shape("leaf", Any), iv, parts[1:]
        out = into or self.src.var("r")
        if not parts:
            self.add(ind, f"{out} = {start}")
            return out
        for i, part in enumerate(parts):
            obj = start if i == 0 else out
            if at.kind == "dict":
                expr = f"{obj}.get({self.k(part)})"
                at = at.item or Shape("leaf", Any)
            elif i == 0 and start == "case" and _attr_ok(part):
                expr = self.src.prologue.setdefault(part, f"case_{part}")
                at = at.children.get(part) or Shape("leaf", Any)
            else:
                expr = f"{obj}.{part}" if _attr_ok(part) else f"getattr({obj}, {self.k(part)}, None)"
                at = at.children.get(part) or Shape("leaf", Any)
            if i == 0:
                self.add(ind, f"{out} = {expr}")
            else:
                self.add(ind, f"if {out} is not None: {out} = {expr}")
        return out

    def try_read(self, path: str, loc: Loc, root: Shape, item: Shape | None, iv: str, ind: int,
                 leaf: bool = True, into: str | None = None) -> str | None:
        try:
            return self.read(path, loc, root, item, iv, ind, leaf=leaf, into=into)
        except PathProblem:
            return None

    # -- conditions

    def condition(self, cond: Condition, loc: Loc, root: Shape, item: Shape | None, iv: str, ind: int) -> str:
        """Emit any statements the test needs and return a Python expression for it."""
        if cond.all is not None or cond.any is not None:
            group = cond.all if cond.all is not None else cond.any
            assert group is not None
            is_all = cond.all is not None
            name = "all" if is_all else "any"
            out = self.src.var("c")
            # all: true only if every test passes; any: false only if every test fails
            self.add(ind, f"{out} = {not is_all}")
            depth = ind
            for i, sub in enumerate(group):
                test = self.condition(sub, [*loc, name, i], root, item, iv, depth)
                self.add(depth, f"if {test}:" if is_all else f"if not ({test}):")
                depth += 1
            self.add(depth, f"{out} = {is_all}")
            return out
        if cond.not_ is not None:
            test = self.condition(cond.not_, [*loc, "not"], root, item, iv, ind)
            return f"(not {test})"
        assert cond.path is not None
        r = self.try_read(cond.path, [*loc, "path"], root, item, iv, ind)
        if r is None:
            return "False"
        if cond.present is not None:
            present = f"({r} is not None and {r} != '' and {r} != [])"
            return present if cond.present else f"(not {present})"
        if cond.equals is not None:
            k = self.k(_key(cond.equals))
            py = resolve(cond.path, root, item).py
            if isinstance(py, type) and issubclass(py, str):
                return f"({r} == {k})"  # text (or a text enum) compares equal to its key as it is
            return f"({r} == {k} or _key({r}) == {k})"
        if cond.not_equals is not None:
            return f"(_key({r}) != {self.k(_key(cond.not_equals))})"
        if cond.in_ is not None:
            return f"(_key({r}) in {self.k(frozenset(_key(x) for x in cond.in_))})"
        return f"(_key({r}) not in {self.k(frozenset(_key(x) for x in cond.not_in or ()))})"

    # -- structures

    def record(
        self,
        specs: Mapping[str, FieldSpec],
        loc: Loc,
        targets: Mapping[str, TargetField] | None,
        root: Shape,
        item: Shape | None,
        iv: str,
        prefix: str,
        ind: int,
    ) -> str:
        """Emit code building one output structure (the payload or a nested complex type) into a dict."""
        if targets is not None:
            for name in specs:
                if name not in targets:
                    close = difflib.get_close_matches(name, list(targets), n=1)
                    hint = (f"did you mean {close[0]!r}?" if close
                            else "the back office accepts: " + ", ".join(sorted(targets)))
                    self.err(f"unknown target field {name!r} for plugin {self.spec.plugin!r}",
                             [*loc, name], hint)
            for name, tf in targets.items():
                if tf.required and name not in specs:
                    self.err(f"target field {name!r} is required by {self.spec.plugin!r} but not mapped",
                             loc, f"add '{name}:' under this 'fields:'")
        out = self.src.var("d")
        self.add(ind, f"{out} = {{}}")
        for name, spec in specs.items():
            target = targets.get(name) if targets is not None else None
            v = self.field(spec, [*loc, name], target, root, item, iv, f"{prefix}{name}", ind)
            if v is not None:
                self.add(ind, f"if {v} is not None: {out}[{self.k(name)}] = {v}")
        return out

    # -- fields

    def field(
        self,
        spec: FieldSpec,
        loc: Loc,
        target: TargetField | None,
        root: Shape,
        item: Shape | None,
        iv: str,
        where: str,
        ind: int,
    ) -> str | None:
        """Emit code computing one field's value; returns the variable holding it (None: not set)."""
        where_k = self.k(where)
        self.add(ind, f"_where = {where_k}")
        body = ind
        out = ""
        if spec.when is not None:
            out = self.src.var("f")
            self.add(ind, f"{out} = None")
            test = self.condition(spec.when, [*loc, "when"], root, item, iv, ind)
            self.add(ind, f"if {test}:")
            body = ind + 1
        v = self.base(spec, loc, target, root, item, iv, where, body)
        if v is None:
            return None
        if spec.fields is not None or spec.each is not None or spec.choose is not None or spec.items is not None:
            self.add(body, f"_where = {where_k}")
        self.post(spec, loc, target, where, v, body)
        if target is not None and target.repeated and spec.each is None and spec.items is None:
            self.add(body, f"if {v} is not None: {v} = [{v}]")
        if not out:
            return v
        self.add(body, f"{out} = {v}")
        return out

    def base(
        self,
        spec: FieldSpec,
        loc: Loc,
        target: TargetField | None,
        root: Shape,
        item: Shape | None,
        iv: str,
        where: str,
        ind: int,
    ) -> str | None:
        structured = target is not None and bool(target.children)
        if structured and spec.fields is None and spec.items is None and spec.choose is None:
            self.err(f"target field {loc[-1]!r} is a structure", loc,
                     "give its parts under 'fields:': " + ", ".join(sorted(target.children)))  # type: ignore[union-attr]
            return None
        if spec.fields is not None and target is not None and not target.children:
            self.err(f"target field {loc[-1]!r} is a plain value, not a structure", [*loc, "fields"])
            return None
        if target is not None and spec.each is not None and not target.repeated:
            self.err(f"target field {loc[-1]!r} is not a list", [*loc, "each"],
                     "map a single value with source/template instead")
        child_targets = dict(target.children) if target is not None and target.children else None
        v = self.src.var()

        if spec.value is not None:
            self.add(ind, f"{v} = {self.k(spec.value)}")
            return v
        if spec.source is not None:
            paths = [spec.source] if isinstance(spec.source, str) else spec.source
            ok = True
            depth = ind
            for i, p in enumerate(paths):
                ploc = [*loc, "source"] if isinstance(spec.source, str) else [*loc, "source", i]
                if i:
                    self.add(depth, f"if {v} is None or {v} == '':")
                    depth += 1
                if self.try_read(p, ploc, root, item, iv, depth, into=v) is None:
                    ok = False
            return v if ok else None
        if spec.template is not None:
            return self.template(spec.template, [*loc, "template"], root, item, iv, ind, v)
        if spec.fields is not None and spec.each is None:
            d = self.record(spec.fields, [*loc, "fields"], child_targets, root, item, iv, where + ".", ind)
            self.add(ind, f"{v} = {d} or None")
            return v
        if spec.each is not None:
            try:
                shape = resolve(spec.each, root, item)
            except PathProblem as exc:
                self.err(str(exc), [*loc, "each"], exc.hint)
                return None
            if shape.kind != "list":
                self.err(f"'each' needs a list; {spec.each!r} is not one", [*loc, "each"],
                         "lists in a Hub case: attachments")
                return None
            seq = self.read(spec.each, [*loc, "each"], root, item, iv, ind, leaf=False)
            item_shape = shape.item or Shape("leaf", Any)
            elem = self.src.var("it")
            acc = self.src.var("l")
            self.add(ind, f"{v} = None")
            self.add(ind, f"if {seq}:")
            self.add(ind + 1, f"{acc} = []")
            self.add(ind + 1, f"for {elem} in {seq}:")
            if spec.fields is not None:
                one: str | None = self.record(spec.fields, [*loc, "fields"], child_targets, root, item_shape,
                                              elem, where + "[].", ind + 2)
            else:
                assert spec.item is not None
                item_target = TargetField(name=str(loc[-1]), type=target.type) if target is not None else None
                one = self.field(spec.item, [*loc, "item"], item_target, root, item_shape, elem,
                                 where + "[]", ind + 2)
                if one is None:
                    return None
            self.add(ind + 2, f"if {one} is not None: {acc}.append({one})")
            self.add(ind + 1, f"if {acc}: {v} = {acc}")
            return v
        if spec.items is not None:
            if target is not None and not target.repeated:
                self.err(f"target field {loc[-1]!r} is not a list", [*loc, "items"])
            element = TargetField(name=target.name, type=target.type, max_length=target.max_length,
                                  enum=target.enum, children=target.children) if target is not None else None
            acc = self.src.var("l")
            self.add(ind, f"{acc} = []")
            ok = True
            for i, e in enumerate(spec.items):
                ev = self.field(e, [*loc, "items", i], element, root, item, iv, f"{where}[{i}]", ind)
                if ev is None:
                    ok = False
                else:
                    self.add(ind, f"if {ev} is not None: {acc}.append({ev})")
            self.add(ind, f"{v} = {acc} or None")
            return v if ok else None
        if spec.choose is not None:
            self.add(ind, f"{v} = None")
            depth = ind
            for i, opt in enumerate(spec.choose):
                optloc = [*loc, "choose", i]
                if opt.when is not None:
                    test = self.condition(opt.when, [*optloc, "when"], root, item, iv, depth)
                    self.add(depth, f"if {test}:")
                    # the option's own 'when' picked it; compile the option without it
                    ov = self.field(opt.model_copy(update={"when": None}), optloc, target, root, item, iv,
                                    where, depth + 1)
                    if ov is not None:
                        self.add(depth + 1, f"{v} = {ov}")
                    self.add(depth, "else:")
                    depth += 1
                else:
                    ov = self.field(opt, optloc, target, root, item, iv, where, depth)
                    if ov is not None:
                        self.add(depth, f"{v} = {ov}")
                    break  # later options can never be picked
            if depth > ind:
                self.add(depth, "pass")
            return v
        # only a default
        self.add(ind, f"{v} = None")
        return v

    def template(self, text: str, loc: Loc, root: Shape, item: Shape | None, iv: str, ind: int, v: str
                 ) -> str | None:
        """Emit code rendering a template: placeholders read and filtered, then one %-format of the text."""
        try:
            parts = parse(text)
            for p in parts:
                if isinstance(p, Placeholder):
                    try:
                        resolve(p.path, root, item)
                    except PathProblem as exc:
                        raise TemplateError(str(exc), p.offset, exc.hint) from None
        except TemplateError as exc:
            self.err(f"template: {exc} (at character {exc.offset + 1})", loc, exc.hint)
            return None
        literal: list[str] = []
        values: list[str] = []
        for p in parts:
            if isinstance(p, str):
                literal.append(p.replace("%", "%%"))
                continue
            # the same placeholder in straight-line code (not inside a condition or loop) is rendered once
            shared = (p.path, p.filters) if ind == 0 and not p.path.startswith(ITEM_PREFIX + ".") else None
            if shared is not None and shared in self.src.rendered:
                values.append(self.src.rendered[shared])
                literal.append("%s")
                continue
            r = self.read(p.path, loc, root, item, iv, ind, leaf=False, check=False)
            assert r is not None
            if shared is not None:
                self.src.rendered[shared] = r
            for name, arg in p.filters:
                if name == "default":
                    self.add(ind, f"if {r} is None or {r} == '': {r} = {self.k(arg)}")
                elif name == "oneline":
                    self.add(ind, f"{r} = ' '.join(({r} if type({r}) is str else _to_text({r})).split())")
                elif name in ("prefix", "suffix"):
                    k = self.k(arg)
                    text_r = f"({r} if type({r}) is str else _to_text({r}))"
                    joined = f"{k} + {text_r}" if name == "prefix" else f"{text_r} + {k}"
                    self.add(ind, f"{r} = '' if {r} is None or {r} == '' else {joined}")
                else:
                    self.add(ind, f"{r} = {self.k(filter_function(name, arg, p.path))}({r})")
            if not p.filters or p.filters[-1][0] in ("default", "required"):
                self.add(ind, f"if type({r}) is not str: {r} = _to_text({r})")
            values.append(r)
            literal.append("%s")
        fmt = "".join(literal)
        if not values:
            self.add(ind, f"{v} = {self.k(fmt.replace('%%', '%'))}")
        elif fmt == "%s":
            self.add(ind, f"{v} = {values[0]}")
        else:
            self.add(ind, f"{v} = {self.k(fmt)} % ({', '.join(values)},)")
        return v

    def post(self, spec: FieldSpec, loc: Loc, target: TargetField | None, where: str, v: str, ind: int) -> None:
        """Emit the checks and conversions after a field's value is read: default, map, type, enum, length."""
        if spec.fields is not None or spec.each is not None or spec.choose is not None or spec.items is not None:
            if spec.required:
                fail = f"_Fail({self.k('required value is missing')}, {self.k(where)})"
                self.add(ind, f"if {v} is None or {v} == '' or {v} == []: raise {fail}")
            return

        table: dict[str, Any] | None = None
        label = ""
        if spec.map is not None:
            table, label = dict(spec.map), "map"
        elif spec.lookup is not None:
            table, label = self.lookup_table(spec.lookup, [*loc, "lookup"]), f"lookup {spec.lookup!r}"
        if table is not None and spec.ignore_case:
            table = {k.casefold(): v for k, v in table.items()}

        conv: Callable[[Any], Any] | None = None
        kind = spec.type
        if kind is None and target is not None:
            kind = _TARGET_TYPES.get(target.type.lower().split(":")[-1])
        if spec.format is not None:
            try:
                check_date_format(spec.format)
            except TemplateError as exc:
                self.err(str(exc), [*loc, "format"], exc.hint)
        try:
            tz = ZoneInfo(spec.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            close = difflib.get_close_matches(spec.timezone, sorted(available_timezones()), n=1)
            self.err(f"unknown time zone {spec.timezone!r}", [*loc, "timezone"],
                     f"did you mean {close[0]!r}?" if close else "e.g. Europe/London or UTC")
            tz = ZoneInfo("Europe/London")
        if kind is not None:
            conv = _converter(kind, spec.format, tz, where)
            self.check_constants(spec, loc, conv, kind)

        keys: frozenset[str | None] | None = None
        shown = ""
        allowed = list(spec.enum or ()) or (list(target.enum) if target is not None and target.enum else [])
        if allowed:
            keys = frozenset(_key(a) for a in allowed)
            shown = ", ".join(str(a) for a in allowed)
            for value, vloc in self.constants(spec, loc):
                try:
                    shown_value = conv(value) if conv is not None else value
                except _Fail:
                    continue  # already reported by check_constants
                if _key(shown_value) not in keys:
                    self.err(f"{value!r} is not one of the allowed values", vloc, f"allowed: {shown}")

        limits = [x for x in (spec.max_length, target.max_length if target is not None else None) if x]
        limit = min(limits) if limits else None
        if limit is not None:
            for value, vloc in self.constants(spec, loc):
                if isinstance(value, str) and len(value) > limit and not spec.truncate:
                    self.err(f"{value!r} is longer than the target's {limit} characters", vloc,
                             "shorten it, or set truncate: true")

        required = spec.required or (target is not None and target.required)
        if spec.value is not None and table is None:
            # a constant: convert and check it now, once, unless it needs the truncation warning per case
            try:
                folded = conv(spec.value) if conv is not None else spec.value
            except _Fail:
                return  # reported by check_constants
            too_long = limit is not None and isinstance(folded, str) and len(folded) > limit
            if not too_long and not (required and _empty(folded)):
                # base() wrote `v = <constant>` as the line just before; write the converted one instead
                assert self.src.lines[-1].lstrip().startswith(f"{v} = ")
                self.src.lines[-1] = "    " * ind + f"{v} = {self.k(folded)}"
                return
        # templates always give text, so the None checks and the text conversion can go
        text = spec.template is not None
        empty = f"{v} == ''" if text else f"{v} is None or {v} == ''"
        if spec.default is not None:
            self.add(ind, f"if {empty}: {v} = {self.k(spec.default)}")
            text = False  # the default may be a number
        if table is not None:
            miss = self.k(self.no_entry(table, label, spec, where))
            kv = self.src.var("key")
            self.add(ind, f"if {v} is not None:")
            self.add(ind + 1, f"{kv} = {v} if type({v}) is str else _key({v})")
            if spec.ignore_case:
                self.add(ind + 1, f"{kv} = {kv}.casefold()")
            self.add(ind + 1, f"{v} = {self.k(table)}.get({kv}, _MISSING)")
            self.add(ind + 1, f"if {v} is _MISSING: {v} = {miss}({kv}, w)")
            text = False
        if conv is not None and not (text and kind is ValueType.STRING):
            already = {ValueType.STRING: str, ValueType.INTEGER: int, ValueType.NUMBER: float,
                       ValueType.BOOLEAN: bool}.get(kind)  # type: ignore[arg-type]
            if text:
                guard = f"if type({v}) is not {self.k(already)}: " if already is not None else ""
                self.add(ind, f"{guard}{v} = {self.k(conv)}({v})")
                text = False
            elif already is not None:
                self.add(ind, f"if {v} is not None and type({v}) is not {self.k(already)}: "
                              f"{v} = {self.k(conv)}({v})")
            else:
                self.add(ind, f"if {v} is not None: {v} = {self.k(conv)}({v})")
        if keys is not None:
            bad = self.k(self.not_allowed(where, shown))
            self.add(ind, f"if {v} is not None and _key({v}) not in {self.k(keys)}: raise {bad}({v})")
        if limit is not None:
            self.add(ind, f"if type({v}) is str and len({v}) > {int(limit)}: "
                          f"{v} = {self.k(self.too_long(where, limit, spec.truncate))}({v}, w)")
        if required:
            fail = f"_Fail({self.k('required value is missing')}, {self.k(where)}, {self.k(self.missing_hint(spec))})"
            self.add(ind, f"if {v} == '': raise {fail}" if text else f"if {v} is None or {v} == '': raise {fail}")

    # -- the rare paths, kept out of the generated code

    @staticmethod
    def no_entry(table: dict[str, Any], label: str, spec: FieldSpec, where: str
                 ) -> Callable[[str, list], Any]:
        known = ", ".join(sorted(table)[:12]) + (", ..." if len(table) > 12 else "")
        has_fallback, fallback = spec.has_fallback, spec.fallback

        def miss(k: str, w: list) -> Any:
            if not has_fallback:
                raise _Fail(f"no {label} entry for {k!r}", where, f"known: {known}; add an entry or a fallback")
            w.append(f"{where}: no {label} entry for {k!r}; used fallback {fallback!r}")
            return fallback

        return miss

    @staticmethod
    def not_allowed(where: str, shown: str) -> Callable[[Any], _Fail]:
        return lambda v: _Fail(f"{v!r} is not one of the allowed values", where, f"allowed: {shown}")

    @staticmethod
    def too_long(where: str, limit: int, truncate: bool) -> Callable[[str, list], str]:
        def cut(v: str, w: list) -> str:
            if not truncate:
                raise _Fail(f"text of {len(v)} characters is longer than the maximum {limit}", where,
                            "set truncate: true on this field to cut it instead")
            w.append(f"{where}: truncated from {len(v)} to {limit} characters")
            return v[:limit]

        return cut


    @staticmethod
    def missing_hint(spec: FieldSpec) -> str | None:
        if spec.source is not None:
            src = spec.source if isinstance(spec.source, str) else " or ".join(spec.source)
            return f"the case has no {src}; add it to the case or give a default"
        return None

    def constants(self, spec: FieldSpec, loc: Loc) -> list[tuple[Any, Loc]]:
        """The fixed values a field can produce (value, default, map values, fallback), with locations."""
        out: list[tuple[Any, Loc]] = []
        if spec.value is not None:
            out.append((spec.value, [*loc, "value"]))
        if spec.default is not None and spec.map is None and spec.lookup is None:
            out.append((spec.default, [*loc, "default"]))
        if spec.map is not None:
            out.extend((v, [*loc, "map", k]) for k, v in spec.map.items() if v is not None)
        if spec.has_fallback and spec.fallback is not None:
            out.append((spec.fallback, [*loc, "fallback"]))
        return out

    def check_constants(self, spec: FieldSpec, loc: Loc, conv: Callable[[Any], Any], kind: ValueType) -> None:
        for value, vloc in self.constants(spec, loc):
            try:
                conv(value)
            except _Fail as fail:
                self.err(f"{fail.message} (this field is {kind.value})", vloc)

    def lookup_table(self, ref: str, loc: Loc) -> dict[str, Any] | None:
        name, _, column = ref.partition(".")
        if name not in self.lookups:
            close = difflib.get_close_matches(name, list(self.lookups), n=1)
            hint = f"did you mean {close[0]!r}?" if close else (
                "declare it under 'lookups:' at the top of the file" if not self.lookups
                else "declared lookups: " + ", ".join(sorted(self.lookups)))
            self.err(f"unknown lookup table {name!r}", loc, hint)
            return None
        entries = self.lookups[name]
        if not column:
            nested = [k for k, v in entries.items() if isinstance(v, dict)]
            if nested:
                cols = sorted({c for k in nested for c in entries[k]})
                self.err(f"lookup {name!r} has columns; say which one", loc,
                         "e.g. " + ", ".join(f"{name}.{c}" for c in cols[:3]))
                return None
            return dict(entries)
        out = {}
        for k, v in entries.items():
            if not isinstance(v, dict) or column not in v:
                self.err(f"lookup {name!r} entry {k!r} has no column {column!r}", loc)
                return None
            out[k] = v[column]
        return out


# ---------------------------------------------------------------- loading


def _load_lookups(
    doc: YamlDoc, spec: MappingFile, base: Path
) -> tuple[dict[str, dict[str, Any]], list[tuple[Path, bytes]]]:
    tables: dict[str, dict[str, Any]] = {}
    files: list[tuple[Path, bytes]] = []
    errors: list[ConfigError] = []
    for name, rel in spec.lookups.items():
        if Path(rel).is_absolute():
            errors.append(doc.error("lookup files are given relative to the mapping file", ["lookups", name]))
            continue
        lpath = (base / rel).resolve()
        if not lpath.is_file():
            errors.append(doc.error(f"lookup file {rel!r} not found (looked at {lpath})", ["lookups", name]))
            continue
        try:
            data = _read(lpath)
            ldoc = parse_yaml(data.decode("utf-8"), str(lpath))
            lspec = ldoc.validate(LookupFile)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        except ConfigError as exc:
            errors.append(exc)
            continue
        tables[name] = dict(plain(lspec.entries))
        files.append((lpath, data))
    if errors:
        raise ConfigErrors(errors)
    return tables, files


def _read(path: Path) -> bytes:
    """Read a file, refusing oversize ones and non-UTF-8 text before any parsing."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"file is larger than {MAX_YAML_BYTES} bytes", path=str(path), line=1, col=1,
                              hint="split it into smaller files")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", path=str(path)) from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file is not UTF-8 ({exc.reason})", path=str(path), line=1, col=1) from None
    return data


def content_version(contents: Sequence[tuple[Path, bytes]]) -> str:
    """The mapping version: first 12 hex digits of a sha256 over the mapping file and its lookups."""
    h = hashlib.sha256()
    for p, data in contents:
        h.update(p.name.encode())
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:12]


def load_mapping(path: Path | str, target_fields: Mapping[str, TargetField] | None = None) -> CompiledMapping:
    """Validate and compile one mapping file; raises ConfigErrors listing every problem with file:line:col.

    With `target_fields` (from the connector) every output field is checked against what the back office
    accepts; without it only the mapping itself and its source paths are checked.
    """
    p = Path(path)
    try:
        data = _read(p)
        doc = parse_yaml(data.decode("utf-8"), str(p))
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    if not isinstance(doc.data, dict):
        raise ConfigErrors([doc.error("a mapping file is a YAML mapping with 'mapping:', 'service:', "
                                      "'plugin:' and 'outbound:'")])
    spec = doc.validate(MappingFile)
    lookups, lookup_files = _load_lookups(doc, spec, p.resolve().parent)
    comp = _Compiler(doc, spec, lookups)
    payload = comp.record(spec.outbound.fields, ["outbound", "fields"], target_fields, CASE_SHAPE, None, "it",
                          "", 0)
    out_src = comp.src

    inbound_srcs: list[tuple[_Source, str, str] | None] = []
    for part in ("status", "note", "resolution"):
        fspec: FieldSpec | None = getattr(spec.inbound, part)
        if fspec is None:
            inbound_srcs.append(None)
            continue
        loc: Loc = ["inbound", part]
        if part == "status":
            for value, vloc in comp.constants(fspec, loc):
                if str(value) not in HUB_STATUSES:
                    close = difflib.get_close_matches(str(value), HUB_STATUSES, n=1)
                    comp.err(f"{value!r} is not a Hub status", vloc,
                             f"did you mean {close[0]!r}?" if close else "Hub statuses: " + ", ".join(HUB_STATUSES))
            if fspec.lookup is not None:
                for key, value in (comp.lookup_table(fspec.lookup, [*loc, "lookup"]) or {}).items():
                    if str(value) not in HUB_STATUSES:
                        comp.err(f"lookup {fspec.lookup!r} maps {key!r} to {value!r}, which is not a Hub status",
                                 [*loc, "lookup"], "Hub statuses: " + ", ".join(HUB_STATUSES))
        comp.src = _Source()
        result = comp.field(fspec, loc, None, UPDATE_SHAPE, None, "it", f"inbound.{part}", 0)
        inbound_srcs.append(None if result is None else (comp.src, result, f"inbound.{part}"))
    if comp.errors:
        raise ConfigErrors(comp.errors)
    build = out_src.function(payload, "outbound")
    inbound_fns = [None if part is None else part[0].function(part[1], part[2]) for part in inbound_srcs]
    contents = [(p.resolve(), data), *lookup_files]
    return CompiledMapping(
        name=spec.mapping,
        version=content_version(contents),
        path=p,
        service=spec.service,
        plugin=spec.plugin,
        service_codes=frozenset(spec.inbound.service_codes),
        build=build,
        inbound_fns=(inbound_fns[0], inbound_fns[1], inbound_fns[2]),
        files=tuple(f for f, _ in contents),
        spec=spec,
    )
