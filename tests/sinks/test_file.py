"""FileSink against real files, and the modes it creates them with."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fixtures.events import stored
from krenalis.errors import WorkspaceError
from krenalis.sinks.base import DELIVERED, Rejected, Retry
from krenalis.sinks.file import FileOptions, FileSink
from krenalis.workspace.load import parse_workspace


def event(n: int, received_at: str = "2026-11-26T05:29:02.123Z") -> dict:
    return {
        "messageId": f"msg-{n}",
        "anonymousId": "user-a",
        "type": "track",
        "event": "Order Completed",
        "properties": {"n": n, "note": "café ✓"},
        "receivedAt": received_at,
        "connectionId": "website",
    }


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


async def test_writes_compact_utf8_ndjson(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out")
    events = [event(1), event(2)]

    assert await sink.write(stored(events)) == [DELIVERED] * 2

    path = tmp_path / "out" / "events-2026-11-26.ndjson"
    lines = read_lines(path)
    assert [json.loads(line) for line in lines] == events
    assert lines[0] == json.dumps(events[0], separators=(",", ":"), ensure_ascii=False)
    assert "café ✓" in path.read_text(encoding="utf-8")
    await sink.aclose()


async def test_appends_across_batches(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, prefix="site")
    await sink.write(stored([event(1)]))
    await sink.write(stored([event(2), event(3)]))

    lines = read_lines(tmp_path / "site-2026-11-26.ndjson")
    assert [json.loads(line)["messageId"] for line in lines] == ["msg-1", "msg-2", "msg-3"]


async def test_rotates_by_the_utc_day_of_received_at(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    events = [
        event(1, "2026-11-25T23:59:59.999Z"),
        event(2, "2026-11-26T00:00:00.000Z"),
        event(3, "2026-11-26T01:30:00+02:00"),  # 2026-11-25 23:30 UTC
        event(4, "2026-11-27T00:00:00"),  # naive: UTC
    ]

    assert await sink.write(stored(events)) == [DELIVERED] * 4

    def ids(day: str) -> list[str]:
        return [json.loads(x)["messageId"] for x in read_lines(tmp_path / f"events-{day}.ndjson")]

    assert ids("2026-11-25") == ["msg-1", "msg-3"]
    assert ids("2026-11-26") == ["msg-2"]
    assert ids("2026-11-27") == ["msg-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events-2026-11-25.ndjson",
        "events-2026-11-26.ndjson",
        "events-2026-11-27.ndjson",
    ]


async def test_a_bad_event_is_rejected_and_the_others_written(tmp_path: Path) -> None:
    sink = FileSink(tmp_path)
    no_date = event(2) | {"receivedAt": None}
    events = stored([event(1), no_date, event(4)])

    outcomes = await sink.write(events)

    assert outcomes[0] == outcomes[2] == DELIVERED
    assert isinstance(outcomes[1], Rejected) and "receivedAt" in outcomes[1].reason
    lines = read_lines(tmp_path / "events-2026-11-26.ndjson")
    assert [json.loads(x)["messageId"] for x in lines] == ["msg-1", "msg-4"]
    # Each line is the event as stored.
    assert (tmp_path / "events-2026-11-26.ndjson").read_bytes().split(b"\n")[0] == events[0].data


async def test_unwritable_directory_is_retried_then_delivered(tmp_path: Path) -> None:
    # Tests run as root, where chmod does not stop writes: a regular file in the path does.
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    sink = FileSink(blocker / "sub")

    outcomes = await sink.write(stored([event(1), event(2)]))

    assert len(outcomes) == 2 and all(isinstance(o, Retry) for o in outcomes)
    assert outcomes[0].reason.startswith(("ENOTDIR", "EEXIST"))  # type: ignore[union-attr]
    assert str(blocker) in outcomes[0].reason  # type: ignore[union-attr]
    with pytest.raises(OSError):
        await sink.healthcheck()

    blocker.unlink()
    await sink.healthcheck()
    assert await sink.write(stored([event(1), event(2)])) == [DELIVERED] * 2
    assert len(read_lines(blocker / "sub" / "events-2026-11-26.ndjson")) == 2
    assert [p.name for p in (blocker / "sub").iterdir()] == ["events-2026-11-26.ndjson"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_disk_full_is_retried(tmp_path: Path) -> None:
    # A day file that is a link to /dev/full fails every write with ENOSPC.
    (tmp_path / "events-2026-11-26.ndjson").symlink_to("/dev/full")

    outcomes = await FileSink(tmp_path).write(stored([event(1), event(2, "2026-11-27T00:00:00Z")]))

    assert all(isinstance(o, Retry) for o in outcomes)
    assert outcomes[0].reason.startswith("ENOSPC")  # type: ignore[union-attr]
    assert "events-2026-11-2" in outcomes[0].reason  # type: ignore[union-attr]


async def test_healthcheck_creates_the_directory_and_leaves_no_file(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    await FileSink(directory).healthcheck()
    assert directory.is_dir() and list(directory.iterdir()) == []


async def test_empty_batch_touches_nothing(tmp_path: Path) -> None:
    assert await FileSink(tmp_path / "never").write(stored([])) == []
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("prefix", ["", "a/b"])
def test_bad_prefix_fails_at_construction(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError):
        FileSink(tmp_path, prefix=prefix)


async def test_options_build_a_sink_writing_to_their_path(tmp_path: Path) -> None:
    sink = FileOptions(path=str(tmp_path / "archive")).build()
    assert await sink.write(stored([event(1)])) == [DELIVERED]
    assert len(read_lines(tmp_path / "archive" / "events-2026-11-26.ndjson")) == 1


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_files_and_directories_are_created_private(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "a" / "b")
    await sink.write(stored([event(1)]))
    assert mode_of(tmp_path / "a" / "b" / "events-2026-11-26.ndjson") == 0o600
    assert mode_of(tmp_path / "a") == mode_of(tmp_path / "a" / "b") == 0o700


@pytest.mark.parametrize(
    ("mode", "file_mode", "dir_mode"),
    [(0o600, 0o600, 0o700), (0o640, 0o640, 0o750), (0o644, 0o644, 0o755), (0o660, 0o660, 0o770)],
)
async def test_a_mode_sets_the_files_and_the_directories(
    tmp_path: Path, mode: int, file_mode: int, dir_mode: int
) -> None:
    previous = os.umask(0o077)  # the mode asked for wins over the umask
    try:
        await FileSink(tmp_path / "out", mode=mode).write(stored([event(1)]))
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "out" / "events-2026-11-26.ndjson") == file_mode
    assert mode_of(tmp_path / "out") == dir_mode


async def test_existing_files_and_directories_keep_their_modes(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "events-2026-11-26.ndjson").touch(mode=0o644)
    (tmp_path / "events-2026-11-26.ndjson").chmod(0o644)
    await FileSink(tmp_path).write(stored([event(1), event(2, "2026-11-27T00:00:00Z")]))
    assert mode_of(tmp_path) == 0o755
    assert mode_of(tmp_path / "events-2026-11-26.ndjson") == 0o644  # someone chose it
    assert mode_of(tmp_path / "events-2026-11-27.ndjson") == 0o600  # new: private


@pytest.mark.parametrize("mode", [0o700, 0o400, 0o4600, 0o1600])
def test_a_mode_with_more_than_read_and_write_fails_at_construction(
    tmp_path: Path, mode: int
) -> None:
    with pytest.raises(ValueError, match="read and write bits only"):
        FileSink(tmp_path, mode=mode)


def destination(mode_line: str) -> str:
    return f"destinations:\n  archive:\n    type: file\n    path: /tmp/x\n{mode_line}"


@pytest.mark.parametrize(
    ("line", "mode"),
    [("", 0o600), ('    mode: "0640"\n', 0o640), ("    mode: '644'\n", 0o644)],
)
def test_the_mode_option_is_quoted_octal(line: str, mode: int) -> None:
    options = parse_workspace(destination(line), "krenalis.yaml").destinations["archive"].options
    assert isinstance(options, FileOptions) and options.mode == mode


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("    mode: 0640\n", 'in quotes, such as "0640" (unquoted, YAML reads a number), got 416'),
        ('    mode: "0755"\n', "read and write bits only, the owner's included, got '0755'"),
        ('    mode: "0440"\n', "the owner's included, got '0440'"),
        ('    mode: "rw-r-----"\n', "got 'rw-r-----'"),
    ],
)
def test_a_bad_mode_names_the_line_and_what_is_accepted(line: str, reason: str) -> None:
    with pytest.raises(WorkspaceError) as error:
        parse_workspace(destination(line), "krenalis.yaml")
    assert str(error.value).startswith('krenalis.yaml:5: destination "archive": mode must be ')
    assert str(error.value).endswith(reason)
