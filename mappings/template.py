"""A tiny text template language for free-text fields: `{path}` and `{path|filter:'arg'}`, nothing else.

Templates can only read values at checked source paths and pass them through a fixed set of filters;
there is no expression evaluation, no attribute access beyond the path, no loops and no code.
`{{` and `}}` write literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any

from hubbridge.case import LONDON
from hubbridge.mappings.paths import PathProblem, Shape, compile_value_getter, resolve

Part = Callable[[Any, Any], str]

FILTERS: dict[str, str] = {
    "default": "text used when the value is missing or empty, e.g. default:'none'",
    "required": "fail the case when the value is missing",
    "upper": "UPPER CASE",
    "lower": "lower case",
    "title": "Title Case",
    "trim": "strip surrounding spaces",
    "truncate": "cut to at most N characters, e.g. truncate:40",
    "date": "format a date/time in Europe/London, e.g. date:'%d/%m/%Y %H:%M'",
    "prefix": "text put before the value, only when there is a value, e.g. prefix:'Tel: '",
    "suffix": "text put after the value, only when there is a value",
    "first_word": "the first word (e.g. a forename from a full name)",
    "last_words": "everything after the first word (e.g. a surname from a full name)",
    "oneline": "newlines and runs of spaces become single spaces",
}
_ARG_FILTERS = {"default": "text", "truncate": "int", "date": "text", "prefix": "text", "suffix": "text"}

_FILTER_RE = re.compile(
    r"""\s*(?P<name>[a-z_]+)\s*(?::\s*(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<num>-?\d+)))?\s*"""
)
_DATE_DIRECTIVES = set("aAbBdHIjmMpSyYzZ%eT")


class TemplateError(ValueError):
    """A template is malformed; `offset` is the character position in the template text."""

    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        self.offset = offset
        self.hint = hint
        super().__init__(message)


class TemplateValueMissing(Exception):
    """Raised at render time by the `required` filter."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(path)


@dataclass(frozen=True)
class Placeholder:
    path: str
    filters: tuple[tuple[str, Any], ...]
    offset: int


def parse(text: str) -> list[str | Placeholder]:
    """Split template text into literal strings and placeholders; raises TemplateError."""
    parts: list[str | Placeholder] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{":
            if i + 1 < n and text[i + 1] == "{":
                buf.append("{")
                i += 2
                continue
            end = text.find("}", i)
            if end < 0:
                raise TemplateError("'{' is never closed", i, "write {{ for a literal brace")
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(_placeholder(text[i + 1 : end], i))
            i = end + 1
        elif ch == "}":
            if i + 1 < n and text[i + 1] == "}":
                buf.append("}")
                i += 2
                continue
            raise TemplateError("'}' without a matching '{'", i, "write }} for a literal brace")
        else:
            buf.append(ch)
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _placeholder(inner: str, offset: int) -> Placeholder:
    pieces = _split_filters(inner)
    path = pieces[0].strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*", path or "-"):
        raise TemplateError(
            f"{{{inner}}} does not name a source path", offset, "placeholders look like {customer.name}"
        )
    filters: list[tuple[str, Any]] = []
    for piece in pieces[1:]:
        m = _FILTER_RE.fullmatch(piece)
        if not m:
            raise TemplateError(f"cannot read filter {piece.strip()!r}", offset, "filters look like default:'none'")
        name = m["name"]
        if name not in FILTERS:
            import difflib

            close = difflib.get_close_matches(name, list(FILTERS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "filters: " + ", ".join(sorted(FILTERS))
            raise TemplateError(f"unknown filter {name!r}", offset, hint)
        raw = m["sq"] if m["sq"] is not None else m["dq"] if m["dq"] is not None else m["num"]
        want = _ARG_FILTERS.get(name)
        if want is None and raw is not None:
            raise TemplateError(f"filter {name!r} takes no argument", offset)
        if want is not None and raw is None:
            raise TemplateError(f"filter {name!r} needs an argument", offset, FILTERS[name])
        arg: Any = raw
        if want == "int":
            if m["num"] is None or int(raw) < 1:
                raise TemplateError(f"filter {name!r} needs a positive whole number", offset, FILTERS[name])
            arg = int(raw)
        if name == "date":
            _check_date_format(raw, offset)
        filters.append((name, arg))
    return Placeholder(path, tuple(filters), offset)


def _split_filters(inner: str) -> list[str]:
    """Split on `|` outside quotes."""
    out, buf, quote = [], [], None
    for ch in inner:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch == "|":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def _check_date_format(fmt: str, offset: int) -> None:
    for m in re.finditer(r"%(.)", fmt.replace("%%", "")):
        if m.group(1) not in _DATE_DIRECTIVES:
            raise TemplateError(
                f"date format directive %{m.group(1)} is not supported", offset,
                "use %Y %m %d %H %M %S %a %A %b %B %y %j %p %I %z %Z",
            )


def check_date_format(fmt: str) -> None:
    """Raise TemplateError when a strftime format uses directives outside the supported set."""
    _check_date_format(fmt, 0)


def to_text(value: Any) -> str:
    """How a source value reads inside text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(LONDON).strftime("%d/%m/%Y %H:%M")
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    return str(value)


def _format_date(value: Any, fmt: str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(LONDON)
        return value.strftime(fmt)
    if isinstance(value, date):
        return value.strftime(fmt)
    if isinstance(value, str):
        try:
            return _format_date(datetime.fromisoformat(value), fmt)
        except ValueError:
            return value
    return to_text(value)


def _compile_placeholder(ph: Placeholder, root: Shape, item: Shape | None) -> Part:
    try:
        resolve(ph.path, root, item)
    except PathProblem as exc:
        raise TemplateError(str(exc), ph.offset, exc.hint) from None
    get = compile_value_getter(ph.path, root, item)
    filters = ph.filters
    if not filters:
        def plain(case: Any, it: Any) -> str:
            v = get(case, it, None)
            return v if type(v) is str else to_text(v)

        return plain
    if len(filters) == 1 and filters[0][0] == "default":
        dflt = filters[0][1]

        def with_default(case: Any, it: Any) -> str:
            v = get(case, it, None)
            if v is None or v == "":
                return dflt
            return v if type(v) is str else to_text(v)

        return with_default

    ops = tuple(filter_function(name, arg, ph.path) for name, arg in filters)
    if len(ops) == 1:
        (op,) = ops

        def filtered1(case: Any, it: Any) -> str:
            v = op(get(case, it, None))
            return v if type(v) is str else to_text(v)

        return filtered1

    def filtered(case: Any, it: Any) -> str:
        v = get(case, it, None)
        for op in ops:
            v = op(v)
        return v if type(v) is str else to_text(v)

    return filtered


def filter_function(name: str, arg: Any, path: str) -> Callable[[Any], Any]:
    """The function applying one template filter (with its argument) to a value."""
    if name == "default":
        return lambda v: arg if v is None or v == "" else v
    if name == "required":
        def required(v: Any) -> Any:
            if v is None or v == "":
                raise TemplateValueMissing(path)
            return v

        return required
    if name == "upper":
        return lambda v: to_text(v).upper()
    if name == "lower":
        return lambda v: to_text(v).lower()
    if name == "title":
        return lambda v: to_text(v).title()
    if name == "trim":
        return lambda v: to_text(v).strip()
    if name == "truncate":
        return lambda v: to_text(v)[:arg]
    if name == "date":
        return lambda v: "" if v is None else _format_date(v, arg)
    if name == "first_word":
        return lambda v: to_text(v).strip().split(" ", 1)[0]
    if name == "last_words":
        def last_words(v: Any) -> str:
            parts = to_text(v).strip().split(" ", 1)
            return parts[1].strip() if len(parts) > 1 else ""

        return last_words
    if name == "oneline":
        return lambda v: " ".join(to_text(v).split())
    if name == "prefix":
        return lambda v: "" if v is None or v == "" else arg + to_text(v)
    if name == "suffix":
        return lambda v: "" if v is None or v == "" else to_text(v) + arg
    raise AssertionError(name)  # pragma: no cover - parse() only lets known filters through


def compile_template(text: str, root: Shape, item: Shape | None = None) -> Callable[[Any, Any, Any], str]:
    """Compile a template into `render(case, item, warnings) -> str`; raises TemplateError on bad text or paths.

    Literal text becomes a %-format string (with every `%` escaped) filled with the placeholders' text,
    so rendering is one list comprehension and one string operation; the format itself is never
    taken from a value.
    """
    parts = parse(text)
    fns: list[Part] = []
    literal: list[str] = []
    for p in parts:
        if isinstance(p, str):
            literal.append(p.replace("%", "%%"))
        else:
            fns.append(_compile_placeholder(p, root, item))
            literal.append("%s")
    fmt = "".join(literal)
    if not fns:
        const = fmt.replace("%%", "%")
        return lambda case, it, w: const
    if fmt == "%s":
        only = fns[0]
        return lambda case, it, w: only(case, it)
    if len(fns) == 1:
        f0 = fns[0]
        return lambda case, it, w: fmt % (f0(case, it),)
    if len(fns) == 2:
        f0, f1 = fns
        return lambda case, it, w: fmt % (f0(case, it), f1(case, it))
    fns_t = tuple(fns)

    def render(case: Any, it: Any, w: Any) -> str:
        return fmt % tuple([f(case, it) for f in fns_t])

    return render


def placeholders(text: str) -> list[Placeholder]:
    """Every placeholder of a template (for checks and docs)."""
    return [p for p in parse(text) if isinstance(p, Placeholder)]
