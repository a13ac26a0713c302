"""`krenalis workspace apply | show | history | diff | rollback`: the workspace in NATS.

The workspace file stays the way people write it; these commands put it into the deployment's
NATS, where every process follows it (see :mod:`krenalis.workspace.store`). `apply` checks the
file (file:line errors), prints what changes, refuses to drop pending events unless told how
(--drain, --discard), and stores the revision with compare-and-set.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from krenalis.config import Settings
from krenalis.errors import CommandError, WorkspaceChangeError
from krenalis.ops._common import connected, nats_urls
from krenalis.runtime.follow import read_file
from krenalis.workspace.apply import Choice, Plan, apply_plan, plan_change
from krenalis.workspace.diff import diff_texts, render
from krenalis.workspace.store import Revision, WorkspaceStore

__all__ = ["apply", "diff", "history", "rollback", "show"]


def apply(settings: Settings, args: argparse.Namespace) -> int:
    text = read_file(Path(args.file))
    return _run(settings, lambda js, store: _apply(js, settings, store, text, args.file, args))


def rollback(settings: Settings, args: argparse.Namespace) -> int:
    async def work(js: Any, store: WorkspaceStore) -> int:
        old = await store.get(args.revision)
        if old is None:
            raise CommandError(
                f"revision {args.revision} is not in the workspace's history "
                "(`krenalis workspace history` lists those kept)",
                2,
            )
        origin = f"rollback to revision {args.revision}"
        return await _apply(js, settings, store, old.text, origin, args)

    return _run(settings, work)


async def _apply(
    js: Any, settings: Settings, store: WorkspaceStore, text: str, origin: str, args: Any
) -> int:
    plan = await plan_change(js, store, text, origin, choice=_choice(args))
    _print_plan(plan)
    if plan.refused:
        raise WorkspaceChangeError("; ".join(plan.refused))
    if plan.unchanged:
        print("The workspace is already this one: nothing stored.")
        return 0
    if args.dry_run:
        print("Dry run: nothing stored.")
        return 0
    stored = await apply_plan(js, settings, store, plan)
    print(f"Stored as revision {stored.number}; every process follows it within a few seconds.")
    return 0


def _choice(args: Any) -> Choice:
    return Choice.DRAIN if args.drain else Choice.DISCARD if args.discard else Choice.REFUSE


def _print_plan(plan: Plan) -> None:
    current = f"revision {plan.current.number}" if plan.current else "no workspace yet"
    print(f"Changes against the stored workspace ({current}):")
    print(_indent(render(plan.changes)))
    for retirement, events in plan.retiring:
        shards = ", ".join(map(str, retirement.shards))
        action = "discarded to EVENTS_DLQ" if retirement.mode == "discard" else "delivered"
        note = f"{events} events to be {action} first" if events else "nothing pending"
        print(f'  pipeline "{retirement.pipeline}" shards {shards} retire: {note}')
    pending = {b.id for b in plan.current.backfills} if plan.current else set()
    for backfill in plan.revision.backfills:
        if backfill.id not in pending and not plan.unchanged:
            since = datetime.fromtimestamp(backfill.since, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            print(f'  pipeline "{backfill.pipeline}" is backfilled from its source\'s archive '
                  f"since {since}, once (replay {backfill.id})")  # fmt: skip
    if plan.unset:
        names = ", ".join(sorted(plan.unset))
        print(
            f"Not set here, so not checked: {names}. The processes that use them expand them "
            "with their own environment."
        )


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def show(settings: Settings, args: argparse.Namespace) -> int:
    async def work(js: Any, store: WorkspaceStore) -> int:
        revision = await (store.get(args.revision) if args.revision else store.current())
        if revision is None:
            raise CommandError(_missing(args.revision), 1)
        print(f"# revision {revision.number}, {_applied(revision)}", file=sys.stderr)
        sys.stdout.write(revision.text if revision.text.endswith("\n") else revision.text + "\n")
        return 0

    return _run(settings, work)


def _missing(number: int | None) -> str:
    if number:
        return f"revision {number} is not in the workspace's history"
    return "no workspace is stored yet: `krenalis workspace apply FILE` stores one"


def _applied(revision: Revision) -> str:
    return f"applied {revision.applied_at} by {revision.applied_by} from {revision.origin}"


def history(settings: Settings, args: argparse.Namespace) -> int:
    async def work(js: Any, store: WorkspaceStore) -> int:
        previous: str | None = None
        for revision in await store.history():
            print(f"revision {revision.number}: {_applied(revision)}")
            print(_indent(render(diff_texts(previous, revision.text))))
            for retirement in revision.retired:
                shards = ", ".join(map(str, retirement.shards))
                print(f'  retiring: pipeline "{retirement.pipeline}" shards {shards} '
                      f"({retirement.mode})")  # fmt: skip
            previous = revision.text
        return 0

    return _run(settings, work)


def diff(settings: Settings, args: argparse.Namespace) -> int:
    text = read_file(Path(args.file))

    async def work(js: Any, store: WorkspaceStore) -> int:
        current = await store.current()
        print(render(diff_texts(current.text if current else None, text)))
        return 0

    return _run(settings, work)


def _run(settings: Settings, work: Any) -> int:
    urls = nats_urls(settings)

    async def main() -> int:
        async with connected(settings, urls) as conn:
            store = await WorkspaceStore(conn.js, settings).open()
            return await work(conn.js, store)

    return asyncio.run(main())
