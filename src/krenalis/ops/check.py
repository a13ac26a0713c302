"""`krenalis nats check`: can Krenalis use the configured NATS, and if not, why not.

It connects with the same settings as `krenalis serve` and reports the server version, whether
JetStream is enabled for the account, the cluster, and the EVENTS and EVENTS_ARCHIVE streams
(a 200 needs both). A *problem* (exit 1)
stops Krenalis from working; a *warning* does not, but deserves a look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import nats.errors
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from krenalis.config import Settings
from krenalis.errors import CommandError
from krenalis.ops._common import CONNECT_TIMEOUT, connected, human_bytes, storage_of
from krenalis.ops.keys import public_key_from_seed
from krenalis.stream.connection import MIN_SERVER_VERSION, NatsConnection
from krenalis.stream.layout import ARCHIVE_STREAM, STREAM

__all__ = ["check", "collect"]

_JS_NOT_ENABLED_FOR_ACCOUNT = 10039
_MIN = ".".join(map(str, MIN_SERVER_VERSION[:2]))


def check(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.nats_urls:
        raise CommandError(
            "KRENALIS_NATS_URL is not set, so there is no NATS server to check (`krenalis "
            "serve` would start its embedded one). Set it in the environment or in .env, e.g. "
            "KRENALIS_NATS_URL=nats://127.0.0.1:4222",
            2,
        )
    report = asyncio.run(collect(settings, timeout=args.timeout))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return 0 if report["ok"] else 1


async def collect(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    """The check's findings as a JSON-ready dict; `ok` is False when there is a problem."""
    report: dict[str, Any] = {
        "ok": False,
        "auth": _auth(settings),
        "server": None,
        "jetstream": None,
        "stream": None,
        "archive_stream": None,
        "problems": [],
        "warnings": [],
    }
    try:
        async with connected(settings, settings.nats_urls, timeout) as conn:
            report["server"] = _server(conn)
            if await _jetstream(conn, report):
                report["stream"] = await _stream(conn, settings, report, STREAM)
                report["archive_stream"] = await _stream(conn, settings, report, ARCHIVE_STREAM)
    except CommandError as exc:
        report["problems"].append(str(exc))
    _replicas(settings, report)
    report["ok"] = not report["problems"]
    return report


def _auth(settings: Settings) -> dict[str, Any]:
    if settings.nats_nkey is not None:
        # The public key is not secret: compare it with the server's authorization block.
        return {"method": "nkey", "public_key": public_key_from_seed(settings.nats_nkey.reveal())}
    if settings.nats_creds is not None:
        return {"method": "creds", "file": str(settings.nats_creds)}
    if settings.nats_token is not None:
        return {"method": "token"}
    if settings.nats_user:
        return {"method": "user/password", "user": settings.nats_user}
    return {"method": "none"}


def _server(conn: NatsConnection) -> dict[str, Any]:
    # nats-py keeps the server's INFO only in a private attribute; it has been stable for years.
    info: dict[str, Any] = getattr(conn.nc, "_server_info", {}) or {}
    return {
        "url": conn.connected_url,
        "name": info.get("server_name", ""),
        "version": info.get("version", str(conn.nc.connected_server_version)),
        "cluster": info.get("cluster"),
        # Every cluster member's client address, this one included, as the server announces them.
        "cluster_urls": list(info.get("connect_urls") or []),
    }


async def _jetstream(conn: NatsConnection, report: dict[str, Any]) -> bool:
    try:
        account = await conn.js.account_info()
    except ServiceUnavailableError:
        report["jetstream"] = {"enabled": False}
        report["problems"].append(
            "JetStream is disabled on this server: add a `jetstream { store_dir: ... }` block "
            "to its configuration (`krenalis nats config` writes one) and restart it"
        )
        return False
    except APIError as exc:
        report["jetstream"] = {"enabled": False}
        if exc.err_code == _JS_NOT_ENABLED_FOR_ACCOUNT:
            report["problems"].append(
                "JetStream is disabled for this account: enable it for the account "
                "(`jetstream: enabled` in its `accounts` entry) or use a user of another account"
            )
        else:
            report["problems"].append(f"JetStream refused the account info request: {exc}")
        return False
    except (TimeoutError, nats.errors.TimeoutError):
        report["problems"].append(
            "JetStream did not answer in time; a new cluster elects its meta leader a few "
            "seconds after its routes connect: retry, and check that every node is up"
        )
        return False
    report["jetstream"] = {
        "enabled": True,
        "domain": account.domain,
        "streams": account.streams,
        "consumers": account.consumers,
        "storage_bytes": account.storage,
        "memory_bytes": account.memory,
        "max_storage_bytes": account.limits.max_storage,
    }
    return True


async def _stream(
    conn: NatsConnection, settings: Settings, report: dict[str, Any], name: str
) -> dict[str, Any] | None:
    """The stream's state, its problems and warnings added to `report`; None if it did not
    answer."""
    try:
        info = await conn.js.stream_info(name)
    except NotFoundError:
        return {"name": name, "exists": False}
    except (TimeoutError, nats.errors.TimeoutError):
        report["problems"].append(
            f"the {name} stream did not answer in time: its leader may be being elected "
            "(a few seconds after a node is lost); retry"
        )
        return None
    peers = (info.cluster.replicas or []) if info.cluster else []
    storage = storage_of(info.config)
    if info.cluster is not None and not info.cluster.leader:
        report["problems"].append(f"the {name} stream has no leader: too few replicas are up")
    for peer in peers:
        if peer.offline or not peer.current:
            state = "offline" if peer.offline else "not current (catching up)"
            report["warnings"].append(f"{name} replica on {peer.name} is {state}")
    if storage != settings.nats_storage:
        report["warnings"].append(
            f"the {name} stream uses {storage} storage but KRENALIS_NATS_STORAGE is "
            f"{settings.nats_storage}; a stream's storage cannot change: keep the setting, or "
            "delete the stream once it is empty"
        )
    return {
        "name": name,
        "exists": True,
        "replicas": info.config.num_replicas,
        "storage": storage,
        "leader": info.cluster.leader if info.cluster else None,
        "peers": [
            {"name": p.name, "current": bool(p.current), "offline": bool(p.offline)} for p in peers
        ],
        "messages": info.state.messages,
        "bytes": info.state.bytes,
    }


def _replicas(settings: Settings, report: dict[str, Any]) -> None:
    wanted = settings.nats_replicas
    server = report["server"]
    if server is None:
        return
    if wanted > 1 and not server["cluster"]:
        report["problems"].append(
            f"KRENALIS_NATS_REPLICAS={wanted} but this server is not in a cluster: the "
            f"{STREAM} stream cannot have {wanted} replicas; set KRENALIS_NATS_REPLICAS=1 "
            "or run a cluster of at least that many nodes"
        )
    elif server["cluster"] and 0 < len(server["cluster_urls"]) < wanted:
        report["warnings"].append(
            f"KRENALIS_NATS_REPLICAS={wanted} but only {len(server['cluster_urls'])} cluster "
            "servers are up"
        )
    for stream in (report["stream"], report["archive_stream"]):
        if stream and stream["exists"] and stream["replicas"] != wanted:
            report["warnings"].append(
                f"the {stream['name']} stream has {stream['replicas']} replicas and "
                f"KRENALIS_NATS_REPLICAS={wanted}: the next `krenalis serve` will change it"
            )


def _print_text(report: dict[str, Any]) -> None:
    for label, text in _lines(report):
        print(f"{label + ':':<16} {text}")
    for warning in report["warnings"]:
        print(f"{'Warning:':<16} {warning}")
    for problem in report["problems"]:
        print(f"krenalis: {problem}", file=sys.stderr)
    print(f"{'Result:':<16} " + ("NATS is ready for Krenalis." if report["ok"] else "NOT READY."))


def _lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    auth = report["auth"]
    detail = {
        "nkey": f"NKey, public key {auth.get('public_key')}",
        "creds": f"credentials file {auth.get('file')}",
        "token": "token",
        "user/password": f"user {auth.get('user')!r} with a password",
        "none": "none (no credentials set)",
    }[auth["method"]]
    lines = [("Auth", detail)]
    server = report["server"]
    if server is None:
        return lines
    name = f' "{server["name"]}"' if server["name"] else ""
    lines.insert(
        0,
        ("Server", f"{server['url']}{name}, nats-server {server['version']} "
         f"({_MIN} or newer required: OK)"),
    )  # fmt: skip
    if server["cluster"]:
        urls = ", ".join(server["cluster_urls"]) or "members not announced"
        lines.append(
            ("Cluster", f'"{server["cluster"]}", {len(server["cluster_urls"])} servers: {urls}')
        )
    else:
        lines.append(("Cluster", "none (a single server)"))
    js = report["jetstream"]
    if js is not None:
        if js["enabled"]:
            text = (
                f"enabled for this account ({_count(js['streams'], 'stream')}, "
                f"{_count(js['consumers'], 'consumer')}, {human_bytes(js['storage_bytes'])} on disk)"
            )
        else:
            text = "DISABLED"
        lines.append(("JetStream", text))
    for stream in (report["stream"], report["archive_stream"]):
        if stream is not None:
            lines.append((stream["name"], _stream_text(stream)))
    return lines


def _stream_text(stream: dict[str, Any]) -> str:
    if not stream["exists"]:
        return "not created yet; `krenalis serve` creates it"
    peers = ", ".join(
        f"{p['name']} {'offline' if p['offline'] else 'current' if p['current'] else 'behind'}"
        for p in stream["peers"]
    )
    leader = f", leader {stream['leader']}" if stream["leader"] else ""
    return (
        f"{_count(stream['replicas'], 'replica')}, {stream['storage']} storage{leader}"
        f"{f' (replicas: {peers})' if peers else ''}, {_count(stream['messages'], 'message')}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
