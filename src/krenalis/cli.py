"""The `krenalis` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from krenalis import __version__
from krenalis.config import ConfigError, Settings, load_settings
from krenalis.logs import setup_logging
from krenalis.stream.connection import NatsAuthError, ServerTooOldError

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"krenalis: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    handler = COMMANDS[args.command]
    try:
        return handler(settings, args)
    except (NatsAuthError, ServerTooOldError) as exc:
        print(f"krenalis: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from krenalis.serve import serve

    return asyncio.run(serve(settings))


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {"serve": _serve}


if __name__ == "__main__":
    sys.exit(main())
