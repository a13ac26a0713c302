"""Reading the workspace file: YAML with lines, each entry checked against its declaration.

The file's top level, the warehouse, and each source, destination and pipeline are converted on
their own with msgspec, so that an error names its entry and points at the line of the key at
fault (see :mod:`krenalis.workspace._messages`). A destination is a tagged union on ``type`` of
the options classes in :data:`krenalis.sinks.registry.SINKS`, read at every parse. What links
entries (a pipeline's source and destination, distinct write keys, ids) is checked afterwards,
then filters and consent rules.

``${VAR}`` in string values is replaced by the environment variable (``$$`` is a literal
``$``), so secrets can stay out of the file; every mistake is a :class:`WorkspaceError`.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec

from krenalis.errors import FilterError, WorkspaceError
from krenalis.pipelines.filters import parse_consents, parse_filter
from krenalis.sinks.base import SinkOptions
from krenalis.sinks.registry import SINKS
from krenalis.transforms.spec import STEPS, Step
from krenalis.workspace._messages import Entry, explain
from krenalis.workspace._yaml import LineDict, LineList, YamlError, load_yaml
from krenalis.workspace.model import (
    DEFAULT_ARCHIVE,
    DEFAULT_RETRY_WINDOW,
    ID_PATTERN,
    MAX_SHARDS,
    WAREHOUSE,
    Destination,
    Pipeline,
    Source,
    WarehouseConfig,
    Workspace,
)
from krenalis.workspace.values import (
    Dsn,
    Duration,
    NonEmptyStr,
    Origin,
    Retention,
    WriteKey,
    dec_hook,
)

__all__ = ["load_workspace", "parse_workspace"]

_MAX_BATCH_EVENTS = 100_000


class _File(msgspec.Struct, forbid_unknown_fields=True):
    # Sections stay as read (with their lines); each of their entries is converted on its own.
    warehouse: dict[str, Any] | None = None
    sources: dict[str, Any] | None = None
    destinations: dict[str, Any] | None = None
    pipelines: dict[str, Any] | None = None


class _Warehouse(msgspec.Struct, forbid_unknown_fields=True):
    dsn: Dsn


class _Source(msgspec.Struct, forbid_unknown_fields=True):
    write_key: WriteKey
    allowed_origins: list[Origin] | None = None
    archive: Retention = Retention(DEFAULT_ARCHIVE)


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    max_events: Annotated[int, msgspec.Meta(ge=1, le=_MAX_BATCH_EVENTS)] | None = None
    max_wait: Duration | None = None


class _Pipeline(msgspec.Struct, forbid_unknown_fields=True):
    source: NonEmptyStr
    to: NonEmptyStr
    enabled: bool = True
    shards: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)] = 1
    filter: Any = None  # parse_filter and parse_consents check these, with their own lines
    consents: Any = None
    batch: _Batch | None = None
    retry_window: Duration | None = None
    transform: Any = None  # each step is checked on its own (see steps()), with its line
    backfill: Duration | None = None


def parse_workspace(
    text: str,
    filename: str = "<string>",
    *,
    environ: Mapping[str, str] | None = None,
    unset: set[str] | None = None,
) -> Workspace:
    """Build a workspace from YAML text; ``environ`` (default ``os.environ``) serves ``${VAR}``.

    With ``unset``, variables missing from ``environ`` are collected there instead of being an
    error, and the string values that use them are taken unchecked: for checking a file where
    the secrets are not at hand (the workspace built so is never used to deliver).
    """
    try:
        doc = load_yaml(text, os.environ if environ is None else environ, unset)
    except YamlError as exc:
        raise WorkspaceError(filename, exc.line, exc.reason) from None
    return _Loader(filename).workspace(doc)


def load_workspace(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Workspace:
    """Read and build the workspace file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = f"cannot read the workspace file: {exc.strerror or exc}"
        raise WorkspaceError(str(path), None, reason) from None
    except UnicodeDecodeError:
        raise WorkspaceError(str(path), None, "the workspace file is not UTF-8 text") from None
    return parse_workspace(text, str(path), environ=environ)


class _Loader:
    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, line: int, reason: str) -> NoReturn:
        raise WorkspaceError(self.filename, line, reason)

    def convert(self, declared: Any, body: Any, what: str, line: int) -> Any:
        """``body`` as the ``declared`` type; an empty entry (YAML null) is an empty mapping."""
        body = _empty(line) if body is None else body
        try:
            return msgspec.convert(body, declared, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            self.fail(*explain(exc, declared, body, Entry(what, line)))

    def check_id(self, key: str, line: int, kind: str) -> None:
        if not ID_PATTERN.fullmatch(key):
            self.fail(line, f'{kind} id "{key}" must be 1 to 64 letters, digits, "-" or "_"')

    def workspace(self, doc: Any) -> Workspace:
        if doc is None:
            self.fail(1, "the workspace file is empty: it needs a sources section at least")
        self.convert(_File, doc, "", 1)
        warehouse = self.warehouse(doc)
        sources = self.sources(_section(doc, "sources"))
        destinations = self.destinations(_section(doc, "destinations"))
        pipelines = self.pipelines(_section(doc, "pipelines"), sources, destinations)
        return Workspace(warehouse, sources, destinations, pipelines)

    def warehouse(self, doc: LineDict) -> WarehouseConfig | None:
        if doc.get("warehouse") is None:
            return None
        fields = self.convert(_Warehouse, doc["warehouse"], "warehouse", doc.line_of("warehouse"))
        return WarehouseConfig(str(fields.dsn))

    def sources(self, section: LineDict) -> dict[str, Source]:
        sources: dict[str, Source] = {}
        owner_of_key: dict[str, str] = {}
        for source_id, body in section.items():
            line = section.line_of(source_id)
            self.check_id(source_id, line, "source")
            fields: _Source = self.convert(_Source, body, f'source "{source_id}"', line)
            key = str(fields.write_key)
            if key in owner_of_key:
                self.fail(
                    line,
                    f'sources "{owner_of_key[key]}" and "{source_id}" have the same write key: '
                    "each source needs its own",
                )
            owner_of_key[key] = source_id
            origins = self.allowed_origins(fields, body, source_id)
            sources[source_id] = Source(source_id, key, origins, float(fields.archive))
        return sources

    def allowed_origins(self, fields: _Source, body: Any, source_id: str) -> tuple[str, ...]:
        if fields.allowed_origins is None:
            return ()
        if not fields.allowed_origins:
            self.fail(
                body.line_of("allowed_origins"),
                f'source "{source_id}": allowed_origins is empty; list the origins whose pages '
                "may send events, or leave it out to allow every origin",
            )
        return tuple(dict.fromkeys(str(origin) for origin in fields.allowed_origins))

    def destinations(self, section: LineDict) -> dict[str, Destination]:
        # Read now, not at import: a sink registered at run time is known too.
        options_type = functools.reduce(operator.or_, SINKS.values())
        destinations: dict[str, Destination] = {}
        for dest_id, body in section.items():
            line = section.line_of(dest_id)
            self.check_id(dest_id, line, "destination")
            if dest_id == WAREHOUSE:
                self.fail(line, 'destination id "warehouse" is reserved for the warehouse')
            options: SinkOptions = self.convert(
                options_type, body, f'destination "{dest_id}"', line
            )
            destinations[dest_id] = Destination(dest_id, options)
        return destinations

    def pipelines(
        self, section: LineDict, sources: dict[str, Source], dests: dict[str, Destination]
    ) -> dict[str, Pipeline]:
        pipelines: dict[str, Pipeline] = {}
        for pipeline_id, body in section.items():
            line = section.line_of(pipeline_id)
            self.check_id(pipeline_id, line, "pipeline")
            if pipeline_id.startswith("_"):
                self.fail(line, f'pipeline id "{pipeline_id}" must not start with "_": such '
                          "subjects are the stream's own (the archive is events.v1._archive.*)")  # fmt: skip
            what = f'pipeline "{pipeline_id}"'
            fields: _Pipeline = self.convert(_Pipeline, body, what, line)
            self.check_references(fields, body, what, sources, dests)
            self.check_backfill(fields, body, what, sources)
            pipelines[pipeline_id] = self.pipeline(pipeline_id, fields, body, dests)
        return pipelines

    def check_references(
        self,
        fields: _Pipeline,
        body: LineDict,
        what: str,
        sources: dict[str, Source],
        dests: dict[str, Destination],
    ) -> None:
        if fields.source not in sources:
            known = ", ".join(sources) or "none"
            self.fail(
                body.line_of("source"),
                f'{what}: unknown source "{fields.source}" (known sources: {known})',
            )
        if fields.to != WAREHOUSE and fields.to not in dests:
            known = ", ".join([WAREHOUSE, *dests])
            self.fail(
                body.line_of("to"), f'{what}: unknown destination "{fields.to}" (known: {known})'
            )

    def check_backfill(
        self, fields: _Pipeline, body: LineDict, what: str, sources: dict[str, Source]
    ) -> None:
        if fields.backfill is not None and not sources[fields.source].archive:
            self.fail(
                body.line_of("backfill"),
                f'{what}: backfill replays the archive of source "{fields.source}", which keeps '
                "none (archive: 0); give the source an archive (such as archive: 7d) or remove "
                "backfill",
            )

    def pipeline(
        self, pipeline_id: str, fields: _Pipeline, body: LineDict, dests: dict[str, Destination]
    ) -> Pipeline:
        what = f'pipeline "{pipeline_id}"'
        retry_window = dests[fields.to].retry_window if fields.to in dests else DEFAULT_RETRY_WINDOW
        if fields.retry_window is not None:
            retry_window = float(fields.retry_window)
        batch = fields.batch or _Batch()
        return Pipeline(
            id=pipeline_id,
            source=fields.source,
            to=fields.to,
            enabled=fields.enabled,
            shards=fields.shards,
            filter=self.rule(parse_filter, body, "filter", what),
            consents=self.rule(parse_consents, body, "consents", what),
            batch_max_events=batch.max_events,
            batch_max_wait=None if batch.max_wait is None else float(batch.max_wait),
            retry_window=retry_window,
            transform=self.steps(body, what),
            backfill=None if fields.backfill is None else float(fields.backfill),
        )

    def steps(self, body: LineDict, what: str) -> tuple[Step, ...]:
        """A pipeline's ``transform:`` list: each item checked against the declaration its
        kind names (see :mod:`krenalis.transforms.spec`)."""
        items = body.get("transform")
        if items is None:
            return ()
        line = body.line_of("transform")
        if not isinstance(items, LineList):
            self.fail(line, f"{what}: transform must be a list of steps, got {_kind_of(items)}")
        lines = items.item_lines
        return tuple(self.step(item, i, lines[i], what) for i, item in enumerate(items))

    def step(self, item: Any, index: int, line: int, what: str) -> Step:
        where = f"{what}: transform[{index}]"
        known = f"known steps: {', '.join(sorted(STEPS))}"
        if isinstance(item, str) and item in STEPS:
            item = _step_body({item: None}, line)  # a bare name: the step takes no value
        if not isinstance(item, LineDict):
            shown = f'"{item}"' if isinstance(item, str) else _kind_of(item)
            self.fail(line, f"{where}: unknown step {shown} ({known})")
        kinds = [key for key in item if key in STEPS]
        if not kinds and len(item) == 1:
            self.fail(line, f'{where}: unknown step "{next(iter(item))}" ({known})')
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "no step name"
            self.fail(line, f"{where} has {found}: each list item is one step ({known})")
        spec = self.convert(STEPS[kinds[0]], item, f"{where} ({kinds[0]})", line)
        return Step(index, spec, line)

    def rule(self, parse: Callable[[Any, str], Any], body: LineDict, key: str, what: str) -> Any:
        """A pipeline's filter or consent rule, None when absent; its errors get their line."""
        value = body.get(key)
        if value is None:
            return None
        try:
            return parse(value, f"{what}: {key}")
        except FilterError as exc:
            self.fail(_line_of(exc, body.line_of(key)), str(exc))


def _empty(line: int) -> LineDict:
    empty = LineDict()
    empty.line, empty.key_lines = line, {}
    return empty


def _step_body(body: dict[str, Any], line: int) -> LineDict:
    step = LineDict(body)
    step.line, step.key_lines = line, dict.fromkeys(body, line)
    return step


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else repr(value)


def _section(doc: LineDict, name: str) -> LineDict:
    section = doc.get(name)
    return _empty(doc.line_of(name)) if section is None else section


def _line_of(exc: FilterError, default: int) -> int:
    """The line of the part of a filter at fault: its key's if known, else its own."""
    if isinstance(exc.obj, LineDict):
        return exc.obj.line_of(exc.key) if exc.key else exc.obj.line
    return exc.obj.line if isinstance(exc.obj, LineList) else default
