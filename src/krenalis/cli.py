"""The `krenalis` command: one table (`COMMANDS`) that dispatches every subcommand.

The long-running processes' arguments are here; the operator commands' are in
:mod:`krenalis.ops.arguments`.

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
    EmbeddedServerError,
    NatsAuthError,
    ServerTooOldError,
    SinkError,
    WorkspaceChangeError,
    WorkspaceError,
)
from krenalis.logs import setup_logging
from krenalis.ops import (
    check,
    dlq_cmd,
    nats_cmd,
    replay_cmd,
    send,
    snippet,
    status,
    tail_cmd,
    workspace_cmd,
)
from krenalis.ops._common import quiet_logs
from krenalis.ops.arguments import add_operator_commands
from krenalis.ops.transform_cmd import transform_test

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
    "replay": Command(replay_cmd.replay),
    "tail": Command(tail_cmd.tail),
    "send": Command(send.send),
    "snippet": Command(snippet.snippet),
    "transform test": Command(transform_test),
    "workspace apply": Command(workspace_cmd.apply),
    "workspace show": Command(workspace_cmd.show),
    "workspace history": Command(workspace_cmd.history),
    "workspace diff": Command(workspace_cmd.diff),
    "workspace rollback": Command(workspace_cmd.rollback),
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
    if getattr(args, "workspace", None):
        settings = replace(settings, workspace_path=Path(args.workspace), workspace_named=True)
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
    if isinstance(exc, ConfigError):  # found while starting: a port in use...
        print(f"krenalis: configuration error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, WorkspaceChangeError):
        print(f"krenalis: the workspace was not changed: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, NatsAuthError | ServerTooOldError | EmbeddedServerError | SinkError):
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
    add_operator_commands(commands)
    return parser


_WORKSPACE_HELP = (
    "apply this workspace file at start and whenever it changes (as KRENALIS_WORKSPACE does); "
    "without it the process follows the workspace stored in NATS"
)


def _add_processes(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="run everything in one process (embedded NATS and PostgreSQL when not configured)",
        description=(
            "Run the collector and every pipeline worker. If KRENALIS_NATS_URL is unset, start "
            "the bundled nats-server with file storage in KRENALIS_DATA_DIR (default ./data), "
            "and apply ./krenalis.yaml (written with a fresh write key on the first run)."
        ),
    )
    collector = commands.add_parser(
        "collector",
        help="run only the HTTP collector (several may share a port and a NATS)",
        description="Serve the ingestion endpoints on KRENALIS_HTTP_HOST:KRENALIS_HTTP_PORT.",
    )
    worker = commands.add_parser(
        "worker",
        help="run only pipeline workers (several processes may share a pipeline)",
        description="Consume the pipelines of the workspace and deliver their events.",
    )
    for parser in (serve, collector, worker):
        parser.add_argument("--workspace", metavar="FILE", help=_WORKSPACE_HELP)
    worker.add_argument(
        "--pipeline", action="append", default=[], metavar="ID",
        help="run only this pipeline (repeat for several); default: every enabled pipeline",
    )  # fmt: skip
    commands.add_parser(
        "init-db",
        help="create the warehouse tables (krenalis_events and the events view)",
        description="Create the warehouse tables in the workspace's warehouse (or the embedded one).",
    )


if __name__ == "__main__":
    sys.exit(main())
