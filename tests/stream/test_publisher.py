"""Publishing copies: atomic batches, and one by one when a batch is refused."""

from __future__ import annotations

import asyncio
import time

from fixtures.nats_servers import connected
from krenalis.stream.archive import archive_copy
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import ARCHIVE_STREAM, STREAM
from krenalis.stream.publisher import Publisher, copy_for, message_id


def copies(ids):
    return [copy_for("p", 0, f"data-{i}".encode(), i) for i in ids]


async def stored(conn: NatsConnection) -> int:
    return (await conn.js.stream_info(STREAM)).state.messages


async def test_a_batch_is_stored_atomically_with_consecutive_sequences(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        acks = await Publisher(conn.nc).publish(copies(f"m{i}" for i in range(2500)))
        assert await stored(conn) == 2500
        seqs = [a.seq for a in acks]
        assert seqs == sorted(set(seqs)) and len(seqs) == 2500  # chunks of 1000, in order
        assert not any(a.duplicate for a in acks)
        last = await conn.js.get_msg(STREAM, seqs[-1])
        assert last.data == b"data-m2499"
        assert "Nats-Batch-Id" in (last.headers or {})  # it went as an atomic batch
    finally:
        await conn.close()


async def test_a_retried_batch_falls_back_and_is_stored_once(nats_settings):
    conn = await connected(nats_settings, "p")
    publisher = Publisher(conn.nc)
    try:
        first = await publisher.publish(copies(["a", "b", "c"] + [f"f{i}" for i in range(60)]))
        # The whole batch again (a client retry), then a batch mixing old and new ids. The
        # server refuses such a batch at once: no waiting for a PubAck that never comes.
        started = time.monotonic()
        again = await publisher.publish(copies(["a", "b", "c"] + [f"f{i}" for i in range(60)]))
        assert time.monotonic() - started < 2.5
        assert all(a.duplicate for a in again)
        assert [a.seq for a in again] == [a.seq for a in first]
        mixed = await publisher.publish(copies(["c", "d", "d", "e"] + [f"g{i}" for i in range(60)]))
        assert [bool(a.duplicate) for a in mixed[:4]] == [True, False, True, False]
        assert await stored(conn) == 63 + 62
    finally:
        await conn.close()


async def test_small_or_non_atomic_publishes_go_one_by_one(nats_settings):
    conn = await connected(nats_settings, "p")
    try:
        acks = await Publisher(conn.nc, atomic=False).publish(copies(f"x{i}" for i in range(60)))
        small = await Publisher(conn.nc).publish(copies(["y", "z"]))  # under MIN_ATOMIC
        assert len({a.seq for a in acks + small}) == 62 and await stored(conn) == 62
        for ack in (acks[-1], small[-1]):
            stored_msg = await conn.js.get_msg(STREAM, ack.seq)
            assert "Nats-Batch-Id" not in (stored_msg.headers or {})
    finally:
        await conn.close()


def test_message_ids_that_headers_would_alter_are_hashed():
    assert message_id("abc-1", "p") == "abc-1/p"
    spaced, newline = message_id("a b", "p"), message_id("a\nb", "p")
    assert spaced != newline
    assert spaced.startswith("sha256:") and spaced.endswith("/p") and " " not in spaced


async def test_small_requests_at_once_are_stored_together_each_with_its_own_acks(nats_settings):
    conn = await connected(nats_settings, "p")
    publisher = Publisher(conn.nc)
    try:
        requests = [copies(f"r{r}-{i}" for i in range(4)) for r in range(40)]
        answers = await asyncio.gather(*(publisher.publish(r) for r in requests))
        assert await stored(conn) == 160
        batches = set()
        for request, acks in zip(requests, answers, strict=True):
            for copy, ack in zip(request, acks, strict=True):
                msg = await conn.js.get_msg(STREAM, ack.seq)
                assert msg.data == copy.data  # each request got the sequences of its copies
                batches.add((msg.headers or {}).get("Nats-Batch-Id"))
        # Alone, 4 copies go one by one; together they went in a few atomic batches.
        assert None not in batches and len(batches) < 40
    finally:
        await conn.close()


async def test_a_retried_request_in_a_group_costs_the_others_nothing(nats_settings):
    conn = await connected(nats_settings, "p")
    publisher = Publisher(conn.nc)
    try:
        first = await publisher.publish(copies(["x1", "x2", "x3"]))
        requests = [copies(f"s{r}-{i}" for i in range(3)) for r in range(20)]
        requests.insert(7, copies(["x1", "x2", "x3"]))  # a client's retry, in the middle
        answers = await asyncio.gather(*(publisher.publish(r) for r in requests))
        assert await stored(conn) == 3 + 60
        assert [a.seq for a in answers[7]] == [a.seq for a in first]
        assert all(a.duplicate for a in answers[7])
        assert not any(a.duplicate for i, acks in enumerate(answers) if i != 7 for a in acks)
    finally:
        await conn.close()


async def test_parts_go_to_their_streams_in_one_group_each_request_with_its_acks(nats_settings):
    """The collector's two parts: the pipelines' copies for EVENTS, the archive's for
    EVENTS_ARCHIVE. A group sends one atomic batch per part; a part refused (here a retried
    archive copy) goes one by one while the other part's batch stands."""
    conn = await connected(nats_settings, "p")
    publisher = Publisher(conn.nc)

    def request(r: int, archived: str | None = None) -> tuple[list, list]:
        archive = [archive_copy("web", b"a", archived or f"q{r}-{i}", 60) for i in range(3)]
        return copies(f"q{r}-{i}" for i in range(3)), archive

    try:
        first = await publisher.publish(*request(99))
        assert [a.stream for a in first] == [STREAM] * 3 + [ARCHIVE_STREAM] * 3
        requests = [request(r) for r in range(20)]
        answers = await asyncio.gather(*(publisher.publish(*r) for r in requests))
        batches = {STREAM: set(), ARCHIVE_STREAM: set()}
        for (piped, archived), acks in zip(requests, answers, strict=True):
            for copy, ack in zip(piped + archived, acks, strict=True):
                msg = await conn.js.get_msg(ack.stream, ack.seq)
                assert (msg.subject, msg.data) == (copy.subject, copy.data)
                batches[ack.stream].add((msg.headers or {}).get("Nats-Batch-Id"))
        assert all(None not in ids and len(ids) < 20 for ids in batches.values())  # grouped

        later = [request(r) for r in range(20, 25)]
        later.append(request(50, archived="q99-0"))  # its archive copies are stored already
        answers = await asyncio.gather(*(publisher.publish(*r) for r in later))
        assert [bool(a.duplicate) for a in answers[-1]] == [False] * 3 + [True] * 3
        assert not any(a.duplicate for acks in answers[:-1] for a in acks)
        piped, archived = answers[0][0], answers[0][-1]
        assert "Nats-Batch-Id" in (await conn.js.get_msg(STREAM, piped.seq)).headers
        assert "Nats-Batch-Id" not in (await conn.js.get_msg(ARCHIVE_STREAM, archived.seq)).headers
        assert (await conn.js.stream_info(STREAM)).state.messages == 3 + 60 + 18
        assert (await conn.js.stream_info(ARCHIVE_STREAM)).state.messages == 3 + 60 + 15
    finally:
        await conn.close()
