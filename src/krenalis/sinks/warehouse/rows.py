"""The fast way from a stored event to a row, for the events that need no care.

:func:`krenalis.sinks.warehouse.schema.event_to_row` walks a decoded event key by key in Python
and checks each value: about a third of a warehouse worker's CPU (bench/RESULTS.md,
"Performance"). Almost every event the collector wrote is well formed, so :func:`fast_row` lets
msgspec do that walk in C, from the stream's bytes: it decodes them straight into a Struct shaped
like the columns (which checks every value's type, and keeps each JSON column's text as it is,
``msgspec.Raw``), takes the 67 values with one compiled function and checks the timestamps. An
event it is not sure of (a value of an unexpected type, a missing section written as ``null``,
a NUL character anywhere, a timestamp not in the wire form) gets ``None``, and the careful path
makes its row or its reason for refusing it. Both paths give PostgreSQL the same values
(tests/sinks/test_warehouse_rows.py compares them), except that the timestamps go as their text
(``2026-11-26T05:29:02.123``, the UTC time without its ``Z``) rather than as datetimes:
PostgreSQL reads that text itself, for less work on our side.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import msgspec

from krenalis.events.timestamps import is_wire_form
from krenalis.sinks.warehouse.schema import _TREE, COLUMNS, CONNECTION_ID, MESSAGE_ID, Kind, Row

__all__ = ["fast_row"]

#: A column of a single value: what the careful path passes to PostgreSQL as it is.
_Value = str | int | float | bool | None

#: The type the wire form gives each required column (schema's ``Column.required``): a JSON
#: text (checked to be an object) for traits, text for the others; anything else goes the careful
#: way.
_REQUIRED_TYPES: dict[str, Any] = {
    c.field: msgspec.Raw if c.kind is Kind.JSON else str for c in COLUMNS if c.required
}


def _struct(name: str, tree: dict[str, Any], prefix: str) -> type[msgspec.Struct]:
    """A Struct with a field per column (and per section) of `tree` (schema's ``_TREE``)."""
    fields: list[tuple[str, Any, Any]] = []
    required: list[tuple[str, Any]] = []
    for key, spec in tree.items():
        dotted = prefix + key
        if type(spec) is dict:
            section = _struct(f"{name}_{key}", spec, dotted + ".")
            fields.append((key, section, msgspec.field(default_factory=section)))
        elif dotted in _REQUIRED_TYPES:
            required.append((key, _REQUIRED_TYPES[dotted]))
        else:
            kind = spec[1]
            fields.append((key, msgspec.Raw if kind is Kind.JSON else _Value, None))
    return msgspec.defstruct(name, [*required, *fields])


def _flattener(struct: type[msgspec.Struct]) -> Callable[[msgspec.Struct], tuple[Any, ...]]:
    """A function that returns the columns' values of a `struct` instance, in COLUMNS order.

    It is written out as source and compiled once, as :mod:`dataclasses` does for its
    methods: one attribute read per section and per column, with no loop. The alternatives
    measured slower: one ``attrgetter`` of every dotted path (5 us per event: it walks each
    path again), the sections' ``astuple`` laid end to end (3 us)."""
    lines = ["def values(e):"]
    names = {"": "e"}
    for column in COLUMNS:
        for depth in range(1, len(column.path)):
            section = ".".join(column.path[:depth])
            if section not in names:
                names[section] = f"s{len(names)}"
                parent = names[".".join(column.path[: depth - 1])]
                lines.append(f"    {names[section]} = {parent}.{column.path[depth - 1]}")
    reads = [f"{names['.'.join(c.path[:-1])]}.{c.path[-1]}" for c in COLUMNS]
    lines.append(f"    return ({', '.join(reads)},)")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), f"<{struct.__name__} values>", "exec"), namespace)
    return namespace["values"]


_Event = _struct("_Event", _TREE, "")
_values = _flattener(_Event)
_JSON = tuple((i, c.required) for i, c in enumerate(COLUMNS) if c.kind is Kind.JSON)
_TIME = tuple(i for i, c in enumerate(COLUMNS) if c.kind is Kind.TIME)
_decode = msgspec.json.Decoder(_Event).decode
_NUL = b"\\u0000"


def fast_row(data: bytes) -> Row | None:
    """The row of the event stored as `data`, in ``COLUMNS`` order, or None: take the careful
    path."""
    # One look at the whole text first: PostgreSQL cannot hold NUL, and the careful path strips
    # it (an escaped backslash before "u0000" is declined too, which costs only care).
    if _NUL in data:
        return None
    try:
        row = list(_values(_decode(data)))
    except msgspec.DecodeError:
        return None
    for i, required in _JSON:
        raw = row[i]
        if raw is None:
            continue
        text = bytes(raw)
        if required and text[:1] != b"{":
            return None
        row[i] = None if text == b"null" else text.decode()
    for i in _TIME:
        text = row[i]
        if not is_wire_form(text):
            return None
        try:
            datetime.fromisoformat(text)  # the careful path's check of the date itself
        except ValueError:
            return None
        row[i] = text[:23]
    if not row[CONNECTION_ID] or not row[MESSAGE_ID]:
        return None
    return tuple(row)
