"""End to end: a running `krenalis serve` follows its workspace file (SIGHUP, or an edit) and
`krenalis workspace apply`, live.

Adding a pipeline creates its consumer and worker and the collector routes to it; removing one
retires it: the collector stops routing to it, then its consumer goes, without a restart.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from e2e_support import (
    WRITE_KEY,
    collector_answer,
    consumer_names,
    file_events,
    jetstream,
    make_event,
    revision_of,
    stream_empty,
    subject_counts,
    wait_for,
)


def workspace(a: Path, b: Path, pipelines: list[str]) -> str:
    text = f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  archive-a:
    type: file
    path: "{a}"
  archive-b:
    type: file
    path: "{b}"
pipelines:
"""
    for name in pipelines:
        text += f"  web-{name}:\n    source: web\n    to: archive-{name}\n"
    return text


async def _at_least(process, revision: int) -> bool:
    return await revision_of(process) >= revision


async def names_are(js, expected: set[str]) -> bool:
    return await consumer_names(js) == expected


def ids(events: list[dict]) -> list[str]:
    return sorted(e["messageId"] for e in events)


async def test_sighup_adds_and_removes_pipelines_live(deployment, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = [make_event(f"r1-{i}") for i in range(20)]
    second = [make_event(f"r2-{i}") for i in range(20)]
    third = [make_event(f"r3-{i}") for i in range(20)]
    async with jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(a, b, ["a"]))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        assert await consumer_names(js) == {"EVENTS_web-a_0"}
        assert (await collector_answer(serve.base_url, first))["stored"] == 20
        await wait_for(lambda: len(file_events(a)) >= 20, what="the first events in a")

        # Add a pipeline to b.
        deployment.write_workspace(workspace(a, b, ["a", "b"]))
        serve.signal(signal.SIGHUP)
        await serve.wait_log("why=SIGHUP", 1)
        await wait_for(lambda: names_are(js, {"EVENTS_web-a_0", "EVENTS_web-b_0"}), what="b")
        assert (await collector_answer(serve.base_url, second))["stored"] == 40
        await wait_for(
            lambda: len(file_events(a)) >= 40 and len(file_events(b)) >= 20,
            what="the second events in a and b",
            processes=[serve],
        )
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
        assert ids(file_events(a)) == ids(first + second)
        assert ids(file_events(b)) == ids(second)  # a new pipeline starts with new events

        # Remove the pipeline to a.
        deployment.write_workspace(workspace(a, b, ["b"]))
        serve.signal(signal.SIGHUP)
        await wait_for(lambda: names_are(js, {"EVENTS_web-b_0"}), what="a to go")
        answer = await collector_answer(serve.base_url, third)
        assert answer["stored"] == 20  # one copy each: only web-b takes them now
        await wait_for(lambda: len(file_events(b)) >= 40, what="the third events in b")
        await wait_for(lambda: stream_empty(js), what="EVENTS to empty")
        await asyncio.sleep(1.5)  # a stopped worker must not come back and recreate its consumer
        assert await consumer_names(js) == {"EVENTS_web-b_0"}
        assert await subject_counts(js) == {}
        assert ids(file_events(a)) == ids(first + second)
        assert ids(file_events(b)) == ids(second + third)
        assert serve.log_count("Worker crashed") == 0, serve.log()
        assert serve.running()
        assert serve.stop() == 0


async def test_removing_a_pipeline_while_events_flow_strands_nothing(deployment, tmp_path):
    """Events posted while a reload removes a pipeline are either delivered by it or not
    routed to it: none may be left on its subject, where no consumer will ever read them."""
    a, b = tmp_path / "a", tmp_path / "b"
    async with jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(a, b, ["a", "b"]))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        sent: list[dict] = []
        stop = asyncio.Event()

        async def keep_posting() -> None:
            while not stop.is_set():
                event = make_event(f"flow-{len(sent)}")
                await collector_answer(serve.base_url, [event])
                sent.append(event)
                await asyncio.sleep(0.01)

        poster = asyncio.create_task(keep_posting())
        try:
            await asyncio.sleep(0.5)
            # While events flow, a may hold some: the operator says to deliver them first.
            change = tmp_path / "only-b.yaml"
            change.write_text(workspace(a, b, ["b"]))
            applied = await asyncio.to_thread(
                deployment.cli, "workspace", "apply", "--drain", str(change)
            )
            assert applied.returncode == 0, applied.stdout + applied.stderr
            await wait_for(lambda: names_are(js, {"EVENTS_web-b_0"}), what="a's consumer to go")
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await poster
        await wait_for(lambda: len(file_events(b)) >= len(sent), what="every event in b")
        assert ids(file_events(b)) == ids(sent)
        # Each event went to a too, or was routed after a stopped taking events: none is lost
        # on a's subject, and a got no event twice.
        assert set(ids(file_events(a))) <= set(ids(sent))
        assert len(ids(file_events(a))) == len(set(ids(file_events(a))))
        assert await consumer_names(js) == {"EVENTS_web-b_0"}

        # b's processed events leave within a second (pruning); a's would stay for ever.
        async def nothing_left() -> bool:
            return await subject_counts(js) == {}

        await wait_for(nothing_left, timeout=5, what="no event left on any subject")


async def test_editing_the_file_reloads_without_a_signal(deployment, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    async with jetstream(deployment.nats_url) as js:
        deployment.write_workspace(workspace(a, b, ["a"]))
        serve = deployment.start("serve")
        await serve.wait_healthy()
        deployment.write_workspace(workspace(a, b, ["a", "b"]))  # no SIGHUP
        await wait_for(
            lambda: names_are(js, {"EVENTS_web-a_0", "EVENTS_web-b_0"}), what="b's consumer"
        )
        await wait_for(
            lambda: _at_least(serve, 2), what="the collector to route by the new revision"
        )
        events = [make_event(f"w-{i}") for i in range(5)]
        assert (await collector_answer(serve.base_url, events))["stored"] == 10
        await wait_for(lambda: len(file_events(b)) == 5, what="the events in b")
