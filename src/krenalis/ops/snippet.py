"""`krenalis snippet`: the HTML a website pastes into its pages to send events here.

It is Segment's standard analytics.js snippet (the minified template of the npm package
`@segment/snippet` 5.2.1, MIT), with two differences: the script comes from the collector
(`<host>/analytics.js/v1/<key>/analytics.min.js`) and `analytics._cdn` names the collector, so
analytics.js also loads its settings and chunks from it (:mod:`krenalis.collector.web`). The
source comes from the workspace stored in NATS, or from a workspace file (`--workspace FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

from krenalis.config import Settings
from krenalis.errors import CommandError
from krenalis.ops._common import connected, nats_urls
from krenalis.workspace.load import load_workspace, parse_workspace
from krenalis.workspace.model import Source, Workspace
from krenalis.workspace.store import WorkspaceStore

__all__ = ["render_snippet", "snippet"]

#: Characters a write key keeps unchanged in a URL path, where analytics.js puts it.
_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

_LOADER = (
    '!function(){var i="analytics",analytics=window[i]=window[i]||[];if(!analytics.initialize)'
    'if(analytics.invoked)window.console&&console.error&&console.error("Segment snippet included'
    ' twice.");else{analytics.invoked=!0;analytics.methods=["trackSubmit","trackClick",'
    '"trackLink","trackForm","pageview","identify","reset","group","track","ready","alias",'
    '"debug","page","screen","once","off","on","addSourceMiddleware","addIntegrationMiddleware",'
    '"setAnonymousId","addDestinationMiddleware","register"];analytics.factory=function(e){'
    "return function(){if(window[i].initialized)return window[i][e].apply(window[i],arguments);"
    'var n=Array.prototype.slice.call(arguments);if(["track","screen","alias","group","page",'
    '"identify"].indexOf(e)>-1){var c=document.querySelector("link[rel=\'canonical\']");'
    'n.push({__t:"bpc",c:c&&c.getAttribute("href")||void 0,p:location.pathname,u:location.href,'
    "s:location.search,t:document.title,r:document.referrer})}n.unshift(e);analytics.push(n);"
    "return analytics}};for(var n=0;n<analytics.methods.length;n++){var key=analytics.methods[n];"
    "analytics[key]=analytics.factory(key)}analytics.load=function(key,n){var t=document."
    'createElement("script");t.type="text/javascript";t.async=!0;t.setAttribute('
    '"data-global-segment-analytics-key",i);t.src=@CDN@+"/analytics.js/v1/"+key+'
    '"/analytics.min.js";var r=document.getElementsByTagName("script")[0];r.parentNode.'
    "insertBefore(t,r);analytics._loadOptions=n};analytics._writeKey=@KEY@;analytics._cdn=@CDN@;"
    'analytics.SNIPPET_VERSION="5.2.0";\n  analytics.load(@KEY@);\n  analytics.page();\n  }}();'
)


def render_snippet(write_key: str, base_url: str) -> str:
    """The <script> element that loads analytics.js from the collector at ``base_url`` (its
    public URL, such as https://events.example.com) for the source of ``write_key``, and
    sends the page view."""
    code = _LOADER.replace("@CDN@", _js_string(base_url.rstrip("/")))
    code = code.replace("@KEY@", _js_string(write_key))
    return f"<script>\n  {code}\n</script>\n"


def _js_string(text: str) -> str:
    # A JSON string is a JavaScript string; "<" escaped so that no "</script>" ends the element.
    return json.dumps(text).replace("<", "\\u003c")


def snippet(settings: Settings, args: argparse.Namespace) -> int:
    """Print the snippet of ``--source`` (default: the workspace's first source)."""
    base_url = _base_url(args.host, settings)
    workspace = _workspace_file(args.workspace) if args.workspace else _stored(settings)
    source = _source(workspace, args.source)
    if not _URL_SAFE.issuperset(source.write_key):
        print(
            f'krenalis: warning: the write key of source "{source.id}" has characters that '
            "change in a URL, where analytics.js puts it; give the source a key of letters "
            "and digits (krenalis generates 32)",
            file=sys.stderr,
        )
    sys.stdout.write(render_snippet(source.write_key, base_url))
    return 0


def _base_url(host: str | None, settings: Settings) -> str:
    """--host, checked; by default this machine's collector (KRENALIS_HTTP_HOST and _PORT)."""
    if host is None:
        listen = settings.http_host
        if listen in ("", "0.0.0.0", "::"):
            listen = "127.0.0.1"  # a wildcard listen address is reached on loopback
        return f"http://{f'[{listen}]' if ':' in listen else listen}:{settings.http_port}"
    try:
        parts = urlsplit(host)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise CommandError(
            f"--host must be the collector's URL as browsers reach it, such as "
            f"https://events.example.com or http://127.0.0.1:2022, not {host!r}",
            2,
        )
    return f"{parts.scheme}://{parts.netloc}"


def _workspace_file(path: str) -> Workspace:
    return load_workspace(Path(path))


def _stored(settings: Settings) -> Workspace:
    """The workspace stored in NATS, as this process's environment expands it."""
    try:
        urls = nats_urls(settings)
    except CommandError as exc:
        raise CommandError(f"{exc}; or pass --workspace FILE", exc.code) from None

    async def read() -> Workspace:
        async with connected(settings, urls) as conn:
            revision = await (await WorkspaceStore(conn.js, settings).open()).current()
        if revision is None:
            raise CommandError(
                "no workspace is stored yet: `krenalis workspace apply FILE` stores one, or "
                "pass --workspace FILE",
                1,
            )
        return parse_workspace(revision.text, f"workspace revision {revision.number}")

    return asyncio.run(read())


def _source(workspace: Workspace, source_id: str | None) -> Source:
    if not workspace.sources:
        raise CommandError("the workspace has no source; add one under sources:", 1)
    if source_id is None:
        source = next(iter(workspace.sources.values()))
        if len(workspace.sources) > 1:
            others = ", ".join(s for s in workspace.sources if s != source.id)
            print(
                f'Snippet of source "{source.id}" (also: {others}; choose with --source ID).',
                file=sys.stderr,
            )
        return source
    source = workspace.sources.get(source_id)
    if source is None:
        known = ", ".join(workspace.sources)
        raise CommandError(f'the workspace has no source "{source_id}"; its sources: {known}', 2)
    return source
