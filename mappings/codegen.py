"""The generated code: one straight-line Python function per direction, and the rare paths it calls.

A mapping compiles into the Python source of one straight-line function per direction, turned into a
callable with exec() once at load time. Admin text never becomes source text: every value that comes
from a mapping or lookup file (constants, map tables, dict keys, messages, formats) reaches the code
as a closure variable `_kN`; the source holds only names this compiler made up, names of fields of
the Hub case model (checked to be identifiers) and integers. Straight-line code costs no call per
field, which is what lets the engine keep up with a hand-written translation.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import Any

from hubbridge.mappings.compiled import FieldFailure, ValueFn, described
from hubbridge.mappings.convert import match_key
from hubbridge.mappings.model import FieldSpec
from hubbridge.mappings.template import TemplateValueMissing, to_text


def as_field_failure(exc: Exception, where: str) -> FieldFailure:
    """Turn anything a field raised into the one internal failure that names the field."""
    if isinstance(exc, FieldFailure):
        return exc
    if isinstance(exc, TemplateValueMissing):
        return FieldFailure(f"required value {exc.path!r} is missing", where)
    # the exception's text is left out: it can quote the case's own values
    return FieldFailure(f"{type(exc).__name__} while filling the field", where)


MISSING = object()
_GLOBALS: dict[str, Any] = {
    "__builtins__": {"type": type, "len": len, "str": str, "getattr": getattr, "Exception": Exception},
    "_Fail": FieldFailure,
    "_unexpected": as_field_failure,
    "_key": match_key,
    "_to_text": to_text,
    "_MISSING": MISSING,
}


class GeneratedSource:
    """The source of one generated function: lines, and the constants it reads as closure variables."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[Any] = []
        self.count = 0
        self.prologue: dict[str, str] = {}  # top-level case attributes, read once per call
        self.rendered: dict[tuple[str, tuple], str] = {}  # placeholder -> variable holding its text
        self.text = ""

    def const(self, value: Any) -> str:
        """The closure variable that will hold `value` in the generated function."""
        self.consts.append(value)
        return f"_k{len(self.consts) - 1}"

    def var(self, prefix: str = "v") -> str:
        """A fresh local variable name for the generated function."""
        self.count += 1
        return f"{prefix}{self.count}"

    def add(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def function(self, result: str, where: str) -> ValueFn:
        """Compile the collected lines into `fn(case, it, w)` returning `result`."""
        where_const = self.const(where)
        params = ", ".join(f"_k{index}" for index in range(len(self.consts)))
        lines = [f"{name} = case.{attr}" for attr, name in self.prologue.items()] + self.lines
        body = "\n".join("            " + line for line in lines) or "            pass"
        source = (
            f"def _make({params}):\n"
            f"    def _run(case, it, w):\n"
            f"        _where = {where_const}\n"
            f"        try:\n{body}\n"
            f"        except _Fail:\n"
            f"            raise\n"
            f"        except Exception as _e:\n"
            f"            raise _unexpected(_e, _where) from _e\n"
            f"        return {result}\n"
            f"    return _run\n"
        )
        self.text = source
        namespace = dict(_GLOBALS)
        # the source holds only generated names and integers; admin text arrives as `_kN` arguments
        exec(compile(source, f"<mapping {where}>", "exec"), namespace)
        fn: ValueFn = namespace["_make"](*self.consts)
        return fn


def is_safe_attribute(name: str) -> bool:
    """Whether `name` may appear in generated source as `obj.name`."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")


# -- the rare paths, kept out of the generated code


def no_entry(table: dict[str, Any], label: str, rule: FieldSpec, where: str) -> Callable[[str, list], Any]:
    """What a map or lookup does with a key it has no entry for: fail, or warn and use the fallback."""
    known = ", ".join(sorted(table)[:12]) + (", ..." if len(table) > 12 else "")
    has_fallback, fallback = rule.has_fallback, rule.fallback
    # a back office's status code is shown (operators need it); a key taken from a case never is (personal data)
    shown = repr if where.startswith("inbound.") else described

    def miss(missing_key: str, warnings: list) -> Any:
        if not has_fallback:
            raise FieldFailure(f"no {label} entry for {shown(missing_key)}", where,
                               f"known: {known}; add an entry or a fallback")
        warnings.append(f"{where}: no {label} entry for {shown(missing_key)}; used fallback {fallback!r}")
        return fallback

    return miss


def not_allowed(where: str, shown: str) -> Callable[[Any], FieldFailure]:
    """The failure for a value outside the field's allowed values."""
    return lambda value: FieldFailure(f"{described(value)} is not one of the allowed values", where,
                                      f"allowed: {shown}")


def too_long(where: str, limit: int, truncate: bool) -> Callable[[str, list], str]:
    """What an over-long text does: fail, or be cut with a warning when the field says truncate."""

    def cut(text: str, warnings: list) -> str:
        if not truncate:
            raise FieldFailure(f"text of {len(text)} characters is longer than the maximum {limit}", where,
                               "set truncate: true on this field to cut it instead")
        warnings.append(f"{where}: truncated from {len(text)} to {limit} characters")
        return text[:limit]

    return cut


def missing_hint(rule: FieldSpec) -> str | None:
    """The hint on a required field's "missing" error: which source the case lacked."""
    if rule.source is not None:
        sources = rule.source if isinstance(rule.source, str) else " or ".join(rule.source)
        return f"the case has no {sources}; add it to the case or give a default"
    return None
