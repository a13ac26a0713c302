"""`krenalis nats keygen | config | server`, through the real CLI and real nats-server processes.

Servers run on free loopback ports with their store in tmp_path and are stopped by PID in a
finally block, even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from fixtures.cli import run_cli as _main
from krenalis.ops.keys import is_user_public_key, public_key_from_seed
from krenalis.runtime.processes import free_port


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = _main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@contextlib.contextmanager
def _server(conf: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`krenalis nats server -c conf` as a child process (it execs nats-server), always stopped."""
    log = conf.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "krenalis.cli", "nats", "server", "-c", str(conf)],
            stdout=out, stderr=subprocess.STDOUT, cwd=conf.parent,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not listening on {port}: {log.read_text()}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def _connect(urls: str | list[str], **kwargs: object) -> nats.NATS:
    async def quiet(exc: Exception) -> None:
        pass

    return await nats.connect(
        urls, error_cb=quiet, allow_reconnect=False, connect_timeout=5, **kwargs
    )


# ---------------------------------------------------------------- keygen


def test_keygen_prints_seed_then_public_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "nats", "keygen")
    assert code == 0
    seed, public = out.splitlines()
    assert seed.startswith("SU") and is_user_public_key(public)
    assert public_key_from_seed(seed) == public


def test_keygen_out_writes_a_private_seed_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "user.nk"
    code, out, err = _cli(capsys, "nats", "keygen", "--out", str(path))
    assert code == 0
    public = out.strip()
    seed = path.read_text().strip()
    assert public_key_from_seed(seed) == public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert seed not in out + err

    code, out, err = _cli(capsys, "nats", "keygen", "--out", str(path))
    assert code == 1 and "already exists" in err and "--force" in err and not out
    assert path.read_text().strip() == seed

    code, out, _ = _cli(capsys, "nats", "keygen", "--out", str(path), "--force")
    assert code == 0 and public_key_from_seed(path.read_text().strip()) == out.strip() != public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---------------------------------------------------------------- config + server


async def test_keygen_pair_authenticates_against_the_generated_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_file = tmp_path / "user.nk"
    assert _main(["nats", "keygen", "--out", str(seed_file)]) == 0
    public = capsys.readouterr().out.strip()
    port = free_port()
    conf = tmp_path / "nats.conf"
    code = _main(
        ["nats", "config", "--nkey", public, "--listen", f"127.0.0.1:{port}",
         "--store-dir", str(tmp_path / "store"), "--out", str(conf)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    text = conf.read_text()
    assert f'{{ nkey: "{public}" }}' in text and 'sync_interval: "always"' in text
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert "krenalis nats server -c" in err

    with _server(conf, port):
        url = f"nats://127.0.0.1:{port}"
        nc = await _connect(url, nkeys_seed=str(seed_file))
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
            assert (await js.publish("t.x", b"{}")).seq == 1
        finally:
            await nc.close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await (await _connect(url)).close()


async def test_token_from_stdin_config_starts_and_authenticates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = 'to"ken $x #y'
    monkeypatch.setattr(sys, "stdin", _Stdin(token + "\n"))
    port = free_port()
    conf = tmp_path / "token.conf"
    code = _main(
        ["nats", "config", "--token", "-", "--listen", f"127.0.0.1:{port}",
         "--store-dir", "store", "--sync-interval", "default", "--out", str(conf)]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0, err
    text = conf.read_text()
    assert "sync_interval:" not in text.replace("# sync_interval", "")
    assert f'store_dir: "{tmp_path / "store"}"' in text  # relative paths are made absolute
    with _server(conf, port):
        nc = await _connect(f"nats://127.0.0.1:{port}", token=token)
        await nc.close()


class _Stdin:
    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def readline(self) -> str:
        return self._lines.pop(0) if self._lines else ""


def test_config_prints_to_stdout_and_warns_without_authorization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "nats", "config", "--store-dir", str(tmp_path))
    assert code == 0
    assert out.startswith("# nats-server configuration") and 'listen: "127.0.0.1:4222"' in out
    assert "no authorization" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nkey", "SEED"], "seed"),
        (["--nkey", "UNOTAKEY"], "public NKey"),
        (["--token", "t", "--user", "u", "--password", "p"], "choose one"),
        (["--user", "u"], "--password"),
        (["--cluster"], "--name"),
        (["--routes", "nats://a:6222"], "--cluster"),
        (["--listen", "4222"], "HOST:PORT"),
        (["--sync-interval", "sometimes"], "sync_interval"),
        (["--cluster", "--name", "n1", "--routes", "a:6222"], "nats://host:6222"),
    ],
)
def test_config_refuses_bad_options_without_echoing_secrets(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = "SUAGX7MKPFDHLW3YBEXPJWU6RKKDRWUJ4SEKDPGDNCCMSD4IIEHDILZBCE"
    argv = [seed if a == "SEED" else a for a in argv]
    code, out, err = _cli(capsys, "nats", "config", "--out", str(tmp_path / "c.conf"), *argv)
    assert code == 2 and message in err and not out
    assert seed not in err
    assert not (tmp_path / "c.conf").exists()


def test_config_rejected_by_nats_server_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--cluster", "--name", "n1", "--cluster-name", "has space"]
    code, _, err = _cli(capsys, "nats", "config", "--out", str(tmp_path / "c.conf"), *argv)
    assert code == 1 and "nats-server rejected" in err and "cluster name" in err
    assert not (tmp_path / "c.conf").exists()


def test_config_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("keep")
    code, _, err = _cli(capsys, "nats", "config", "--store-dir", "s", "--out", str(conf))
    assert code == 1 and "--force" in err and conf.read_text() == "keep"
    code, _, _ = _cli(capsys, "nats", "config", "--store-dir", "s", "--out", str(conf), "--force")
    assert code == 0 and conf.read_text().startswith("# nats-server configuration")


def test_server_without_config_file_says_how_to_write_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _cli(capsys, "nats", "server", "-c", "missing.conf")
    assert code == 2 and "krenalis nats config --out missing.conf" in err


@pytest.mark.cluster
@pytest.mark.slow
async def test_three_cluster_configs_form_a_jetstream_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_file = tmp_path / "user.nk"
    assert _main(["nats", "keygen", "--out", str(seed_file)]) == 0
    public = capsys.readouterr().out.strip()
    ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    confs = []
    for i in range(3):
        routes = [a for j, p in enumerate(route_ports) if j != i for a in ("--routes", f"nats://127.0.0.1:{p}")]  # fmt: skip
        conf = tmp_path / f"nats-node-{i + 1}.conf"
        code = _main(
            ["nats", "config", "--cluster", "--name", f"nats-node-{i + 1}",
             "--listen", f"127.0.0.1:{ports[i]}", "--cluster-listen", f"127.0.0.1:{route_ports[i]}",
             *routes, "--nkey", public, "--store-dir", str(tmp_path / f"data-{i + 1}"),
             "--out", str(conf)]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        confs.append(conf)
    assert "sync_interval:" not in confs[0].read_text().replace("# sync_interval", "")
    urls = [f"nats://127.0.0.1:{p}" for p in ports]
    with contextlib.ExitStack() as stack:
        for conf, port in zip(confs, ports, strict=True):
            stack.enter_context(_server(conf, port))
        nc = await _connect(urls, nkeys_seed=str(seed_file))
        try:
            js = nc.jetstream(timeout=2)
            deadline = time.monotonic() + 20
            while True:  # the meta leader is elected a few seconds after the routes connect
                try:
                    await js.add_stream(
                        StreamConfig(name="EVENTS", subjects=["events.v1.>"], num_replicas=3)
                    )
                    break
                except (TimeoutError, nats.errors.Error):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            assert (await js.publish("events.v1.p.0", b"{}", timeout=5)).seq == 1
        finally:
            await nc.close()

        # `nats check` sees the cluster and the replicated stream.
        monkeypatch.setenv("KRENALIS_NATS_URL", ",".join(urls))
        monkeypatch.setenv("KRENALIS_NATS_NKEY", seed_file.read_text().strip())
        monkeypatch.setenv("KRENALIS_NATS_REPLICAS", "3")
        code = await asyncio.to_thread(_main, ["nats", "check"])
        out, err = capsys.readouterr()
        assert code == 0, out + err
        assert "3 servers" in out and "3 replicas" in out and "leader nats-node-" in out
