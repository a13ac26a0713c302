"""Building a :class:`~krenalis.workspace.Workspace` from the YAML text, section by section.

Every check names the file and line (see :mod:`krenalis.workspace._fields`). Sections are
read in dependency order: sources, destinations, then pipelines, which refer to both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from krenalis.pipelines.filters import (
    ConsentRule,
    Filter,
    FilterError,
    parse_consents,
    parse_filter,
)
from krenalis.workspace._fields import Reader, WorkspaceError
from krenalis.workspace._yaml import LineDict, LineList, YamlError, load_yaml
from krenalis.workspace.model import (
    DEFAULT_RETRY_WINDOW,
    MAX_SHARDS,
    WAREHOUSE,
    Destination,
    Pipeline,
    Source,
    WarehouseConfig,
    Workspace,
)

__all__ = ["build_workspace"]

_TOP_KEYS = ("warehouse", "sources", "destinations", "pipelines")
_WEBHOOK_KEYS = (
    "type", "url", "secret", "headers", "batch", "timeout", "max_concurrency", "rate_limit",
    "retry_window",
)  # fmt: skip
_FILE_KEYS = ("type", "path", "retry_window")
_PIPELINE_KEYS = (
    "source", "to", "enabled", "shards", "filter", "consents", "batch", "retry_window",
)  # fmt: skip
_MIN_WRITE_KEY = 16
_MAX_CONCURRENCY = 1024
_MAX_BATCH_EVENTS = 100_000
# RFC 9110 token characters for header names; values must not be able to inject lines.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def build_workspace(text: str, filename: str, environ: Mapping[str, str]) -> Workspace:
    try:
        doc = load_yaml(text, environ)
    except YamlError as exc:
        raise WorkspaceError(filename, exc.line, exc.reason) from None
    return _Builder(Reader(filename)).workspace(doc)


class _Builder:
    def __init__(self, reader: Reader) -> None:
        self.r = reader

    def workspace(self, doc: Any) -> Workspace:
        if doc is None:
            self.r.fail(1, "the workspace file is empty: it needs a sources section at least")
        root = self.r.mapping(doc, 1, "the workspace file")
        self.r.check_keys(root, "the workspace file", _TOP_KEYS)
        warehouse = self.warehouse(root)
        sources = self.sources(self.section(root, "sources"))
        destinations = self.destinations(self.section(root, "destinations"))
        pipelines = self.pipelines(self.section(root, "pipelines"), sources, destinations)
        return Workspace(warehouse, sources, destinations, pipelines)

    def section(self, root: LineDict, name: str) -> LineDict:
        return self.r.mapping(root.get(name), root.line_of(name), f'"{name}"')

    def warehouse(self, root: LineDict) -> WarehouseConfig | None:
        if root.get("warehouse") is None:
            return None
        body = self.section(root, "warehouse")
        self.r.check_keys(body, "warehouse", ("dsn",), ("dsn",), root.line_of("warehouse"))
        dsn = self.r.string(body, "dsn", "warehouse", secret=True)
        scheme = dsn.partition("://")[0] if "://" in dsn else None
        if scheme is not None and scheme not in ("postgresql", "postgres"):
            self.r.fail(
                body.line_of("dsn"),
                f'warehouse: dsn must be a postgresql:// URL, not "{scheme}://"',
            )
        return WarehouseConfig(dsn)

    # --- sources --------------------------------------------------------------------------------

    def sources(self, section: LineDict) -> dict[str, Source]:
        sources: dict[str, Source] = {}
        owner_of_key: dict[str, str] = {}
        for source_id, body in section.items():
            line = section.line_of(source_id)
            source = self.source(self.r.ident(source_id, line, "source"), body, line)
            if source.write_key in owner_of_key:
                self.r.fail(
                    line,
                    f'sources "{owner_of_key[source.write_key]}" and "{source.id}" have the '
                    "same write key: each source needs its own",
                )
            owner_of_key[source.write_key] = source.id
            sources[source.id] = source
        return sources

    def source(self, source_id: str, body: Any, line: int) -> Source:
        what = f'source "{source_id}"'
        body = self.r.mapping(body, line, what)
        self.r.check_keys(body, what, ("write_key",), ("write_key",), line)
        key = self.r.string(body, "write_key", what, secret=True)
        if len(key) < _MIN_WRITE_KEY or not key.isprintable() or any(c.isspace() for c in key):
            self.r.fail(
                body.line_of("write_key"),
                f"{what}: write_key must be at least {_MIN_WRITE_KEY} characters, without "
                "spaces (krenalis generates 32)",
            )
        return Source(source_id, key)

    # --- destinations ---------------------------------------------------------------------------

    def destinations(self, section: LineDict) -> dict[str, Destination]:
        destinations: dict[str, Destination] = {}
        for dest_id, body in section.items():
            line = section.line_of(dest_id)
            self.r.ident(dest_id, line, "destination")
            if dest_id == WAREHOUSE:
                self.r.fail(line, 'destination id "warehouse" is reserved for the warehouse')
            destinations[dest_id] = self.destination(dest_id, body, line)
        return destinations

    def destination(self, dest_id: str, body: Any, line: int) -> Destination:
        what = f'destination "{dest_id}"'
        body = self.r.mapping(body, line, what)
        kind = body.get("type")
        if kind not in ("webhook", "file"):
            reason = f'unknown type "{kind}"' if "type" in body else 'missing key "type"'
            at = body.line_of("type") if "type" in body else line
            self.r.fail(at, f"{what}: {reason} (known types: file, webhook)")
        retry_window = DEFAULT_RETRY_WINDOW
        if kind == "file":
            self.r.check_keys(body, what, _FILE_KEYS, ("path",), line)
            if "retry_window" in body:
                retry_window = self.r.duration(body, "retry_window", what)
            path = self.r.string(body, "path", what)
            return Destination(dest_id, "file", path=path, retry_window=retry_window)
        self.r.check_keys(body, what, _WEBHOOK_KEYS, ("url",), line)
        return self.webhook(dest_id, body, what)

    def webhook(self, dest_id: str, body: LineDict, what: str) -> Destination:
        r = self.r
        settings: dict[str, Any] = {}
        if "secret" in body:
            settings["secret"] = r.string(body, "secret", what, secret=True)
        if "headers" in body:
            settings["headers"] = self.headers(body, what)
        settings["batch"] = r.boolean(body, "batch", what, False)
        readers = {
            "timeout": r.duration,
            "retry_window": r.duration,
            "rate_limit": r.positive_number,
            "max_concurrency": lambda m, k, w: r.integer(m, k, w, (1, _MAX_CONCURRENCY)),
        }
        for key, read in readers.items():
            if key in body:
                settings[key] = read(body, key, what)
        return Destination(dest_id, "webhook", url=r.url(body, "url", what), **settings)

    def headers(self, body: LineDict, what: str) -> dict[str, str]:
        headers = self.r.mapping(body["headers"], body.line_of("headers"), f"{what}: headers")
        for name in headers:
            if not _HEADER_NAME.fullmatch(name):
                self.r.fail(headers.line_of(name), f'{what}: invalid header name "{name}"')
            value = self.r.string(headers, name, f"{what}: headers", secret=True)
            if "\r" in value or "\n" in value:
                self.r.fail(headers.line_of(name), f'{what}: header "{name}" has a line break')
        return dict(headers)

    # --- pipelines ------------------------------------------------------------------------------

    def pipelines(
        self, section: LineDict, sources: dict[str, Source], dests: dict[str, Destination]
    ) -> dict[str, Pipeline]:
        pipelines: dict[str, Pipeline] = {}
        for pipeline_id, body in section.items():
            line = section.line_of(pipeline_id)
            self.r.ident(pipeline_id, line, "pipeline")
            pipelines[pipeline_id] = self.pipeline(pipeline_id, body, line, sources, dests)
        return pipelines

    def pipeline(
        self,
        pipeline_id: str,
        body: Any,
        line: int,
        sources: dict[str, Source],
        dests: dict[str, Destination],
    ) -> Pipeline:
        r, what = self.r, f'pipeline "{pipeline_id}"'
        body = r.mapping(body, line, what)
        r.check_keys(body, what, _PIPELINE_KEYS, ("source", "to"), line)
        source, to = self.references(body, what, sources, dests)
        retry_window = dests[to].retry_window if to in dests else DEFAULT_RETRY_WINDOW
        if "retry_window" in body:
            retry_window = r.duration(body, "retry_window", what)
        max_events, max_wait = self.batch(body, what)
        return Pipeline(
            id=pipeline_id,
            source=source,
            to=to,
            enabled=r.boolean(body, "enabled", what, True),
            shards=r.integer(body, "shards", what, (1, MAX_SHARDS)) if "shards" in body else 1,
            filter=self.filter(body, what),
            consents=self.consents(body, what),
            batch_max_events=max_events,
            batch_max_wait=max_wait,
            retry_window=retry_window,
        )

    def references(
        self, body: LineDict, what: str, sources: dict[str, Source], dests: dict[str, Destination]
    ) -> tuple[str, str]:
        source, to = self.r.string(body, "source", what), self.r.string(body, "to", what)
        if source not in sources:
            known = ", ".join(sources) or "none"
            self.r.fail(
                body.line_of("source"),
                f'{what}: unknown source "{source}" (known sources: {known})',
            )
        if to != WAREHOUSE and to not in dests:
            known = ", ".join([WAREHOUSE, *dests])
            self.r.fail(body.line_of("to"), f'{what}: unknown destination "{to}" (known: {known})')
        return source, to

    def batch(self, body: LineDict, what: str) -> tuple[int | None, float | None]:
        if body.get("batch") is None:
            return None, None
        where = f"{what}: batch"
        batch = self.r.mapping(body["batch"], body.line_of("batch"), where)
        self.r.check_keys(batch, where, ("max_events", "max_wait"))
        max_events = max_wait = None
        if "max_events" in batch:
            max_events = self.r.integer(batch, "max_events", where, (1, _MAX_BATCH_EVENTS))
        if "max_wait" in batch:
            max_wait = self.r.duration(batch, "max_wait", where)
        return max_events, max_wait

    def filter(self, body: LineDict, what: str) -> Filter | None:
        if body.get("filter") is None:
            return None
        try:
            return parse_filter(body["filter"], f"{what}: filter")
        except FilterError as exc:
            self.r.fail(_line_of(exc, body.line_of("filter")), str(exc))

    def consents(self, body: LineDict, what: str) -> ConsentRule | None:
        if body.get("consents") is None:
            return None
        try:
            return parse_consents(body["consents"], f"{what}: consents")
        except FilterError as exc:
            self.r.fail(_line_of(exc, body.line_of("consents")), str(exc))


def _line_of(exc: FilterError, default: int) -> int:
    """The line of the part of a filter at fault: its key's if known, else its own."""
    if isinstance(exc.obj, LineDict):
        return exc.obj.line_of(exc.key) if exc.key else exc.obj.line
    return exc.obj.line if isinstance(exc.obj, LineList) else default
