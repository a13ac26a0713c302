"""The workspace file ``krenalis serve`` writes on its first run, with a fresh write key."""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
from pathlib import Path

__all__ = ["generate_write_key", "starter_workspace_text", "write_starter_workspace"]

_BASE62 = string.digits + string.ascii_letters
_WRITE_KEY_LENGTH = 32


def generate_write_key() -> str:
    """A new random write key: 32 base62 characters (about 190 bits)."""
    return "".join(secrets.choice(_BASE62) for _ in range(_WRITE_KEY_LENGTH))


def write_starter_workspace(path: Path, port: int = 2022) -> None:
    """First run: write a workspace with a fresh write key and show how to send an event.

    Nothing happens when ``path`` exists. The file is created readable by its owner only (it
    holds a write key), never visible with wider permissions even for a moment.
    """
    key = generate_write_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(starter_workspace_text(key))
    except BaseException:
        # A half-written file would be read as the workspace on the next start.
        Path(path).unlink(missing_ok=True)
        raise
    print(
        f'Created {path} with a source "website" and a pipeline to the warehouse.\n'
        f"Its write key is {key}\n"
        "Send an event once Krenalis is ready:\n"
        f"  curl -u '{key}:' -H 'Content-Type: application/json' \\\n"
        '    -d \'{"type":"track","event":"Hello","userId":"u1"}\' '
        f"http://127.0.0.1:{port}/v1/track\n",
        file=sys.stderr,
        flush=True,
    )


def starter_workspace_text(write_key: str) -> str:
    """The workspace file ``krenalis serve`` writes when there is none: one source, one
    pipeline to the warehouse, and commented-out examples of everything else."""
    # A JSON string is a valid YAML double-quoted scalar; "$$" keeps a "$" from reading as ${VAR}.
    return _STARTER.replace('"{write_key}"', json.dumps(write_key).replace("$", "$$"))


_STARTER = """\
# Krenalis workspace: where events come from, and where they go.
#
# Sources send events with their write key (any Segment-compatible SDK, or curl).
# Pipelines take the events of one source to the warehouse or to a destination.
# Ids are letters, digits, "-" and "_". Durations look like 500ms, 30s, 1m30s, 4h.
# Any string value may use ${ENV_VAR}, so secrets can stay out of this file.

# Without a warehouse section, events go to an embedded PostgreSQL in the data directory.
# warehouse:
#   dsn: postgresql://krenalis:${KRENALIS_PG_PASSWORD}@localhost:5432/krenalis

sources:
  website:
    write_key: "{write_key}"
#     allowed_origins: ["https://shop.example.com", "https://*.example.com"]  # only their pages
#     archive: 7d                   # kept for `krenalis replay` and backfills (0: none)

# Websites: `krenalis snippet` prints the HTML to paste into every page: Segment's standard
# analytics.js snippet, which loads analytics.js and its settings from this collector and sends
# the page's events here (`--host https://events.example.com` names the collector's public URL).
# A site that bundles @segment/analytics-next from npm instead loads it with
#   AnalyticsBrowser.load({writeKey: "<write key>", cdnURL: "http://127.0.0.1:2022"})

# destinations:
#   crm:
#     type: webhook                  # POST each event as JSON
#     url: https://example.com/hook
#     secret: ${CRM_WEBHOOK_SECRET}  # whsec_...: signs each request (Standard Webhooks)
#     timeout: 10s
#     max_concurrency: 8
#     rate_limit: 50                 # requests per second
#     retry_window: 4h               # then the event goes to the dead letters
#   archive:
#     type: file                     # one NDJSON file per day
#     path: ./data/archive

pipelines:
  website-warehouse:
    source: website
    to: warehouse
#   website-crm:
#     source: website
#     to: crm
#     shards: 1                      # 1 to 16 consumers; one user's events stay in order
#     filter:                        # all: every condition; any: at least one
#       all:
#         - {field: type, op: is, value: track}
#         - {field: properties.total, op: greater_than, value: 100}
#     consents:                      # context.consents.<purpose> must be true
#       purposes: [marketing]
#       operator: all                # all | any
#     batch: {max_events: 100, max_wait: 1s}
#     backfill: 2d                   # once, when created: the archive of two days before
#   website-archive:
#     source: website
#     to: archive
#     enabled: false
"""
