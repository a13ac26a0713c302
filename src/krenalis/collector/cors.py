"""Which web pages' browsers may send events (CORS), by the sources' ``allowed_origins``.

A source without ``allowed_origins`` takes events from any page: answers say
``Access-Control-Allow-Origin: *``, never with credentials (the write key travels in a header
or in the body, not in a cookie). A source with ``allowed_origins`` takes them only from those
pages: answers echo the page's origin with ``Vary: Origin``, and a request whose ``Origin`` is
another is refused (403) before anything is stored. A request without ``Origin`` does not come
from a browser's cross-origin call (servers, apps, curl) and is never refused for it:
``allowed_origins`` keeps other sites' pages out; the write key is what authenticates.

A preflight (OPTIONS) carries no write key, so it cannot know the source: it is answered for
the workspace as a whole, and so are errors found before the source is known. An origin that
some source lists gets its own CORS headers; any other origin gets ``*`` while some source
takes every origin, and a 403 when every source lists its origins. The request that follows
the preflight is then checked against its own source.
"""

from __future__ import annotations

from krenalis.errors import RequestError
from krenalis.workspace.model import Source, Workspace

__all__ = ["PREFLIGHT", "CorsPolicy", "Origins", "refused"]

_ALLOW_ORIGIN = b"access-control-allow-origin"
_ANY = [(_ALLOW_ORIGIN, b"*")]
_VARY = (b"vary", b"Origin")
#: What every preflight answer says besides the origin. Browsers never let "*" stand for
#: Authorization, so it is named; "*" admits the other headers SDKs add (RudderStack's
#: AnonymousId...), which is safe because no credentials are allowed.
PREFLIGHT = [
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", b"Authorization, Content-Type, Content-Encoding, *"),
    (b"access-control-max-age", b"86400"),
]
_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


class Origins:
    """Origins as the workspace lists them (normalised by the loader: lower case, no default
    port), ready to match an ``Origin`` header. ``https://*.example.com`` matches any
    subdomain of example.com, at any depth, on that scheme and port, but not example.com."""

    __slots__ = ("_exact", "_wildcards")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._exact = frozenset(p for p in patterns if "://*." not in p)
        # "https://*.example.com:8443" -> ("https://", ".example.com:8443")
        self._wildcards = tuple(
            (p.partition("*")[0], p.partition("*")[2]) for p in patterns if "://*." in p
        )

    def allow(self, origin: str) -> bool:
        """Whether ``origin`` (lower case, as browsers write it) is one of these."""
        if origin in self._exact:
            return True
        for scheme, suffix in self._wildcards:
            if origin.startswith(scheme) and origin.endswith(suffix):
                subdomain = origin[len(scheme) : len(origin) - len(suffix)]
                # Only host characters: a port, a path or "@" before the suffix is not a match.
                if subdomain and _HOST_CHARACTERS.issuperset(subdomain):
                    return True
        return False


class CorsPolicy:
    """The CORS answers of one workspace revision."""

    def __init__(self, workspace: Workspace) -> None:
        self._by_source = {
            s.id: Origins(s.allowed_origins)
            for s in workspace.sources.values()
            if s.allowed_origins
        }
        every = tuple(o for s in workspace.sources.values() for o in s.allowed_origins)
        self._listed = Origins(every)
        #: Some source takes events from any page.
        self._open = len(self._by_source) < len(workspace.sources) or not workspace.sources

    @property
    def restricted(self) -> bool:
        """Whether some source lists its origins (then answers depend on ``Origin``)."""
        return bool(self._by_source)

    def headers(self, origin: str | None) -> list[tuple[bytes, bytes]] | None:
        """The CORS headers of an answer given without knowing the source (a preflight, an
        error found before the write key), and of every answer to a request its source
        accepted; None when no source takes events from ``origin``."""
        if not self._by_source:
            return _ANY  # nothing depends on Origin: one answer, cacheable by anyone
        if origin is None:
            return [_VARY]
        if self._listed.allow(origin.lower()):
            return [(_ALLOW_ORIGIN, origin.encode("latin-1")), _VARY]
        return [*_ANY, _VARY] if self._open else None

    def check(self, source: Source, origin: str | None) -> None:
        """Raise a 403 RequestError when ``source`` lists its origins and ``origin`` is not
        one of them."""
        origins = self._by_source.get(source.id)
        if origins is None or origin is None or origins.allow(origin.lower()):
            return
        raise refused(origin, source)


def refused(origin: str, source: Source | None = None) -> RequestError:
    """The 403 for a page whose origin ``source`` (None: every source) does not list."""
    shown = origin if origin.isascii() and origin.isprintable() and len(origin) <= 200 else "?"
    where = "this source; add it to the source's" if source else "any source; add it to a source's"
    return RequestError(
        f'pages from the origin "{shown}" may not send events to {where} allowed_origins in '
        "the workspace",
        status=403,
        code="Forbidden",
        headers=[_VARY],
    )
