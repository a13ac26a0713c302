"""What every Krenalis process does first: the embedded servers when needed, NATS, the stream."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from krenalis.config import Settings
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import ensure_streams

__all__ = ["StreamRuntime"]

log = logging.getLogger("krenalis")


class StreamRuntime:
    """The NATS side of a process: the bundled server if no URL is set, the connection, EVENTS."""

    def __init__(self, settings: Settings, *, name: str = "krenalis") -> None:
        self.settings = settings
        self.name = name
        self.embedded: EmbeddedNats | None = None
        self.conn: NatsConnection | None = None

    async def start(self, connect_timeout: float | None = None) -> NatsConnection:
        if self.settings.embedded_nats:
            self.embedded = EmbeddedNats(
                self.settings.data_dir / "nats",
                sync_interval=self.settings.nats_sync_interval,
                remember_port=True,
            )
            await asyncio.to_thread(self.embedded.start)
            self.settings = replace(self.settings, nats_urls=(self.embedded.url,))
        self.conn = NatsConnection(self.settings, name=self.name)
        log.info("Connecting to NATS.", extra={"servers": self.conn.servers})
        await self.conn.connect(timeout=connect_timeout)
        await ensure_streams(self.conn.js, self.settings)
        self.conn.set_stream_ready()
        return self.conn

    async def stop(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
