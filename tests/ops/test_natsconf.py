"""Generated nats-server configs: checked by `nats-server -t`, then actually started.

Every server runs on free loopback ports with its store in tmp_path, and is stopped by PID
in a finally block even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from krenalis.errors import ServerConfigError
from krenalis.ops.keys import generate_user_keypair, write_seed_file
from krenalis.ops.natsconf import (
    ClusterConfig,
    NKeyAuth,
    ServerConfig,
    TokenAuth,
    UserPasswordAuth,
    cluster_configs,
    default_sync_interval,
    quote,
    render,
    validate_with_server,
    write_config,
)
from krenalis.runtime.nats_server import nats_server_path, nats_server_version
from krenalis.runtime.processes import free_port
from krenalis.stream.connection import MIN_SERVER_VERSION

# Characters that break naive quoting: quotes, backslashes, conf syntax, variables, comments,
# control characters and non-ASCII.
NASTY = "a\"b'c\\d $HOME ${x} #h //c {}[]=:;, \t\n\r\x01\x7f é ü 漢 \\x41 end"


# ---------------------------------------------------------------- helpers


def _free_port_block(count: int) -> int:
    """First port of `count` consecutive free loopback ports (held together while probing)."""
    for _ in range(200):
        base = free_port()
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no block of {count} free consecutive ports")


def _wait_accepting(proc: subprocess.Popen, port: int, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nats-server did not accept connections on {port}:\n{log.read_text()}")


def _stop(proc: subprocess.Popen) -> None:
    # By PID, gracefully first (SIGTERM), then SIGKILL if it hangs.
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _running(config: ServerConfig, workdir: Path) -> Iterator[subprocess.Popen]:
    """Write `config`, start nats-server on it, wait for the client port, always stop it."""
    name = config.server_name or "nats"
    conf = write_config(workdir / f"{name}.conf", render(config))
    log = workdir / f"{name}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [nats_server_path(), "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        _wait_accepting(proc, config.port, log)
        yield proc
    finally:
        _stop(proc)


def _single(tmp_path: Path, auth, **kwargs) -> ServerConfig:
    return ServerConfig(port=free_port(), store_dir=str(tmp_path / "store"), auth=auth, **kwargs)


async def _connect(url: str | list[str], **kwargs) -> nats.NATS:
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)  # keep nats-py from printing tracebacks for expected failures

    return await nats.connect(
        url,
        error_cb=error_cb,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=5,
        **kwargs,
    )


async def _publish_once(nc: nats.NATS, replicas: int = 1, timeout: float = 5) -> int:
    js = nc.jetstream(timeout=timeout)
    await js.add_stream(StreamConfig(name="EVENTS", subjects=["events.>"], num_replicas=replicas))
    ack = await js.publish("events.test", b'{"type":"track"}', timeout=timeout)
    assert ack.stream == "EVENTS"
    return ack.seq


async def _assert_refused(url: str, **kwargs) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        nc = await _connect(url, **kwargs)
        await nc.close()


# ---------------------------------------------------------------- binary


def test_bundled_binary_is_recent_enough() -> None:
    path = nats_server_path()
    assert os.access(path, os.X_OK)
    assert nats_server_version(path) >= MIN_SERVER_VERSION
    assert nats_server_version() == nats_server_version(path)


# ---------------------------------------------------------------- render + nats-server -t


def _auth_variants() -> dict[str, object]:
    return {
        "none": None,
        "nkey": NKeyAuth([generate_user_keypair().public_key]),
        "nkey-rotation": NKeyAuth([generate_user_keypair().public_key for _ in range(2)]),
        "token": TokenAuth("s3cret-token"),
        "token-nasty": TokenAuth(NASTY),
        "userpass": UserPasswordAuth("krenalis", "pa ss"),
        "userpass-nasty": UserPasswordAuth(NASTY, NASTY[::-1]),
    }


@pytest.mark.parametrize("kind", list(_auth_variants()))
def test_single_node_variants_pass_server_check(kind: str, tmp_path: Path) -> None:
    config = ServerConfig(store_dir=str(tmp_path / "store é"), auth=_auth_variants()[kind])
    validate_with_server(render(config))


@pytest.mark.parametrize(
    "extra",
    [
        {"sync_interval": None},
        {"sync_interval": "2m"},
        {"sync_interval": "1m30s"},
        {"max_memory_store": "1GB", "max_file_store": 20 * 1024**3},
        {"http_monitor_port": 8222, "server_name": "solo"},
        {"listen_host": "::1"},
        {"listen_host": "0.0.0.0", "port": 4333},
    ],
)
def test_option_variants_pass_server_check(extra: dict, tmp_path: Path) -> None:
    config = ServerConfig(store_dir=str(tmp_path), auth=TokenAuth("t"), **extra)
    validate_with_server(render(config))


def test_cluster_node_passes_server_check(tmp_path: Path) -> None:
    config = ServerConfig(
        listen_host="0.0.0.0",
        store_dir="/var/lib/nats/storage",
        server_name="nats-node-1",
        auth=NKeyAuth([generate_user_keypair().public_key]),
        cluster=ClusterConfig(
            listen_host="0.0.0.0",
            routes=["nats://nats-node-2:6222", "nats://nats-node-3:6222"],
        ),
        sync_interval=default_sync_interval(clustered=True),
    )
    text = render(config)
    assert "sync_interval:" not in text.replace("# sync_interval", "")
    validate_with_server(text)


def test_generated_cluster_configs_pass_server_check(tmp_path: Path) -> None:
    auth = UserPasswordAuth("u", NASTY)
    configs = cluster_configs(3, 14222, 16222, tmp_path, auth=auth, sync_interval="always")
    assert [c.server_name for c in configs] == ["nats-node-1", "nats-node-2", "nats-node-3"]
    assert configs[0].cluster.routes == ["nats://127.0.0.1:16223", "nats://127.0.0.1:16224"]
    assert len({c.store_dir for c in configs}) == 3
    for config in configs:
        validate_with_server(render(config))


def test_single_node_defaults_to_fsync_always(tmp_path: Path) -> None:
    text = render(ServerConfig(store_dir=str(tmp_path)))
    assert 'sync_interval: "always"' in text
    assert default_sync_interval(clustered=False) == "always"
    assert default_sync_interval(clustered=True) is None
    assert cluster_configs(3, 1, 2, tmp_path)[0].sync_interval is None


def test_quote_escapes_only_what_nats_understands() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert quote("\x01é\n") == '"\\x01é\\n"'
    assert "\\u" not in quote("漢\u2028")  # nats conf has no \uXXXX escape


def test_server_rejection_is_reported() -> None:
    with pytest.raises(ServerConfigError, match="unknown field") as info:
        validate_with_server('listen: "127.0.0.1:4222"\nno_such_option: 1\n')
    assert "nats.conf" in str(info.value)


def test_seed_instead_of_public_key_is_refused_without_echo(tmp_path: Path) -> None:
    seed = generate_user_keypair().seed
    with pytest.raises(ValueError, match="seed") as info:
        render(ServerConfig(store_dir=str(tmp_path), auth=NKeyAuth([seed])))
    assert seed not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"auth": NKeyAuth([])}, "at least one"),
        ({"auth": NKeyAuth(["UDNOTAKEY"])}, "public NKey"),
        ({"auth": TokenAuth("")}, "token"),
        ({"auth": UserPasswordAuth("u", "")}, "password"),
        ({"sync_interval": "sometimes"}, "sync_interval"),
        ({"port": 0}, "port"),
        ({"max_file_store": "lots"}, "max_file_store"),
        ({"server_name": "has space"}, "server_name"),
        ({"cluster": ClusterConfig(routes=["nats://a:6222"])}, "server_name"),
        (
            {"server_name": "n", "cluster": ClusterConfig(routes=["a:6222"])},
            "nats://host:6222",
        ),
    ],
)
def test_invalid_configs_are_refused(kwargs: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        render(ServerConfig(store_dir=str(tmp_path), **kwargs))


def test_secrets_are_masked_in_repr() -> None:
    assert "hunter2" not in repr(TokenAuth("hunter2"))
    assert "hunter2" not in repr(UserPasswordAuth("u", "hunter2"))


def test_write_config_is_private(tmp_path: Path) -> None:
    path = write_config(tmp_path / "nats.conf", render(ServerConfig(store_dir=str(tmp_path))))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_config(path, "listen: 1")


# ---------------------------------------------------------------- real servers


async def test_nkey_single_node_starts_and_authenticates(tmp_path: Path) -> None:
    pair = generate_user_keypair()
    config = _single(tmp_path, NKeyAuth([pair.public_key]))
    url = f"nats://127.0.0.1:{config.port}"
    with _running(config, tmp_path):
        nc = await _connect(url, nkeys_seed_str=pair.seed)
        try:
            assert await _publish_once(nc) == 1
        finally:
            await nc.close()
        # The seed file written by write_seed_file is usable as nats-py's nkeys_seed=.
        seed_file = write_seed_file(tmp_path / "user.nk", pair.seed)
        nc = await _connect(url, nkeys_seed=str(seed_file))
        await nc.close()
        await _assert_refused(url, nkeys_seed_str=generate_user_keypair().seed)
        await _assert_refused(url)  # no credentials at all


@pytest.mark.parametrize("token", ["t0ken-abc123", NASTY])
async def test_token_config_authenticates(token: str, tmp_path: Path) -> None:
    config = _single(tmp_path, TokenAuth(token), sync_interval=None)
    url = f"nats://127.0.0.1:{config.port}"
    with _running(config, tmp_path):
        nc = await _connect(url, token=token)
        try:
            await _publish_once(nc)
        finally:
            await nc.close()
        await _assert_refused(url, token=token + "x")


@pytest.mark.parametrize("user, password", [("alice", "s3cret-pw"), ("bob é", NASTY)])
async def test_user_password_config_authenticates(user: str, password: str, tmp_path: Path) -> None:
    config = _single(tmp_path, UserPasswordAuth(user, password))
    url = f"nats://127.0.0.1:{config.port}"
    with _running(config, tmp_path):
        nc = await _connect(url, user=user, password=password)
        try:
            await _publish_once(nc)
        finally:
            await nc.close()
        await _assert_refused(url, user=user, password=password[:-1])


async def _publish_when_meta_leader_ready(urls: list[str], seed: str, budget: float) -> int:
    # The JetStream meta leader is elected a few seconds after the routes connect; until
    # then stream creation times out or fails, so retry within the budget.
    deadline = time.monotonic() + budget
    nc = await _connect(urls, nkeys_seed_str=seed)
    try:
        while True:
            try:
                return await _publish_once(nc, replicas=3, timeout=2)
            except (TimeoutError, nats.errors.Error):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


@pytest.mark.cluster
@pytest.mark.slow
async def test_three_node_cluster_forms_with_jetstream(tmp_path: Path) -> None:
    pair = generate_user_keypair()
    base = _free_port_block(6)
    configs = cluster_configs(
        3, base, base + 3, tmp_path / "nats", auth=NKeyAuth([pair.public_key])
    )
    with contextlib.ExitStack() as stack:
        for config in configs:
            stack.enter_context(_running(config, tmp_path))
        urls = [f"nats://127.0.0.1:{c.port}" for c in configs]
        assert await _publish_when_meta_leader_ready(urls, pair.seed, budget=20) == 1
        nc = await _connect(urls[2], nkeys_seed_str=pair.seed)
        try:
            info = await nc.jetstream().stream_info("EVENTS")
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
            assert info.state.messages == 1
        finally:
            await nc.close()
