"""The zero-setup run is safe by default (invariant 7): credentials on NATS and PostgreSQL,
private files, no secret in logs or in a child's environment.

One `krenalis serve` with no setting (its embedded nats-server and PostgreSQL) serves the tests
of this module; each defence has a test that fails without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import nats.errors
import psycopg
import pytest
from safe_support import ZeroSetupServe, make_earlier_postgres

from e2e.e2e_support import WRITE_KEY, make_event
from fixtures.events import stored
from krenalis.ops.keys import generate_user_keypair
from krenalis.sinks.file import FileOptions, FileSink
from krenalis.sinks.warehouse import EmbeddedPostgres, init_db
from krenalis.sinks.warehouse.embedded import _bin
from krenalis.workspace.load import parse_workspace

README = Path(__file__).parents[2] / "README.md"


@pytest.fixture(scope="module")
def serve() -> Iterator[ZeroSetupServe]:
    """A zero-setup `krenalis serve` that has delivered one event to its embedded warehouse."""
    running = ZeroSetupServe()
    try:
        running.start()
        _deliver_one_event(running)
        yield running
    finally:
        running.stop()
        print(running.process.log()[-20_000:])
        shutil.rmtree(running.root, ignore_errors=True)


def _deliver_one_event(serve: ZeroSetupServe) -> None:
    """An event through the collector and the worker child into the warehouse: both children
    reached the embedded NATS, and the worker the embedded PostgreSQL, with no setting."""
    body = {"batch": [make_event("safe-1", event="Hello")]}
    response = httpx.post(f"{serve.process.base_url}/v1/batch", json=body, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(serve.dsn()) as conn:
            rows = conn.execute("SELECT message_id FROM krenalis_events").fetchall()
        if rows == [("safe-1",)]:
            return
        time.sleep(0.1)
    raise serve.process.fail("the event did not reach the warehouse within 30 s")


# -- NATS --------------------------------------------------------------------------------------


async def test_the_embedded_nats_server_refuses_connections_without_its_key(
    serve: ZeroSetupServe,
) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(serve.nats_url, allow_reconnect=False, connect_timeout=5)
    stranger = generate_user_keypair().seed
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            serve.nats_url, nkeys_seed_str=stranger, allow_reconnect=False, connect_timeout=5
        )

    nc = await nats.connect(serve.nats_url, nkeys_seed_str=serve.seed(), allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info("EVENTS")
        assert info.config.name == "EVENTS"
    finally:
        await nc.close()


def test_serve_children_and_operator_commands_need_no_setting(serve: ZeroSetupServe) -> None:
    # The fixture's event went through the collector and the worker child; status shows them.
    result = serve.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    roles = sorted(p["role"] for p in report["processes"])
    assert roles == ["collector", "serve", "worker"], report["processes"]
    assert report["stream"]["exists"] is True

    result = serve.cli("dlq", "list")
    assert result.returncode == 0 and "No dead letters" in result.stdout, result.stderr
    result = serve.cli("workspace", "history")
    assert result.returncode == 0 and "revision 1" in result.stdout, result.stderr


def test_children_find_the_key_in_the_data_directory_not_in_their_environment(
    serve: ZeroSetupServe,
) -> None:
    children = serve.children()
    assert len(children) == 2, children
    secrets = (serve.seed(), serve.password())
    for child in children:
        environ = child.environ()
        assert not any(s in value for value in environ.values() for s in secrets)
        # No URL either: it finds serve's server, and the key, in the data directory.
        assert environ.get("KRENALIS_NATS_URL", "") == ""


# -- PostgreSQL --------------------------------------------------------------------------------


def test_the_embedded_postgres_refuses_connections_without_the_password(
    serve: ZeroSetupServe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    nowhere = str(tmp_path / "no-pgpass")  # no ~/.pgpass either
    socket_dir = str(serve.postgres_dir)
    for host in ("127.0.0.1", socket_dir):
        for user, password in [("krenalis", None), ("krenalis", "wrong"), ("postgres", None)]:
            extra = {"password": password} if password else {}
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(
                    host=host, port=serve.postgres_port, user=user, dbname="krenalis",
                    passfile=nowhere, connect_timeout=5, **extra,
                )  # fmt: skip
            assert re.search("no password supplied|password authentication failed", str(refused))

    with psycopg.connect(
        host=socket_dir, port=serve.postgres_port, user="krenalis", dbname="krenalis",
        password=serve.password(),
    ) as conn:  # fmt: skip
        assert conn.execute("SELECT current_user").fetchone() == ("krenalis",)
    hba = (serve.postgres_dir / "pg_hba.conf").read_text().split("\n")
    rules = [line.split() for line in hba if line and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules), rules


def test_the_readme_psql_line_works(serve: ZeroSetupServe) -> None:
    line = _readme_psql_line().replace("<port>", str(serve.postgres_port))
    # The system's psql if there is one (as a reader would), else the embedded package's.
    path = f"{os.environ.get('PATH', '')}{os.pathsep}{Path(_bin('psql')).parent}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "PATH": path,
        "HOME": str(serve.root),  # no ~/.pgpass of whoever runs the tests
    }
    result = subprocess.run(
        ["bash", "-c", line], cwd=serve.root, env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Hello" in result.stdout and "(1 row)" in result.stdout, result.stdout


def _readme_psql_line() -> str:
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in quick_start.splitlines() if line.startswith("psql ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_an_earlier_data_directory_moves_to_passwords(caplog: pytest.LogCaptureFixture) -> None:
    # Under /tmp: as root, PostgreSQL runs as another user, which must traverse the parents.
    root = Path(tempfile.mkdtemp(prefix="krenalis-earlier-"))
    try:
        make_earlier_postgres(root / "postgres")
        server = EmbeddedPostgres(root / "postgres")
        with server:
            assert "trusted every local connection" in caplog.text
            with psycopg.connect(server.dsn) as conn:
                assert conn.execute("SELECT note FROM earlier").fetchall() == [("kept",)]
                assert conn.execute("SELECT current_user").fetchone() == ("krenalis",)
            for user in ("postgres", "krenalis"):
                url = f"postgresql://{user}@127.0.0.1:{server.port}/krenalis"
                with pytest.raises(psycopg.OperationalError, match="no password supplied"):
                    psycopg.connect(url, passfile=str(root / "none"), connect_timeout=5)
            asyncio.run(init_db(server.dsn))  # the warehouse's tables, in the earlier database
        assert _mode(server.password_file) == 0o600

        caplog.clear()
        with server:  # moved once: the next start changes nothing
            assert "krenalis role" not in caplog.text
            with psycopg.connect(server.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM krenalis_events").fetchone() == (0,)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- files -------------------------------------------------------------------------------------


def test_credential_files_and_stores_are_private(serve: ZeroSetupServe) -> None:
    assert _mode(serve.nats_dir / "krenalis-user.nk") == 0o600
    assert _mode(serve.postgres_dir / "krenalis.pgpass") == 0o600
    assert _mode(serve.nats_dir / "nats-server.conf") == 0o600
    assert _mode(serve.nats_dir) == 0o700  # the stream's events
    assert _mode(serve.postgres_dir) == 0o700  # the warehouse


def test_no_log_line_holds_the_seed_or_the_password(serve: ZeroSetupServe) -> None:
    logs = serve.logs()
    assert "Embedded warehouse ready" in logs and "krenalis.pgpass" in logs  # says where
    assert serve.seed() not in logs
    assert serve.password() not in logs


async def test_file_sink_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)  # the sink, not the umask, decides
    try:
        sink = FileSink(tmp_path / "events" / "daily")
        assert await sink.write(stored([_wire_event()])) != []
    finally:
        os.umask(previous)
    (written,) = (tmp_path / "events" / "daily").iterdir()
    assert _mode(written) == 0o600
    assert _mode(tmp_path / "events") == _mode(tmp_path / "events" / "daily") == 0o700


async def test_a_file_destination_may_share_its_files_with_a_group(tmp_path: Path) -> None:
    text = f"destinations:\n  archive:\n    type: file\n    path: {tmp_path / 'out'}\n"
    options = parse_workspace(text + '    mode: "0640"\n', "krenalis.yaml")
    sink = options.destinations["archive"].options
    assert isinstance(sink, FileOptions)
    await sink.build().write(stored([_wire_event()]))
    (written,) = (tmp_path / "out").iterdir()
    assert (_mode(written), _mode(tmp_path / "out")) == (0o640, 0o750)


def _wire_event() -> dict:
    return {**make_event("file-1"), "receivedAt": "2026-11-26T05:29:02.123Z"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
