"""The collector's archive copies and what it tells a tail, on a real nats-server."""

from __future__ import annotations

import asyncio
import json

import msgspec
from helpers_collector import (
    WORKSPACE_YAML,
    WRITE_KEY,
    CollectorHarness,
    bearer,
    event,
)

from krenalis.stream.layout import ARCHIVE_STREAM, archive_subject
from krenalis.stream.tail import INTEREST_SUBJECT, Interest
from krenalis.workspace.load import parse_workspace


async def test_each_accepted_event_gets_one_archive_copy_in_the_archive_stream(
    collector: CollectorHarness,
) -> None:
    batch = [event("track") for _ in range(30)] + [event("identify") for _ in range(30)]
    async with collector.client() as client:
        response = await client.post("/v1/batch", json={"batch": batch}, headers=bearer())
    # 60 warehouse copies, 30 CRM copies (tracks only): "stored" counts pipeline copies.
    assert response.json() == {"success": True, "accepted": 60, "stored": 90}
    assert (await collector.stream_messages(), await collector.archive_messages()) == (90, 60)
    last = await collector.conn.js.get_last_msg(ARCHIVE_STREAM, archive_subject("website"))
    assert last.headers["Nats-TTL"] == str(7 * 86400)
    assert last.headers["Nats-Msg-Id"] == f"{batch[-1]['messageId']}/_archive.website"
    assert "Nats-Batch-Id" in last.headers  # 60 archive copies: one atomic batch, one fsync
    assert json.loads(last.data)["messageId"] == batch[-1]["messageId"]


async def test_events_no_pipeline_takes_are_archived_and_archive_0_keeps_none(
    collector: CollectorHarness,
) -> None:
    no_pipelines = WORKSPACE_YAML.split("destinations:")[0]
    collector.collector.set_workspace(parse_workspace(no_pipelines, "t.yaml", environ={}))
    async with collector.client() as client:
        answer = await client.post("/v1/track", json=event("track"), headers=bearer())
        assert answer.json() == {"success": True, "accepted": 1, "stored": 0}
        assert await collector.archive_messages() == 1
        off = no_pipelines.replace(f'"{WRITE_KEY}"\n', f'"{WRITE_KEY}"\n    archive: 0\n')
        collector.collector.set_workspace(parse_workspace(off, "t.yaml", environ={}))
        await client.post("/v1/track", json=event("track"), headers=bearer())
        assert await collector.archive_messages() == 1


async def test_a_tail_hears_of_requests_only_while_it_announces_itself(
    collector: CollectorHarness,
) -> None:
    nc = collector.conn.nc
    await collector.collector.tail.start(nc)
    heard: list[dict] = []

    async def hear(msg) -> None:
        heard.append(json.loads(msg.data))

    await nc.subscribe("krenalis.tail.v1.events.*", cb=hear)
    good, bad = event("track"), event("track", anonymousId="x" * 300)
    async with collector.client() as client:
        await client.post("/v1/batch", json={"batch": [good]}, headers=bearer())
        await asyncio.sleep(0.2)
        assert heard == []  # nobody tails
        await nc.publish(INTEREST_SUBJECT, msgspec.json.encode(Interest("t", ("website",))))
        await nc.flush()
        await asyncio.sleep(0.1)
        await client.post("/v1/batch", json={"batch": [good, bad]}, headers=bearer())
        await client.post("/v1/batch", json={"batch": [good]}, headers=bearer("Z" * 32))
        await asyncio.sleep(0.2)
    request, refused = heard
    [accepted] = request["accepted"]
    assert accepted["event"]["messageId"] == good["messageId"]
    assert accepted["pipelines"] == ["website-warehouse", "website-crm"]
    assert accepted["filtered"] == []
    [rejected] = request["rejected"]
    assert rejected["index"] == 1 and "255" in rejected["reason"]
    assert rejected["event"]["anonymousId"] == "x" * 300
    assert (refused["kind"], refused["status"], refused["source"]) == ("refused", 401, None)
