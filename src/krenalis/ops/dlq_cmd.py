"""`krenalis dlq list | show | replay | purge`: the events pipelines gave up on.

Dead letters live in EVENTS_DLQ (`dlq.v1.<pipeline>`) with the reason and the attempts in
headers. Replaying puts an event back into EVENTS on its pipeline's subject, where the
pipeline's worker takes it again, then deletes the dead letter.

What a dead letter holds comes from outside: a reason may quote a remote server's response, a
messageId is the client's. On the terminal, control characters (escape sequences, carriage
returns, line breaks) are shown escaped and rich markup is printed as written (`_shown`);
`--json` escapes them as JSON does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from krenalis.config import Settings
from krenalis.errors import CommandError
from krenalis.logs import one_line
from krenalis.ops._common import (
    check_pipeline_id,
    connected,
    dead_letter_counts,
    nats_urls,
)
from krenalis.stream.deadletters import (
    DeadLetter,
    get_dead_letter,
    list_dead_letters,
    purge,
    replay,
)
from krenalis.stream.layout import DLQ_STREAM, STREAM, list_pipeline_consumers

__all__ = ["dlq_list", "dlq_purge", "dlq_replay", "dlq_show"]

#: Show a progress bar when replaying more dead letters than this.
_PROGRESS_FROM = 50
_PAGE = 500


def _as_dict(letter: DeadLetter, *, with_event: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": letter.seq,
        "pipeline": letter.pipeline,
        "shard": letter.shard,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "first_attempt": letter.first_attempt,
        "message_id": letter.message_id,
    }
    if with_event:
        try:
            out["event"] = json.loads(letter.data)
        except ValueError:
            out["event"] = None
            out["data"] = letter.data.decode("utf-8", "replace")
    return out


def _shown(value: object) -> str:
    """A value of a dead letter as the terminal may print it: one line, no control character."""
    return one_line(str(value))


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _run(settings: Settings, work: Any) -> Any:
    urls = nats_urls(settings)

    async def main() -> Any:
        async with connected(settings, urls) as conn:
            return await work(conn.js)

    return asyncio.run(main())


# ---------------------------------------------------------------- list / show


def dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    pipeline = check_pipeline_id(args.pipeline)
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", 2)

    async def work(js: JetStreamContext) -> tuple[list[DeadLetter], int]:
        counts = await dead_letter_counts(js)
        total = counts.get(pipeline, 0) if pipeline else sum(counts.values())
        if not total:
            return [], 0
        return await list_dead_letters(js, pipeline, limit=args.limit), total

    letters, total = _run(settings, work)
    if args.json:
        print(
            json.dumps({"total": total, "dead_letters": [_as_dict(x) for x in letters]}, indent=2)
        )
        return 0
    console = Console()
    if not letters:
        console.print(f"No dead letters{f' for pipeline {pipeline}' if pipeline else ''}.")
        return 0
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    for title in ("Seq", "Pipeline", "Attempts", "First attempt"):
        table.add_column(title, no_wrap=True, justify="right" if title != "Pipeline" else "left")
    table.add_column("Reason", overflow="fold")
    for x in letters:
        cells = (x.seq, x.pipeline, x.attempts, _when(x.first_attempt), x.reason)
        table.add_row(*(escape(_shown(cell)) for cell in cells))
    console.print(table)
    shown = f"showing the first {len(letters)} of {total}" if total > len(letters) else ""
    console.print(f"{total} dead letter{'s' if total != 1 else ''}" + (f" ({shown})" if shown else "")
                  + ". `krenalis dlq show SEQ` shows one; `krenalis dlq replay` retries them.")  # fmt: skip
    return 0


def dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(js: JetStreamContext) -> DeadLetter:
        try:
            return await get_dead_letter(js, args.seq)
        except NotFoundError:
            raise CommandError(f"no dead letter with sequence {args.seq} in {DLQ_STREAM}") from None

    letter = _as_dict(_run(settings, work), with_event=True)
    if args.json:
        print(json.dumps(letter, indent=2))
        return 0
    for key in ("seq", "pipeline", "shard", "attempts", "first_attempt", "message_id", "reason"):
        print(f"{key.replace('_', ' ').capitalize() + ':':<15} {_shown(letter[key])}")
    print("Event:")
    # json.dumps escapes every control character (and everything but ASCII) in the event.
    event = letter["event"]
    print(json.dumps(event, indent=2) if event is not None else _shown(letter["data"]))
    return 0


# ---------------------------------------------------------------- replay


def dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    pipeline = check_pipeline_id(args.pipeline)
    console = Console(stderr=True)

    async def work(js: JetStreamContext) -> tuple[dict[str, int], list[str]]:
        try:
            shards = await list_pipeline_consumers(js)
        except NotFoundError:
            raise CommandError(
                f"the {STREAM} stream does not exist; start `krenalis serve` first"
            ) from None
        replayer = _Replayer(js, shards, console)
        if args.seq:
            await replayer.replay_seqs(args.seq, pipeline)
        else:
            await replayer.replay_all(pipeline)
        return replayer.replayed, replayer.refused

    replayed, refused = _run(settings, work)
    for reason in refused:
        print(f"krenalis: not replayed: {_shown(reason)}", file=sys.stderr)
    count = sum(replayed.values())
    per_pipeline = ", ".join(f"{p}: {n}" for p, n in sorted(replayed.items()))
    if count:
        print(
            f"Replayed {count} dead letter{'s' if count != 1 else ''} into {STREAM} ({per_pipeline})."
        )
    elif not refused:
        print(f"No dead letters to replay{f' for pipeline {pipeline}' if pipeline else ''}.")
    return 1 if refused else 0


class _Replayer:
    """Replays dead letters whose pipeline still has its consumer; notes why others are not."""

    def __init__(self, js: JetStreamContext, shards: dict[str, set[int]], console: Console):
        self.js = js
        self.shards = shards
        self.console = console
        self.replayed: dict[str, int] = {}
        self.refused: list[str] = []

    def _refusal(self, letter: DeadLetter) -> str | None:
        if letter.pipeline not in self.shards:
            return (
                f"seq {letter.seq}: pipeline {letter.pipeline} has no consumer on {STREAM} "
                "(is it still in the workspace file? `krenalis serve` creates consumers)"
            )
        if letter.shard not in self.shards[letter.pipeline]:
            return (
                f"seq {letter.seq}: pipeline {letter.pipeline} has no shard {letter.shard} any more"
            )
        return None

    async def _one(self, letter: DeadLetter) -> None:
        reason = self._refusal(letter)
        if reason is not None:
            self.refused.append(reason)
            return
        await replay(self.js, letter)
        self.replayed[letter.pipeline] = self.replayed.get(letter.pipeline, 0) + 1

    async def replay_seqs(self, seqs: list[int], pipeline: str | None) -> None:
        with self._progress(len(seqs)) as advance:
            for seq in seqs:
                try:
                    letter = await get_dead_letter(self.js, seq)
                except NotFoundError:
                    self.refused.append(f"seq {seq}: no such dead letter in {DLQ_STREAM}")
                else:
                    if pipeline and letter.pipeline != pipeline:
                        self.refused.append(f"seq {seq}: belongs to pipeline {letter.pipeline}")
                    else:
                        await self._one(letter)
                advance()

    async def replay_all(self, pipeline: str | None) -> None:
        counts = await dead_letter_counts(self.js)
        total = counts.get(pipeline, 0) if pipeline else sum(counts.values())
        if not total:
            return
        with self._progress(total) as advance:
            next_seq = 0
            while True:
                # Replayed letters are gone and refused ones stay behind: read on from the last.
                page = await list_dead_letters(self.js, pipeline, limit=_PAGE, start_seq=next_seq)
                if not page:
                    return
                for letter in page:
                    await self._one(letter)
                    advance()
                next_seq = page[-1].seq + 1

    @contextlib.contextmanager
    def _progress(self, total: int) -> Iterator[Callable[[], None]]:
        """A progress bar on a terminal, for many letters; yields "one more is done"."""
        progress = Progress(
            console=self.console,
            transient=True,
            disable=total < _PROGRESS_FROM or not self.console.is_terminal,
        )
        task = progress.add_task("Replaying dead letters", total=total)
        with progress:
            yield lambda: progress.advance(task)


# ---------------------------------------------------------------- purge


def dlq_purge(settings: Settings, args: argparse.Namespace) -> int:
    pipeline = check_pipeline_id(args.pipeline)
    which = f" of pipeline {pipeline}" if pipeline else ""

    async def count(js: JetStreamContext) -> int:
        counts = await dead_letter_counts(js)
        return counts.get(pipeline, 0) if pipeline else sum(counts.values())

    total = _run(settings, count)
    if not total:
        print(f"No dead letters{which} to purge.")
        return 0
    if not args.yes:
        question = f"Delete {total} dead letter{'s' if total != 1 else ''}{which}? This cannot be undone. [y/N] "
        if not sys.stdin.isatty():
            raise CommandError(
                f"refusing to delete {total} dead letters{which} without confirmation: add --yes",
                2,
            )
        if input(question).strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1

    async def delete(js: JetStreamContext) -> int:
        return await purge(js, pipeline)

    deleted = _run(settings, delete)
    print(f"Deleted {deleted} dead letter{'s' if deleted != 1 else ''}{which}.")
    return 0
