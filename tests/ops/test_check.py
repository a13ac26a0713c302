"""`krenalis nats check` against real servers: healthy, stopped, wrong credentials, no JetStream.

The one server we cannot get from the bundled binary, one older than 2.12, is played by a
loopback stub that speaks the first lines of the NATS protocol (INFO, then PONG).
"""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.cli import run_cli as _main
from fixtures.nats_servers import settings_for
from krenalis.ops.keys import generate_user_keypair
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.runtime.processes import free_port
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import ensure_streams


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = _main(["nats", "check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_healthy_server(
    nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRENALIS_NATS_URL", nats_server.url)
    code, out, err = _check(capsys)
    assert code == 0, err
    assert "nats-server 2." in out and "2.12 or newer" in out
    assert "JetStream:       enabled for this account" in out
    assert "not created yet; `krenalis serve` creates it" in out
    assert "none (a single server)" in out
    assert "ready for Krenalis" in out
    assert err == ""  # no "Connected to NATS server." log lines around the report

    async def create() -> None:
        conn = NatsConnection(settings_for(nats_server.url))
        await conn.connect(timeout=5)
        try:
            await ensure_streams(conn.js, conn.settings)
        finally:
            await conn.close()

    asyncio.run(create())
    code, out, _ = _check(capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["problems"] == []
    assert report["server"]["version"].startswith("2.")
    assert report["jetstream"]["enabled"] is True and report["jetstream"]["streams"] == 3
    assert report["stream"]["exists"] and report["stream"]["replicas"] == 1
    assert report["stream"]["storage"] == "file"
    assert report["archive_stream"]["exists"] and report["archive_stream"]["replicas"] == 1
    code, out, _ = _check(capsys)
    assert "EVENTS:          1 replica, file storage" in out
    assert "EVENTS_ARCHIVE:  1 replica, file storage" in out


def test_stopped_server_is_reported_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    server.stop()
    monkeypatch.setenv("KRENALIS_NATS_URL", server.url)
    started = time.monotonic()
    code, out, err = _check(capsys, "--timeout", "1")
    assert time.monotonic() - started < 5
    assert code == 1
    assert "cannot connect to NATS at nats://127.0.0.1:" in err and "nats-server running" in err
    assert "NOT READY" in out and "Traceback" not in err


def test_default_timeout_is_short(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRENALIS_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    started = time.monotonic()
    code, out, _ = _check(capsys, "--json")
    assert 4 < time.monotonic() - started < 8
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and "within 5s" in report["problems"][0]


def test_wrong_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, other = generate_user_keypair(), generate_user_keypair()
    block = f'authorization {{ users = [ {{ nkey: "{allowed.public_key}" }} ] }}'
    with EmbeddedNats(tmp_path / "nats", auth_block=block) as server:
        monkeypatch.setenv("KRENALIS_NATS_URL", server.url)
        monkeypatch.setenv("KRENALIS_NATS_NKEY", other.seed)
        code, out, err = _check(capsys)
        assert code == 1
        assert "Authorization Violation" in err and "KRENALIS_NATS_NKEY" in err
        # The public key of the seed in use is shown to compare with the server; never the seed.
        assert other.public_key in out and other.seed not in out + err

        monkeypatch.setenv("KRENALIS_NATS_NKEY", allowed.seed)
        code, out, err = _check(capsys)
        assert code == 0, err
        assert f"NKey, public key {allowed.public_key}" in out


def test_server_without_jetstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with EmbeddedNats(tmp_path / "nats", jetstream=False) as server:
        monkeypatch.setenv("KRENALIS_NATS_URL", server.url)
        code, out, err = _check(capsys)
        assert code == 1
        assert "JetStream is disabled on this server" in err and "jetstream {" in err
        assert "JetStream:       DISABLED" in out
        code, out, _ = _check(capsys, "--json")
        report = json.loads(out)
        assert code == 1 and report["jetstream"] == {"enabled": False}


def test_replicas_beyond_a_single_server(
    nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRENALIS_NATS_URL", nats_server.url)
    monkeypatch.setenv("KRENALIS_NATS_REPLICAS", "3")
    code, _, err = _check(capsys)
    assert code == 1 and "KRENALIS_NATS_REPLICAS=3 but this server is not in a cluster" in err


def test_url_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _check(capsys)
    assert code == 2 and not out
    assert "KRENALIS_NATS_URL is not set" in err and "KRENALIS_NATS_URL=nats://" in err


class _OldServer(socketserver.StreamRequestHandler):
    """Just enough of the NATS protocol for a client to connect to a "2.10.22" server."""

    def handle(self) -> None:
        info = {"server_id": "OLD", "version": "2.10.22", "proto": 1, "max_payload": 1048576}
        self.wfile.write(f"INFO {json.dumps(info)}\r\n".encode())
        for line in self.rfile:
            if line.startswith(b"PING"):
                self.wfile.write(b"PONG\r\n")


@pytest.fixture
def old_server() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OldServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"nats://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_too_old_server(
    old_server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRENALIS_NATS_URL", old_server)
    code, _, err = _check(capsys)
    assert code == 1 and "2.10.22" in err and "too old" in err and "2.12 or newer" in err
