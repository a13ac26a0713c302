"""The sink registry: a sink added at run time is parsed, checked and fed by a real worker.

The tiny sink below is a whole sink as a plugin would write one: an options class tagged with
its type, and a sink that keeps what it is given. Registering it is one line (`SINKS["tiny"]`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from e2e.e2e_support import wait_for, wire_event
from fixtures.nats_servers import settings_for
from krenalis.errors import WorkspaceError
from krenalis.events import encode_event
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.sinks.base import DELIVERED, Event, Outcome, SinkOptions
from krenalis.sinks.file import FileOptions
from krenalis.sinks.registry import SINKS
from krenalis.sinks.webhook import WebhookOptions
from krenalis.stream.layout import DLQ_STREAM, STREAM, consumer_name, ensure_streams
from krenalis.stream.publisher import Publisher, copy_for
from krenalis.worker.pool import Workers
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.values import Duration, NonEmptyStr

WRITE_KEY = "RegistryTestWriteKey0123456789ab"

#: What each tiny sink was given, by the sink's name.
RECEIVED: dict[str, list[Event]] = {}


class TinyOptions(SinkOptions, tag="tiny"):
    """A ``type: tiny`` destination: events are kept in memory, under ``name``."""

    name: NonEmptyStr

    def build(self) -> TinySink:
        return TinySink(self.name)


class TinySink:
    def __init__(self, name: str) -> None:
        self.events = RECEIVED.setdefault(name, [])

    async def write(self, events: list[Event]) -> list[Outcome]:
        self.events.extend(events)
        return [DELIVERED] * len(events)

    async def healthcheck(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SINKS, "tiny", TinyOptions)


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    try:
        await ensure_streams(client.jetstream(), settings_for(nats_server.url))
        yield client
    finally:
        await client.close()


def workspace_text(destination: str) -> str:
    return f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
destinations:
  t:
{destination}pipelines:
  p:
    source: web
    to: t
    batch: {{max_wait: 100ms}}
"""


def test_the_registry_names_every_built_in_sink() -> None:
    assert {"webhook": WebhookOptions, "file": FileOptions} == SINKS
    assert all(options.__struct_config__.tag == name for name, options in SINKS.items())


def test_a_registered_sink_is_parsed_with_its_options(tiny: None) -> None:
    ws = parse_workspace(workspace_text("    type: tiny\n    name: a\n    retry_window: 1m\n"))
    destination = ws.destinations["t"]
    assert destination.options == TinyOptions(name="a", retry_window=Duration(60.0))
    assert (destination.type, destination.retry_window) == ("tiny", 60.0)
    assert ws.pipelines["p"].retry_window == 60.0


def test_an_unknown_option_of_a_registered_sink_is_refused_at_its_line(tiny: None) -> None:
    text = workspace_text("    type: tiny\n    name: a\n    colour: red\n")
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(text, "krenalis.yaml")
    assert str(info.value) == (
        'krenalis.yaml:8: unknown key "colour" in destination "t" '
        "(allowed: type, name, retry_window)"
    )


def test_a_registered_sink_checks_its_own_fields(tiny: None) -> None:
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(workspace_text("    type: tiny\n    name: ''\n"), "krenalis.yaml")
    assert str(info.value) == (
        "krenalis.yaml:7: destination \"t\": name must be a non-empty string, got ''"
    )
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(workspace_text("    type: tiny\n"), "krenalis.yaml")
    assert str(info.value) == 'krenalis.yaml:5: destination "t": missing key "name"'


def test_known_types_come_from_the_registry(tiny: None) -> None:
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(workspace_text("    name: a\n"), "krenalis.yaml")
    assert str(info.value) == (
        'krenalis.yaml:5: destination "t": missing key "type" (known types: file, tiny, webhook)'
    )


def test_an_unregistered_type_is_unknown() -> None:
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(workspace_text("    type: tiny\n    name: a\n"), "krenalis.yaml")
    assert str(info.value) == (
        'krenalis.yaml:6: destination "t": unknown type "tiny" (known types: file, webhook)'
    )


async def test_a_registered_sink_gets_the_pipeline_events_and_they_are_acked(
    tiny: None, nc: Client
) -> None:
    name = f"tiny-{uuid.uuid4().hex}"
    ws = parse_workspace(workspace_text(f"    type: tiny\n    name: {name}\n"))
    js: JetStreamContext = nc.jetstream()
    events = [wire_event(f"m{n}", user=f"user-{n % 2}") for n in range(6)]
    workers = Workers(js, ack_wait=30.0, warehouse_dsn=None)
    try:
        await workers.apply(ws)
        copies = [copy_for("p", 0, encode_event(e), e["messageId"]) for e in events]
        await Publisher(nc, atomic=False).publish(copies)
        await wait_for(lambda: len(RECEIVED.get(name, [])) >= len(events), what="the events")

        async def all_acked() -> bool:
            info = await js.consumer_info(STREAM, consumer_name("p", 0))
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(all_acked, what="the acks")
    finally:
        await workers.stop_all()
    assert [e.fields for e in RECEIVED.pop(name)] == events  # each once, in stream order
    assert (await js.stream_info(DLQ_STREAM)).state.messages == 0
