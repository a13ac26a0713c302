"""The workspace file: loading every field, and an error naming file and line for each mistake."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from krenalis.errors import WorkspaceError
from krenalis.pipelines.filters import ConsentRule, matches
from krenalis.sinks.file import FileOptions
from krenalis.sinks.webhook import WebhookOptions
from krenalis.workspace.load import load_workspace, parse_workspace
from krenalis.workspace.model import DEFAULT_RETRY_WINDOW, Destination, Source, WarehouseConfig
from krenalis.workspace.starter import (
    generate_write_key,
    starter_workspace_text,
    write_starter_workspace,
)
from krenalis.workspace.values import Duration

KEY_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

FULL = f"""\
warehouse:
  dsn: postgresql://user:hunter2@db.example.com:5432/krenalis
sources:
  website:
    write_key: "{KEY_A}"
  app:
    write_key: "{KEY_B}"
destinations:
  crm:
    type: webhook
    url: https://example.com/hook?token=abc
    secret: ${{CRM_SECRET}}
    headers:
      Authorization: Bearer ${{CRM_TOKEN}}
    batch: true
    timeout: 1m30s
    max_concurrency: 4
    rate_limit: 12.5
    retry_window: 2h
  archive:
    type: file
    path: ./data/archive
pipelines:
  website-warehouse:
    source: website
    to: warehouse
  website-crm:
    source: website
    to: crm
    enabled: true
    shards: 4
    filter:
      all:
        - {{field: type, op: is, value: track}}
        - any:
            - {{field: properties.total, op: greater_than, value: 100}}
            - {{field: traits.plan, op: is_one_of, value: [pro, enterprise]}}
    consents:
      purposes: [marketing, analytics]
      operator: any
    batch: {{max_events: 500, max_wait: 500ms}}
  app-archive:
    source: app
    to: archive
    enabled: false
    retry_window: 30s
"""

ENV = {"CRM_SECRET": "s3cret-value", "CRM_TOKEN": "tok-123"}


def parse(text: str, env: dict[str, str] | None = None):
    return parse_workspace(text, "krenalis.yaml", environ=ENV if env is None else env)


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(WorkspaceError) as info:
        parse(text, env)
    return str(info.value)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the nth occurrence of needle: where an error must point."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[nth - 1]


def test_full_file_loads_every_field() -> None:
    ws = parse(FULL)
    assert ws.warehouse == WarehouseConfig("postgresql://user:hunter2@db.example.com:5432/krenalis")
    assert ws.sources == {"website": Source("website", KEY_A), "app": Source("app", KEY_B)}
    assert list(ws.destinations) == ["crm", "archive"]
    assert ws.destinations["crm"] == Destination(
        id="crm",
        options=WebhookOptions(
            url="https://example.com/hook?token=abc",
            secret="s3cret-value",
            headers={"Authorization": "Bearer tok-123"},
            batch=True,
            timeout=Duration(90.0),
            max_concurrency=4,
            rate_limit=12.5,
            retry_window=Duration(7200.0),
        ),
    )
    assert ws.destinations["crm"].type == "webhook"
    archive = ws.destinations["archive"]
    assert archive.options == FileOptions(path="./data/archive")
    assert (archive.type, archive.options.path) == ("file", "./data/archive")  # type: ignore[attr-defined]
    assert archive.retry_window == DEFAULT_RETRY_WINDOW


def test_full_file_pipelines() -> None:
    ws = parse(FULL)
    plain = ws.pipelines["website-warehouse"]
    assert (plain.source, plain.to, plain.enabled, plain.shards) == (
        "website",
        "warehouse",
        True,
        1,
    )
    assert plain.to_warehouse and plain.filter is None and plain.consents is None
    assert (plain.batch_max_events, plain.batch_max_wait) == (None, None)
    assert plain.retry_window == DEFAULT_RETRY_WINDOW
    crm = ws.pipelines["website-crm"]
    assert (crm.to, crm.shards, crm.batch_max_events, crm.batch_max_wait) == ("crm", 4, 500, 0.5)
    assert crm.retry_window == 7200.0  # inherited from the destination
    assert crm.consents == ConsentRule(("marketing", "analytics"), "any")
    assert matches(crm.filter, {"type": "track", "traits": {"plan": "pro"}})
    assert not matches(crm.filter, {"type": "track", "properties": {"total": 5}})
    archive = ws.pipelines["app-archive"]
    assert (archive.enabled, archive.retry_window) == (False, 30.0)


def test_workspace_helpers() -> None:
    ws = parse(FULL)
    assert [p.id for p in ws.enabled_pipelines()] == ["website-warehouse", "website-crm"]
    assert ws.source_by_write_key(KEY_B) is ws.sources["app"]
    assert ws.source_by_write_key(KEY_A[:-1]) is None
    assert ws.source_by_write_key("") is None
    assert ws.source_by_write_key("ключ\udcff") is None  # non-ASCII, even a lone surrogate


def test_reprs_never_show_secrets() -> None:
    ws = parse(FULL)
    shown = repr(ws)
    for secret in (KEY_A, KEY_B, "hunter2", "s3cret-value", "tok-123"):
        assert secret not in shown
    assert "Source(id='website', write_key='***')" in shown
    assert "postgresql://user:***@db.example.com:5432/krenalis" in shown
    assert "token=abc" not in shown  # a URL's query may hold a token
    assert (
        repr(WarehouseConfig("host=db password=x")) == "WarehouseConfig(dsn='host=db password=***')"
    )


def test_minimal_and_empty_sections() -> None:
    ws = parse(f'sources:\n  s:\n    write_key: "{KEY_A}"\ndestinations:\npipelines:\n')
    assert ws.warehouse is None
    assert (ws.destinations, ws.pipelines) == ({}, {})


def test_environment_variables_are_expanded() -> None:
    text = 'sources:\n  s:\n    write_key: "${KEY}"\n'
    assert parse(text, {"KEY": KEY_A}).sources["s"].write_key == KEY_A
    text = 'sources:\n  s:\n    write_key: "$${KEY}${KEY}"\n'
    assert parse(text, {"KEY": KEY_A}).sources["s"].write_key == "${KEY}" + KEY_A


def test_unset_environment_variable_is_named() -> None:
    text = FULL
    message = error_of(text, {"CRM_SECRET": "x"})
    assert message == (
        f'krenalis.yaml:{line_of(text, "CRM_TOKEN")}: environment variable "CRM_TOKEN" is not set'
    )


def test_load_workspace_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "krenalis.yaml"
    path.write_text(FULL, encoding="utf-8")
    assert load_workspace(path, environ=ENV).sources["website"].write_key == KEY_A
    with pytest.raises(WorkspaceError, match=r"missing\.yaml: cannot read the workspace file"):
        load_workspace(tmp_path / "missing.yaml")
    path.write_text("sources:\n  s:\n    write_key: x\n", encoding="utf-8")
    with pytest.raises(WorkspaceError, match=rf"^{re.escape(str(path))}:3: source"):
        load_workspace(path)


SOURCE = f'sources:\n  website:\n    write_key: "{KEY_A}"\n'

ERRORS = [
    # (text, needle on the line the error must name, message after "krenalis.yaml:<line>: ")
    (
        f'sources:\n  website:\n    wirte_key: "{KEY_A}"\n',
        "wirte_key",
        'unknown key "wirte_key" in source "website" (allowed: write_key, allowed_origins, archive)',
    ),
    (
        SOURCE + "pipelines:\n  website-crm:\n    source: webshop\n    to: warehouse\n",
        "webshop",
        'pipeline "website-crm": unknown source "webshop" (known sources: website)',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: crm\n",
        "to: crm",
        'pipeline "p": unknown destination "crm" (known: warehouse)',
    ),
    (
        SOURCE + f'  app:\n    write_key: "{KEY_A}"\n',
        "app:",
        'sources "website" and "app" have the same write key: each source needs its own',
    ),
    (
        'sources:\n  website:\n    write_key: "short"\n',
        "write_key",
        'source "website": write_key must be at least 16 characters, without spaces '
        "(krenalis generates 32)",
    ),
    (
        f'sources:\n  web site:\n    write_key: "{KEY_A}"\n',
        "web site",
        'source id "web site" must be 1 to 64 letters, digits, "-" or "_"',
    ),
    (
        "sources:\n  website:\n",
        "website",
        'source "website": missing key "write_key"',
    ),
    (
        SOURCE + "destinations:\n  crm:\n    type: webhook\n    url: ftp://example.com/x\n",
        "ftp://",
        'destination "crm": url must be an http or https URL with a host; its scheme is "ftp"',
    ),
    (
        SOURCE + "destinations:\n  crm:\n    type: webhook\n    url: https://\n",
        "https://",
        'destination "crm": url must be an http or https URL with a host; it has no host',
    ),
    (
        SOURCE + "destinations:\n  crm:\n    type: kafka\n",
        "kafka",
        'destination "crm": unknown type "kafka" (known types: file, webhook)',
    ),
    (
        SOURCE + "destinations:\n  crm:\n    type: webhook\n    url: https://x.io\n"
        "    timeout: 10\n",
        "timeout",
        'destination "crm": timeout must be a duration above zero such as 500ms, 30s, 1m30s '
        "or 4h, got 10",
    ),
    (
        SOURCE + "destinations:\n  crm:\n    type: file\n    path: /tmp/x\n    url: https://x.io\n",
        "url:",
        'unknown key "url" in destination "crm" (allowed: type, path, mode, retry_window)',
    ),
    (
        SOURCE + "destinations:\n  warehouse:\n    type: file\n    path: /tmp/x\n",
        "warehouse:",
        'destination id "warehouse" is reserved for the warehouse',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    shards: 17\n",
        "shards",
        'pipeline "p": shards must be a whole number from 1 to 16, got 17',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    enabled: 1\n",
        "enabled",
        'pipeline "p": enabled must be true or false, got 1',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n"
        "    batch: {max_events: 0}\n",
        "batch",
        'pipeline "p": batch: max_events must be a whole number from 1 to 100000, got 0',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    filter:\n"
        "      all:\n        - {field: type, op: is, value: track}\n"
        "        - {field: properties.total, op: greater, value: 1}\n",
        "greater,",
        'pipeline "p": filter: unknown operator "greater" (did you mean "greater_than"?)',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    filter:\n"
        "      any:\n        - field: propertes.total\n          op: exists\n",
        "propertes",
        'pipeline "p": filter: unknown field "propertes.total": it must start with one of '
        "anonymousId, category, channel, connectionId, context, event, groupId, kpid, "
        "messageId, name, originalTimestamp, previousId, properties, receivedAt, sentAt, "
        "timestamp, traits, type, userId",
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    filter:\n"
        "      all:\n        - {field: properties.total, op: between, value: 5}\n",
        "between",
        'pipeline "p": filter: operator "between" needs a non-empty list of values, got 5',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    filter:\n"
        "      all: {field: type, op: is, value: track}\n",
        "all:",
        'pipeline "p": filter: "all" needs a non-empty list of conditions',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    consents:\n"
        "      purposes: [marketing]\n      operator: and\n",
        "operator: and",
        'pipeline "p": consents: consents operator must be "all" or "any", got \'and\'',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n"
        "  p:\n    source: website\n    to: warehouse\n",
        "p:",
        'duplicate key "p"',
    ),
    (SOURCE + "pipelines: [a, b]\n", "pipelines", '"pipelines" must be a mapping, got a list'),
    (
        SOURCE + "sourcs: {}\n",
        "sourcs",
        'unknown key "sourcs" in the workspace file '
        "(allowed: warehouse, sources, destinations, pipelines)",
    ),  # fmt: skip
    (SOURCE + "pipelines:\n  p: a: b\n", "p: a", "invalid YAML: "),
    (
        "warehouse:\n  dsn: mysql://u:secretpw@h/db\n" + SOURCE,
        "dsn",
        'warehouse: dsn must be a postgresql:// URL, not "mysql://"',
    ),
]


@pytest.mark.parametrize(("text", "needle", "reason"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_file_the_line_and_the_problem(text: str, needle: str, reason: str) -> None:
    nth = 2 if reason == 'duplicate key "p"' else 1
    message = error_of(text)
    prefix = f"krenalis.yaml:{line_of(text, needle, nth)}: "
    if reason.endswith(": "):  # YAML syntax errors: the parser's own wording follows
        assert message.startswith(prefix + reason)
    else:
        assert message == prefix + reason


PIPELINE = SOURCE + "pipelines:\n  p:\n    source: website\n    to: warehouse\n"

MORE_ERRORS = [
    (
        PIPELINE + "    filter:\n      all:\n        - field: type\n          op: is\n"
        "          value: [track]\n",
        "value: [track]",
        'pipeline "p": filter: operator "is" needs a string, number, boolean or datetime value, '
        "got ['track']",
    ),
    (
        PIPELINE + "    filter:\n      all:\n        - field: type\n          op: equals\n"
        "          value: track\n",
        "op: equals",
        'pipeline "p": filter: unknown operator "equals" (did you mean "is"?)',
    ),
    (
        PIPELINE + "    filter:\n      all:\n        - field: type\n          op: is\n"
        "          value:\n",
        "value:",
        'pipeline "p": filter: operator "is" needs a value (is_null matches a null field)',
    ),
    (
        PIPELINE + "    consents:\n      purposes: [a, a]\n",
        "purposes",
        'pipeline "p": consents: consent purposes are listed more than once',
    ),
    (
        SOURCE + "destinations:\n  c:\n    type: webhook\n    url: https://x.io\n"
        "    headers:\n      Bad Name: x\n",
        "Bad Name",
        'destination "c": invalid header name "Bad Name"',
    ),
    (
        SOURCE + "destinations:\n  c:\n    type: webhook\n    url: https://x.io\n"
        "    rate_limit: 0\n",
        "rate_limit",
        'destination "c": rate_limit must be a number above 0, got 0',
    ),
    (
        SOURCE + "destinations:\n  c:\n    url: https://x.io\n",
        "c:",
        'destination "c": missing key "type" (known types: file, webhook)',
    ),
    (
        SOURCE + "destinations:\n  c:\n    type: file\n",
        "c:",
        'destination "c": missing key "path"',
    ),
    (
        SOURCE + "pipelines:\n  p.1:\n    source: website\n    to: warehouse\n",
        "p.1",
        'pipeline id "p.1" must be 1 to 64 letters, digits, "-" or "_"',
    ),
    (
        SOURCE + "pipelines:\n  p:\n    to: warehouse\n",
        "p:",
        'pipeline "p": missing key "source"',
    ),
    (
        SOURCE + "pipelines:\n  _archive:\n    source: website\n    to: warehouse\n",
        "_archive",
        'pipeline id "_archive" must not start with "_": such subjects are the stream\'s own '
        "(the archive is events.v1._archive.*)",
    ),
    (
        SOURCE
        + "    archive: 0\n"
        + "pipelines:\n  p:\n    source: website\n    to: warehouse\n    backfill: 2d\n",
        "backfill",
        'pipeline "p": backfill replays the archive of source "website", which keeps none '
        "(archive: 0); give the source an archive (such as archive: 7d) or remove backfill",
    ),
]


@pytest.mark.parametrize(("text", "needle", "reason"), MORE_ERRORS)
def test_more_errors(text: str, needle: str, reason: str) -> None:
    assert error_of(text) == f"krenalis.yaml:{line_of(text, needle)}: {reason}"


DESTINATION = SOURCE + "destinations:\n  c:\n    type: webhook\n    url: https://x.io\n"

# Wordings built from the declarations (msgspec types and their bounds), beyond the ones above.
DECLARED_ERRORS = [
    (
        DESTINATION + "    max_concurrency: 2000\n",
        "max_concurrency",
        'destination "c": max_concurrency must be a whole number from 1 to 1024, got 2000',
    ),
    (
        DESTINATION + "    batch: yes please\n",
        "batch",
        "destination \"c\": batch must be true or false, got 'yes please'",
    ),
    (
        DESTINATION + '    headers:\n      A: ok\n      B: "x\\ny"\n',
        "B:",
        'destination "c": header "B" has a line break',
    ),
    (
        DESTINATION + "    secret: 5\n",
        "secret",
        'destination "c": secret must be a non-empty string or a list',
    ),
    (
        DESTINATION + "    colour: red\n",
        "colour",
        'unknown key "colour" in destination "c" (allowed: type, url, secret, headers, batch, '
        "timeout, max_concurrency, rate_limit, retry_window)",
    ),
    (
        SOURCE + "destinations:\n  c:\n    type: 5\n",
        "type",
        'destination "c": unknown type "5" (known types: file, webhook)',
    ),
    (
        SOURCE + "destinations:\n  c: [a]\n",
        "c:",
        'destination "c" must be a mapping, got a list',
    ),
    (
        PIPELINE + "    batch: {max_wait: 0s}\n",
        "batch",
        'pipeline "p": batch: max_wait must be a duration above zero such as 500ms, 30s, '
        "1m30s or 4h, got '0s'",
    ),
    (
        PIPELINE + "    batch: {max_wat: 1s}\n",
        "batch",
        'unknown key "max_wat" in pipeline "p": batch (allowed: max_events, max_wait)',
    ),
    (
        PIPELINE + "    shards: 2.5\n",
        "shards",
        'pipeline "p": shards must be a whole number from 1 to 16, got 2.5',
    ),
    (
        "warehouse:\n  dsn: x\n  port: 5432\n" + SOURCE,
        "port",
        'unknown key "port" in warehouse (allowed: dsn)',
    ),
    (
        "sources:\n  s:\n    write_key: 123\n",
        "write_key",
        'source "s": write_key must be a non-empty string',
    ),
    (
        SOURCE + "    archive: 500ms\n",
        "archive",
        'source "website": archive must be a duration of at least 1s such as 7d or 12h, or 0 '
        "to keep no archive, got '500ms'",
    ),
    (
        PIPELINE + "    backfill: 0\n",
        "backfill",
        'pipeline "p": backfill must be a duration above zero such as 500ms, 30s, 1m30s or 4h, '
        "got 0",
    ),
]


@pytest.mark.parametrize(("text", "needle", "reason"), DECLARED_ERRORS)
def test_declared_errors(text: str, needle: str, reason: str) -> None:
    assert error_of(text) == f"krenalis.yaml:{line_of(text, needle)}: {reason}"


def test_archive_retention_and_backfill() -> None:
    text = (
        f'sources:\n  a:\n    write_key: "{KEY_A}"\n  b:\n    write_key: "{KEY_B}"\n'
        "    archive: 12h\n  c:\n    write_key: ccccccccccccccccc\n    archive: 0\n"
        "pipelines:\n  p:\n    source: b\n    to: warehouse\n    backfill: 1.5h\n"
    )
    workspace = parse_workspace(text, "k.yaml")
    assert [s.archive for s in workspace.sources.values()] == [7 * 86400, 12 * 3600, 0]
    assert workspace.pipelines["p"].backfill == 5400
    rounded = parse_workspace(text.replace("12h", "1.2s"), "k.yaml")
    assert rounded.sources["b"].archive == 2  # Nats-TTL counts whole seconds


def test_empty_optional_blocks_mean_none() -> None:
    pipeline = parse(PIPELINE + "    filter:\n    consents:\n    batch:\n").pipelines["p"]
    assert (pipeline.filter, pipeline.consents, pipeline.batch_max_events) == (None, None, None)


def test_error_messages_never_print_secrets() -> None:
    text = "warehouse:\n  dsn: mysql://u:secretpw@h/db\n" + SOURCE
    assert "secretpw" not in error_of(text)
    text = SOURCE.replace("website:", "app:") + SOURCE.replace("sources:\n", "")
    assert KEY_A not in error_of(text)
    text = SOURCE + "destinations:\n  c:\n    type: webhook\n    url: ftp://x?token=zzz\n"
    assert "zzz" not in error_of(text)


def test_hard_coded_line_numbers() -> None:
    # The same checks as above, with the numbers written out (guards the line_of helper).
    text = f'sources:\n  website:\n    write_key: "{KEY_A}"\n\n  website:\n    write_key: x\n'
    assert error_of(text) == 'krenalis.yaml:5: duplicate key "website"'
    assert error_of("sources:\n  a:\n    b: 1\n") == (
        'krenalis.yaml:3: unknown key "b" in source "a" (allowed: write_key, allowed_origins, archive)'
    )


def test_empty_file_is_an_error() -> None:
    assert error_of("") == (
        "krenalis.yaml:1: the workspace file is empty: it needs a sources section at least"
    )
    assert error_of("- a\n") == "krenalis.yaml:1: the workspace file must be a mapping, got a list"


def test_generate_write_key() -> None:
    keys = {generate_write_key() for _ in range(100)}
    assert len(keys) == 100
    alphabet = set(string.ascii_letters + string.digits)
    assert all(len(k) == 32 and set(k) <= alphabet for k in keys)


def test_write_starter_workspace_creates_an_owner_only_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "krenalis.yaml"
    write_starter_workspace(path, port=4321)
    assert path.stat().st_mode & 0o777 == 0o600
    printed = capsys.readouterr().err
    key = re.search(r"Its write key is (\S+)", printed)[1]  # type: ignore[index]
    assert "http://127.0.0.1:4321/v1/track" in printed
    assert load_workspace(path, environ={}).source_by_write_key(key) is not None

    path.write_text("kept\n")
    write_starter_workspace(path)
    assert path.read_text() == "kept\n" and capsys.readouterr().err == ""


def test_starter_workspace_parses_with_the_generated_key() -> None:
    key = generate_write_key()
    ws = parse_workspace(starter_workspace_text(key), "krenalis.yaml", environ={})
    assert ws.source_by_write_key(key) is ws.sources["website"]
    assert [(p.id, p.source, p.to) for p in ws.enabled_pipelines()] == [
        ("website-warehouse", "website", "warehouse")
    ]
    assert ws.warehouse is None and ws.destinations == {}


def test_starter_workspace_quotes_any_key() -> None:
    key = 'a"b\\c${HOME}$$' + "x" * 16
    ws = parse_workspace(starter_workspace_text(key), "krenalis.yaml", environ={})
    assert ws.sources["website"].write_key == key


def test_starter_workspace_examples_are_valid_once_uncommented() -> None:
    text = starter_workspace_text(generate_write_key())
    config_line = re.compile(r"^# (\s*(?:[a-z_-]+:|- ).*)$")
    uncommented = "\n".join(
        config_line.sub(r"\1", line) if config_line.match(line) else line
        for line in text.splitlines()
    )
    env = {"KRENALIS_PG_PASSWORD": "pw", "CRM_WEBHOOK_SECRET": "secret"}
    ws = parse_workspace(uncommented, "krenalis.yaml", environ=env)
    assert ws.warehouse is not None
    assert set(ws.destinations) == {"crm", "archive"}
    assert set(ws.pipelines) == {"website-warehouse", "website-crm", "website-archive"}
    crm = ws.pipelines["website-crm"]
    assert crm.filter is not None and crm.consents == ConsentRule(("marketing",), "all")
    assert not ws.pipelines["website-archive"].enabled
