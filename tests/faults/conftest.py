"""Fixtures of the fault tests: a `Stack` of `krenalis` processes, stopped (and its orphans
killed by PID) at the end, with every process's log printed for a failing test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults_support import Stack


@pytest.fixture
def stack_factory() -> Iterator[Callable[[str], Stack]]:
    """`stack_factory(nats_url)` -> a Stack in a fresh directory under /tmp ("" = embedded
    NATS). Under /tmp, not tmp_path: an embedded PostgreSQL runs as another user when the
    tests run as root, and must be able to traverse the parents of its data directory."""
    stacks: list[Stack] = []

    def make(nats_url: str = "") -> Stack:
        root = Path(tempfile.mkdtemp(prefix="krenalis-fault-"))
        stack = Stack(root, nats_url)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
            print(stack.logs())
            shutil.rmtree(stack.root, ignore_errors=True)
