"""Safe YAML loading that remembers where every key came from, for `file:line:col` errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, MappingEndEvent, MappingStartEvent, SequenceEndEvent, SequenceStartEvent

from hubbridge.errors import ConfigError, ConfigErrors

MAX_YAML_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_DEPTH = 64  # config is a few levels deep; a deeper file is a mistake or an attack on the parser

M = TypeVar("M", bound=BaseModel)


@dataclass
class YamlDoc:
    """A parsed YAML document and its source, able to say where a key path sits in the file."""

    path: str
    data: Any

    def position(self, loc: Sequence[str | int]) -> tuple[int, int]:
        """1-based (line, col) of the deepest node on `loc` that exists in the file."""
        node = self.data
        line, col = 1, 1
        for part in loc:
            if isinstance(node, CommentedMap) and part in node:
                pos = node.lc.key(part) if hasattr(node.lc, "key") else None
                if pos:
                    line, col = pos[0] + 1, pos[1] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                pos = node.lc.item(part)
                if pos:
                    line, col = pos[0] + 1, pos[1] + 1
                node = node[part]
            else:
                break
        return line, col

    def error(self, message: str, loc: Sequence[str | int] = (), hint: str | None = None) -> ConfigError:
        line, col = self.position(loc)
        key = ".".join(str(p) for p in loc) or None
        return ConfigError(message, path=self.path, line=line, col=col, key=key, hint=hint)

    def validate(self, model: type[M], context: dict[str, Any] | None = None) -> M:
        """Validate the whole document into `model`, raising every problem with its file position."""
        try:
            return model.model_validate(self.data, context=context)
        except ValidationError as exc:
            raise ConfigErrors(self.translate(exc, model)) from None

    def translate(self, exc: ValidationError, model: type[BaseModel] | None = None) -> list[ConfigError]:
        errors = []
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
            msg = err["msg"]
            hint = None
            if err["type"] == "extra_forbidden" and loc:
                unknown = str(loc[-1])
                siblings = _allowed_keys(model, loc[:-1]) if model else []
                close = difflib.get_close_matches(unknown, siblings, n=1)
                msg = f"unknown key {unknown!r}"
                if close:
                    hint = f"did you mean {close[0]!r}?"
                elif siblings:
                    hint = "allowed here: " + ", ".join(sorted(siblings))
            elif err["type"] == "missing":
                msg = "required key is missing"
            errors.append(self.error(msg, loc, hint))
        return errors


def _allowed_keys(model: type[BaseModel], loc: Iterable[str | int]) -> list[str]:
    """Field names (and aliases) allowed at `loc` inside `model`, for "did you mean" hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        field = next((f for n, f in fields.items() if n == part or f.alias == part), None)
        if field is None:
            # dict[str, Model] keys are free; step into the value type
            current = _inner_model(current)
            continue
        current = _inner_model(field.annotation)
    fields = getattr(current, "model_fields", None)
    if not fields:
        return []
    return [f.alias or n for n, f in fields.items()]


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


_CORE_PREFIX = "tag:yaml.org,2002:"


def _shown_tag(tag: str) -> str:
    return "!!" + tag[len(_CORE_PREFIX):] if tag.startswith(_CORE_PREFIX) else tag


def _check_events(text: str, path: str) -> None:
    """Refuse explicit tags and alias floods from the event stream, before anything is constructed.

    Any tag is refused, not only `!!python/...`: the round-trip loader turns unknown tags into
    look-alike data silently, and plain config never needs one. Aliases are counted as events, so a
    "billion laughs" file is refused at the alias that crosses the limit without being expanded.
    """
    aliases = 0
    depth = 0
    for event in YAML(typ="rt", pure=True).parse(StringIO(text)):
        mark = event.start_mark
        if isinstance(event, (MappingStartEvent, SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"YAML nested more than {MAX_DEPTH} levels deep", path=path, line=mark.line + 1,
                    col=mark.column + 1, hint="flatten the structure; no hubbridge file needs this depth",
                )
        elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
            depth -= 1
        if isinstance(event, AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(
                    f"more than {MAX_ALIASES} YAML aliases", path=path, line=mark.line + 1, col=mark.column + 1,
                    hint="aliases can expand exponentially; write the values out",
                )
            continue
        tag = getattr(event, "tag", None)
        if tag is not None:
            tag = str(getattr(tag, "value", tag))
            raise ConfigError(
                f"YAML tag {_shown_tag(tag)} is not allowed", path=path, line=mark.line + 1,
                col=mark.column + 1,
                hint="config holds plain data only; remove the tag, and quote the value if it is text",
            )


def parse_yaml(text: str, path: str = "<string>") -> YamlDoc:
    """Parse YAML text safely: size and alias limits, no tags (so no Python objects), no duplicate keys."""
    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise ConfigError(
            f"file is larger than {MAX_YAML_BYTES} bytes",
            path=path,
            line=1,
            col=1,
            hint="split it into smaller files",
        )
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        _check_events(text, path)
        data = yaml.load(StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        col = mark.column + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"YAML syntax: {problem}", path=path, line=line, col=col) from None
    except YAMLError as exc:
        raise ConfigError(f"YAML syntax: {exc}", path=path, line=1, col=1) from None
    return YamlDoc(path, data)


def load_yaml(path: Path | str) -> YamlDoc:
    """Read and parse one YAML file."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", path=str(p)) from None
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"file is larger than {MAX_YAML_BYTES} bytes", path=str(p), line=1, col=1)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file is not UTF-8 ({exc.reason})", path=str(p), line=1, col=1) from None
    return parse_yaml(text, str(p))


def read_yaml_source(path: Path | str) -> tuple[YamlDoc, bytes]:
    """Read and parse one YAML file, also returning its exact bytes (for hashing what was loaded)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"file is larger than {MAX_YAML_BYTES} bytes", path=str(p), line=1, col=1,
                              hint="split it into smaller files")
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", path=str(p)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file is not UTF-8 ({exc.reason})", path=str(p), line=1, col=1) from None
    return parse_yaml(text, str(p)), data


def plain(node: Any) -> Any:
    """Turn ruamel's commented containers into plain dicts and lists."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node
