"""`krenalis nats keygen | config | server`: set up a self-managed nats-server.

These replace the setup page's Go tools: `nk -gen user -pubout` (keygen), writing the
configuration by hand (config, checked by the bundled `nats-server -t`) and
`go install nats-server` (server runs the nats-server that ships with Krenalis).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from krenalis.config import Settings
from krenalis.errors import CommandError, ServerConfigError
from krenalis.ops.keys import generate_user_keypair, write_seed_file
from krenalis.ops.natsconf import (
    Auth,
    ClusterConfig,
    NKeyAuth,
    ServerConfig,
    TokenAuth,
    UserPasswordAuth,
    default_sync_interval,
    render,
    validate_with_server,
    write_config,
)
from krenalis.runtime.nats_server import nats_server_path

__all__ = ["config", "keygen", "server"]

DEFAULT_STORE_DIR = "/var/lib/nats"


def keygen(settings: Settings, args: argparse.Namespace) -> int:
    """Print a new user NKey pair (seed, then public key), or store the seed in --out."""
    pair = generate_user_keypair()
    if args.out is None:
        if sys.stdout.isatty():
            print(
                "Line 1: the seed (secret, for KRENALIS_NATS_NKEY). "
                "Line 2: the public key (for `krenalis nats config --nkey`).",
                file=sys.stderr,
            )
        print(pair.seed)
        print(pair.public_key)
        return 0
    try:
        path = write_seed_file(args.out, pair.seed, force=args.force)
    except FileExistsError:
        raise CommandError(
            f"{args.out} already exists; refusing to overwrite a credential "
            "(remove it, or use --force to replace it)"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(
        f"Wrote the seed (secret) to {path} with mode 0600: set KRENALIS_NATS_NKEY to its "
        "content. The public key, for `krenalis nats config --nkey`:",
        file=sys.stderr,
    )
    print(pair.public_key)
    return 0


def config(settings: Settings, args: argparse.Namespace) -> int:
    """Render a server configuration, check it with `nats-server -t`, then print or write it."""
    server_config = _server_config(args)
    try:
        text = render(server_config)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None
    try:
        validate_with_server(text)
    except ServerConfigError as exc:
        raise CommandError(
            f"nats-server rejected the configuration; nothing written: {exc}"
        ) from None
    if server_config.auth is None:
        print(
            "krenalis: warning: no authorization: anyone who reaches the client port can read "
            "and write events; add --nkey (see `krenalis nats keygen`)",
            file=sys.stderr,
        )
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        write_config(args.out, text, force=args.force)
    except FileExistsError:
        raise CommandError(f"{args.out} already exists; use --force to replace it") from None
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(
        f"Wrote {args.out} (mode 0600; checked with nats-server -t). "
        f"Start the server with: krenalis nats server -c {args.out}",
        file=sys.stderr,
    )
    return 0


def _server_config(args: argparse.Namespace) -> ServerConfig:
    host, port = _host_port(args.listen, "--listen")
    if not args.cluster and (args.routes or args.cluster_listen):
        raise CommandError("--routes and --cluster-listen are for cluster nodes: add --cluster", 2)
    if args.cluster and not args.name:
        raise CommandError(
            "a cluster node needs --name, a server name unique in the cluster "
            "(e.g. --name nats-node-1)",
            2,
        )
    cluster = None
    if args.cluster:
        cluster_host, cluster_port = _host_port(
            args.cluster_listen or "127.0.0.1:6222", "--cluster-listen"
        )
        cluster = ClusterConfig(
            name=args.cluster_name, listen_host=cluster_host, port=cluster_port,
            routes=list(args.routes),
        )  # fmt: skip
    if args.sync_interval is None:
        sync_interval = default_sync_interval(clustered=args.cluster)
    else:
        sync_interval = None if args.sync_interval == "default" else args.sync_interval
    return ServerConfig(
        listen_host=host,
        port=port,
        # Absolute: nats-server resolves a relative store_dir against its working directory.
        store_dir=str(Path(args.store_dir).expanduser().absolute()),
        server_name=args.name,
        auth=_auth(args),
        cluster=cluster,
        sync_interval=sync_interval,
        max_file_store=args.max_file_store,
    )


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:4222
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CommandError(f"{flag} must look like HOST:PORT (e.g. 0.0.0.0:4222), got {text!r}", 2)
    return host, int(port)


def _auth(args: argparse.Namespace) -> Auth | None:
    chosen = [
        flag
        for flag, given in (
            ("--nkey", bool(args.nkey)),
            ("--token", args.token is not None),
            ("--user/--password", args.user is not None or args.password is not None),
        )
        if given
    ]
    if len(chosen) > 1:
        raise CommandError(f"choose one authorization method, not {' and '.join(chosen)}", 2)
    if args.nkey:
        return NKeyAuth(list(args.nkey))
    if args.token is not None:
        return TokenAuth(_secret_arg(args.token, "--token"))
    if args.user is not None or args.password is not None:
        if not args.user or args.password is None:
            raise CommandError("user/password authorization needs both --user and --password", 2)
        return UserPasswordAuth(args.user, _secret_arg(args.password, "--password"))
    return None


def _secret_arg(value: str, flag: str) -> str:
    """`-` reads the secret from standard input, keeping it out of shell history and `ps`."""
    if value != "-":
        return value
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise CommandError(f"{flag} -: standard input gave an empty line", 2)
    return line


def server(settings: Settings, args: argparse.Namespace) -> int:
    """Replace this process with the bundled nats-server running `-c FILE`."""
    path = Path(args.config)
    if not path.is_file():
        raise CommandError(
            f"no configuration file at {path}; write one with `krenalis nats config --out {path}`",
            2,
        )
    exe = nats_server_path()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [exe, "-c", str(path)])
    raise AssertionError("os.execv returned")
