"""Append events as NDJSON to one file per day: ``<directory>/<prefix>-YYYY-MM-DD.ndjson``.

The day is the UTC day of the event's ``receivedAt``, not of the write, so a replay of old
events lands in the file of the day they were received. Each event is one compact UTF-8 JSON
line. A batch is delivered only once every touched file is flushed and ``fsync``-ed (and the
directory too when a file was created), so an acked event survives a power loss.

Each file gets the lines of a batch in a single ``O_APPEND`` write: concurrent writers (two
workers, or overlapping batches) never interleave their lines, and a failure rarely leaves half a
batch behind. When it does, the retry writes those lines again: duplicates are the price of
at-least-once delivery; readers deduplicate on ``messageId``.

Events are personal data: the files are created readable by their owner only (0600), in
directories created 0700, whatever the umask. The destination's ``mode`` ("0640") widens both:
directories get the execute bits matching the read bits ("0750"). Files and directories that
already exist keep their modes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar

from krenalis.sinks.base import DELIVERED, Delivered, Event, Outcome, Rejected, Retry, SinkOptions
from krenalis.workspace.values import NonEmptyStr

__all__ = ["DEFAULT_MODE", "FileMode", "FileOptions", "FileSink"]

logger = logging.getLogger("krenalis.sinks.file")

#: The mode of the files the sink creates unless the destination says otherwise.
DEFAULT_MODE = 0o600
_OCTAL_MODE = re.compile(r"(?:0o|0)?([0-7]{3})")


class FileMode(int):
    """The mode of created files, written in octal and quoted ("0640"): read and write bits
    only (events are not programs), including the owner's, which the sink needs to append."""

    description: ClassVar[str] = (
        'an octal file mode in quotes, such as "0600" or "0640", with read and write bits only, '
        "the owner's included"
    )

    @classmethod
    def decode(cls, value: Any) -> FileMode:
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML reads an unquoted 0640 as the octal number 416, and 640 as decimal.
            raise ValueError(
                'an octal file mode in quotes, such as "0640" (unquoted, YAML reads a number)'
            )
        match = _OCTAL_MODE.fullmatch(value) if isinstance(value, str) else None
        if match is None or not _is_file_mode(int(match.group(1), 8)):
            raise ValueError()
        return cls(int(match.group(1), 8))

    def __repr__(self) -> str:
        return f"FileMode('0{self:o}')"


class FileOptions(SinkOptions, tag="file"):
    """A ``type: file`` destination: daily NDJSON files in the directory ``path``, created
    with ``mode`` (default "0600"; directories with the matching execute bits)."""

    path: NonEmptyStr
    mode: FileMode = FileMode(DEFAULT_MODE)

    def build(self) -> FileSink:
        return FileSink(self.path, mode=self.mode)


class FileSink:
    """Write events to daily NDJSON files in ``directory`` (created when missing).

    :param directory: where the files go.
    :param prefix: the start of each file name.
    :param mode: the mode of the files it creates; the directories it creates get the same
        bits plus execute wherever there is read.
    """

    def __init__(
        self, directory: str | Path, *, prefix: str = "events", mode: int = DEFAULT_MODE
    ) -> None:
        if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
            raise ValueError(f"prefix must be a non-empty file name part, got {prefix!r}")
        if not _is_file_mode(mode):
            raise ValueError(
                f"mode must have read and write bits only, the owner's included, got {mode:#o}"
            )
        self._directory = Path(directory)
        self._prefix = prefix
        self._mode = mode
        self._dir_mode = mode | (mode & 0o444) >> 2  # r-- becomes r-x: a directory needs x

    def __repr__(self) -> str:
        return f"FileSink({str(self._directory)!r}, prefix={self._prefix!r})"

    def path_for(self, day: date) -> Path:
        """The file that holds the events received on ``day`` (UTC)."""
        return self._directory / f"{self._prefix}-{day.isoformat()}.ndjson"

    async def write(self, events: list[Event]) -> list[Outcome]:
        outcomes: list[Outcome] = [DELIVERED] * len(events)
        chunks: dict[Path, list[str]] = {}
        for i, event in enumerate(events):
            try:
                line = _line(event)
                path = self.path_for(_received_day(event))
            except ValueError as exc:
                outcomes[i] = Rejected(str(exc))
                continue
            chunks.setdefault(path, []).append(line)
        if not chunks:
            return outcomes
        try:
            # File I/O and fsync block for milliseconds: keep them off the event loop.
            await asyncio.to_thread(self._append, chunks)
        except OSError as exc:
            reason = _os_reason(exc)
            logger.debug("File sink could not write a batch.", extra={"reason": reason})
            retry = Retry(reason)
            return [retry if isinstance(o, Delivered) else o for o in outcomes]
        logger.debug(
            "File sink wrote a batch.", extra={"events": len(events), "files": len(chunks)}
        )
        return outcomes

    async def healthcheck(self) -> None:
        """Raise ``OSError`` unless a file can be created in the directory."""
        await asyncio.to_thread(self._probe)

    async def aclose(self) -> None:
        # Files are opened per batch: there is nothing to release.
        return None

    def _append(self, chunks: dict[Path, list[str]]) -> None:
        _make_dirs(self._directory, self._dir_mode)
        created = False
        for path, lines in chunks.items():
            try:
                created |= _append_durably(path, "".join(lines).encode(), self._mode)
            except OSError as exc:
                # os.write and os.fsync errors do not name the file; the reason must.
                exc.filename = exc.filename or str(path)
                raise
        if created:
            # A new file's directory entry is only durable once the directory is fsynced.
            _fsync_dir(self._directory)

    def _probe(self) -> None:
        _make_dirs(self._directory, self._dir_mode)
        # os.access() says yes to root even on a read-only mount: really create a file.
        with tempfile.NamedTemporaryFile(dir=self._directory, prefix=".healthcheck-"):
            pass


def _is_file_mode(mode: int) -> bool:
    return not mode & ~0o666 and mode & 0o600 == 0o600


def _line(event: Event) -> str:
    return event.data.decode() + "\n"  # the event as stored: one line of compact JSON


def _received_day(event: Event) -> date:
    value = event.received_at  # "" when the event had none
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"receivedAt is missing or not an ISO 8601 timestamp: {value!r}") from None
    if when.tzinfo is None:  # The collector writes UTC; a naive value can only mean UTC.
        return when.date()
    return when.astimezone(UTC).date()


def _append_durably(path: Path, data: bytes, mode: int) -> bool:
    """Append ``data`` with one write (O_APPEND), fsync it; tell whether the file was created."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        if created:
            os.fchmod(fd, mode)  # exactly the mode asked for: the umask may have removed bits
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, pipes): finish the job.
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return created


def _make_dirs(directory: Path, mode: int) -> None:
    """Create ``directory`` and its missing parents with ``mode``, durably."""
    if directory.is_dir():
        return
    missing = [directory, *(p for p in directory.parents if not p.exists())]
    for path in reversed(missing):
        try:
            path.mkdir(mode)
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # another writer made it first, with the same mode
        path.chmod(mode)  # exactly the mode asked for: the umask may have removed bits
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
    where = f" {exc.filename}" if exc.filename else ""
    return f"{code}{where}: {exc.strerror or exc}"
