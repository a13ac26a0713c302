"""No secret is echoed, and nothing from outside can forge a log line or drive the terminal.

- A rejected KRENALIS_NATS_URL is shown without its user:password@ (or token@).
- A workspace value that came from an environment variable is never shown in an error: the
  message names the variable.
- Log values cannot end their line or forge another field.
- `krenalis dlq show` and `dlq list` print a dead letter's reason and data (which may quote a
  remote server) with control characters escaped and rich markup printed as written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.cli import run_cli
from fixtures.nats_servers import settings_for
from krenalis.config import load_settings
from krenalis.errors import ConfigError, WorkspaceError
from krenalis.logs import KeyValueFormatter
from krenalis.runtime.nats_server import EmbeddedNats
from krenalis.stream.connection import NatsConnection
from krenalis.stream.deadletters import dead_letter
from krenalis.stream.layout import ensure_streams
from krenalis.workspace.load import parse_workspace

SECRET = "Hunter2-d0-not-show"

# --- KRENALIS_NATS_URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"nats://alice:{SECRET}@nats.example.com:99999",
        f"nats://{SECRET}@:4222",  # a token as the user name
        f"alice:{SECRET}@nats.example.com:port",
    ],
)
def test_a_rejected_nats_url_never_shows_its_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"KRENALIS_NATS_URL": url}, env_file=None)
    assert "KRENALIS_NATS_URL contains an invalid URL" in str(info.value)
    assert SECRET not in str(info.value) and "***@" in str(info.value)


def test_settings_never_show_a_url_credential() -> None:
    settings = load_settings(
        {"KRENALIS_NATS_URL": f"nats://alice:{SECRET}@nats.example.com:4222"}, env_file=None
    )
    assert SECRET not in repr(settings) and SECRET not in str(settings)


# --- The workspace: values from ${VAR} ----------------------------------------------------------

HEAD = f"""\
sources:
  web:
    write_key: "{"k" * 32}"
destinations:
  hook:
    type: webhook
    url: https://example.com/hook
"""


def workspace_error(text: str, **env: str) -> str:
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(text, "krenalis.yaml", environ=env)
    return str(info.value)


PIPELINE = HEAD + "pipelines:\n  p:\n    source: web\n    to: hook\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            PIPELINE + "    retry_window: ${RW}\n",
            'pipeline "p": retry_window must be a duration above zero such as 500ms, 30s, '
            "1m30s or 4h, got a value made with ${RW} (not shown)",
        ),
        (
            PIPELINE + "    batch:\n      max_wait: x-${RW}\n",
            'pipeline "p": batch: max_wait must be a duration above zero such as 500ms, 30s, '
            "1m30s or 4h, got a value made with ${RW} (not shown)",
        ),
        (
            PIPELINE + "    shards: ${RW}\n",
            'pipeline "p": shards must be a whole number from 1 to 16, got a value made with '
            "${RW} (not shown); ${...} always gives text, never a number or true/false: write "
            "it in the file",
        ),
        (
            PIPELINE + "    enabled: ${RW}\n",
            'pipeline "p": enabled must be true or false, got a value made with ${RW} (not '
            "shown); ${...} always gives text, never a number or true/false: write it in the file",
        ),
        (
            HEAD + "    max_concurrency: ${RW}\n",
            'destination "hook": max_concurrency must be a whole number from 1 to 1024, got a '
            "value made with ${RW} (not shown); ${...} always gives text, never a number or "
            "true/false: write it in the file",
        ),
        (
            HEAD.replace("type: webhook", "type: ${RW}"),
            'destination "hook": unknown type made with ${RW} (not shown; known types: file, '
            "webhook)",
        ),
        (
            HEAD + "    timeout: ${RW}${OTHER}\n",
            'destination "hook": timeout must be a duration above zero such as 500ms, 30s, '
            "1m30s or 4h, got a value made with ${RW}, ${OTHER} (not shown)",
        ),
    ],
)
def test_a_value_from_the_environment_is_named_never_shown(text: str, expected: str) -> None:
    message = workspace_error(text, RW=SECRET, OTHER="-more")
    assert SECRET not in message
    assert message.partition(": ")[2] == expected


def test_a_value_written_in_the_file_is_still_shown() -> None:
    message = workspace_error(PIPELINE + "    retry_window: soon\n")
    assert message.endswith("got 'soon'")


def test_a_partly_set_value_is_not_shown_while_checking_a_file() -> None:
    """`workspace apply` checks a file without some variables: the others' values stay hidden."""
    unset: set[str] = set()
    with pytest.raises(WorkspaceError) as info:
        parse_workspace(
            PIPELINE + "    shards: ${RW}${MISSING}\n", environ={"RW": SECRET}, unset=unset
        )
    assert SECRET not in str(info.value) and "${RW}, ${MISSING}" in str(info.value)
    assert unset == {"MISSING"}


# --- Log lines ----------------------------------------------------------------------------------

# A logfmt reader: bare values, or quoted ones with backslash escapes.
_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|[^ "]*)(?: |$)')


def formatted(message: str, *args: object, **fields: object) -> str:
    record = logging.LogRecord("krenalis.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(fields)
    return KeyValueFormatter().format(record)


def test_a_log_value_cannot_end_its_line_or_forge_a_field() -> None:
    forged = 'HTTP 400: bad\n2026-01-01T00:00:00.000Z ERROR   krenalis: forged level=ERROR "x'
    line = formatted(
        "Webhook rejected an event.",
        reason=forged,
        body='say "hi"\r\x1b]0;owned\x07\x1b[2J\u2028\u202e',
        empty="",
        target="example.com/hook",
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x07" not in line
    assert "\u2028" not in line and "\u202e" not in line
    head, _, fields = line.partition("Webhook rejected an event. ")
    found = dict(_FIELD.findall(fields))
    assert list(found) == ["reason", "body", "empty", "target"]
    assert found["reason"] == json.dumps(forged, ensure_ascii=False)  # the same escapes
    assert found["body"].startswith(r'"say \"hi\"\r\x1b]0;owned\x07\x1b[2J\u2028\u202e')
    assert found["empty"] == '""' and found["target"] == "example.com/hook"


def test_a_log_message_stays_on_one_line() -> None:
    line = formatted("a message with %s", "a line\nbreak and \x1b[31mcolour")
    assert line.endswith(r"a message with a line\nbreak and \x1b[31mcolour")


# --- krenalis dlq show / list ---------------------------------------------------------------------

HOSTILE_REASON = "HTTP 400: \x1b]0;owned\x07\x1b[2J[bold red]fake[/bold red] \x1b[31mred"
HOSTILE_ID = "m-\x1b[8mhidden\x1b[0m"


@pytest.fixture
async def nats_env(
    nats_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[NatsConnection]:
    """The test server with its streams; the CLI's environment points at it and nothing else."""
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in [n for n in os.environ if n.startswith("KRENALIS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("KRENALIS_NATS_URL", nats_server.url)
    settings = settings_for(nats_server.url)
    conn = NatsConnection(settings)
    await conn.connect(timeout=10)
    try:
        await ensure_streams(conn.js, settings)
        yield conn
    finally:
        await conn.close()


async def _dead(conn: NatsConnection, seq: int, data: bytes) -> None:
    await dead_letter(
        conn.js, pipeline="p1", shard=0, data=data, reason=HOSTILE_REASON, attempts=3,
        first_attempt=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), stream_seq=seq, generation="1",
    )  # fmt: skip


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = await asyncio.to_thread(run_cli, list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def assert_inert(out: str) -> None:
    """Nothing a terminal would act on: no escape, bell, carriage return."""
    assert not set(out) & {"\x1b", "\x07", "\r", "\x9b"}


async def test_dlq_show_and_list_neutralise_what_a_remote_server_wrote(
    nats_env: NatsConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    event = {"type": "track", "messageId": HOSTILE_ID, "event": "\x1b[2J"}
    await _dead(nats_env, 1, json.dumps(event, ensure_ascii=False).encode())
    await _dead(nats_env, 2, b"not json \x1b[2J\r\n\x1b]0;owned\x07")
    listed = json.loads(await cli(capsys, "dlq", "list", "--json"))
    first, second = (letter["seq"] for letter in listed["dead_letters"])
    assert listed["dead_letters"][0]["reason"] == HOSTILE_REASON  # --json keeps it exact

    out = await cli(capsys, "dlq", "show", str(first))
    assert_inert(out)
    assert r"HTTP 400: \x1b]0;owned\x07\x1b[2J[bold red]fake[/bold red] \x1b[31mred" in out
    assert r"m-\x1b[8mhidden\x1b[0m" in out  # the message id
    out = await cli(capsys, "dlq", "show", str(second))
    assert_inert(out)
    assert r"not json \x1b[2J\r\n\x1b]0;owned\x07" in out

    out = await cli(capsys, "dlq", "list")
    assert_inert(out)
    flat = "".join(out.split())  # the table folds the reason over lines
    assert r"[boldred]fake[/boldred]" in flat  # markup printed as written, not applied
    assert r"\x1b[31mred" in flat
