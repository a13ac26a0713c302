"""The collector's HTTP edges: bounded time and connections, a client address clients cannot
forge, CORS by the sources' allowed_origins. A real collector on a real nats-server, spoken to
over real sockets; each test fails without the defence it names."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from fixtures.nats_servers import settings_for
from krenalis.collector.app import Collector
from krenalis.collector.server import HTTPServer, listening_socket
from krenalis.config import Settings
from krenalis.errors import WorkspaceError
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.runtime.processes import free_port
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import STREAM, consumer_name, ensure_consumer, ensure_streams
from krenalis.workspace.load import parse_workspace

SHOP_KEY = "ShopWriteKey0123456789abcdefghij"
OPEN_KEY = "OpenWriteKey0123456789abcdefghij"
SHOP = "https://shop.example.com"

SHOP_SOURCE = f"""\
  shop:
    write_key: "{SHOP_KEY}"
    allowed_origins:
      - {SHOP}
      - https://*.shop.example.net
"""
OPEN_SOURCE = f"""\
  open:
    write_key: "{OPEN_KEY}"
"""
BOTH = f"sources:\n{SHOP_SOURCE}{OPEN_SOURCE}pipelines:\n"
BOTH += "  shop-all: {source: shop, to: warehouse}\n  open-all: {source: open, to: warehouse}\n"
ONLY_SHOP = f"sources:\n{SHOP_SOURCE}pipelines:\n  shop-all: {{source: shop, to: warehouse}}\n"
ONLY_OPEN = f"sources:\n{OPEN_SOURCE}pipelines:\n  open-all: {{source: open, to: warehouse}}\n"


@dataclass
class Running:
    url: str
    host: str
    port: int
    app: Collector
    http: HTTPServer
    conn: NatsConnection

    def use(self, workspace_yaml: str) -> None:
        """Swap the workspace, as a new revision does."""
        self.app.set_workspace(parse_workspace(workspace_yaml, "edges.yaml", environ={}))

    async def stored(self, pipeline: str) -> list[dict[str, Any]]:
        """The events stored for `pipeline` so far (fetched and acked)."""
        sub = await self.conn.js.pull_subscribe_bind(consumer_name(pipeline), stream=STREAM)
        found = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=0.5)
                except TimeoutError:
                    return found
                for msg in msgs:
                    found.append(json.loads(msg.data))
                    await msg.ack_sync()
        finally:
            await sub.unsubscribe()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, workspace_yaml: str = BOTH, max_connections: int | None = None
) -> AsyncIterator[Running]:
    """A collector serving `workspace_yaml` on a loopback port, stopped at the end."""
    workspace = parse_workspace(workspace_yaml, "edges.yaml", environ={})
    conn = NatsConnection(settings, name="edges-test")
    await conn.connect(timeout=10)
    http = None
    try:
        await ensure_streams(conn.js, settings)
        conn.set_stream_ready()
        for name in ("shop-all", "open-all"):
            await ensure_consumer(conn.js, name, 0, settings.nats_ack_wait)
        app = Collector(conn, workspace)
        sock = listening_socket("127.0.0.1", free_port())
        host, port = sock.getsockname()[:2]
        http = HTTPServer(app, sock, max_connections=max_connections)
        await http.start()
        yield Running(f"http://{host}:{port}", host, port, app, http, conn)
    finally:
        if http is not None:
            await asyncio.wait_for(http.stop(), 35)
            http.sock.close()
        await asyncio.wait_for(conn.close(), 10)


def track() -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", "userId": "u1", "messageId": str(uuid.uuid4())}


def batch(*events: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"batch": list(events) or [track()], **extra}).encode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length: status, headers (lower-case names), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in filter(None, lines[1:]):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def request_head(key: str, length: int) -> bytes:
    return (
        f"POST /v1/batch HTTP/1.1\r\nHost: edges\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# -- total deadlines -----------------------------------------------------------------------------


async def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_its_deadline(nats_settings) -> None:
    """One byte every 0.3 s never trips the 30 s idle timeout; the whole-body deadline (here
    1.5 s) answers 408 and closes the connection, so the descriptor is free again."""
    async with running(nats_settings) as collector:
        collector.app.body_deadline = 1.5
        reader, writer = await asyncio.open_connection(collector.host, collector.port)
        writer.write(request_head(SHOP_KEY, 10_000) + b"{")
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(40):  # 12 s: far past the deadline, far below the idle timeout
                    await asyncio.sleep(0.3)
                    writer.write(b" ")
                    await writer.drain()

        sender = asyncio.create_task(trickle())
        try:
            status, headers, body = await asyncio.wait_for(read_answer(reader), 10)
            elapsed = time.monotonic() - started
            assert status == 408, body
            assert 1.4 < elapsed < 5, elapsed
            assert json.loads(body)["error"]["code"] == "RequestTimeout"
            assert "did not arrive within 1.5 seconds" in json.loads(body)["error"]["message"]
            assert headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the collector
        finally:
            sender.cancel()
            writer.close()
        assert await collector.stored("shop-all") == []


async def test_connections_past_the_limit_get_503_and_are_closed(nats_settings) -> None:
    """With max_connections=3 and three connections open (idle), a request on a fourth gets
    the collector's 503 with Retry-After (Segment SDKs retry it); once they close, it is
    served."""
    async with running(nats_settings, max_connections=3) as collector:
        idle = [await asyncio.open_connection(collector.host, collector.port) for _ in range(3)]
        state = collector.http.server.server_state
        await _until(lambda: len(state.connections) == 3)
        reader, writer = await asyncio.open_connection(collector.host, collector.port)
        body = batch()
        writer.write(request_head(SHOP_KEY, len(body)) + body)
        try:
            status, headers, answer = await asyncio.wait_for(read_answer(reader), 10)
            assert status == 503, answer
            assert json.loads(answer)["error"]["code"] == "ServiceUnavailable"
            assert "KRENALIS_HTTP_MAX_CONNECTIONS" in json.loads(answer)["error"]["message"]
            assert headers["retry-after"] == "2"
            assert headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        for _, idle_writer in idle:
            idle_writer.close()
        await _until(lambda: not state.connections)
        async with httpx.AsyncClient(base_url=collector.url) as client:
            response = await client.post("/v1/batch", content=batch(), headers=bearer(SHOP_KEY))
        assert response.status_code == 200, response.text
        assert len(await collector.stored("shop-all")) == 1


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- the client's address ------------------------------------------------------------------------


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(nats_settings) -> None:
    """By default no proxy is trusted: a client that writes X-Forwarded-For gets its own
    address as context.ip, not the one it wrote."""
    assert nats_settings.trusted_proxies == ()
    async with running(nats_settings) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            headers = {**bearer(OPEN_KEY), "X-Forwarded-For": "203.0.113.9"}
            response = await client.post("/v1/batch", content=batch(), headers=headers)
        assert response.status_code == 200, response.text
        [stored] = await collector.stored("open-all")
        assert stored["context"]["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("forwarded", "client_ip"),
    [
        ("203.0.113.9", "203.0.113.9"),
        # The proxy appended what it saw: what is left of it, the client wrote.
        ("198.51.100.7, 203.0.113.9", "203.0.113.9"),
        # Through two trusted proxies (127.0.0.0/8), the client is the first untrusted one.
        ("198.51.100.7, 203.0.113.9, 127.0.0.2", "203.0.113.9"),
    ],
)
async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(
    nats_server: EmbeddedNats, forwarded: str, client_ip: str
) -> None:
    settings = settings_for(nats_server.url, KRENALIS_TRUSTED_PROXIES="127.0.0.0/8, ::1")
    async with running(settings) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            headers = {**bearer(OPEN_KEY), "X-Forwarded-For": forwarded}
            response = await client.post("/v1/batch", content=batch(), headers=headers)
        assert response.status_code == 200, response.text
        [stored] = await collector.stored("open-all")
        assert stored["context"]["ip"] == client_ip


async def test_a_proxy_outside_the_trusted_networks_is_not_believed(nats_server) -> None:
    settings = settings_for(nats_server.url, KRENALIS_TRUSTED_PROXIES="10.0.0.0/8")
    async with running(settings) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            headers = {**bearer(OPEN_KEY), "X-Forwarded-For": "10.1.2.3"}
            response = await client.post("/v1/batch", content=batch(), headers=headers)
        assert response.status_code == 200, response.text
        [stored] = await collector.stored("open-all")
        assert stored["context"]["ip"] == "127.0.0.1"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.0/8, proxy.internal", "::1/129"])
def test_an_invalid_trusted_proxy_stops_start_up_naming_the_variable(tmp_path, value: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "KRENALIS_TRUSTED_PROXIES": value,
        "KRENALIS_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "krenalis.cli", "collector"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "KRENALIS_TRUSTED_PROXIES" in done.stderr
    assert "10.0.0.0/8" in done.stderr  # what would be right


# -- CORS ----------------------------------------------------------------------------------------


async def preflight(client: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await client.options(
        "/v1/batch",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


async def test_by_default_any_page_gets_star_without_credentials(nats_settings) -> None:
    async with running(nats_settings, ONLY_OPEN) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            answer = await preflight(client, "https://anywhere.example.org")
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in answer.headers
            allowed = [h.strip() for h in answer.headers["access-control-allow-headers"].split(",")]
            assert "Authorization" in allowed  # by name: "*" never covers it
            headers = {**bearer(OPEN_KEY), "Origin": "https://anywhere.example.org"}
            response = await client.post("/v1/batch", content=batch(), headers=headers)
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in response.headers
        assert len(await collector.stored("open-all")) == 1


@pytest.mark.parametrize(
    "origin", [SHOP, "https://a.shop.example.net", "https://b.a.shop.example.net"]
)
async def test_a_listed_origin_is_echoed_with_vary(nats_settings, origin: str) -> None:
    async with running(nats_settings) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            answer = await preflight(client, origin)
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == origin
            assert "Origin" in answer.headers["vary"]
            headers = {**bearer(SHOP_KEY), "Origin": origin}
            response = await client.post("/v1/batch", content=batch(), headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["access-control-allow-origin"] == origin
            assert "Origin" in response.headers["vary"]
            assert "access-control-allow-credentials" not in response.headers
        assert len(await collector.stored("shop-all")) == 1


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.org",
        "http://shop.example.com",  # another scheme
        "https://shop.example.com:8443",  # another port
        "https://shop.example.net",  # the wildcard's domain itself is not a subdomain
        "https://evilshop.example.net",
        "null",
    ],
)
async def test_another_origin_is_refused_by_a_source_that_lists_its_own(
    nats_settings, origin: str
) -> None:
    async with running(nats_settings) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            # The key in the header: refused before the body is read.
            headers = {**bearer(SHOP_KEY), "Origin": origin}
            response = await client.post("/v1/batch", content=batch(), headers=headers)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "Forbidden"
            assert "allowed_origins" in response.json()["error"]["message"]
            assert "access-control-allow-origin" not in response.headers
            # The key in the body (what analytics.js sends): refused too.
            body = batch(writeKey=SHOP_KEY)
            response = await client.post("/v1/batch", content=body, headers={"Origin": origin})
            assert response.status_code == 403, response.text
            assert "access-control-allow-origin" not in response.headers
        assert await collector.stored("shop-all") == []


async def test_requests_without_origin_are_not_browsers_and_pass(nats_settings) -> None:
    async with running(nats_settings) as collector:
        async with httpx.AsyncClient(base_url=collector.url) as client:
            response = await client.post("/v1/batch", content=batch(), headers=bearer(SHOP_KEY))
        assert response.status_code == 200, response.text
        assert len(await collector.stored("shop-all")) == 1


async def test_preflights_are_answered_for_the_whole_workspace(nats_settings) -> None:
    """A preflight has no write key: an origin some source lists gets its own headers; any
    other gets "*" while some source takes every origin, and 403 once none does."""
    async with (
        running(nats_settings) as collector,
        httpx.AsyncClient(base_url=collector.url) as client,
    ):
        other = await preflight(client, "https://evil.example.org")
        assert other.status_code == 204
        assert other.headers["access-control-allow-origin"] == "*"  # for the open source
        assert "Origin" in other.headers["vary"]
        collector.use(ONLY_SHOP)
        other = await preflight(client, "https://evil.example.org")
        assert other.status_code == 403
        assert "access-control-allow-origin" not in other.headers
        listed = await preflight(client, SHOP)
        assert listed.status_code == 204
        assert listed.headers["access-control-allow-origin"] == SHOP


@pytest.mark.parametrize(
    ("origins", "line", "reason"),
    [
        ("[https://shop.example.com/]", 5, "it has a path"),
        ("[shop.example.com]", 5, "it has no scheme"),
        ("[ftp://shop.example.com]", 5, 'its scheme is "ftp"'),
        ("[https://shop.*.example.com]", 5, 'its "*" may only stand for the first label'),
        ("['*']", 5, "to allow every origin, leave allowed_origins out"),
        ("[]", 5, "allowed_origins is empty"),
        ("\n      - https://ok.example.com\n      - https://x.example.com?a=1", 7, "has a path"),
    ],
)
def test_allowed_origins_are_checked_with_their_line(origins: str, line: int, reason: str) -> None:
    text = f'sources:\n  shop:\n    write_key: "{SHOP_KEY}"\n    allowed_origins: {origins}\n'
    text = "# edges\n" + text
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(text, "krenalis.yaml", environ={})
    message = str(info.value)
    assert message.startswith(f'krenalis.yaml:{line}: source "shop": allowed_origins'), message
    assert reason in message


def test_allowed_origins_are_kept_as_browsers_write_them() -> None:
    text = (
        f'sources:\n  shop:\n    write_key: "{SHOP_KEY}"\n    allowed_origins: '
        "[HTTPS://Shop.Example.com:443, 'http://localhost:3000', 'https://*.Example.net']\n"
    )
    shop = parse_workspace(text, "krenalis.yaml", environ={}).sources["shop"]
    assert shop.allowed_origins == (SHOP, "http://localhost:3000", "https://*.example.net")


def test_settings_defaults_are_the_safe_ones() -> None:
    settings = settings_for("nats://127.0.0.1:4222")
    assert settings.trusted_proxies == ()
    assert settings.http_max_connections == 1000
