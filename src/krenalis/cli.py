"""The `krenalis` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from krenalis import __version__
from krenalis.config import Settings, load_settings
from krenalis.errors import ConfigError, NatsAuthError, ServerTooOldError
from krenalis.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("krenalis")


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
    from krenalis.ops.commands import add_commands

    add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        settings = load_settings() if getattr(args, "needs_settings", True) else Settings()
    except ConfigError as exc:
        print(f"krenalis: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    try:
        return handler(settings, args)
    except (NatsAuthError, ServerTooOldError) as exc:
        print(f"krenalis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    if settings.metrics_enabled:  # serve's collectors and worker are separate processes
        _share_metrics(settings)
    from krenalis.runtime.serve import serve

    return _run(serve(settings))


def _share_metrics(settings: Settings) -> None:
    """Prometheus multiprocess mode: /metrics, answered by any collector, sums every process
    of this serve (collectors and worker). It must be set before prometheus_client is imported."""
    import shutil

    directory = (settings.data_dir / "metrics").resolve()
    shutil.rmtree(directory, ignore_errors=True)  # counters of an earlier run
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _collector(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.runtime.serve import run_collector

    return _run(run_collector(settings))


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.runtime.serve import run_worker

    return _run(run_worker(settings, set(args.pipeline)))


def _init_db(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.runtime.serve import init_warehouse

    return _run(init_warehouse(settings))


def _run(coro) -> int:
    """Run on uvloop when available: faster sockets for the collector and NATS."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": _serve,
    "collector": _collector,
    "worker": _worker,
    "init-db": _init_db,
}


if __name__ == "__main__":
    sys.exit(main())
