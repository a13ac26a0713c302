"""The replay engine on a real nats-server: what it reads, where it publishes, how a replay
resumes from its checkpoint and stores nothing twice, and how one replay runs in one process."""

from __future__ import annotations

import time

import pytest

from fixtures.nats_servers import connected
from krenalis.errors import ReplayTaken
from krenalis.events import decode_event, encode_event, user_key
from krenalis.pipelines.filters import parse_filter
from krenalis.pipelines.routing import shard_of
from krenalis.replay.engine import Replay
from krenalis.replay.state import ReplayState, ReplayStore, owner
from krenalis.stream.archive import archive_copy
from krenalis.stream.layout import (
    ARCHIVE_STREAM,
    STREAM,
    ensure_consumer,
    legacy_archive_subject,
)
from krenalis.stream.publisher import OutMessage, Publisher
from krenalis.workspace.model import Pipeline

TRACKS = parse_filter({"all": [{"field": "type", "op": "is", "value": "track"}]}, "test")


def wire(message_id: str, user: str, kind: str = "track") -> bytes:
    now = "2026-11-26T05:29:02.123Z"
    event = {
        "connectionId": "web", "anonymousId": user, "messageId": message_id, "type": kind,
        "properties": {"n": message_id}, "traits": {}, "receivedAt": now, "sentAt": now,
        "originalTimestamp": now, "timestamp": now,
    }  # fmt: skip
    if kind == "track":
        event["event"] = "Clicked"
    return encode_event(event)


@pytest.fixture
async def conn(nats_settings):
    connection = await connected(nats_settings)
    for shard in (0, 1):
        await ensure_consumer(connection.js, "p", shard, 30)
    archive = [archive_copy("web", wire(f"t{i}", f"u{i % 9}"), f"t{i}", 3600) for i in range(100)]
    archive += [
        archive_copy("web", wire(f"i{i}", "u1", "identify"), f"i{i}", 3600) for i in range(20)
    ]
    archive += [archive_copy("app", wire("other", "u1"), "other", 3600)]
    await Publisher(connection.nc).publish(archive)
    try:
        yield connection
    finally:
        await connection.close()


def pipeline(shards: int = 2) -> Pipeline:
    return Pipeline(id="p", source="web", to="warehouse", shards=shards, filter=TRACKS)


async def pipeline_copies(conn) -> dict[str, int]:
    info = await conn.js.stream_info(STREAM, subjects_filter="events.v1.p.*")
    return dict(info.state.subjects or {})


async def new_replay(conn, replay_id: str = "r1") -> tuple[ReplayStore, ReplayState, int]:
    store = await ReplayStore(conn.js, conn.settings).open()
    state = ReplayState(id=replay_id, source="web", pipeline="p", since=time.time() - 3600,
                        owner=owner())  # fmt: skip
    revision = await store.create(state)
    assert revision
    return store, state, revision


async def test_a_replay_publishes_what_the_filter_takes_on_each_user_s_shard(conn):
    store, state, revision = await new_replay(conn)
    done = await Replay(conn.nc, state, pipeline(), store=store, revision=revision).run()
    assert (done.read, done.matched, done.published, done.duplicates) == (120, 100, 100, 0)
    assert done.done and (await store.get("r1"))[0].done
    assert sum((await pipeline_copies(conn)).values()) == 100
    for seq in range(1, (await conn.js.stream_info(STREAM)).state.last_seq + 1):
        msg = await conn.js.get_msg(STREAM, seq)
        if msg.subject.startswith("events.v1.p."):
            event = decode_event(msg.data)
            assert msg.subject == f"events.v1.p.{shard_of(user_key(event), 2)}"
            assert msg.headers["Nats-Msg-Id"] == f"replay/r1/{event['messageId']}/p"


async def test_a_lost_checkpoint_publishes_again_and_the_stream_stores_each_copy_once(conn):
    store, state, revision = await new_replay(conn)
    await Replay(conn.nc, state, pipeline(), store=store, revision=revision).run()
    # As if the replay had died before any checkpoint: it starts over from `since`.
    lost, record = await store.get("r1")
    lost.next_seq, lost.read, lost.matched, lost.published, lost.done = 0, 0, 0, 0, False
    record = await store.update(lost, record)
    again = await Replay(conn.nc, lost, pipeline(), store=store, revision=record).run()
    assert (again.read, again.matched, again.published, again.duplicates) == (120, 100, 0, 100)
    assert sum((await pipeline_copies(conn)).values()) == 100


async def test_a_dry_run_with_an_extra_filter_counts_and_publishes_nothing(conn):
    state = ReplayState(id="dry", source="web", pipeline="p", since=time.time() - 3600)
    extra = parse_filter({"all": [{"field": "properties.n", "op": "is", "value": "t7"}]}, "x")
    done = await Replay(conn.nc, state, pipeline(), extra=extra).run()
    assert (done.read, done.matched, done.published) == (120, 1, 0)
    assert await pipeline_copies(conn) == {}


async def test_until_and_a_resumed_sequence_bound_what_is_read(conn):
    state = ReplayState(id="u", source="web", pipeline="p", since=time.time() - 3600,
                        until=time.time() - 1800)  # fmt: skip
    assert (await Replay(conn.nc, state, pipeline()).run()).read == 0
    first = (await conn.js.get_msg(ARCHIVE_STREAM, seq=1, subject="archive.v1.web", next=True)).seq
    state = ReplayState(id="s", source="web", pipeline="p", since=0, stream=ARCHIVE_STREAM,
                        next_seq=first + 100)  # fmt: skip
    assert (await Replay(conn.nc, state, pipeline()).run()).read == 20  # the identifies


async def test_one_replay_runs_in_one_process(conn):
    store, state, revision = await new_replay(conn)
    rival = ReplayState(**{f: getattr(state, f) for f in state.__struct_fields__})
    await store.update(rival, revision)  # another process took it over
    with pytest.raises(ReplayTaken):
        await Replay(conn.nc, state, pipeline(), store=store, revision=revision).run()
    assert await pipeline_copies(conn) == {}  # it stopped before publishing anything
    assert await store.create(state) is None  # and a second create never wins


async def test_an_earlier_versions_archive_in_events_is_replayed_first(nats_settings):
    """Earlier versions archived in EVENTS: a replay reads what is left there, then
    EVENTS_ARCHIVE, in time order; a checkpoint taken in the first part resumes there."""
    conn = await connected(nats_settings)
    try:
        await ensure_consumer(conn.js, "p", 0, 30)
        old = [OutMessage(legacy_archive_subject("web"), wire(f"old{i}", "u1"), f"old{i}/a", 60)
               for i in range(10)]  # fmt: skip
        await Publisher(conn.nc).publish(old)
        new = [archive_copy("web", wire(f"new{i}", "u1"), f"new{i}", 60) for i in range(5)]
        await Publisher(conn.nc).publish(new)
        store, state, revision = await new_replay(conn)
        done = await Replay(conn.nc, state, pipeline(1), store=store, revision=revision).run()
        assert (done.read, done.published, done.stream) == (15, 15, ARCHIVE_STREAM)
        copies = [await conn.js.get_msg(STREAM, seq) for seq in range(11, 26)]  # after the old
        assert {c.subject for c in copies} == {"events.v1.p.0"}
        replayed = [decode_event(c.data) for c in copies]
        assert [e["messageId"] for e in replayed] == [f"old{i}" for i in range(10)] + [
            f"new{i}" for i in range(5)
        ]
        # A replay checkpointed by an earlier version, half way through the old archive.
        resumed = ReplayState(id="old", source="web", pipeline="p", since=0, next_seq=6)
        assert (await Replay(conn.nc, resumed, pipeline(1)).run()).read == 5 + 5
    finally:
        await conn.close()
