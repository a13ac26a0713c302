"""The fast row (rows.py) and the careful one (schema.event_to_row) give PostgreSQL the same
values; the fast path declines (None) whatever it is not sure of, and takes what the collector
writes."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from test_warehouse import FULL_EVENT, make_event

from krenalis.errors import InvalidEvent, InvalidRow
from krenalis.events import StoredEvent, read_event
from krenalis.sinks.warehouse import rows
from krenalis.sinks.warehouse.schema import COLUMNS, Kind, event_to_row

_TIME = [i for i, c in enumerate(COLUMNS) if c.kind is Kind.TIME]


def fast_row(event: dict[str, Any]) -> tuple | None:
    """The fast row of `event` as the stream stores it."""
    return rows.fast_row(msgspec.json.encode(event))


def same_values(fast: tuple, careful: tuple) -> bool:
    """Equal, the timestamps compared as the moments PostgreSQL stores."""
    fast_times = [datetime.fromisoformat(fast[i]) for i in _TIME]
    careful_times = [careful[i] for i in _TIME]
    rest = [v for i, v in enumerate(fast) if i not in _TIME]
    return fast_times == careful_times and rest == [
        v for i, v in enumerate(careful) if i not in _TIME
    ]


def test_what_the_collector_writes_takes_the_fast_path() -> None:
    for event in (make_event("m1"), {**make_event("m2"), "context": {"ip": "203.0.113.9"}}):
        fast = fast_row(event)
        assert fast is not None
        assert same_values(fast, event_to_row(event))


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(event="Sign\x00ed Up"),  # NUL in a column: the careful path strips it
        lambda e: e.update(properties={"k\x00ey": 1}),  # NUL in a JSON key
        lambda e: e.update(sentAt="2026-11-26T06:29:01.9+01:00"),  # not the wire form
        lambda e: e.update(timestamp="2026-02-30T00:00:00.000Z"),  # the wire form, no such day
        lambda e: e.update(timestamp="2026-11-26T24:00:00.000Z"),  # PostgreSQL would take it
        lambda e: e.update(userId={"a": 1}),  # an object where a value goes
        lambda e: e.update(context={"page": None}),  # a section written as null
        lambda e: e.update(context={"page": "x"}),  # a section that is no object
        lambda e: e.update(anonymousId=7),  # a key of another type
        lambda e: e.update(messageId=""),
        lambda e: e.pop("traits"),
        lambda e: e.update(traits=None),  # a required object written as null
        lambda e: e.update(traits=[1]),  # a required object that is no object
        lambda e: e.update(properties={"a": "b\\u0000"}),  # a text that only looks like NUL
    ],
)
def test_what_needs_care_takes_the_careful_path(change) -> None:
    event = make_event("m1")
    change(event)
    assert fast_row(event) is None


def test_the_full_event_gives_the_same_values_both_ways() -> None:
    event = copy.deepcopy(FULL_EVENT)
    # The wire form of each timestamp, as the collector writes them.
    event.update(sentAt="2026-11-26T05:29:01.900Z", timestamp="2026-11-26T05:29:02.123Z")
    fast = fast_row(event)
    assert fast is not None and same_values(fast, event_to_row(event))


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)  # fmt: skip
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
_WIRE = "2026-11-26T05:29:02.123Z"
_times = st.sampled_from(
    [_WIRE] * 12 + ["2026-11-26T06:29:01.9+01:00", "2026-02-30T00:00:00.000Z", 5]
)


def _section(names: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(_json, st.fixed_dictionaries({}, optional={n: _json for n in names}))


_context = st.fixed_dictionaries(
    {},
    optional={
        "ip": _json, "locale": _json, "userAgent": _json, "consents": _json, "extra": _json,
        "page": _section(["path", "url", "title"]), "library": _section(["name", "version"]),
        "screen": _section(["width", "height", "density"]),
    },
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.fixed_dictionaries(
        {"receivedAt": _times, "sentAt": _times, "timestamp": _times},
        optional={
            "userId": _json, "event": _json, "properties": _json, "traits": _json,
            "context": st.one_of(st.none(), _context, _json), "originalTimestamp": _json,
            "anonymousId": st.one_of(st.text(max_size=4), st.integers()),
            "messageId": st.one_of(st.text(max_size=4), st.integers()),
            "channel": _scalars, "name": _scalars,
        },
    )
)  # fmt: skip
def test_both_paths_agree_on_any_event(base: dict[str, Any]) -> None:
    event = {**make_event("m1"), **base}
    fast = fast_row(event)
    target(float(fast is not None))  # search for events the fast path takes, too
    try:
        careful = event_to_row(event)
    except InvalidRow:
        assert fast is None  # the fast path never takes what the careful one refuses
        return
    assert fast is None or same_values(fast, careful)


def _read_both(data: bytes) -> tuple[Any, Any]:
    """What read_event and the warehouse's reader make of `data`: (event, None) or (None, the
    refusal's text) each."""
    results = []
    for read in (read_event, rows.read_row_event):
        try:
            results.append((read(data), None))
        except InvalidEvent as exc:
            results.append((None, str(exc)))
    return results[0], results[1]


def _stored(event: StoredEvent) -> tuple:
    return (event.data, event.message_id, event.connection_id, event.user, event.received_at)


def test_the_warehouse_reader_makes_the_row_of_what_the_collector_writes() -> None:
    known, unknown = make_event("m2", userId="u-1"), make_event("m3", userId="u-1", anonymousId="")
    for event in (make_event("m1"), known, unknown):
        data = msgspec.json.encode(event)
        read = rows.read_row_event(data)
        assert isinstance(read, rows.RowEvent) and read.row == rows.fast_row(data)
        assert _stored(read) == _stored(read_event(data))


def test_the_warehouse_reader_refuses_bad_utf8_where_no_column_reads() -> None:
    # msgspec does not check the UTF-8 of what it skips (a member no column has): the reader
    # must.
    data = msgspec.json.encode(make_event("m1", context={"notacolumn": "caf\u00e9"}))
    (_, expected), (_, got) = _read_both(data.replace("caf\u00e9".encode(), b"caf\xff"))
    assert expected is not None and got == expected


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(extra=1),  # a name the wire form does not have
        lambda e: e.pop("originalTimestamp"),  # required, though no column
        lambda e: e.update(originalTimestamp=5),
        lambda e: e.update(type="click"),
        lambda e: e.update(properties=None),  # an object written as null
        lambda e: e.update(properties=[1]),
        lambda e: e.update(context=None),
        lambda e: e.update(userId=None),  # an optional text written as null
        lambda e: e.update(channel=5),
    ],
)
def test_the_warehouse_reader_refuses_what_read_event_refuses(change) -> None:
    event = make_event("m1")
    change(event)
    (_, expected), (_, got) = _read_both(msgspec.json.encode(event))
    assert expected is not None and got == expected


#: Mostly what the wire form has there, so that many events pass every check.
_text_or_any = st.one_of(st.text(max_size=4), st.text(max_size=4), _json)
_object_or_any = st.one_of(st.dictionaries(st.text(max_size=4), _json, max_size=3), _json)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.fixed_dictionaries(
        {"receivedAt": _times, "sentAt": _times, "timestamp": _times},
        optional={
            "userId": _text_or_any, "event": _text_or_any, "channel": _text_or_any,
            "properties": _object_or_any, "traits": _object_or_any,
            "context": st.one_of(st.none(), _context, _json),
            "originalTimestamp": st.one_of(st.just(_WIRE), _json),
            "anonymousId": st.one_of(st.text(max_size=4), st.integers()),
            "messageId": st.one_of(st.text(max_size=4), st.integers()),
            "type": st.sampled_from(["track", "identify", "x"]), "extra": _scalars,
        },
    ),
    drop=st.lists(st.sampled_from(["originalTimestamp", "traits", "connectionId"]), max_size=1),
)  # fmt: skip
def test_the_warehouse_reader_agrees_with_read_event(base: dict[str, Any], drop: list) -> None:
    event = {**make_event("m1"), **base}
    for name in drop:
        event.pop(name, None)
    data = msgspec.json.encode(event)
    (expected, refused), (got, got_refused) = _read_both(data)
    target(float(isinstance(got, rows.RowEvent)))  # search for events it takes in one pass
    assert got_refused == refused
    if expected is None:
        return
    assert _stored(got) == _stored(expected) and got.fields == expected.fields
    if isinstance(got, rows.RowEvent):  # the row is the one the write would make
        assert got.row == rows.fast_row(data)
        assert same_values(got.row, event_to_row(expected.fields))
