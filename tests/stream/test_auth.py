"""Every NATS auth method end to end against a real nats-server, and fast, secret-free refusals.

Each test starts its own server with one kind of `authorization` (or operator/JWT mode), connects
through NatsConnection as Krenalis does, and proves JetStream works (add a stream, publish, check
the PubAck). Wrong credentials must raise NatsAuthError within a couple of seconds, and neither
the error nor the logs may contain the secret.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest

from fixtures.nats_servers import settings_for
from fixtures.natsjwt import OperatorSetup, new_key
from krenalis.errors import NatsAuthError
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.connection import NatsConnection

#: Wrong credentials must be refused well within this many seconds (nats-py's default is ~2 min).
FAST = 3.0


@contextlib.contextmanager
def serve(tmp_path: Path, auth_block: str = "") -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "x", auth_block=auth_block)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def new_user_key() -> tuple[str, str]:
    """(seed "SU...", public key "U...") of a fresh user NKey."""
    key = new_key(nkeys.PREFIX_BYTE_USER)
    return key.seed, key.public


def creds_seed(path: Path) -> str:
    """The user NKey seed held by a .creds file (the secret part)."""
    return next(line for line in path.read_text().splitlines() if line.startswith("SU"))


async def assert_round_trip(url: str, **env: str) -> None:
    """Connect with these credentials, add a stream, publish, and check the PubAck."""
    conn = NatsConnection(settings_for(url, **env))
    try:
        await conn.connect(timeout=10)
        assert conn.nc.is_connected
        await conn.js.add_stream(name="AUTHTEST", subjects=["authtest.>"])
        ack = await conn.js.publish("authtest.one", b"hello")
        assert ack.stream == "AUTHTEST"
        assert ack.seq == 1
        info = await conn.js.stream_info("AUTHTEST")
        assert info.state.messages == 1
    finally:
        await conn.close()


async def assert_refused(
    url: str, secrets_: list[str], caplog: pytest.LogCaptureFixture, **env: str
) -> None:
    """Connecting must fail fast with NatsAuthError and never show the secrets."""
    conn = NatsConnection(settings_for(url, **env))
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    try:
        with pytest.raises(NatsAuthError) as info:
            await conn.connect(timeout=10)
    finally:
        elapsed = time.monotonic() - started
        await conn.close()
    assert elapsed < FAST, f"refusal took {elapsed:.2f}s"
    assert conn.nc.is_closed  # no reconnect loop left behind
    message = str(info.value)
    assert "refused the credentials" in message
    log_text = caplog.text + " ".join(repr(r.__dict__) for r in caplog.records)
    for secret in secrets_:
        assert secret not in message
        assert secret not in repr(info.value)
        assert secret not in log_text


async def test_nkey(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed, public = new_user_key()
    wrong_seed, _ = new_user_key()
    block = f"authorization {{ users = [ {{ nkey: {json.dumps(public)} }} ] }}"
    with serve(tmp_path, block) as server:
        await assert_round_trip(server.url, KRENALIS_NATS_NKEY=seed)
        await assert_refused(server.url, [wrong_seed], caplog, KRENALIS_NATS_NKEY=wrong_seed)


async def test_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = "tok-" + secrets.token_urlsafe(24)
    wrong = "tok-" + secrets.token_urlsafe(24)
    with serve(tmp_path, f"authorization {{ token: {json.dumps(token)} }}") as server:
        await assert_round_trip(server.url, KRENALIS_NATS_TOKEN=token)
        await assert_refused(server.url, [wrong, token], caplog, KRENALIS_NATS_TOKEN=wrong)


async def test_user_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = 'p@ss:w/rd#?&%="q" \\ $HOME {x} [y], ' + secrets.token_hex(4)
    wrong = password + "-wrong"
    user = {"user": "alice", "password": password}
    block = f"authorization {{ users = [ {json.dumps(user)} ] }}"
    with serve(tmp_path, block) as server:
        await assert_round_trip(
            server.url, KRENALIS_NATS_USER="alice", KRENALIS_NATS_PASSWORD=password
        )
        await assert_refused(
            server.url,
            [wrong, password],
            caplog,
            KRENALIS_NATS_USER="alice",
            KRENALIS_NATS_PASSWORD=wrong,
        )


async def test_creds_file_operator_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup = OperatorSetup()
    good = setup.write_user_creds(tmp_path / "user.creds")
    # A user of an account the server's operator never signed (as from another operator).
    stranger = OperatorSetup()
    bad = stranger.write_user_creds(tmp_path / "stranger.creds")
    bad_seed = creds_seed(bad)
    with serve(tmp_path, setup.server_config()) as server:
        await assert_round_trip(server.url, KRENALIS_NATS_CREDS=str(good))
        await assert_refused(server.url, [bad_seed], caplog, KRENALIS_NATS_CREDS=str(bad))
        log = server.log_path.read_text()
    assert "[FTL]" not in log
    assert "Trusted Operators" in log


async def test_creds_file_of_unknown_account_same_operator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user signed by an account key the resolver does not know is refused too."""
    setup = OperatorSetup()
    unknown_account = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    bad = setup.write_user_creds(tmp_path / "unknown.creds", account=unknown_account)
    bad_seed = creds_seed(bad)
    with serve(tmp_path, setup.server_config()) as server:
        await assert_refused(server.url, [bad_seed], caplog, KRENALIS_NATS_CREDS=str(bad))


@pytest.mark.parametrize(
    "env",
    [
        {"KRENALIS_NATS_TOKEN": "unneeded-token"},
        {"KRENALIS_NATS_USER": "alice", "KRENALIS_NATS_PASSWORD": "unneeded-pw"},
    ],
    ids=["token", "user-password"],
)
async def test_credentials_ignored_by_server_without_auth(
    tmp_path: Path, env: dict[str, str]
) -> None:
    with serve(tmp_path) as server:
        await assert_round_trip(server.url, **env)


async def test_expired_creds_are_refused_fast(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    setup = OperatorSetup()
    expired = setup.write_user_creds(tmp_path / "expired.creds", expires=int(time.time()) - 3600)
    seed = creds_seed(expired)
    with serve(tmp_path, setup.server_config()) as server:
        await assert_refused(server.url, [seed], caplog, KRENALIS_NATS_CREDS=str(expired))
