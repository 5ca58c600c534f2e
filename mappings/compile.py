"""Compile a validated mapping file into plain closures: no YAML model is walked per case."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hubbridge.case import HubCase, HubStatus
from hubbridge.config.yamlfile import MAX_YAML_BYTES, YamlDoc, parse_yaml, plain
from hubbridge.connectors.base import BackOfficeUpdate, TargetField
from hubbridge.errors import ConfigError, ConfigErrors, MappingError
from hubbridge.mappings.model import HUB_STATUSES, Condition, FieldSpec, LookupFile, MappingFile, ValueType
from hubbridge.mappings.paths import (
    CASE_SHAPE,
    UPDATE_SHAPE,
    PathProblem,
    Shape,
    compile_getter,
    compile_value_getter,
    resolve,
)
from hubbridge.mappings.template import (
    TemplateError,
    TemplateValueMissing,
    check_date_format,
    compile_template,
    to_text,
)

ValueFn = Callable[[Any, Any, list], Any]
CondFn = Callable[[Any, Any], bool]
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
    """A mapping ready to run: `outbound(case)` and `inbound(update)` are plain closures."""

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


class _Compiler:
    """Walks the validated model once, checking paths, lookups and target fields, and builds closures."""

    def __init__(self, doc: YamlDoc, spec: MappingFile, lookups: dict[str, dict[str, Any]]) -> None:
        self.doc = doc
        self.spec = spec
        self.lookups = lookups
        self.errors: list[ConfigError] = []

    def err(self, message: str, loc: Loc, hint: str | None = None) -> None:
        self.errors.append(self.doc.error(message, loc, hint))

    # -- conditions

    def condition(self, cond: Condition, loc: Loc, root: Shape, item: Shape | None) -> CondFn:
        if cond.all is not None:
            subs = [self.condition(c, [*loc, "all", i], root, item) for i, c in enumerate(cond.all)]
            return lambda c, it: all(s(c, it) for s in subs)
        if cond.any is not None:
            subs = [self.condition(c, [*loc, "any", i], root, item) for i, c in enumerate(cond.any)]
            return lambda c, it: any(s(c, it) for s in subs)
        if cond.not_ is not None:
            sub = self.condition(cond.not_, [*loc, "not"], root, item)
            return lambda c, it: not sub(c, it)
        assert cond.path is not None
        read = self.reader(cond.path, [*loc, "path"], root, item)
        if read is None:
            return lambda c, it: False
        if cond.present is not None:
            want = cond.present
            return lambda c, it: (not _empty(read(c, it))) is want
        if cond.equals is not None:
            k = _key(cond.equals)
            return lambda c, it: (v := read(c, it)) == k or _key(v) == k
        if cond.not_equals is not None:
            k = _key(cond.not_equals)
            return lambda c, it: _key(read(c, it)) != k
        if cond.in_ is not None:
            ks = frozenset(_key(x) for x in cond.in_)
            return lambda c, it: _key(read(c, it)) in ks
        ks = frozenset(_key(x) for x in cond.not_in or ())
        return lambda c, it: _key(read(c, it)) not in ks

    def reader(self, path: str, loc: Loc, root: Shape, item: Shape | None, leaf: bool = True
               ) -> Callable[[Any, Any], Any] | None:
        try:
            shape = resolve(path, root, item)
        except PathProblem as exc:
            self.err(str(exc), loc, exc.hint)
            return None
        if leaf and shape.kind in ("model", "list", "dict"):
            kids = ", ".join(sorted(shape.children)) if shape.kind == "model" else None
            self.err(
                f"source path {path!r} is a {'list' if shape.kind == 'list' else 'structure'}, not a value",
                loc,
                f"pick one of its fields: {kids}" if kids else "use 'each:' for lists",
            )
            return None
        getter, on_item = compile_getter(path, root, item)
        if on_item:
            return lambda c, it: getter(it)
        return lambda c, it: getter(c)

    # -- fields

    def record(
        self,
        specs: Mapping[str, FieldSpec],
        loc: Loc,
        targets: Mapping[str, TargetField] | None,
        root: Shape,
        item: Shape | None,
        prefix: str,
    ) -> Callable[[Any, Any, list], dict[str, Any]]:
        """A builder for one output structure (the payload or a nested complex type)."""
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
        steps: list[tuple[str, ValueFn, str]] = []
        for name, spec in specs.items():
            target = targets.get(name) if targets is not None else None
            fn = self.field(spec, [*loc, name], target, root, item, f"{prefix}{name}")
            if fn is not None:
                steps.append((name, fn, f"{prefix}{name}"))
        steps_t = tuple(steps)
        pairs = tuple((name, fn) for name, fn, _ in steps)

        def slow(case: Any, it: Any, warnings: list) -> dict[str, Any]:
            # field by field, to name the field that failed
            out: dict[str, Any] = {}
            for name, fn, where in steps_t:
                try:
                    v = fn(case, it, warnings)
                except _Fail:
                    raise
                except TemplateValueMissing as miss:
                    raise _Fail(f"required value {miss.path!r} is missing", where) from None
                except Exception as exc:
                    raise _Fail(f"{type(exc).__name__}: {exc}", where) from exc
                if v is not None:
                    out[name] = v
            return out

        def build(case: Any, it: Any, warnings: list) -> dict[str, Any]:
            n = len(warnings)
            try:
                return {name: v for name, fn in pairs if (v := fn(case, it, warnings)) is not None}
            except _Fail:
                raise
            except Exception:
                del warnings[n:]
                return slow(case, it, warnings)  # raises again, now naming the field

        return build

    def field(
        self,
        spec: FieldSpec,
        loc: Loc,
        target: TargetField | None,
        root: Shape,
        item: Shape | None,
        where: str,
    ) -> ValueFn | None:
        base = self.base(spec, loc, target, root, item, where)
        if base is None:
            return None
        post = self.post_ops(spec, loc, target, where, root)
        fn: ValueFn
        if not post:
            fn = base
        elif len(post) == 1:
            op = post[0]

            def fn(c: Any, it: Any, w: list) -> Any:
                return op(base(c, it, w), w)
        elif len(post) == 2:
            op1, op2 = post

            def fn(c: Any, it: Any, w: list) -> Any:
                return op2(op1(base(c, it, w), w), w)
        elif len(post) == 3:
            op1, op2, op3 = post

            def fn(c: Any, it: Any, w: list) -> Any:
                return op3(op2(op1(base(c, it, w), w), w), w)
        else:
            ops = tuple(post)

            def fn(c: Any, it: Any, w: list) -> Any:
                v = base(c, it, w)
                for op in ops:
                    v = op(v, w)
                return v

        if target is not None and target.repeated and spec.each is None and spec.items is None:
            inner = fn

            def fn(c: Any, it: Any, w: list) -> Any:
                v = inner(c, it, w)
                return None if v is None else [v]

        if spec.when is not None:
            cond = self.condition(spec.when, [*loc, "when"], root, item)
            guarded = fn

            def fn(c: Any, it: Any, w: list) -> Any:
                return guarded(c, it, w) if cond(c, it) else None

        return fn

    def base(
        self,
        spec: FieldSpec,
        loc: Loc,
        target: TargetField | None,
        root: Shape,
        item: Shape | None,
        where: str,
    ) -> ValueFn | None:
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

        if spec.value is not None:
            const = spec.value
            return lambda c, it, w: const
        if spec.source is not None:
            paths = [spec.source] if isinstance(spec.source, str) else spec.source
            readers = []
            for i, p in enumerate(paths):
                r = self.reader(p, [*loc, "source"] if isinstance(spec.source, str) else [*loc, "source", i],
                                root, item)
                if r is not None:
                    readers.append(compile_value_getter(p, root, item))
            if len(readers) != len(paths):
                return None
            if len(readers) == 1:
                return readers[0]
            if len(readers) == 2:
                r0, r1 = readers

                def first2(c: Any, it: Any, w: list) -> Any:
                    v = r0(c, it, w)
                    return r1(c, it, w) if v is None or v == "" else v

                return first2

            def first(c: Any, it: Any, w: list) -> Any:
                for r in readers:
                    v = r(c, it, w)
                    if v is not None and v != "":
                        return v
                return None

            return first
        if spec.template is not None:
            try:
                render = compile_template(spec.template, root, item)
            except TemplateError as exc:
                self.err(f"template: {exc} (at character {exc.offset + 1})", [*loc, "template"], exc.hint)
                return None
            return render
        if spec.fields is not None and spec.each is None:
            build = self.record(spec.fields, [*loc, "fields"], child_targets, root, item, where + ".")

            def nested(c: Any, it: Any, w: list) -> Any:
                out = build(c, it, w)
                return out or None

            return nested
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
            getter, on_item = compile_getter(spec.each, root, item)
            item_shape = shape.item or Shape("leaf", Any)
            if spec.fields is not None:
                one = self.record(spec.fields, [*loc, "fields"], child_targets, root, item_shape, where + "[].")
            else:
                assert spec.item is not None
                item_target = TargetField(name=str(loc[-1]), type=target.type) if target is not None else None
                inner = self.field(spec.item, [*loc, "item"], item_target, root, item_shape, where + "[]")
                if inner is None:
                    return None
                one = inner

            def each(c: Any, it: Any, w: list) -> Any:
                seq = getter(it) if on_item else getter(c)
                if not seq:
                    return None
                out = []
                for element in seq:
                    v = one(c, element, w)
                    if v is not None:
                        out.append(v)
                return out or None

            return each
        if spec.items is not None:
            if target is not None and not target.repeated:
                self.err(f"target field {loc[-1]!r} is not a list", [*loc, "items"])
            element = TargetField(name=target.name, type=target.type, max_length=target.max_length,
                                  enum=target.enum, children=target.children) if target is not None else None
            elems = [self.field(e, [*loc, "items", i], element, root, item, f"{where}[{i}]")
                     for i, e in enumerate(spec.items)]
            if any(e is None for e in elems):
                return None
            elems_t = tuple(elems)

            def items(c: Any, it: Any, w: list) -> Any:
                out = [v for e in elems_t if (v := e(c, it, w)) is not None]  # type: ignore[misc]
                return out or None

            return items
        if spec.choose is not None:
            options: list[tuple[CondFn | None, ValueFn]] = []
            for i, opt in enumerate(spec.choose):
                optloc = [*loc, "choose", i]
                cond = self.condition(opt.when, [*optloc, "when"], root, item) if opt.when else None
                # the option's own 'when' picks it; compile the option without it
                fn = self.field(opt.model_copy(update={"when": None}), optloc, target, root, item, where)
                if fn is not None:
                    options.append((cond, fn))

            def choose(c: Any, it: Any, w: list) -> Any:
                for cond, fn in options:
                    if cond is None or cond(c, it):
                        return fn(c, it, w)
                return None

            return choose
        # only a default
        return lambda c, it, w: None

    def post_ops(
        self, spec: FieldSpec, loc: Loc, target: TargetField | None, where: str, root: Shape
    ) -> list[Callable[[Any, list], Any]]:
        ops: list[Callable[[Any, list], Any]] = []
        if spec.fields is not None or spec.each is not None or spec.choose is not None or spec.items is not None:
            if spec.required:
                def need(v: Any, w: list) -> Any:
                    if _empty(v):
                        raise _Fail("required value is missing", where)
                    return v

                ops.append(need)
            return ops

        has_default = spec.default is not None
        dflt = spec.default

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
            self.err(f"unknown time zone {spec.timezone!r}", [*loc, "timezone"], "e.g. Europe/London or UTC")
            tz = ZoneInfo("Europe/London")
        # values already of the target Python type skip the converter call
        already: type | None = None
        if kind is not None:
            conv = _converter(kind, spec.format, tz, where)
            self.check_constants(spec, loc, conv, kind)
            already = {ValueType.STRING: str, ValueType.INTEGER: int, ValueType.NUMBER: float,
                       ValueType.BOOLEAN: bool}.get(kind)

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
        truncate = spec.truncate
        if limit is not None:
            for value, vloc in self.constants(spec, loc):
                if isinstance(value, str) and len(value) > limit and not truncate:
                    self.err(f"{value!r} is longer than the target's {limit} characters", vloc,
                             "shorten it, or set truncate: true")

        required = spec.required or (target is not None and target.required)
        missing_hint = self.missing_hint(spec)
        if not (has_default or table is not None or conv is not None or keys is not None or limit is not None
                or required):
            return ops

        fold = spec.ignore_case
        has_fallback = spec.has_fallback
        fallback = spec.fallback
        missing = object()
        known = ""
        if table is not None:
            known = ", ".join(sorted(table)[:12]) + (", ..." if len(table) > 12 else "")

        # One fused step per field: the checks below are cheap branches on constants, where a chain of
        # small functions would cost a call each.
        def finish(v: Any, w: list) -> Any:
            if has_default and (v is None or v == ""):
                v = dflt
            if table is not None and v is not None:
                k = v if type(v) is str else _key(v)
                if fold:
                    k = k.casefold()  # type: ignore[union-attr]
                out = table.get(k, missing)  # type: ignore[arg-type]
                if out is missing:
                    if not has_fallback:
                        raise _Fail(f"no {label} entry for {k!r}", where,
                                    f"known: {known}; add an entry or a fallback")
                    w.append(f"{where}: no {label} entry for {k!r}; used fallback {fallback!r}")
                    out = fallback
                v = out
            if conv is not None and v is not None and type(v) is not already:
                v = conv(v)
            if keys is not None and v is not None and _key(v) not in keys:
                raise _Fail(f"{v!r} is not one of the allowed values", where, f"allowed: {shown}")
            if limit is not None and type(v) is str and len(v) > limit:
                if not truncate:
                    raise _Fail(f"text of {len(v)} characters is longer than the maximum {limit}", where,
                                "set truncate: true on this field to cut it instead")
                w.append(f"{where}: truncated from {len(v)} to {limit} characters")
                v = v[:limit]
            if required and (v is None or v == ""):
                raise _Fail("required value is missing", where, missing_hint)
            return v

        ops.append(finish)
        return ops

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
    build = comp.record(spec.outbound.fields, ["outbound", "fields"], target_fields, CASE_SHAPE, None, "")

    inbound_fns: list[ValueFn | None] = []
    for part in ("status", "note", "resolution"):
        fspec: FieldSpec | None = getattr(spec.inbound, part)
        if fspec is None:
            inbound_fns.append(None)
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
        fn = comp.field(fspec, loc, None, UPDATE_SHAPE, None, f"inbound.{part}")
        inbound_fns.append(fn)
    if comp.errors:
        raise ConfigErrors(comp.errors)
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
