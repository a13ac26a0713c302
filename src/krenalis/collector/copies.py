"""A request's copies: one per pipeline that takes each event, and one for its source's archive.

The pipelines' copies go to EVENTS and the archive's to EVENTS_ARCHIVE, as two parts of one
:meth:`krenalis.stream.publisher.Publisher.publish` (an atomic batch holds one stream's
messages): each group of requests sends both streams their batch at the same time, and the
server stores into each stream in series, so the two take them in parallel (bench/MEASURED.md,
"The archive in a stream of its own").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from krenalis.events import encode_event
from krenalis.pipelines.routing import Router
from krenalis.stream.archive import archive_target
from krenalis.stream.layout import subject
from krenalis.stream.publisher import OutMessage, header_safe
from krenalis.workspace.model import Source

__all__ = ["Copies", "make_copies"]


@dataclass
class Copies:
    """What a request stores."""

    #: The pipelines' copies, for EVENTS.
    messages: list[OutMessage] = field(default_factory=list)
    #: The archive's, for EVENTS_ARCHIVE.
    archived: list[OutMessage] = field(default_factory=list)
    #: Pipeline id -> its copies (the archive's are not counted).
    per_pipeline: dict[str, int] = field(default_factory=dict)
    #: For a tail: each event's stream bytes and the pipelines that take it; None when
    #: nobody tails the source.
    routed: list[tuple[bytes, list[str]]] | None = None

    @property
    def pipeline_copies(self) -> int:
        return sum(self.per_pipeline.values())


def make_copies(router: Router, source: Source, events: list[dict], for_tail: bool) -> Copies:
    """Route each event; an event no pipeline takes still gets its archive copy (a pipeline
    created later may backfill it) unless its source keeps no archive."""
    copies = Copies(routed=[] if for_tail else None)
    messages, archived = copies.messages, copies.archived
    per_pipeline, routed = copies.per_pipeline, copies.routed
    archive = archive_target(source.id, source.archive) if source.archive else None
    for event in events:
        targets = router.route(source.id, event)
        if not targets and archive is None and routed is None:
            continue
        data = encode_event(event)
        # The id is made header-safe once per event (it was a tenth of the archive's cost).
        safe = header_safe(event["messageId"])
        for pipeline, shard in targets:
            messages.append(OutMessage(subject(pipeline, shard), data, f"{safe}/{pipeline}"))
            per_pipeline[pipeline] = per_pipeline.get(pipeline, 0) + 1
        if archive is not None:
            archive_subject, suffix, ttl = archive
            archived.append(OutMessage(archive_subject, data, safe + suffix, ttl))
        if routed is not None:
            routed.append((data, [pipeline for pipeline, _ in targets]))
    return copies
