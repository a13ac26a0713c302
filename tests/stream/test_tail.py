"""The live tail's protocol on a real nats-server: a process knows who watches from their
announcements, forgets them when they stop or go quiet, and asks for them when it starts."""

from __future__ import annotations

import asyncio

import msgspec

from krenalis.stream import tail
from krenalis.stream.tail import HELLO_SUBJECT, INTEREST_SUBJECT, Interest, TailInterest


async def announce(nc, interest: Interest) -> None:
    await nc.publish(INTEREST_SUBJECT, msgspec.json.encode(interest))
    await nc.flush()
    await asyncio.sleep(0.1)


async def test_a_process_follows_the_tails_announcements(nc) -> None:
    watching = await TailInterest().start(nc)
    try:
        assert not watching.active and not watching.wants_source("web")
        await announce(nc, Interest("t1", sources=("web",)))
        assert watching.active
        assert watching.wants_source("web") and not watching.wants_source("app")
        assert watching.wants_pipeline("any", "web") and not watching.wants_pipeline("p", "app")
        await announce(nc, Interest("t2", pipelines=("p",)))
        assert watching.wants_source("app")  # t2 watches every source, for pipeline p
        assert watching.wants_pipeline("p", "app") and not watching.wants_pipeline("q", "app")
        await announce(nc, Interest("t2", bye=True))
        assert not watching.wants_source("app") and watching.wants_source("web")
        await nc.publish(INTEREST_SUBJECT, b"not an announcement")
        await announce(nc, Interest("t1", sources=("web",), bye=True))
        assert not watching.active
    finally:
        await watching.stop()


async def test_a_silent_tail_is_forgotten(nc, monkeypatch) -> None:
    monkeypatch.setattr(tail, "EXPIRY", 0.3)
    watching = await TailInterest().start(nc)
    try:
        await announce(nc, Interest("t1"))
        assert watching.active and watching.wants_source("web")
        await asyncio.sleep(0.4)
        assert not watching.active and not watching.wants_source("web")
    finally:
        await watching.stop()


async def test_a_starting_process_asks_the_tails_to_announce_themselves(nc) -> None:
    hellos: list[bytes] = []

    async def heard(msg) -> None:
        hellos.append(msg.data)

    await nc.subscribe(HELLO_SUBJECT, cb=heard)
    watching = await TailInterest().start(nc)
    await nc.flush()
    await asyncio.sleep(0.1)
    assert hellos == [b""]
    await watching.stop()
