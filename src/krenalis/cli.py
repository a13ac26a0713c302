"""The `krenalis` command: every subcommand's arguments, and one table that dispatches them.

Expected failures print one line (`krenalis: ...`) and exit 1, or 2 for a usage mistake or a
bad setting; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats.errors

from krenalis import __version__
from krenalis.config import Settings, load_settings
from krenalis.errors import (
    CommandError,
    ConfigError,
    NatsAuthError,
    NatsServerNotFound,
    ServerTooOldError,
    WorkspaceError,
)
from krenalis.logs import setup_logging
from krenalis.ops import check, dlq_cmd, nats_cmd, send, status
from krenalis.ops._common import CONNECT_TIMEOUT, quiet_logs

__all__ = ["COMMANDS", "main"]

Handler = Callable[[Settings, argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    handler: Handler
    #: Read KRENALIS_* first (a bad setting stops the command); False for commands that work
    #: without any setting, such as generating a key.
    needs_settings: bool = True
    #: An operator command: it reports what matters itself, so INFO/WARNING log lines are
    #: kept out of its output (KRENALIS_LOG_LEVEL=debug shows them).
    quiet: bool = True


# The long-running processes import krenalis.runtime only when they run: prometheus_client
# chooses where metrics live (this process, or files shared by serve's processes) when it is
# first imported, and _share_metrics must come before that.


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    if settings.metrics_enabled:  # serve's collectors and worker are separate processes
        settings = replace(settings, metrics_dir=_share_metrics(settings))
    from krenalis.runtime.serve import serve

    return _run(serve(settings))


def _share_metrics(settings: Settings) -> Path:
    """Prometheus multiprocess mode: /metrics, answered by any collector, sums every process
    of this serve (collectors and worker). prometheus_client reads the directory from the
    environment (children inherit it), before its first metric is made."""
    directory = (settings.data_dir / "metrics").resolve()
    shutil.rmtree(directory, ignore_errors=True)  # counters of an earlier run
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def _collector(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.runtime.serve import run_collector

    return _run(run_collector(settings))


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.runtime.serve import run_worker

    return _run(run_worker(settings, set(args.pipeline)))


def _init_db(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.runtime.serve import init_warehouse

    return _run(init_warehouse(settings))


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when available: faster sockets for the collector and NATS."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


#: Every command, by its words on the command line.
COMMANDS: dict[str, Command] = {
    "serve": Command(_serve, quiet=False),
    "collector": Command(_collector, quiet=False),
    "worker": Command(_worker, quiet=False),
    "init-db": Command(_init_db, quiet=False),
    "nats keygen": Command(nats_cmd.keygen, needs_settings=False),
    "nats config": Command(nats_cmd.config, needs_settings=False),
    "nats server": Command(nats_cmd.server, needs_settings=False),
    "nats check": Command(check.check),
    "status": Command(status.status),
    "dlq list": Command(dlq_cmd.dlq_list),
    "dlq show": Command(dlq_cmd.dlq_show),
    "dlq replay": Command(dlq_cmd.dlq_replay),
    "dlq purge": Command(dlq_cmd.dlq_purge),
    "send": Command(send.send),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = COMMANDS[" ".join(filter(None, (args.command, getattr(args, "subcommand", None))))]
    try:
        settings = load_settings() if command.needs_settings else Settings()
    except ConfigError as exc:
        print(f"krenalis: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    quiet = quiet_logs(settings.log_level) if command.quiet else contextlib.nullcontext()
    try:
        with quiet:
            return command.handler(settings, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = _expected_failure(exc, command)
        if code is None:
            raise
        return code


def _expected_failure(exc: Exception, command: Command) -> int | None:
    """Print an expected failure in one line and return its exit code; None for a bug."""
    if isinstance(exc, CommandError):
        print(f"krenalis: {exc}", file=sys.stderr)
        return exc.code
    if isinstance(exc, WorkspaceError):
        print(f"krenalis: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, NatsAuthError | ServerTooOldError | NatsServerNotFound):
        print(f"krenalis: {exc}", file=sys.stderr)
        return 1
    if command.quiet and isinstance(exc, nats.errors.Error | TimeoutError):
        print(
            f"krenalis: NATS did not answer as expected ({exc or type(exc).__name__}); "
            "`krenalis nats check` says more",
            file=sys.stderr,
        )
        return 1
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krenalis",
        description=(
            "Krenalis event stream: Segment-compatible event ingestion into NATS JetStream, "
            "per-pipeline workers, a PostgreSQL warehouse and destinations. Settings come from "
            "KRENALIS_* environment variables and a .env file in the working directory."
        ),
    )
    parser.add_argument("--version", action="version", version=f"krenalis {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_processes(commands)
    _add_nats(commands)
    _add_status(commands)
    _add_dlq(commands)
    _add_send(commands)
    return parser


def _add_processes(commands: argparse._SubParsersAction) -> None:
    commands.add_parser(
        "serve",
        help="run everything in one process (embedded NATS and PostgreSQL when not configured)",
        description=(
            "Run the collector and every pipeline worker. If KRENALIS_NATS_URL is unset, start "
            "the bundled nats-server with file storage in KRENALIS_DATA_DIR (default ./data)."
        ),
    )
    commands.add_parser(
        "collector",
        help="run only the HTTP collector (several may share a port and a NATS)",
        description="Serve the ingestion endpoints on KRENALIS_HTTP_HOST:KRENALIS_HTTP_PORT.",
    )
    worker = commands.add_parser(
        "worker",
        help="run only pipeline workers (several processes may share a pipeline)",
        description="Consume the pipelines of the workspace file and deliver their events.",
    )
    worker.add_argument(
        "--pipeline", action="append", default=[], metavar="ID",
        help="run only this pipeline (repeat for several); default: every enabled pipeline",
    )  # fmt: skip
    commands.add_parser(
        "init-db",
        help="create the warehouse tables (krenalis_events and the events view)",
        description="Create the warehouse tables in the workspace's warehouse (or the embedded one).",
    )


_SYNC_HELP = (
    "when nats-server fsyncs JetStream writes: 'always' (before acknowledging each write), a "
    "duration such as 10s, or 'default' (the NATS default, every 2 minutes). NATS acknowledges "
    "a write once the OS has it, so with periodic fsync a power failure or OS crash loses "
    "acknowledged events. Default: always for a single node (it has no replica to recover "
    "from); the NATS default for --cluster, where a write is acknowledged once a majority of "
    "nodes holds it (use always if the nodes share power)"
)


def _add_nats(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "nats",
        help="set up a self-managed nats-server: keys, configuration, start, check",
        description="Set up and check the NATS server Krenalis uses (see docs/nats.md).",
    )
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    keygen = sub.add_parser(
        "keygen",
        help="generate a user NKey pair (like `nk -gen user -pubout`)",
        description=(
            "Print a new user NKey pair: the seed (SU..., secret: KRENALIS_NATS_NKEY), then the "
            "public key (U..., for `krenalis nats config --nkey`)."
        ),
    )
    keygen.add_argument(
        "--out", metavar="FILE",
        help="write the seed to FILE (mode 0600) and print only the public key",
    )  # fmt: skip
    keygen.add_argument("--force", action="store_true", help="replace FILE if it exists")

    _add_nats_config(sub)

    server = sub.add_parser(
        "server",
        help="run the bundled nats-server in the foreground",
        description=(
            "Run the nats-server that ships with Krenalis (`nats-server -c FILE`). "
            "Stop it with SIGTERM (Ctrl+C) so it closes its store cleanly."
        ),
    )
    server.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")

    check = sub.add_parser(
        "check",
        help="check that Krenalis can use the configured NATS (KRENALIS_NATS_*)",
        description=(
            "Connect with the KRENALIS_NATS_* settings and report the server version (2.12 or "
            "newer required), JetStream for the account, the cluster and the EVENTS stream. "
            "Exits 1 when something stops Krenalis from working."
        ),
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--timeout", type=float, default=CONNECT_TIMEOUT, metavar="SECONDS",
        help=f"how long to try to connect (default {CONNECT_TIMEOUT:g})",
    )  # fmt: skip


def _add_nats_config(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser(
        "config",
        help="write a nats-server configuration (single node or cluster node)",
        description=(
            "Write a nats-server configuration with JetStream, checked with `nats-server -t` "
            "before it is written (mode 0600: it may hold a token or password)."
        ),
    )
    config.add_argument(
        "--listen", default="127.0.0.1:4222", metavar="HOST:PORT",
        help="client address (default 127.0.0.1:4222; 0.0.0.0:4222 for other machines)",
    )  # fmt: skip
    config.add_argument(
        "--store-dir", default="/var/lib/nats", metavar="DIR",
        help="where JetStream stores events (default /var/lib/nats); one disk per node",
    )  # fmt: skip
    config.add_argument("--sync-interval", metavar="always|DURATION|default", help=_SYNC_HELP)
    config.add_argument(
        "--max-file-store",
        metavar="SIZE",
        help="JetStream disk limit, e.g. 20GB (default: the NATS default)",
    )
    auth = config.add_argument_group("authorization (choose one; NKey recommended)")
    auth.add_argument(
        "--nkey", action="append", default=[], metavar="U...",
        help="a user public key from `krenalis nats keygen`; repeat to allow several (rotation)",
    )  # fmt: skip
    auth.add_argument(
        "--token", metavar="TOKEN", help="token authorization ('-': read it from stdin)"
    )
    auth.add_argument("--user", metavar="USER", help="user for user/password authorization")
    auth.add_argument("--password", metavar="PASSWORD", help="password ('-': read it from stdin)")
    cluster = config.add_argument_group("cluster node")
    cluster.add_argument(
        "--cluster", action="store_true", help="write a cluster node's configuration"
    )
    cluster.add_argument(
        "--name", metavar="NAME", help="server name, unique in the cluster (e.g. nats-node-1)"
    )
    cluster.add_argument(
        "--routes", action="append", default=[], metavar="URL",
        help="another node's route URL, e.g. nats://nats-node-2:6222 (repeat for each node)",
    )  # fmt: skip
    cluster.add_argument(
        "--cluster-listen", metavar="HOST:PORT",
        help="route address (default 127.0.0.1:6222; use a private address between machines)",
    )  # fmt: skip
    cluster.add_argument(
        "--cluster-name", default="krenalis", metavar="NAME",
        help="cluster name, the same on every node (default krenalis)",
    )  # fmt: skip
    config.add_argument("--out", metavar="FILE", help="write to FILE (default: print)")
    config.add_argument("--force", action="store_true", help="replace FILE if it exists")


def _add_status(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser(
        "status",
        help="the EVENTS stream and each pipeline's backlog, in-flight events and dead letters",
        description=(
            "Show the EVENTS stream and, per pipeline: pending events, events being processed, "
            "redeliveries, dead letters and the last delivery. Without KRENALIS_NATS_URL it "
            "connects to the embedded nats-server of a running `krenalis serve`."
        ),
    )
    status.add_argument(
        "--json", action="store_true", help="print JSON (one line per refresh with --watch)"
    )
    status.add_argument(
        "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl+C"
    )


def _add_dlq(commands: argparse._SubParsersAction) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="dead letters: events a pipeline gave up on (list, show, replay, purge)",
        description="Inspect, replay or delete the dead letters kept in the EVENTS_DLQ stream.",
    )
    sub = dlq.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    pipeline_help = "only the dead letters of this pipeline"

    listing = sub.add_parser("list", help="list dead letters with their reason and attempts")
    listing.add_argument("--pipeline", metavar="ID", help=pipeline_help)
    listing.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N (default 100)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")

    show = sub.add_parser("show", help="show one dead letter and its event")
    show.add_argument("seq", type=int, metavar="SEQ", help="its sequence number (from `dlq list`)")
    show.add_argument("--json", action="store_true", help="print JSON")

    replay = sub.add_parser(
        "replay",
        help="put dead letters back into EVENTS for their pipeline",
        description=(
            "Put dead letters back into EVENTS on their pipeline's subject, then delete them "
            "from EVENTS_DLQ. Without SEQ, every dead letter (of --pipeline) is replayed."
        ),
    )
    replay.add_argument("seq", type=int, nargs="*", metavar="SEQ", help="only these dead letters")
    replay.add_argument("--pipeline", metavar="ID", help=pipeline_help)

    purge = sub.add_parser("purge", help="delete dead letters for good")
    purge.add_argument("--pipeline", metavar="ID", help=pipeline_help)
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _add_send(commands: argparse._SubParsersAction) -> None:
    send = commands.add_parser(
        "send",
        help="send test events of every type to a running collector",
        description=(
            "Send track, identify, page, screen, group and alias test events to a running "
            "collector and print what it accepted."
        ),
    )
    send.add_argument(
        "--url", metavar="URL",
        help="the collector (default http://127.0.0.1:KRENALIS_HTTP_PORT, i.e. port 2022)",
    )  # fmt: skip
    send.add_argument(
        "--write-key", metavar="KEY",
        help="a source's write key (default: the first source of the workspace file)",
    )  # fmt: skip
    send.add_argument(
        "--count", type=int, default=1, metavar="N", help="events of each type (default 1)"
    )


if __name__ == "__main__":
    sys.exit(main())
