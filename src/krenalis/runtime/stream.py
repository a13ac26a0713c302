"""What every Krenalis process does first: the embedded servers when needed, NATS, the stream."""

from __future__ import annotations

import asyncio
import logging

from krenalis.config import Settings
from krenalis.errors import NatsServerError
from krenalis.ops.keys import public_key_from_seed
from krenalis.runtime.nats_server import (
    EmbeddedNats,
    create_local_seed,
    local_port,
    nkey_authorization,
    read_local_seed,
    with_local_credentials,
)
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import ensure_streams

__all__ = ["StreamRuntime"]

log = logging.getLogger("krenalis")


class StreamRuntime:
    """The NATS side of a process: the bundled server if no URL is set, the connection, EVENTS.

    With no KRENALIS_NATS_URL, `serve` starts the bundled server, open only to the key it keeps
    in the data directory; a child of `serve` connects to that server, with that key.
    """

    def __init__(self, settings: Settings, *, name: str = "krenalis") -> None:
        self.settings = settings
        self.name = name
        self.embedded: EmbeddedNats | None = None
        self.conn: NatsConnection | None = None

    async def start(self, connect_timeout: float | None = None) -> NatsConnection:
        if self.settings.embedded_nats:
            local = self._join_serve if self.settings.child else self._start_embedded
            self.settings = await asyncio.to_thread(local)
        self.conn = NatsConnection(self.settings, name=self.name)
        log.info("Connecting to NATS.", extra={"servers": self.conn.servers})
        await self.conn.connect(timeout=connect_timeout)
        await ensure_streams(self.conn.js, self.settings)
        self.conn.set_stream_ready()
        return self.conn

    def _start_embedded(self) -> Settings:
        """Start the bundled server; the settings to reach it."""
        store = self.settings.data_dir / "nats"
        seed = create_local_seed(store)
        self.embedded = EmbeddedNats(
            store,
            sync_interval=self.settings.nats_sync_interval,
            remember_port=True,
            auth_block=nkey_authorization(public_key_from_seed(seed)),
        )
        self.embedded.start()
        return with_local_credentials(self.settings, self.embedded.url, seed)

    def _join_serve(self) -> Settings:
        """A child of `serve`: the settings to reach serve's bundled server, which serve
        started before its children and whose port and key are in the data directory."""
        store = self.settings.data_dir / "nats"
        port = local_port(store)
        if port is None:
            raise NatsServerError(
                f"{store / 'port'} is missing or unreadable: a child of `krenalis serve` "
                "connects to serve's embedded nats-server, whose port serve writes there"
            )
        return with_local_credentials(
            self.settings, f"nats://127.0.0.1:{port}", read_local_seed(store)
        )

    async def stop(self) -> None:
        if self.conn is not None:
            await self.conn.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
