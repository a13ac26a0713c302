"""End to end: a NATS server with memory storage restarts and comes back empty: no EVENTS stream,
no consumers. A running `krenalis serve` must put its layout back by itself, so that the
collector accepts events again and the worker delivers them, without a restart of Krenalis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from e2e_support import (
    WRITE_KEY,
    collector_answer,
    consumer_names,
    file_events,
    jetstream,
    make_event,
    wait_for,
)
from nats.js.errors import NotFoundError


def workspace(out: Path) -> str:
    return f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  archive:
    type: file
    path: "{out}"
pipelines:
  web-archive:
    source: web
    to: archive
"""


async def accepted(base_url: str, events: list[dict]) -> bool:
    """One attempt, as an SDK would retry: whether the collector answered 200."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            f"{base_url}/v1/batch", json={"batch": events}, auth=(WRITE_KEY, "")
        )
    return response.status_code == 200


async def test_restarted_memory_server_gets_its_stream_and_consumers_back(
    deployment, nats_server, tmp_path
):
    out = tmp_path / "out"
    deployment.write_workspace(workspace(out))
    serve = deployment.start("serve", KRENALIS_NATS_STORAGE="memory")
    await serve.wait_healthy()
    before = [make_event(f"before-{i}") for i in range(5)]
    await collector_answer(serve.base_url, before)
    await wait_for(lambda: len(file_events(out)) == 5, what="the first events", processes=[serve])

    nats_server.kill()
    await asyncio.to_thread(nats_server.start)  # same port; memory storage: nothing survived
    async with jetstream(deployment.nats_url) as js:

        async def layout_back() -> bool:
            try:
                return await consumer_names(js) == {"EVENTS_web-archive_0"}
            except NotFoundError:  # no EVENTS yet
                return False

        await wait_for(layout_back, timeout=20, what="EVENTS and its consumer", processes=[serve])
    after = [make_event(f"after-{i}") for i in range(5)]
    await wait_for(lambda: accepted(serve.base_url, after), what="a 200", processes=[serve])
    await wait_for(lambda: len(file_events(out)) == 10, what="the new events", processes=[serve])
    assert sorted(e["messageId"] for e in file_events(out)) == sorted(
        e["messageId"] for e in before + after
    )
    assert "Restored the stream layout after a reconnection" in serve.log()
