"""What web pages and emails fetch from the collector besides the ingestion endpoints.

- analytics.js (``@segment/analytics-next``'s standalone build, vendored in
  ``assets/analytics-next/`` with its README): the script at
  ``/analytics.js/v1/<write key>/analytics.min.js`` and the chunks it loads lazily at
  ``/analytics-next/bundles/<file>``, the paths the script derives from the snippet's ``_cdn``;
- analytics.js's settings, ``/v1/projects/<write key>/settings``: the ``Segment.io``
  integration pointed at this collector, no destination loaded in the browser;
- RudderStack's source configuration, ``/sourceConfig/``: the JS SDK v3 fetches it before it
  sends anything (``configUrl``), and needs only a source with an id, a config and a list of
  device-mode destinations (empty);
- the tracking pixel's event, ``/v1/pixel/<type>?data=<base64 JSON>``, and the GIF it answers.

This module only builds answers and reads paths; :mod:`krenalis.collector.app` routes them.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec

from krenalis.errors import RequestError
from krenalis.workspace.model import Source

__all__ = [
    "GIF",
    "PIXEL_PREFIX",
    "SOURCE_CONFIG",
    "Assets",
    "assets",
    "bundle_name",
    "pixel_body",
    "query_value",
    "rudderstack_config",
    "script_key",
    "segment_settings",
    "settings_key",
]

ASSETS = Path(__file__).parent / "assets" / "analytics-next"
SCRIPT_FILE = "standalone.js"
#: The write-key placeholder of the standalone build: Segment's CDN writes the key there, so a
#: page that loads the script without the snippet's analytics._writeKey still has one.
_KEY_PLACEHOLDER = b'"__WRITE_KEY__"'

SOURCE_CONFIG = "/sourceConfig"
PIXEL_PREFIX = "/v1/pixel/"
_BUNDLES = "/analytics-next/bundles/"

#: The 1x1 transparent GIF a pixel request answers.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@dataclass(frozen=True)
class Assets:
    """The vendored analytics.js: its script, and its chunks by file name."""

    script: bytes
    bundles: dict[str, bytes]

    @classmethod
    def read(cls, folder: Path = ASSETS) -> Assets:
        bundles = {path.name: path.read_bytes() for path in folder.glob("*.bundle.*.js")}
        return cls((folder / SCRIPT_FILE).read_bytes(), bundles)

    def script_for(self, write_key: str) -> bytes:
        """The script with ``write_key`` written in (as a JSON string: a JavaScript literal)."""
        return self.script.replace(_KEY_PLACEHOLDER, msgspec.json.encode(write_key), 1)


@functools.cache
def assets() -> Assets:
    """The vendored files, read on first use (120 KB, kept for the life of the process)."""
    return Assets.read()


def script_key(path: str) -> str | None:
    """The write key of ``/analytics.js/v1/<key>/analytics.min.js``, else None."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1:3] == ["analytics.js", "v1"] and parts[4] == "analytics.min.js":
        return parts[3] or None
    return None


def settings_key(path: str) -> str | None:
    """The write key of ``/v1/projects/<key>/settings``, else None."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1:3] == ["v1", "projects"] and parts[4] == "settings":
        return parts[3] or None
    return None


def bundle_name(path: str) -> str | None:
    """The file of ``/analytics-next/bundles/<file>``, else None (any file: the caller looks
    it up among the vendored ones, so no path reaches the file system)."""
    if path.startswith(_BUNDLES):
        return path[len(_BUNDLES) :]
    return None


def segment_settings(write_key: str, scheme: str, host: str) -> dict[str, Any]:
    """analytics.js's settings for a source: events go to ``<scheme>://<host>/v1/<t|p|...>``.

    Only the Segment.io integration, so the script loads no destination; no plan, middleware or
    remote plugin (their chunks are not vendored); ``metrics.sampleRate`` 0, or the script would
    send its own usage counters to Segment's API.
    """
    return {
        "integrations": {
            "Segment.io": {"apiKey": write_key, "apiHost": f"{host}/v1", "protocol": scheme}
        },
        "plan": {},
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
        "metrics": {"sampleRate": 0},
    }


def rudderstack_config(source: Source) -> dict[str, Any]:
    """RudderStack's source configuration, what the JS SDK v3 checks of it: an enabled source
    with an id, a config (no error or metrics reporting) and no device-mode destination."""
    return {
        "source": {
            "id": source.id,
            "name": source.id,
            "enabled": True,
            "workspaceId": "krenalis",
            "config": {},
            "destinations": [],
        }
    }


def query_value(scope: dict, name: str) -> str | None:
    """The first value of query parameter ``name``, None when absent or not text."""
    try:
        query = scope.get("query_string", b"").decode("ascii")
    except UnicodeDecodeError:
        return None
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


def pixel_body(scope: dict) -> bytes:
    """The event JSON a pixel request carries in ``data`` (base64, standard or URL-safe, padded
    or not); RequestError (400) naming what is wrong."""
    data = query_value(scope, "data")
    if not data:
        raise RequestError(
            'the pixel request has no "data" query parameter; send '
            "?data=<the event's JSON, base64-encoded>"
        )
    # A "+" the sender did not escape reads as a space in a query string.
    text = data.replace(" ", "+").replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(
            "the pixel's \"data\" query parameter is not base64; encode the event's JSON with "
            "base64 (standard or URL-safe)"
        ) from None
