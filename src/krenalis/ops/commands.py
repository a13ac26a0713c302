"""Operator commands of `krenalis` (nats, status, dlq, send): registered on the CLI parser.

Each sub-parser sets `handler=<function(settings, args) -> int>` with `set_defaults`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the operator commands to the `krenalis` parser."""
