"""A consumer process for the SIGKILL test: fetches one message, reports it, never acks."""

from __future__ import annotations

import asyncio
import sys

from krenalis.config import load_settings
from krenalis.stream.connection import NatsConnection
from krenalis.stream.consumer import PipelineConsumer


async def main(url: str, pipeline: str) -> None:
    settings = load_settings({"KRENALIS_NATS_URL": url, "KRENALIS_NATS_ACK_WAIT": "1s"}, None)
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    consumer = PipelineConsumer(conn.js, pipeline, ack_wait=1.0)
    await consumer.start()
    while not (batch := await consumer.fetch(10, timeout=1)):
        pass
    print("fetched", " ".join(d.data.decode() for d in batch), flush=True)
    await asyncio.sleep(3600)  # "processing" until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
