"""/metrics, on its own address (KRENALIS_METRICS_ADDR): never on the public ingestion port,
so that nobody out there sees traffic and pipeline names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from krenalis.collector.http import error_body, lifespan, send_json

__all__ = ["MetricsApp"]


class MetricsApp:
    """GET /metrics in the Prometheus text format, for the listener on KRENALIS_METRICS_ADDR.

    With ``shared_dir`` (serve's processes write their metrics there), the answer sums every
    process of the serve; without it, this process's own.
    """

    def __init__(self, shared_dir: Path | None) -> None:
        self.shared_dir = shared_dir

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] not in ("GET", "HEAD"):
            body = error_body("NotFound", "metrics are at GET /metrics")
            await send_json(send, 404, body)
            return
        # Reading the shared files is disk work: off the loop, which serves ingestion too.
        data = await asyncio.to_thread(_scrape, self.shared_dir)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(data)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def _scrape(shared_dir: Path | None) -> bytes:
    if shared_dir is None:
        return generate_latest()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(shared_dir))
    return generate_latest(registry)
