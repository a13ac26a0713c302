"""Connection state: usable, a short grace after a drop, recovery, server version check."""

from __future__ import annotations

import asyncio

import pytest

from fixtures.nats_servers import connected, settings_for
from krenalis.errors import NatsAuthError, ServerTooOldError
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.runtime.processes import free_port
from krenalis.stream.connection import NatsConnection, check_server_version, connect_options
from krenalis.stream.layout import STREAM
from krenalis.stream.publisher import Publisher, copy_for


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_unusable_while_server_down_and_back_after_restart(tmp_path):
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    conn = None
    try:
        conn = await connected(settings_for(server.url), "p")
        assert await conn.wait_usable()

        server.kill()
        await wait_for(lambda: not conn.nc.is_connected)
        await asyncio.sleep(0.3)  # past the grace period: refuse at once
        started = asyncio.get_running_loop().time()
        assert not await conn.wait_usable()
        assert asyncio.get_running_loop().time() - started < 0.1

        server.start()  # same port, same store: the stream is still there
        await wait_for(lambda: conn.nc.is_connected)
        assert await conn.wait_usable()
        await Publisher(conn.nc).publish([copy_for("p", 0, b"x", "after-restart")])
        assert (await conn.js.stream_info(STREAM)).state.messages == 1
    finally:
        if conn is not None:
            await conn.close()
        server.kill()


async def test_publish_waits_through_a_short_outage(tmp_path):
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    conn = None
    try:
        conn = await connected(settings_for(server.url), "p")
        server.kill()
        await wait_for(lambda: not conn.nc.is_connected)
        publisher = Publisher(conn.nc, timeout=1.0, deadline=20.0)
        publishing = asyncio.create_task(publisher.publish([copy_for("p", 0, b"x", "during")]))
        await asyncio.sleep(1.5)
        assert not publishing.done()
        await asyncio.to_thread(server.start)
        [ack] = await asyncio.wait_for(publishing, 25)
        assert ack.stream == STREAM
    finally:
        if conn is not None:
            await conn.close()
        server.kill()


async def test_connect_retries_until_a_server_appears(tmp_path):
    port = free_port()
    server = EmbeddedNats(tmp_path / "nats", port=port)
    conn = NatsConnection(settings_for(server.url))
    try:
        connecting = asyncio.create_task(conn.connect(timeout=30))
        await asyncio.sleep(1.0)
        assert not connecting.done()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(connecting, 20)
        assert conn.nc.is_connected
    finally:
        await conn.close()
        server.kill()


async def test_connect_timeout_when_nothing_listens():
    conn = NatsConnection(settings_for(f"nats://127.0.0.1:{free_port()}"))
    with pytest.raises(TimeoutError, match="cannot connect to NATS"):
        await conn.connect(timeout=1.0)


def test_connect_options_carry_tls_only_when_asked():
    plain = connect_options(settings_for("nats://127.0.0.1:4222"))
    assert "tls" not in plain and "tls_hostname" not in plain
    named = settings_for("tls://10.0.0.7:4222", KRENALIS_NATS_TLS_SERVER_NAME="nats.internal")
    options = connect_options(named)
    # No CA given: nats-py verifies with the system's CAs, against the name given.
    assert options["tls_hostname"] == "nats.internal" and "tls" not in options
    assert named.nats_tls


async def test_a_plain_server_is_refused_when_tls_is_required(nats_server: EmbeddedNats):
    url = nats_server.url.replace("nats://", "tls://")
    conn = NatsConnection(settings_for(url))
    with pytest.raises(NatsAuthError, match="does not require TLS"):
        await conn.connect(timeout=5)
    assert conn.nc.is_closed


def test_server_version_check():
    check_server_version((2, 12, 0), "nats://x:4222")
    check_server_version((2, 15, 1), "nats://x:4222")
    with pytest.raises(ServerTooOldError) as info:
        check_server_version((2, 11, 9), "nats://x:4222")
    assert str(info.value) == (
        "NATS server 2.11.9 at nats://x:4222 is too old: Krenalis requires nats-server 2.12 or newer"
    )


def test_a_server_left_running_on_the_store_is_stopped_first(tmp_path):
    """`krenalis serve` killed with SIGKILL leaves its nats-server running: the next start must
    not run a second server on the same store."""
    leftover = EmbeddedNats(tmp_path / "nats")
    leftover.start()
    fresh = EmbeddedNats(tmp_path / "nats")
    try:
        fresh.start()
        leftover.process.wait(15)  # stopped by the fresh start (the test is its parent: reap)
        assert fresh.running
    finally:
        fresh.kill()
        leftover.kill()


def test_a_remembered_port_is_reused_after_a_restart(tmp_path):
    first = EmbeddedNats(tmp_path / "nats", remember_port=True)
    first.start()
    port = first.port
    first.kill()  # as a crash would end it
    again = EmbeddedNats(tmp_path / "nats", remember_port=True)
    try:
        again.start()
        assert again.port == port and again.server_name == f"krenalis-{port}"
        assert (tmp_path / "nats" / "port").read_text() == str(port)
    finally:
        again.kill()
