"""`krenalis tail`'s lines: what collectors and workers send, one line per event or outcome.

A line is a dict (printed as NDJSON with `--json`) with ``time`` and ``kind``:

- ``accepted`` (``source``, ``path``, ``pipelines`` that took the event, ``filtered``: those
  whose filter or consent rule turned it away, ``event``);
- ``rejected`` (``source``, ``path``, ``index`` in the request, ``reason``, ``event`` when it
  could be shown);
- ``refused``: a whole request (``source`` if known, ``path``, ``status``, ``code``,
  ``reason``);
- an outcome, from a pipeline's worker: ``delivered``, ``retried`` (``reason``,
  ``attempts``, ``next_in`` seconds), ``dead-lettered`` (``reason``) or ``filtered`` (by
  transform ``step``), with ``pipeline``, ``shard``, ``messageId``, ``type``, ``event``.

What the lines hold comes from clients and destinations: :func:`render` prints it as text,
never as rich markup, with control characters escaped.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from krenalis.logs import one_line

__all__ = ["lines", "render"]

_STYLES = {
    "accepted": ("✓", "green"),
    "rejected": ("✗", "red"),
    "refused": ("⨯", "bold red"),
    "delivered": ("→", "green"),
    "retried": ("↻", "yellow"),
    "dead-lettered": ("☠", "bold red"),
    "filtered": ("∅", "blue"),
}


def lines(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines of one message from a collector or a worker."""
    kind = record.get("kind")
    if kind == "request":
        head = {"time": record.get("time"), "source": record.get("source"),
                "path": record.get("path")}  # fmt: skip
        found = [{**head, "kind": "accepted", **a} for a in record.get("accepted") or ()]
        return found + [{**head, "kind": "rejected", **r} for r in record.get("rejected") or ()]
    if kind == "refused":
        return [record]
    if kind == "outcomes":
        head = {k: record.get(k) for k in ("time", "pipeline", "source", "shard")}
        return [
            {**head, "kind": o.get("outcome"), **{k: v for k, v in o.items() if k != "outcome"}}
            for o in record.get("outcomes") or ()
        ]
    return []


def render(line: dict[str, Any]) -> Text:
    """One coloured line for people."""
    kind = str(line.get("kind"))
    mark, style = _STYLES.get(kind, ("?", ""))
    when = str(line.get("time") or "")[11:23]
    where = line.get("pipeline") or line.get("source") or "?"
    text = Text.assemble((f"{when} ", "dim"), (f"{_clip(where, 18):<18} ", "bold"),
                         (f"{mark} {kind:<13} ", style))  # fmt: skip
    text.append(_detail(kind, line))
    return text


def _detail(kind: str, line: dict[str, Any]) -> str:
    if kind == "accepted":
        taken = ", ".join(line.get("pipelines") or ()) or "no pipeline (archived only)"
        filtered = line.get("filtered") or ()
        rest = f" (filtered out by {', '.join(filtered)})" if filtered else ""
        return f"{_about(line.get('event'))} → {_shown(taken)}{_shown(rest)}"
    if kind == "rejected":
        return f"event #{line.get('index')}: {_shown(line.get('reason'))}"
    if kind == "refused":
        return f"{line.get('status')} {line.get('path')}: {_shown(line.get('reason'))}"
    about = _about(line)
    if kind == "retried":
        return (f"{about}: {_shown(line.get('reason'))} (attempt {line.get('attempts')}, "
                f"again in {line.get('next_in')}s)")  # fmt: skip
    if kind == "dead-lettered":
        return f"{about}: {_shown(line.get('reason'))}"
    if kind == "filtered":
        return f"{about} by step {_shown(line.get('step'))}"
    return about


def _about(event: Any) -> str:
    """An event in a few words: type, name, user, messageId."""
    if not isinstance(event, dict):
        return "(not shown)"
    parts = [str(event.get("type") or "?")]
    if event.get("event"):
        parts.append(f'"{event["event"]}"')
    user = event.get("userId") or event.get("anonymousId")
    if user:
        parts.append(f"user {user}")
    parts.append(f"id {event.get('messageId') or '-'}")
    return _shown(" ".join(parts))


def _shown(value: Any) -> str:
    return one_line(str(value))


def _clip(value: Any, width: int) -> str:
    text = _shown(value)
    return text if len(text) <= width else text[: width - 1] + "…"
