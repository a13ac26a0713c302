"""/metrics has its own address (KRENALIS_METRICS_ADDR, loopback by default), never the public
ingestion port. Real `krenalis collector` processes on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fixtures.nats_servers import settings_for
from krenalis.errors import ConfigError
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.runtime.processes import free_port

WRITE_KEY = "MetricsWriteKey0123456789abcdefg"
WORKSPACE = f"""\
sources:
  web:
    write_key: "{WRITE_KEY}"
pipelines:
  web-all: {{source: web, to: warehouse}}
"""


class Process:
    """One `krenalis collector` child, logging to a file, stopped by its PID."""

    def __init__(self, root: Path, nats_url: str, **env: str) -> None:
        (root / "krenalis.yaml").write_text(WORKSPACE)
        self.http_port = free_port()
        self.log_path = root / "collector.log"
        settings = {
            "KRENALIS_NATS_URL": nats_url,
            "KRENALIS_DATA_DIR": str(root / "data"),
            "KRENALIS_WORKSPACE": str(root / "krenalis.yaml"),
            "KRENALIS_HTTP_PORT": str(self.http_port),
            "KRENALIS_PROMETHEUS_METRICS_ENABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
        environ = {k: v for k, v in os.environ.items() if not k.startswith("KRENALIS_")}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "krenalis.cli", "collector"],
                cwd=root, env={**environ, **settings, **env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                assert self.proc.poll() is None, f"collector exited:\n{self.log()}"
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"collector not healthy:\n{self.log()}"
                await asyncio.sleep(0.1)


@pytest.fixture
def launch(tmp_path: Path, nats_server: EmbeddedNats) -> Iterator:
    started: list[Process] = []

    def start(**env: str) -> Process:
        root = tmp_path / f"collector-{len(started)}"
        root.mkdir()
        started.append(Process(root, nats_server.url, **env))
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.stop()
            print(f"===== collector (pid {process.proc.pid}) =====\n{process.log()[-10_000:]}")


async def test_metrics_are_on_their_own_address_and_not_on_the_ingestion_port(launch) -> None:
    metrics_port = free_port()
    collector = launch(KRENALIS_METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    await collector.wait_healthy()
    async with httpx.AsyncClient(timeout=10.0) as client:
        sent = await client.post(
            f"{collector.url}/v1/track",
            json={"event": "Viewed", "userId": "u1"},
            auth=(WRITE_KEY, ""),
        )
        assert sent.status_code == 200, sent.text
        scraped = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert 'krenalis_http_requests_total{status="200"} 1.0' in scraped.text
        assert WRITE_KEY not in scraped.text
        public = await client.get(f"{collector.url}/metrics")
        assert public.status_code == 404
        assert "krenalis_" not in public.text
        other = await client.get(f"http://127.0.0.1:{metrics_port}/v1/batch")
        assert other.status_code == 404
    assert f"url=http://127.0.0.1:{metrics_port}" in collector.log()


async def test_a_busy_metrics_address_stops_start_up_naming_the_variable(launch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        collector = launch(KRENALIS_METRICS_ADDR=f"127.0.0.1:{port}")
        code = await asyncio.to_thread(collector.proc.wait, 60)
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{port}" in collector.log()
    assert "set KRENALIS_METRICS_ADDR" in collector.log()


def test_the_default_metrics_address_is_loopback() -> None:
    settings = settings_for("nats://127.0.0.1:4222", KRENALIS_PROMETHEUS_METRICS_ENABLED="true")
    assert settings.metrics_addr == ("127.0.0.1", 9464)


@pytest.mark.parametrize("value", ["9464", ":9464", "::1:9464", "localhost:http", "host:70000"])
def test_a_bad_metrics_address_names_the_variable_and_the_form(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_for("nats://127.0.0.1:4222", KRENALIS_METRICS_ADDR=value)
    message = str(info.value)
    assert message.startswith("KRENALIS_METRICS_ADDR must be host:port")
    assert "[::1]:9464" in message and f'got "{value}"' in message
