"""The transform process: ``python -m krenalis.transforms.child PARENT_PID PROGRESS_FD``, one
per pipeline worker.

It builds the pipeline's steps (importing the Python functions), says whether it could, then
runs each batch it is sent through the chain, within the steps' time limits
(:mod:`krenalis.transforms.chain`), answering in chunks so that the worker sees it progress
(see :mod:`krenalis.transforms.process` for why). Its stdin and stdout carry only frames: what
the steps print goes to stderr, the worker's log. It dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import BinaryIO

import msgspec

from krenalis.transforms.chain import Chain, LoadFailed, build_steps, time_limits
from krenalis.transforms.frames import PROGRESS, Chunk, Init, Ready, Refused, frame, read_frame

__all__ = ["main"]

#: Seconds of work after which the results so far are sent: the worker's sign of progress.
FLUSH = 0.01

_encode = msgspec.msgpack.Encoder().encode
_batch = msgspec.msgpack.Decoder(list[tuple[bytes, float]]).decode


def main() -> None:
    source, out = _own_stdio()
    _die_with_parent()
    progress = mmap.mmap(int(sys.argv[2]), PROGRESS.size)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the worker; it stops us
    body = read_frame(source)
    if body is None:
        return
    init: Init = pickle.loads(body)  # noqa: S301 (written by our parent)
    chain = _load(init, out)
    if chain is None:
        return
    while (body := read_frame(source)) is not None:
        with time_limits():
            _run(chain, _batch(body), out, progress)


def _load(init: Init, out: int) -> Chain | None:
    sys.path.insert(0, init.base)  # modules of the code directory import each other
    try:
        built, files = build_steps(init.steps, Path(init.base))
    except LoadFailed as exc:
        _send(out, msgspec.msgpack.encode(Refused(exc.index, exc.reason)))
        return None
    stamps = [(path, *_stamp(path)) for path in files]
    _send(out, msgspec.msgpack.encode(Ready(stamps)))
    return Chain(built, init.source, init.pipeline)


def _stamp(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return 0, 0
    return stat.st_mtime_ns, stat.st_size


def _run(chain: Chain, batch: list[tuple[bytes, float]], out: int, progress: mmap.mmap) -> None:
    results: list = []
    last = time.perf_counter()
    for index, (data, stored_at) in enumerate(batch):
        # Which event this is, where the worker can read it if we never answer (no syscall).
        PROGRESS.pack_into(progress, 0, index)
        results.append(chain.run(data, stored_at))
        now = time.perf_counter()
        if now - last >= FLUSH:
            _send(out, _encode(Chunk(False, results, chain.stats())))
            results, last = [], now
    _send(out, _encode(Chunk(True, results, chain.stats())))


def _send(fd: int, body: bytes) -> None:
    view = memoryview(frame(body))
    while view:
        view = view[os.write(fd, view) :]


def _own_stdio() -> tuple[BinaryIO, int]:
    """Keep stdin and stdout for the frames; a step's print() and input() get stderr and
    /dev/null instead, so they cannot break a frame."""
    source = os.fdopen(os.dup(0), "rb")
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return source, out


def _die_with_parent() -> None:
    """SIGKILL when the worker dies (Linux), even in the middle of a step that never ends; the
    end of stdin stops us otherwise."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = int(sys.argv[1])
    if parent is not None and os.getppid() != parent:  # it died before prctl
        os._exit(0)


if __name__ == "__main__":
    main()
