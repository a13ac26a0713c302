"""Generate nats-server configuration files for Krenalis (single node or cluster).

The output follows the examples of the "Event stream setup" page: client listener,
`authorization` (NKey, token or user/password), a `jetstream` block with a store directory and,
for clusters, a `cluster` block with routes. Every string is emitted double-quoted with the
escapes the nats-server config lexer understands, so tokens and passwords may hold any character.

Durability (the `sync_interval` default): by default NATS acknowledges a JetStream write once it
is handed to the OS and fsyncs only every 2 minutes. Jepsen (NATS 2.12.1, 2025-12) showed that
acknowledged writes are then lost on power failure / OS crash. Our invariant is "no acknowledged
event is lost", so a single node defaults to `sync_interval: always` (fsync before the ack).
It costs throughput: about 7k msgs/s instead of about 45k with nats-py on a 2-core VM
(bench/RESULTS.md).
A replicated cluster (R3 on separate disks) keeps each acknowledged write on a quorum of nodes,
so one node losing its page cache loses nothing; there the NATS default is allowed, and the
operator can still choose `always` (e.g. when all nodes share one power supply).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from krenalis.config import go_duration, parse_duration
from krenalis.errors import ServerConfigError
from krenalis.ops.keys import is_user_public_key, write_secret_file
from krenalis.runtime.nats_server import nats_server_path, quote

__all__ = [
    "SYNC_ALWAYS",
    "Auth",
    "ClusterConfig",
    "NKeyAuth",
    "ServerConfig",
    "TokenAuth",
    "UserPasswordAuth",
    "cluster_configs",
    "default_sync_interval",
    "quote",
    "render",
    "validate_with_server",
    "write_config",
]

SYNC_ALWAYS = "always"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_ROUTE_SCHEMES = ("nats://", "nats-route://", "tls://")


@dataclass
class NKeyAuth:
    """Users authenticate with an NKey seed; the config lists their public keys ("U...")."""

    public_keys: list[str]


@dataclass
class TokenAuth:
    token: str = field(repr=False)


@dataclass
class UserPasswordAuth:
    user: str
    password: str = field(repr=False)


Auth = NKeyAuth | TokenAuth | UserPasswordAuth


@dataclass
class ClusterConfig:
    """The route listener and the other nodes' route URLs ("nats://host:6222")."""

    name: str = "krenalis"
    # Loopback by default: route ports must never be exposed by accident. Use a private
    # interface address (or 0.0.0.0 behind a firewall) when nodes run on separate machines.
    listen_host: str = "127.0.0.1"
    port: int = 6222
    routes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ServerConfig:
    listen_host: str = "127.0.0.1"
    port: int = 4222
    store_dir: str
    server_name: str | None = None
    auth: Auth | None = None
    cluster: ClusterConfig | None = None
    # "always" = fsync before acknowledging; a Go duration ("2m") = periodic fsync;
    # None = leave the key out and use the NATS default (2 minutes). See the module docstring.
    sync_interval: str | None = SYNC_ALWAYS
    # JetStream limits in bytes, or strings such as "20GB" (K/M/G/T are powers of 1024).
    max_memory_store: int | str | None = None
    max_file_store: int | str | None = None
    http_monitor_port: int | None = None


def default_sync_interval(clustered: bool) -> str | None:
    """The sync_interval we recommend: fsync-always alone, NATS default when replicated."""
    return None if clustered else SYNC_ALWAYS


def _hostport(host: str, port: int) -> str:
    _check_port(port, "port")
    if not host:
        raise ValueError("listen host must not be empty")
    # IPv6 literals need brackets, as in a URL.
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return quote(f"{host}:{port}")


def _check_port(port: int, what: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what} must be an integer between 1 and 65535, got {port!r}")


def _size_bytes(value: int | str, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{what} must be a byte count or a size like '20GB', got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def _server_interval(value: str) -> str:
    return value if value == SYNC_ALWAYS else go_duration(value)


def _check_sync_interval(value: str | None) -> None:
    if value is None or value == SYNC_ALWAYS:
        return
    with contextlib.suppress(ValueError):
        if parse_duration(value) > 0:
            return
    raise ValueError(
        f"sync_interval must be 'always', a duration such as '2m' or '10s', or None "
        f"(NATS default), got {value!r}"
    )


def _render_auth(auth: Auth) -> list[str]:
    if isinstance(auth, NKeyAuth):
        return _render_nkeys(auth)
    if isinstance(auth, TokenAuth):
        if not auth.token:
            raise ValueError("the token must not be empty")
        return ["authorization {", f"  token: {quote(auth.token)}", "}"]
    if isinstance(auth, UserPasswordAuth):
        if not auth.user or not auth.password:
            raise ValueError("user and password must both be non-empty")
        user = f"{{ user: {quote(auth.user)}, password: {quote(auth.password)} }}"
        return ["authorization {", "  users = [", f"    {user}", "  ]", "}"]
    raise TypeError(f"unsupported auth type {type(auth).__name__}")


def _render_nkeys(auth: NKeyAuth) -> list[str]:
    if not auth.public_keys:
        raise ValueError("NKey auth needs at least one user public key (U...)")
    for key in auth.public_keys:
        _check_public_key(key)
    users = [f"    {{ nkey: {quote(key)} }}" for key in auth.public_keys]
    return ["authorization {", "  users = [", *users, "  ]", "}"]


def _check_public_key(key: str) -> None:
    if is_user_public_key(key):
        return
    # Never echo the value: the most likely mistake is pasting the secret seed here.
    if isinstance(key, str) and key.startswith("S"):
        raise ValueError(
            "an NKey seed (S...) was given where the public key (U...) is expected; "
            "the seed is secret and must never go into the server config"
        )
    raise ValueError("not a valid user public NKey (it must start with U; see `nats keygen`)")


def _render_jetstream(config: ServerConfig) -> list[str]:
    if not config.store_dir:
        raise ValueError("store_dir must not be empty")
    _check_sync_interval(config.sync_interval)
    lines = ["jetstream {", f"  store_dir: {quote(str(config.store_dir))}"]
    if config.sync_interval is None:
        lines.append(
            "  # sync_interval: NATS default (fsync every 2m); replicas guard acked writes"
        )
    else:
        lines.append(
            "  # fsync policy; 'always' = fsync before ack (no acked event lost on power loss)"
        )
        lines.append(f"  sync_interval: {quote(_server_interval(config.sync_interval))}")
    if config.max_memory_store is not None:
        size = _size_bytes(config.max_memory_store, "max_memory_store")
        lines.append(f"  max_memory_store: {size}")
    if config.max_file_store is not None:
        lines.append(f"  max_file_store: {_size_bytes(config.max_file_store, 'max_file_store')}")
    return [*lines, "}"]


def _render_cluster(cluster: ClusterConfig) -> list[str]:
    if not cluster.name:
        raise ValueError("the cluster name must not be empty")
    for route in cluster.routes:
        if not route.startswith(_ROUTE_SCHEMES):
            raise ValueError(f"route {route!r} must be a URL like nats://host:6222")
    routes = [f"    {quote(route)}" for route in cluster.routes]
    return [
        "cluster {",
        f"  name: {quote(cluster.name)}",
        f"  listen: {_hostport(cluster.listen_host, cluster.port)}",
        "  routes = [",
        *routes,
        "  ]",
        "}",
    ]


def render(config: ServerConfig) -> str:
    """Render `config` as nats-server configuration text (validated locally, not by the server)."""
    if config.cluster is not None and not config.server_name:
        raise ValueError("a cluster node needs a unique server_name (JetStream requires it)")
    if config.server_name is not None and (not config.server_name or " " in config.server_name):
        raise ValueError("server_name must be non-empty and contain no spaces")
    lines = ["# nats-server configuration generated by `krenalis nats config`."]
    if config.server_name:
        lines.append(f"server_name: {quote(config.server_name)}")
    lines.append(f"listen: {_hostport(config.listen_host, config.port)}")
    if config.http_monitor_port is not None:
        lines.append(f"http: {_hostport(config.listen_host, config.http_monitor_port)}")
    for block in _blocks(config):
        lines += ["", *block]
    return "\n".join(lines) + "\n"


def _blocks(config: ServerConfig) -> list[list[str]]:
    blocks = []
    if config.auth is not None:
        blocks.append(_render_auth(config.auth))
    blocks.append(_render_jetstream(config))
    if config.cluster is not None:
        blocks.append(_render_cluster(config.cluster))
    return blocks


def validate_with_server(text: str, *, server: str | None = None) -> None:
    """Check `text` with `nats-server -t`; raise ServerConfigError with the server's message.

    The temporary copy is private (mode 0600) because the text may hold a token or password.
    """
    exe = server or nats_server_path()
    with tempfile.TemporaryDirectory(prefix="krenalis-natsconf-") as tmp:
        path = write_secret_file(Path(tmp) / "nats.conf", text)
        proc = subprocess.run(
            [exe, "-t", "-c", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    if proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip() or f"exit code {proc.returncode}"
        # Report positions against "nats.conf" rather than a temp path that no longer exists.
        raise ServerConfigError(message.replace(str(path), "nats.conf"))


def write_config(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Path:
    """Write a config file with mode 0600 (it may contain a token or password)."""
    return write_secret_file(path, text, force=force)


def cluster_configs(
    n: int,
    base_port: int = 4222,
    base_cluster_port: int = 6222,
    store_root: str | os.PathLike[str] = "data/nats",
    host: str = "127.0.0.1",
    auth: Auth | None = None,
    *,
    name: str = "krenalis",
    sync_interval: str | None = None,
    base_http_port: int | None = None,
) -> list[ServerConfig]:
    """Configs for `n` nodes on one host, each routing to all the others.

    Meant for trying a cluster on one machine: node i listens on base_port+i, routes on
    base_cluster_port+i and stores under store_root/nats-node-<i+1>. All nodes share one disk
    and one power supply here, so replication does not protect against power loss.
    """
    if n < 2:
        raise ValueError("a cluster needs at least 2 nodes (3 or 5 recommended)")
    _check_sync_interval(sync_interval)
    # Absolute: nats-server resolves a relative store_dir against its own working directory.
    root = Path(store_root).absolute()
    ports = [base_cluster_port + i for i in range(n)]
    configs = []
    for i in range(n):
        routes = [f"nats://{_url_host(host)}:{p}" for j, p in enumerate(ports) if j != i]
        configs.append(
            ServerConfig(
                listen_host=host,
                port=base_port + i,
                store_dir=str(root / f"nats-node-{i + 1}"),
                server_name=f"nats-node-{i + 1}",
                auth=auth,
                cluster=ClusterConfig(name=name, listen_host=host, port=ports[i], routes=routes),
                sync_interval=sync_interval,
                http_monitor_port=None if base_http_port is None else base_http_port + i,
            )
        )
    return configs


def _url_host(host: str) -> str:
    # A wildcard listen address cannot be dialled; on one machine the nodes meet on loopback.
    if host in ("0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
