"""The messages between a worker and its transform process, on the child's stdin and stdout.

Each message is a frame: 4 bytes of length (big-endian), then the body. The first message to
the child is :class:`Init` (pickled: it holds Structs, and both ends are this package); the
child answers :class:`Ready` or :class:`Refused`. Then each batch is a msgpack list of
``[data, stored_at]``; the child answers with :class:`Chunk` messages, the last one ``done``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import msgspec

from krenalis.transforms.spec import Step

__all__ = ["PROGRESS", "Chunk", "Init", "Ready", "Refused", "frame", "read_frame"]

_LENGTH = struct.Struct(">I")
#: The index, in the batch, of the event the child is running: written by the child into a
#: small memory map shared with the worker, read by the worker when the child is lost.
PROGRESS = struct.Struct("<q")


class Init(msgspec.Struct, frozen=True):
    """What the child builds its chain from. ``base`` is the code directory."""

    steps: tuple[Step, ...]
    base: str
    source: str
    pipeline: str


class Ready(msgspec.Struct, frozen=True, tag=True):
    """Every step is built; ``files`` are those of the Python functions, with their
    (mtime_ns, size) when loaded."""

    files: list[tuple[str, int, int]]


class Refused(msgspec.Struct, frozen=True, tag=True):
    """The step at ``index`` cannot be built, for ``reason``."""

    index: int
    reason: str


class Chunk(msgspec.Struct, array_like=True):
    """Results of the next events of the batch, in order (see chain.Result), and each step's
    figures since the previous chunk."""

    done: bool
    results: list[tuple[str, list[bytes], str] | str]
    stats: list[list[float]]


def frame(body: bytes) -> bytes:
    return _LENGTH.pack(len(body)) + body


def read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's body from a blocking stream; None at its end."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    body = stream.read(length)
    return body if len(body) == length else None


def length_of(head: bytes) -> int:
    return int(_LENGTH.unpack(head)[0])


HEAD_SIZE = _LENGTH.size
