"""`krenalis send`: test events of every type to a running collector, to see the path work.

The events go in batches to /v1/batch with the write key as HTTP Basic user name, exactly as a
Segment SDK sends them. The collector answers once every copy is stored in EVENTS.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections import Counter
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from krenalis import __version__
from krenalis.config import Settings
from krenalis.errors import CommandError, WorkspaceError
from krenalis.events import EVENT_TYPES
from krenalis.workspace.load import load_workspace

__all__ = ["send", "sample_events"]

#: Events per request: well under the collector's 500 KB body limit.
_BATCH = 500
_TIMEOUT = 30.0


def send(settings: Settings, args: argparse.Namespace) -> int:
    if args.count < 1:
        raise CommandError("--count must be at least 1", 2)
    url = (args.url or _default_url(settings)).rstrip("/")
    key = args.write_key or _workspace_key(settings)
    events = sample_events(args.count)
    sent, accepted, stored = _post_all(url, key, events)
    _report(sent, accepted, stored)
    return 0 if sum(accepted.values()) == len(events) else 1


def _default_url(settings: Settings) -> str:
    host = settings.http_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # a wildcard listen address is reached on loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def _workspace_key(settings: Settings) -> str:
    try:
        workspace = load_workspace(settings.workspace_path)
    except WorkspaceError as exc:
        raise CommandError(
            f"no write key: pass --write-key KEY, or fix the workspace file ({exc})", 2
        ) from None
    source = next(iter(workspace.sources.values()), None)
    if source is None:
        raise CommandError(
            f"no write key: {settings.workspace_path} has no source; pass --write-key KEY", 2
        )
    print(
        f"Sending as source {source.id!r} (write key from {settings.workspace_path}).",
        file=sys.stderr,
    )
    return source.write_key


def sample_events(count: int) -> list[dict[str, Any]]:
    """`count` events of each type, for one test user, each with a fresh messageId."""
    run = uuid.uuid4().hex[:12]
    user, anonymous = f"krenalis-test-user-{run}", f"krenalis-test-anonymous-{run}"
    context = {"library": {"name": "krenalis-send", "version": __version__}}
    by_type: dict[str, dict[str, Any]] = {
        "track": {"event": "Krenalis Test Event", "properties": {"sent_by": "krenalis send"}},
        "identify": {"traits": {"email": "test@example.com", "name": "Krenalis Test"}},
        "page": {"name": "Krenalis Test Page", "properties": {"path": "/krenalis-test"}},
        "screen": {"name": "Krenalis Test Screen"},
        "group": {"groupId": f"krenalis-test-group-{run}", "traits": {"name": "Test Group"}},
        "alias": {"previousId": anonymous},
    }
    events = []
    for index in range(count):
        for event_type in EVENT_TYPES:
            event = {"type": event_type, "messageId": f"krenalis-send-{uuid.uuid4()}",
                     "userId": user, "context": context, **by_type[event_type]}  # fmt: skip
            if event_type != "alias":
                event["anonymousId"] = anonymous
            if "properties" in event:
                event["properties"] = {**event["properties"], "index": index}
            events.append(event)
    return events


def _post_all(
    url: str, key: str, events: list[dict[str, Any]]
) -> tuple[Counter[str], Counter[str], int]:
    sent: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    stored = 0
    batches = [events[i : i + _BATCH] for i in range(0, len(events), _BATCH)]
    console = Console(stderr=True)
    progress = Progress(console=console, transient=True, disable=len(batches) < 3)
    task = progress.add_task("Sending", total=len(events))
    with httpx.Client(auth=(key, ""), timeout=_TIMEOUT) as client, progress:
        for batch in batches:
            answer = _post(client, url, batch)
            rejected = {r["index"] for r in answer.get("rejected", [])}
            for index, event in enumerate(batch):
                sent[event["type"]] += 1
                if index not in rejected:
                    accepted[event["type"]] += 1
            for r in answer.get("rejected", []):
                print(
                    f"krenalis: rejected {batch[r['index']]['type']} event: {r['reason']}",
                    file=sys.stderr,
                )
            stored += answer.get("stored", 0)
            progress.advance(task, len(batch))
    return sent, accepted, stored


def _post(client: httpx.Client, url: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        response = client.post(f"{url}/v1/batch", json={"batch": batch})
    except httpx.TransportError as exc:
        raise CommandError(
            f"cannot reach the collector at {url} ({exc.__class__.__name__}: {exc}); is "
            "`krenalis serve` (or `krenalis collector`) running? Point --url at it"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200:
        return body
    message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else None
    message = message or body.get("message") or response.text[:200]
    if response.status_code == 401:
        raise CommandError(f"the collector refused the write key: {message}")
    raise CommandError(f"the collector answered {response.status_code}: {message}")


def _report(sent: Counter[str], accepted: Counter[str], stored: int) -> None:
    console = Console()
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1))
    table.add_column("Type")
    table.add_column("Sent", justify="right")
    table.add_column("Accepted", justify="right")
    for event_type in EVENT_TYPES:
        table.add_row(event_type, str(sent[event_type]), str(accepted[event_type]))
    console.print(table)
    total = sum(accepted.values())
    console.print(
        f"Accepted {total} of {sum(sent.values())} events; the collector stored {stored} "
        "copies in EVENTS (one per pipeline that takes an event)."
    )
    if total and not stored:
        console.print(
            "No pipeline took these events: is a pipeline of this source enabled in the "
            "workspace file, and do its filters let test events through?"
        )
