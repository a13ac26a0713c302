"""The `krenalis` command's dispatch table and what importing it may pull in."""

from __future__ import annotations

import subprocess
import sys

from krenalis.cli import COMMANDS, _parser


def test_every_command_of_the_parser_has_an_entry_in_the_table() -> None:
    parser = _parser()
    top = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no API)
    words = set()
    for name, sub in top.items():
        nested = sub._subparsers._group_actions[0].choices if sub._subparsers else None
        words |= {f"{name} {child}" for child in nested} if nested else {name}
    assert words == set(COMMANDS)


def test_importing_the_cli_does_not_import_prometheus_client() -> None:
    """`serve` sets prometheus_client's multiprocess directory before the library is first
    imported; if the CLI's imports pulled it in earlier, serve's collector would count in its
    own memory and /metrics would miss its requests."""
    code = "import sys, krenalis.cli; sys.exit('prometheus_client' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
