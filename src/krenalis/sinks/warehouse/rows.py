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

:func:`read_row_event` is the warehouse's reader of the stream's messages
(``WarehouseSink.read_event``): it checks each message as :func:`krenalis.events.read_event`
does and makes its fast row in the same decode.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import msgspec

from krenalis.events.event import EVENT_TYPES
from krenalis.events.jsontext import may_hold_nul
from krenalis.events.timestamps import is_wire_form
from krenalis.events.wire import (
    OPTIONAL_OBJECTS,
    OPTIONAL_STRINGS,
    REQUIRED_OBJECTS,
    REQUIRED_STRINGS,
    StoredEvent,
    read_event,
)
from krenalis.sinks.warehouse.schema import _TREE, COLUMNS, CONNECTION_ID, MESSAGE_ID, Kind, Row

__all__ = ["RowEvent", "fast_row", "read_row_event"]

#: A column of a single value: what the careful path passes to PostgreSQL as it is.
_Value = str | int | float | bool | None

#: The type the wire form gives each required column (schema's ``Column.required``): a JSON
#: text (checked to be an object) for traits, text for the others; anything else goes the careful
#: way.
_REQUIRED_TYPES: dict[str, Any] = {
    c.field: msgspec.Raw if c.kind is Kind.JSON else str for c in COLUMNS if c.required
}


#: The top level as `read_event` checks it (events/wire.py): each name's type, and its default
#: (``...``: required). An object that is a JSON column is kept as its text (checked to be an
#: object by the flattener); one that is a section of columns is that section's Struct.
_WIRE_TYPES: dict[str, tuple[Any, Any]] = {
    **{name: (str, ...) for name in REQUIRED_STRINGS},
    "type": (Literal[EVENT_TYPES], ...),
    **{name: (str, None) for name in OPTIONAL_STRINGS},
    **{name: (msgspec.Raw, ...) for name in REQUIRED_OBJECTS},
    **{name: (msgspec.Raw, None) for name in OPTIONAL_OBJECTS},
}


def _struct(
    name: str, tree: dict[str, Any], prefix: str, wire: bool = False
) -> type[msgspec.Struct]:
    """A Struct with a field per column (and per section) of `tree` (schema's ``_TREE``). With
    `wire`, its top level is also checked as `read_event` checks it: the names and types of
    :data:`_WIRE_TYPES`, and no other name."""
    fields: list[tuple[str, Any, Any]] = []
    required: list[tuple[str, Any]] = []

    def wire_field(key: str) -> None:
        kind, default = _WIRE_TYPES[key]
        if default is ...:
            required.append((key, kind))
        else:
            fields.append((key, kind, default))

    for key, spec in tree.items():
        dotted = prefix + key
        if type(spec) is dict:
            section = _struct(f"{name}_{key}", spec, dotted + ".")
            fields.append((key, section, msgspec.field(default_factory=section)))
        elif wire and key in _WIRE_TYPES:
            wire_field(key)
        elif dotted in _REQUIRED_TYPES:
            required.append((key, _REQUIRED_TYPES[dotted]))
        else:
            kind = spec[1]
            fields.append((key, msgspec.Raw if kind is Kind.JSON else _Value, None))
    if wire:  # what the wire form has beside the columns (originalTimestamp): checked only
        for key in _WIRE_TYPES.keys() - tree.keys():
            assert _WIRE_TYPES[key][0] is str, f"{key}: an object that is no column needs a check"
            wire_field(key)
    # gc=False: an instance holds only values and other such Structs, never a cycle, and the
    # collector's passes over the many made per batch showed in the worker's profile.
    return msgspec.defstruct(name, [*required, *fields], gc=False, forbid_unknown_fields=wire)


def _flattener(
    struct: type[msgspec.Struct], objects: frozenset[str]
) -> Callable[[msgspec.Struct], tuple[Any, ...]]:
    """A function that returns the columns' values of a `struct` instance, in COLUMNS order,
    each JSON column as its text (those named in `objects` checked to be objects when present)
    and each timestamp checked (:func:`_json_text`, :func:`_time_text`; they raise
    :class:`_Decline` for what needs the careful path).

    It is written out as source and compiled once, as :mod:`dataclasses` does for its
    methods: one attribute read per section and per column, with no loop. The alternatives
    measured slower: one ``attrgetter`` of every dotted path (5 us per event: it walks each
    path again), the sections' ``astuple`` laid end to end (3 us), a loop over the JSON and
    time columns afterwards (2 us)."""
    lines = ["def values(e):"]
    names = {"": "e"}
    for column in COLUMNS:
        for depth in range(1, len(column.path)):
            section = ".".join(column.path[:depth])
            if section not in names:
                names[section] = f"s{len(names)}"
                parent = names[".".join(column.path[: depth - 1])]
                lines.append(f"    {names[section]} = {parent}.{column.path[depth - 1]}")
    reads = []
    for c in COLUMNS:
        read = f"{names['.'.join(c.path[:-1])]}.{c.path[-1]}"
        if c.kind is Kind.JSON:
            read = f"_json_text({read}, {c.field in objects})"
        elif c.kind is Kind.TIME:
            read = f"_time_text({read})"
        reads.append(read)
    lines.append(f"    return ({', '.join(reads)},)")
    namespace: dict[str, Any] = {"_json_text": _json_text, "_time_text": _time_text}
    exec(compile("\n".join(lines), f"<{struct.__name__} values>", "exec"), namespace)
    return namespace["values"]


class _Decline(Exception):
    """The event needs the careful path."""


def _json_text(raw: msgspec.Raw | None, object_only: bool) -> str | None:
    """A JSON column's text as the event holds it (None when absent); with `object_only`, it
    must be an object."""
    if raw is None:
        return None
    text = str(raw, "utf-8")  # from the buffer itself: bytes(raw) would copy it first
    if object_only and text[:1] != "{":
        raise _Decline
    return None if text == "null" else text


#: Timestamp texts already checked, and what PostgreSQL gets for each: the events of one request
#: share their receivedAt and usually their sentAt. Emptied when full.
_checked_times: dict[str, str] = {}
_MAX_CHECKED_TIMES = 4096


def _time_text(text: str) -> str:
    """The wire form's timestamp without its ``Z`` (PostgreSQL reads it as UTC)."""
    checked = _checked_times.get(text)
    if checked is not None:
        return checked
    if not is_wire_form(text):
        raise _Decline
    try:
        datetime.fromisoformat(text)  # the careful path's check of the date itself
    except ValueError:
        raise _Decline from None
    if len(_checked_times) >= _MAX_CHECKED_TIMES:
        _checked_times.clear()
    checked = _checked_times[text] = text[:23]
    return checked


_Event = _struct("_Event", _TREE, "")
_values = _flattener(_Event, frozenset(c.field for c in COLUMNS if c.required))
_decode = msgspec.json.Decoder(_Event).decode
_Wire = _struct("_Wire", _TREE, "", wire=True)
_wire_values = _flattener(_Wire, frozenset(REQUIRED_OBJECTS + OPTIONAL_OBJECTS))
_decode_wire = msgspec.json.Decoder(_Wire).decode


def fast_row(data: bytes) -> Row | None:
    """The row of the event stored as `data`, in ``COLUMNS`` order, or None: take the careful
    path."""
    # One look at the whole text first: PostgreSQL cannot hold NUL, and the careful path strips
    # it (an escaped backslash before "u0000" is declined too, which costs only care).
    if may_hold_nul(data):
        return None
    try:
        row = _values(_decode(data))
    except (msgspec.DecodeError, _Decline):
        return None
    if not row[CONNECTION_ID] or not row[MESSAGE_ID]:
        return None
    return row


class RowEvent(StoredEvent, eq=False, gc=False):
    """A stored event with its row, made when it was read (:func:`read_row_event`)."""

    row: Row | None = None


def read_row_event(data: bytes) -> StoredEvent:
    """:func:`krenalis.events.read_event`, and the row in the same pass (a :class:`RowEvent`)
    for an event the fast path takes: one decode of the bytes instead of two.

    The Struct it decodes into checks the top level as read_event's does (:data:`_WIRE_TYPES`,
    no other name) and the columns as :func:`fast_row`'s does, so an event it takes is one that
    read_event takes, with the same values (tests/sinks/test_warehouse_rows.py); for any other,
    read_event decides, and the row is made at write time."""
    if may_hold_nul(data):
        return read_event(data)
    try:
        if not data.isascii():  # msgspec does not check the UTF-8 of a Raw
            data.decode()
        event = _decode_wire(data)
        row = _wire_values(event)
    except (msgspec.DecodeError, UnicodeDecodeError, _Decline):
        return read_event(data)
    if not row[CONNECTION_ID] or not row[MESSAGE_ID]:
        return read_event(data)
    return RowEvent(
        data,
        message_id=event.messageId,
        connection_id=event.connectionId,
        user=event.anonymousId or event.userId or "",
        received_at=event.receivedAt,
        row=row,
    )
