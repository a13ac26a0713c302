"""`krenalis transform test PIPELINE`: a pipeline's steps on an event or on its dead letters,
step by step, before they go live.

``--event FILE.json`` runs one event (or a JSON list of events) through the steps and shows,
for each step, what it changed as a coloured diff. ``--from-dlq`` does the same for the
pipeline's dead letters (from EVENTS_DLQ, or from FILE as `krenalis dlq show SEQ --json`
prints them) and says which would now pass. With ``--workspace FILE`` the pipeline comes from
that file and nothing needs NATS (except reading EVENTS_DLQ); without it, from the workspace
stored in NATS.

The steps run in this process, as the worker's transform process runs them (same code, same
time limits), from the same code directory: the workspace file's directory, or
KRENALIS_TRANSFORMS_DIR / the working directory for the stored workspace.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from krenalis.config import Settings
from krenalis.errors import CommandError, InvalidEvent
from krenalis.events import decode_event, encode_event
from krenalis.ops._common import check_pipeline_id, connected, nats_urls
from krenalis.stream.deadletters import list_dead_letters
from krenalis.transforms.chain import Chain, LoadFailed, Traced, build_steps, time_limits
from krenalis.workspace.load import load_workspace, parse_workspace
from krenalis.workspace.model import Pipeline, Workspace
from krenalis.workspace.store import WorkspaceStore

__all__ = ["transform_test"]


@dataclass(frozen=True)
class _Case:
    """One event to run: from the file, or a dead letter (with its seq and reason)."""

    title: str
    event: Any
    stored_at: float = 0.0


def transform_test(settings: Settings, args: argparse.Namespace) -> int:
    if (args.event is None) == (args.from_dlq is None):
        raise CommandError("give either --event FILE.json or --from-dlq [FILE]", 2)
    if args.limit < 1:
        raise CommandError("--limit must be at least 1", 2)
    pipeline_id = check_pipeline_id(args.pipeline)
    workspace, origin, base = _workspace(settings)
    pipeline = _pipeline(workspace, pipeline_id, origin)
    console = Console(highlight=False)
    if not pipeline.transform:
        console.print(f'Pipeline "{escape(pipeline.id)}" has no transform steps: its events go '
                      "to the sink as they are.")  # fmt: skip
        return 0
    chain = _chain(pipeline, base, origin)
    if args.event is not None:
        cases = _events_of(Path(args.event))
    else:
        cases = _letters(settings, pipeline.id, args.from_dlq, args.limit)
    passed = sum(_show(console, chain, case) for case in cases)
    if args.from_dlq is not None:
        console.print(f"{passed} of {len(cases)} dead letters would now pass the steps"
                      + (" (`krenalis dlq replay` sends them again)." if passed else "."))  # fmt: skip
    return 0


def _workspace(settings: Settings) -> tuple[Workspace, str, Path]:
    """The workspace, what to call it in messages, and where its steps' file paths start."""
    if settings.workspace_named:
        path = settings.workspace_path
        return load_workspace(path), str(path), path.resolve().parent
    return asyncio.run(_stored(settings)), "the stored workspace", settings.code_dir


async def _stored(settings: Settings) -> Workspace:
    async with connected(settings, nats_urls(settings)) as conn:
        revision = await (await WorkspaceStore(conn.js, settings).open()).current()
    if revision is None:
        raise CommandError(
            "no workspace is stored in NATS yet: give --workspace FILE, or apply one", 1
        )
    return parse_workspace(revision.text, f"workspace revision {revision.number}")


def _pipeline(workspace: Workspace, pipeline_id: str, origin: str) -> Pipeline:
    pipeline = workspace.pipelines.get(pipeline_id)
    if pipeline is None:
        known = ", ".join(workspace.pipelines) or "none"
        raise CommandError(f'{origin} has no pipeline "{pipeline_id}" (pipelines: {known})', 2)
    return pipeline


def _chain(pipeline: Pipeline, base: Path, origin: str) -> Chain:
    sys.path.insert(0, str(base))  # as in the transform process: modules import each other
    try:
        built, _ = build_steps(pipeline.transform, base)
    except LoadFailed as exc:
        step = pipeline.transform[exc.index]
        raise CommandError(
            f'{origin}:{step.line}: pipeline "{pipeline.id}": transform[{step.index}] '
            f"({step.spec.label}): {exc.reason}",
            1,
        ) from None
    return Chain(built, pipeline.source, pipeline.id)


def _events_of(path: Path) -> list[_Case]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    except ValueError as exc:
        raise CommandError(f"{path} is not JSON: {exc}", 2) from None
    events = data if isinstance(data, list) else [data]
    return [_Case(f"Event {i + 1} of {path.name}", e) for i, e in enumerate(events)]


def _letters(settings: Settings, pipeline: str, source: str, limit: int) -> list[_Case]:
    """The pipeline's first `limit` dead letters: from `source` if it names a file, else
    from EVENTS_DLQ."""
    if source:
        return _letters_of(Path(source), limit)

    async def fetch() -> list[_Case]:
        async with connected(settings, nats_urls(settings)) as conn:
            letters = await list_dead_letters(conn.js, pipeline, limit=limit)
        return [_letter_case(x.seq, x.reason, _json(x.data), x.first_attempt) for x in letters]

    return asyncio.run(fetch())


def _letters_of(path: Path, limit: int) -> list[_Case]:
    """Dead letters as `krenalis dlq show SEQ --json` prints them: one, a list, or one per
    line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    try:
        data = json.loads(text)
        found = data if isinstance(data, list) else [data]
    except ValueError:
        try:
            found = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise CommandError(f"{path} is not JSON: {exc}", 2) from None
    if not all(isinstance(x, dict) and "event" in x for x in found):
        raise CommandError(f"{path}: expected dead letters as `krenalis dlq show SEQ --json` "
                           'prints them (objects with "event")', 2)  # fmt: skip
    return [_letter_case(x.get("seq"), x.get("reason", ""), x["event"], x.get("first_attempt", ""))
            for x in found[:limit]]  # fmt: skip


def _letter_case(seq: Any, reason: str, event: Any, first_attempt: str) -> _Case:
    try:
        stored_at = datetime.fromisoformat(first_attempt).timestamp()
    except (TypeError, ValueError):
        stored_at = 0.0
    return _Case(f"Dead letter {seq} (it failed: {reason})", event, stored_at)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _show(console: Console, chain: Chain, case: _Case) -> bool:
    """Print each step of one event; whether it passes the steps (delivered, not failed)."""
    console.rule(Text(case.title), align="left")
    if not isinstance(case.event, dict):
        console.print("[red]not an event (a JSON object): the steps cannot run on it[/red]")
        return False
    with time_limits():
        traced = chain.trace(case.event, case.stored_at)
    for step in traced:
        _print_step(console, step)
    verdict, passed = _verdict(case.event, traced)
    console.print(verdict)
    return passed


def _print_step(console: Console, traced: Traced) -> None:
    took = f"{traced.seconds * 1000:.2f} ms"
    title = f"Step {traced.step.index + 1}: {traced.step.spec.label} ({took})"
    console.print(Text(title, style="bold"), soft_wrap=True)
    if traced.error is not None:
        console.print(Text(f"  failed: {traced.error}", style="red"), soft_wrap=True)
        return
    if not traced.after:
        console.print(Text("  dropped: the event goes no further", style="yellow"))
        return
    diff = _diff(traced.before, traced.after)
    console.print(diff if diff.plain else Text("  no change", style="dim"), soft_wrap=True)


def _diff(before: list[dict], after: list[dict]) -> Text:
    """A unified diff of the events' JSON, red for removed lines, green for added ones."""
    old = _lines(before[0] if len(before) == 1 else before)
    new = _lines(after[0] if len(after) == 1 else after)
    text = Text()
    for line in list(difflib.unified_diff(old, new, lineterm="", n=2))[2:]:
        style = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1], "dim")
        text.append(f"  {line}\n", style=style)
    return text


def _lines(value: Any) -> list[str]:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str).splitlines()


def _verdict(event: dict, traced: list[Traced]) -> tuple[str, bool]:
    last = traced[-1]
    if last.error is not None:
        return "[red]Fails: the event goes to the dead letters.[/red]", False
    if not last.after:
        return "[yellow]Dropped: nothing is delivered (counted as filtered).[/yellow]", True
    problem = _invalid_output(event, last.after)
    if problem:
        return f"[red]Fails: the steps made an invalid event: {escape(problem)}[/red]", False
    count = len(last.after)
    return f"[green]Passes: delivered as {count} event{'s' if count != 1 else ''}.[/green]", True


def _invalid_output(event: dict, outputs: list[dict]) -> str | None:
    """What the worker would refuse in the steps' output; only checked for an event in the
    stream's form (an SDK's event, without receivedAt and the rest, is not one)."""
    try:
        decode_event(encode_event(event))
    except (InvalidEvent, TypeError):
        return None
    for output in outputs:
        try:
            decode_event(encode_event(output))
        except InvalidEvent as exc:
            return str(exc)
        except TypeError as exc:
            return f"it cannot be written as JSON: {exc}"
    return None
