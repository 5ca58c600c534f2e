"""Source paths (`customer.address.uprn`): checked against a model once, compiled into fast getters."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from datetime import date, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from hubbridge.case import FollowUpKind, HubCase, Priority
from hubbridge.connectors.base import BackOfficeUpdate

Getter = Callable[[Any], Any]

ITEM_PREFIX = "item"
"""Inside `each:`, paths starting with `item.` read the current list element."""


class PathProblem(ValueError):
    """A path does not exist in the model; `hint` proposes the nearest valid path."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message)


class Shape:
    """What a path points at: a leaf of some Python type, a model, a free dict, or a list."""

    __slots__ = ("children", "item", "kind", "py")

    def __init__(
        self,
        kind: str,
        py: Any = None,
        children: Mapping[str, Shape] | None = None,
        item: Shape | None = None,
    ) -> None:
        self.kind = kind  # "leaf" | "model" | "dict" | "list"
        self.py = py
        self.children = children or {}
        self.item = item

    @property
    def leaf_type(self) -> str:
        """A coarse name of the leaf type, used to check conversions (`datetime`, `number`, ...)."""
        py = self.py
        if isinstance(py, type):
            if issubclass(py, bool):
                return "boolean"
            if issubclass(py, int):
                return "integer"
            if issubclass(py, float):
                return "number"
            if issubclass(py, datetime):
                return "datetime"
            if issubclass(py, date):
                return "date"
            if issubclass(py, Enum):
                return "enum"
            if issubclass(py, str):
                return "string"
        return "any"


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional so the real type shows."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
            return Any  # a genuine union of scalars (attribute values)
        return annotation


def shape_of(annotation: Any, _seen: dict[Any, Shape] | None = None) -> Shape:
    """Describe a type annotation as a Shape tree."""
    seen = {} if _seen is None else _seen
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple) or annotation in (list, tuple):
        args = typing.get_args(annotation)
        return Shape("list", item=shape_of(args[0], seen) if args else Shape("leaf", Any))
    if origin is dict or annotation is dict:
        args = typing.get_args(annotation)
        return Shape("dict", item=shape_of(args[1], seen) if len(args) == 2 else Shape("leaf", Any))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return seen[annotation]
        shape = Shape("model", annotation)
        seen[annotation] = shape
        shape.children = {n: shape_of(f.annotation, seen) for n, f in annotation.model_fields.items()}
        return shape
    if isinstance(annotation, type) and is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        shape = Shape("model", annotation)
        shape.children = {f.name: shape_of(hints[f.name], seen) for f in dataclass_fields(annotation)}
        return shape
    return Shape("leaf", annotation)


class FollowUpFile(BaseModel):
    """A file of an evidence follow-up as a mapping sees it: its name, type and address, never its bytes
    (the connector sends those itself, from `FollowUp.documents`)."""

    # the stored follow-up keeps a file's bytes apart, so a file may come with neither content nor url here
    model_config = ConfigDict(extra="ignore", frozen=True)

    filename: str
    content_type: str
    url: str | None = None


class FollowUpContext(BaseModel):
    """What a `followups:` section reads: the follow-up's own fields, its first file as `document`, the
    whole case as `case`, and where it goes (`backoffice_ref`, `key`)."""

    # keys the worker stores beside the follow-up's own are no paths (load refuses them), so they may pass
    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str
    backoffice_ref: str
    id: str | None = None
    ref: str
    kind: FollowUpKind
    note: str | None = None
    priority: Priority | None = None
    previous_priority: Priority | None = None
    changes: dict[str, Any] | None = None
    attachments: list[FollowUpFile] = []
    document: FollowUpFile | None = None
    author: str | None = None
    occurred_at: datetime
    case: HubCase

    @model_validator(mode="before")
    @classmethod
    def _first_document(cls, data: Any) -> Any:
        # paths have no list indexes; `document.*` stands for the first file, which is usually the only one
        if isinstance(data, Mapping) and data.get("document") is None and data.get("attachments"):
            return {**data, "document": data["attachments"][0]}
        return data


CASE_SHAPE = shape_of(HubCase)
UPDATE_SHAPE = shape_of(BackOfficeUpdate)
FOLLOWUP_SHAPE = shape_of(FollowUpContext)


def resolve(path: str, root: Shape, item: Shape | None = None) -> Shape:
    """The Shape at `path` under `root` (or under `item` for `item.` paths); raises PathProblem."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise PathProblem(f"{path!r} is not a path", "write names separated by dots, e.g. customer.address.uprn")
    shape = root
    start = 0
    if parts[0] == ITEM_PREFIX:
        if item is None:
            raise PathProblem(f"{path!r}: 'item.' paths are only allowed inside 'each:'")
        shape, start = item, 1
        if len(parts) == 1:
            return item
    walked: list[str] = parts[:start]
    for part in parts[start:]:
        if shape.kind == "model":
            if part not in shape.children:
                choices = list(shape.children)
                close = difflib.get_close_matches(part, choices, n=1)
                prefix = ".".join(walked)
                where = f"in {prefix!r}" if prefix else f"at the top of the {_root_name(root)}"
                # a follow-up reads the case under `case.`; a path copied from `outbound:` lacks it
                nested_case = root.children.get("case") if not walked else None
                in_case = (difflib.get_close_matches(part, list(nested_case.children), n=1)
                           if nested_case is not None and not close else [])
                if nested_case is not None and part in nested_case.children:
                    hint = f"did you mean {'case.' + path!r}?"
                elif close:
                    hint = f"did you mean {'.'.join([*walked, close[0]])!r}?"
                elif in_case:
                    hint = f"did you mean {'.'.join(['case', in_case[0], *parts[1:]])!r}?"
                else:
                    hint = "known here: " + ", ".join(sorted(choices))
                raise PathProblem(f"unknown source path {path!r}: no {part!r} {where}", hint)
            shape = shape.children[part]
        elif shape.kind == "dict":
            shape = shape.item or Shape("leaf", Any)
        elif shape.kind == "list":
            raise PathProblem(
                f"{path!r} goes into a list at {'.'.join(walked)!r}",
                "use 'each:' to map every element of a list",
            )
        else:
            raise PathProblem(f"{path!r}: {'.'.join(walked)!r} is a value and has no {part!r}")
        walked.append(part)
    return shape


def _root_name(root: Shape) -> str:
    """What the paths of a section read, in words, for errors."""
    if root.py is FollowUpContext:
        return "follow-up"
    if root.py is BackOfficeUpdate:
        return "back-office update"
    return "case"


def _segment_getter(kind: str, name: str) -> Getter:
    if kind == "dict":
        def get_key(obj: Any, _name: str = name) -> Any:
            return obj.get(_name)

        return get_key

    def get_attr(obj: Any, _name: str = name) -> Any:
        return getattr(obj, _name, None)

    return get_attr


def compile_getter(path: str, root: Shape, item: Shape | None = None) -> tuple[Getter, bool]:
    """A fast function reading `path`, and whether it reads the list item (True) or the root.

    Missing intermediate objects give None; the path must already be valid (see `resolve`).
    """
    parts = path.split(".")
    shape = root
    on_item = parts[0] == ITEM_PREFIX
    if on_item:
        assert item is not None
        shape, parts = item, parts[1:]
    if not parts:
        return (lambda obj: obj), on_item
    steps: list[tuple[str, str]] = []
    for part in parts:
        kind = "dict" if shape.kind == "dict" else "attr"
        steps.append((kind, part))
        shape = (shape.item if shape.kind == "dict" else shape.children.get(part)) or Shape("leaf", Any)
    # Specialised closures for the common short paths: one attribute/key look-up per level, no loop.
    if len(steps) == 1:
        kind, a = steps[0]
        if kind == "attr":
            return (lambda obj: getattr(obj, a, None)), on_item
        return (lambda obj: obj.get(a)), on_item
    if len(steps) == 2 and steps[0][0] == "attr":
        (_, a), (k2, b) = steps
        if k2 == "attr":
            def get2(obj: Any) -> Any:
                v = getattr(obj, a, None)
                return None if v is None else getattr(v, b, None)
        else:
            def get2(obj: Any) -> Any:
                v = getattr(obj, a, None)
                return None if v is None else v.get(b)
        return get2, on_item
    if len(steps) == 3 and all(k == "attr" for k, _ in steps):
        (_, a), (_, b), (_, c) = steps
        def get3(obj: Any) -> Any:
            v = getattr(obj, a, None)
            if v is None:
                return None
            v = getattr(v, b, None)
            return None if v is None else getattr(v, c, None)
        return get3, on_item
    getters = [_segment_getter(k, n) for k, n in steps]

    def get_n(obj: Any) -> Any:
        for g in getters:
            if obj is None:
                return None
            obj = g(obj)
        return obj

    return get_n, on_item


def compile_value_getter(path: str, root: Shape, item: Shape | None = None) -> Callable[[Any, Any, Any], Any]:
    """Like `compile_getter`, but returning `fn(case, item, warnings)` with no extra call layers."""
    parts = path.split(".")
    on_item = parts[0] == ITEM_PREFIX
    shape = item if on_item else root
    names = parts[1:] if on_item else parts
    kinds = []
    for part in names:
        assert shape is not None
        kinds.append("dict" if shape.kind == "dict" else "attr")
        shape = (shape.item if shape.kind == "dict" else shape.children.get(part)) or Shape("leaf", Any)
    if not on_item:
        if kinds == ["attr"]:
            (a,) = names
            return lambda c, it, w: getattr(c, a, None)
        if kinds == ["attr", "attr"]:
            a, b = names

            def root2(c: Any, it: Any, w: Any) -> Any:
                v = getattr(c, a, None)
                return None if v is None else getattr(v, b, None)

            return root2
        if kinds == ["attr", "dict"]:
            a, b = names

            def root2d(c: Any, it: Any, w: Any) -> Any:
                v = getattr(c, a, None)
                return None if v is None else v.get(b)

            return root2d
        if kinds == ["attr", "attr", "attr"]:
            a, b, d = names

            def root3(c: Any, it: Any, w: Any) -> Any:
                v = getattr(c, a, None)
                if v is None:
                    return None
                v = getattr(v, b, None)
                return None if v is None else getattr(v, d, None)

            return root3
    getter, on = compile_getter(path, root, item)
    if on:
        return lambda c, it, w: getter(it)
    return lambda c, it, w: getter(c)
