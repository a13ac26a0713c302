"""The faster header and message parsers give what nats-py's own parsers give, and the client
uses them; the lean fetch gives what nats-py's fetch gives."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.errors import ProtocolError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.protocol.parser import Parser

from fixtures.nats_servers import connected
from krenalis.stream.client import Client, _Parser, lean_fetch, lean_next_msg, parse_header_lines
from krenalis.stream.layout import STREAM, ensure_consumer
from krenalis.stream.publisher import Publisher, copy_for

_names = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["Nats-Msg-Id", " Nats-Batch-Id ", "Bad Name", "Tab\tName", "\x1c", "", "Ünicode"]
)
_values = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def header_blocks(draw) -> bytes:
    lines = []
    for name, value in draw(st.lists(st.tuples(_names, _values), max_size=6)):
        sep = draw(st.sampled_from([": ", ":", ":\t", " : ", ""]))
        lines.append(name.encode() + sep.encode() + value.encode())
    if draw(st.booleans()):
        lines.append(draw(st.binary(max_size=20)))  # arbitrary bytes, invalid UTF-8 included
    return b"\r\n".join(lines) + b"\r\n\r\n"


@settings(max_examples=500)
@given(header_blocks())
def test_same_result_as_nats_py(raw: bytes) -> None:
    assert parse_header_lines(raw) == NatsClient._parse_header_lines(raw)


def test_typical_stored_message() -> None:
    raw = b"Nats-Msg-Id: m1/wh\r\nNats-Batch-Id: ab12\r\nNats-Batch-Sequence: 7\r\n\r\n"
    assert parse_header_lines(raw) == {
        "Nats-Msg-Id": "m1/wh",
        "Nats-Batch-Id": "ab12",
        "Nats-Batch-Sequence": "7",
    }


async def test_fetched_messages_have_their_headers(nats_settings) -> None:
    conn = await connected(nats_settings)
    try:
        assert isinstance(conn.nc, Client)
        await ensure_consumer(conn.js, "p", 0, 30)
        await Publisher(conn.nc).publish([copy_for("p", 0, b"{}", "id-1")])
        sub = await conn.js.pull_subscribe_bind("EVENTS_p_0", stream=STREAM)
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"].startswith("id-1")
    finally:
        await conn.close()


async def test_a_lean_subscription_gets_its_messages_without_headers(nats_settings) -> None:
    conn = await connected(nats_settings)
    try:
        await ensure_consumer(conn.js, "p", 0, 30)
        copies = [copy_for("p", 0, b'{"n":%d}' % i, f"id-{i}") for i in range(5)]
        await Publisher(conn.nc).publish(copies)
        sub = await conn.js.pull_subscribe_bind("EVENTS_p_0", stream=STREAM)
        lean_next_msg(sub._sub)
        # More asked than stored: the server's "404 No Messages" status ends the fetch, as
        # nats-py reads it.
        msgs = await sub.fetch(10, timeout=5)
        assert [m.data for m in msgs] == [b'{"n":%d}' % i for i in range(5)]
        assert all(m.headers is None for m in msgs)
        assert [m.metadata.sequence.stream for m in msgs] == [1, 2, 3, 4, 5]
        for msg in msgs:
            await msg.ack()
        with pytest.raises(NatsTimeoutError):  # nothing left: the "408" status, then a timeout
            await sub.fetch(1, timeout=0.5)
        await Publisher(conn.nc).publish([copy_for("p", 0, b'{"n":5}', "id-5")])
        [late] = await sub.fetch(1, timeout=5)
        assert late.data == b'{"n":5}'
        assert conn.nc.stats["in_msgs"] >= 6
        assert sub._sub._id in conn.nc.lean_sids
        await sub.unsubscribe()  # else the drain on close waits for its pending pull (30 s)
        assert sub._sub._id not in conn.nc.lean_sids  # a subscription gone is forgotten
    finally:
        await conn.close()


async def _lean_subs(conn, *pipelines: str) -> list:
    """A lean pull subscription per pipeline's consumer (made here)."""
    subs = []
    for pipeline in pipelines:
        await ensure_consumer(conn.js, pipeline, 0, 30)
        sub = await conn.js.pull_subscribe_bind(f"EVENTS_{pipeline}_0", stream=STREAM)
        lean_next_msg(sub._sub)
        subs.append(sub)
    return subs


async def _store(conn, pipelines: tuple[str, ...], numbers: range) -> None:
    """The same events, numbered, for each pipeline."""
    for pipeline in pipelines:
        copies = [copy_for(pipeline, 0, b'{"n":%d}' % i, f"id-{i}") for i in numbers]
        await Publisher(conn.nc).publish(copies)


def _numbers(msgs) -> list[bytes]:
    return [m.data for m in msgs]


async def test_the_lean_fetch_takes_what_nats_pys_fetch_takes(nats_settings) -> None:
    conn = await connected(nats_settings)
    try:
        ours, theirs = await _lean_subs(conn, "ours", "theirs")
        await _store(conn, ("ours", "theirs"), range(250))
        # More asked than stored: both end at the server's "404 No Messages", not the timeout.
        started = time.monotonic()
        got = await lean_fetch(ours, 1000, 10)
        assert time.monotonic() - started < 5
        assert _numbers(got) == _numbers(await theirs.fetch(1000, timeout=10))
        assert _numbers(got) == [b'{"n":%d}' % i for i in range(250)]
        assert all(m.headers is None for m in got)
        # Fewer asked than stored: the first ones, then the rest on the next fetch.
        await _store(conn, ("ours", "theirs"), range(250, 300))
        assert _numbers(await lean_fetch(ours, 20, 10)) == _numbers(await theirs.fetch(20, 10))
        assert _numbers(await lean_fetch(ours, 100, 10)) == [
            b'{"n":%d}' % i for i in range(270, 300)
        ]
        # Nothing stored: a timeout, as nats-py's fetch raises it.
        with pytest.raises(NatsTimeoutError):
            await lean_fetch(ours, 10, 0.5)
        # Stored while the fetch waits: taken.
        waiting = asyncio.create_task(lean_fetch(ours, 10, 10))
        await asyncio.sleep(0.3)
        await _store(conn, ("ours",), range(300, 302))
        assert _numbers(await waiting) == [b'{"n":300}', b'{"n":301}']
        await ours.unsubscribe()  # else the drain on close waits for a pending pull
        await theirs.unsubscribe()
    finally:
        await conn.close()


async def test_the_lean_fetch_takes_the_queue_first_and_drops_old_statuses(nats_settings) -> None:
    conn = await connected(nats_settings)
    try:
        [sub] = await _lean_subs(conn, "q")
        # An earlier request's answer, still queued: "404 No Messages" (nothing stored yet).
        await conn.nc.publish(sub._nms, b'{"batch":5,"no_wait":true}', sub._deliver)
        await _until_queued(sub, 1)
        # Then messages an earlier request brought: two of the three stored.
        await _store(conn, ("q",), range(3))
        await conn.nc.publish(sub._nms, b'{"batch":2,"no_wait":true}', sub._deliver)
        await _until_queued(sub, 3)
        # The status is dropped (it does not end this fetch), the queued two come first, the
        # third from the fetch's own request.
        got = await lean_fetch(sub, 10, 10)
        assert _numbers(got) == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert sub._sub._pending_queue.empty() and sub._sub._pending_size == 0
        await sub.unsubscribe()
    finally:
        await conn.close()


async def _until_queued(sub, count: int) -> None:
    for _ in range(500):
        if sub._sub._pending_queue.qsize() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} messages were not queued within 5 s")


class _Recorder:
    """What a parser hands its client, in order (the parsers are compared on the calls)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), headers))

    def _take_lean(self, sid, subject, reply, data, headers) -> bool:
        if sid % 2:  # as a lean subscription's message: taken at once, no coroutine
            self.calls.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), headers))
        return bool(sid % 2)

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, message) -> None:
        self.calls.append(("err", message))
        if "stale" in message:  # as nats-py's client does: a reconnection, a new parser state
            self.parser.reset()


_tokens = st.text("abcXYZ019._>$-", min_size=1, max_size=12)


@st.composite
def protocol_ops(draw) -> bytes:
    kind = draw(st.sampled_from(["msg", "hmsg", "hmsg", "ping", "pong", "ok", "info", "err"]))
    if kind in ("msg", "hmsg"):
        subject, sid = draw(_tokens), draw(st.integers(0, 10**6))
        reply = draw(st.none() | _tokens)
        payload = draw(st.binary(max_size=40))
        head = f"{subject} {sid} " + (f"{reply} " if reply else "")
        if kind == "msg":
            return f"MSG {head}{len(payload)}\r\n".encode() + payload + b"\r\n"
        # Never an empty header: a server sends HMSG only with one, and for "HMSG s 1 0 1\r\n7"
        # nats-py's regular expression reads across the line end (its `\s+`), taking the
        # payload's digits for the size: the reference would be wrong, not our parser.
        header = draw(st.sampled_from([b"NATS/1.0\r\n\r\n", b"NATS/1.0 404 No Messages\r\n\r\n",
                                       b"NATS/1.0\r\nNats-Msg-Id: m1\r\n\r\n"]))  # fmt: skip
        total = len(header) + len(payload)
        return f"HMSG {head}{len(header)} {total}\r\n".encode() + header + payload + b"\r\n"
    return {
        "ping": b"PING\r\n",
        "pong": b"PONG\r\n",
        "ok": b"+OK\r\n",
        "info": b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        "err": draw(
            st.sampled_from([b"-ERR 'Stale Connection'\r\n", b"-ERR 'Unknown Subject'\r\n"])
        ),
    }[kind]


async def _feed(parser_class, chunks: list[bytes]) -> tuple[list[tuple], bool, bytes]:
    recorder = _Recorder()
    parser = recorder.parser = parser_class(recorder)
    try:
        for chunk in chunks:
            await parser.parse(chunk)
    except ProtocolError:
        return recorder.calls, True, b""
    return recorder.calls, False, bytes(parser.buf)


@settings(max_examples=400, deadline=None)
@given(
    ops=st.lists(protocol_ops(), max_size=25),
    garbage=st.sampled_from(
        [b"", b"FOO bar\r\n", b"MSG a notanumber 3\r\nabc\r\n", b"HMSG a 1 x y\r\n"]
    ),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
)
async def test_the_message_parser_makes_the_calls_nats_py_makes(ops, garbage, cuts) -> None:
    stream = b"".join(ops) + garbage
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert await _feed(_Parser, chunks) == await _feed(Parser, chunks)
