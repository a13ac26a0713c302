"""msgspec's validation errors, reworded for the workspace file and given their line.

msgspec says "Expected `int` <= 16 - at `$.shards`"; the user reads 'pipeline "p": shards must
be a whole number from 1 to 16, got 17', at the line of ``shards``. One translator serves every
declaration: the path leads through the entry's declared type (for the wording, from
:func:`~krenalis.workspace.values.describe`) and through its LineDicts and LineLists (for the
line and the value shown). Values of secret types are never shown, and neither is a value that
came from environment variables (``${VAR}``): the message names the variables instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import inspect as mi

from krenalis.workspace._yaml import LineDict, LineList
from krenalis.workspace.values import describe, failure_of, is_secret

__all__ = ["Entry", "explain"]

_MESSAGE = re.compile(r"(.*?)(?: - at `\$([^`]*)`)?", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN_KEY = re.compile(r"Object contains unknown field `(.*)`")
_MISSING_KEY = re.compile(r"Object missing required field `(.*)`")
_HIDDEN = object()  # a value msgspec's path does not lead to (a mapping's value)


@dataclass(frozen=True, slots=True)
class Entry:
    """A part of the file converted on its own: ``what`` names it in messages ('source "web"',
    or "" for the file itself) and ``line`` is where it is named."""

    what: str
    line: int


@dataclass(frozen=True, slots=True)
class _Spot:
    labels: tuple[str, ...]  # the keys from the entry down to here
    type: mi.Type | None  # as declared; None when the path leaves the declaration
    value: Any
    line: int
    variables: tuple[str, ...] = ()  # the environment variables the value was made with


def explain(
    exc: msgspec.ValidationError, declared: Any, body: Any, entry: Entry
) -> tuple[int, str]:
    """The line and the reason to report for ``exc``, raised converting ``body``."""
    message, path = _MESSAGE.fullmatch(str(exc)).groups()  # type: ignore[union-attr]
    # A whole document that is one ${VAR} string is still marked (only containers unmark).
    variables = getattr(body, "variables", ())
    spots = [_Spot((), mi.type_info(declared), body, entry.line, variables)]
    for name, index in _SEGMENT.findall(path or ""):
        spots.append(_step(spots[-1], name, index))
    here = spots[-1]
    if match := _UNKNOWN_KEY.fullmatch(message):
        return _unknown_key(match[1], here, entry)
    if match := _MISSING_KEY.fullmatch(message):
        return here.line, _missing_key(match[1], here, entry)
    parent = spots[-2] if len(spots) > 1 else None
    tags = _tags(parent.type) if parent is not None else None
    if tags is not None and here.labels[-1] == tags[0]:
        where = _where(entry, here.labels[:-1])
        if here.variables:
            made = f"made with {_names(here.variables)} (not shown; {_known(tags)})"
            return here.line, f"{where}: unknown {tags[0]} {made}"
        return here.line, f'{where}: unknown {tags[0]} "{here.value}" ({_known(tags)})'
    return _bad_value(message, exc.__cause__, here, entry)


def _step(spot: _Spot, name: str, index: str) -> _Spot:
    container = spot.value
    if name:
        value = container.get(name) if isinstance(container, dict) else _HIDDEN
        line = container.line_of(name) if isinstance(container, LineDict) else spot.line
        variables = container.variables_of(name) if isinstance(container, LineDict) else ()
        field_type = _field_type(spot.type, container, name)
        return _Spot((*spot.labels, name), field_type, value, line, variables)
    label = spot.labels[-1] if spot.labels else ""
    item_type = _item_type(spot.type)
    if index == "...":
        return _Spot((*spot.labels[:-1], f"every value of {label}"), item_type, _HIDDEN, spot.line)
    i = int(index)
    value = container[i] if isinstance(container, list) and i < len(container) else _HIDDEN
    line = container.item_lines[i] if isinstance(container, LineList) else spot.line
    variables = container.variables_of(i) if isinstance(container, LineList) else ()
    return _Spot((*spot.labels[:-1], f"{label}[{i}]"), item_type, value, line, variables)


def _unknown_key(key: str, here: _Spot, entry: Entry) -> tuple[int, str]:
    line = here.value.line_of(key) if isinstance(here.value, LineDict) else here.line
    where = _where(entry, here.labels) or "the workspace file"
    reason = f'unknown key "{key}" in {where}'
    struct = _struct(here.type, here.value)
    if struct is not None:
        tag = (struct.tag_field,) if struct.tag_field else ()
        allowed = [*tag, *(field.encode_name for field in struct.fields)]
        reason += f" (allowed: {', '.join(allowed)})"
    return line, reason


def _missing_key(key: str, here: _Spot, entry: Entry) -> str:
    reason = f'{_where(entry, here.labels)}: missing key "{key}"'
    tags = _tags(here.type)
    if tags is not None and key == tags[0]:
        reason += f" ({_known(tags)})"
    return reason


def _bad_value(
    message: str, cause: BaseException | None, here: _Spot, entry: Entry
) -> tuple[int, str]:
    field = here.labels[-1] if here.labels else ""
    where = _where(entry, here.labels[:-1])
    subject = (f"{where}: {field}" if where else f'"{field}"') if field else where
    subject = subject or "the workspace file"
    expected, reason, key = failure_of(cause)
    if reason is not None:  # the value's type said it all, and which key is at fault
        line = here.value.line_of(key) if isinstance(here.value, LineDict) and key else here.line
        return line, f"{where}: {reason}" if where else reason
    if cause is not None and not field:  # a check of the entry as a whole (__post_init__)
        return here.line, f"{subject}: {expected}"
    if here.type is None:
        return here.line, f"{subject}: {message}"
    must = f"{subject} must be {expected or describe(here.type)}"
    if here.variables:
        return here.line, must + _got_variables(here.variables, here.type)
    shown = not is_secret(here.type) and here.value is not _HIDDEN
    got = f", got {_kind(here.value)}" if shown else ""
    return here.line, must + got


def _got_variables(variables: tuple[str, ...], declared: mi.Type) -> str:
    """What a message says of a value made with ``variables``, instead of the value."""
    got = f", got a value made with {_names(variables)} (not shown)"
    if isinstance(_unwrap(declared), mi.IntType | mi.FloatType | mi.BoolType):
        # msgspec takes no text for these, so no variable can ever give one: say so.
        got += "; ${...} always gives text, never a number or true/false: write it in the file"
    return got


def _names(variables: tuple[str, ...]) -> str:
    return ", ".join(f"${{{name}}}" for name in variables)


def _where(entry: Entry, labels: tuple[str, ...]) -> str:
    return ": ".join(part for part in (entry.what, *labels) if part)


def _known(tags: tuple[str, list[str]]) -> str:
    return f"known {tags[0]}s: {', '.join(sorted(tags[1]))}"


def _unwrap(t: mi.Type | None) -> mi.Type | None:
    """The type without annotations, and without None when it is an optional."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if len(members) == 1:
            return _unwrap(members[0])
    return t


def _structs(t: mi.Type | None) -> list[mi.StructType]:
    t = _unwrap(t)
    members = t.types if isinstance(t, mi.UnionType) else (t,)
    return [m for m in members if isinstance(m, mi.StructType)]


def _tags(t: mi.Type | None) -> tuple[str, list[str]] | None:
    """A tagged union's tag field and tags (a destination's "type" and the sink types)."""
    structs = _structs(t)
    if not structs or structs[0].tag_field is None:
        return None
    return structs[0].tag_field, [str(s.tag) for s in structs]


def _struct(t: mi.Type | None, value: Any) -> mi.StructType | None:
    """The Struct that ``value`` is read as: for a tagged union, the one its tag names."""
    structs = _structs(t)
    if len(structs) == 1:
        return structs[0]
    tag = value.get(structs[0].tag_field) if structs and isinstance(value, dict) else None
    return next((s for s in structs if s.tag_field and s.tag == tag), None)


def _field_type(t: mi.Type | None, value: Any, name: str) -> mi.Type | None:
    struct = _struct(t, value)
    fields = struct.fields if struct is not None else ()
    return next((f.type for f in fields if f.encode_name == name), None)


def _item_type(t: mi.Type | None) -> mi.Type | None:
    t = _unwrap(t)
    if isinstance(t, mi.DictType):
        return t.value_type
    return getattr(t, "item_type", None)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)
