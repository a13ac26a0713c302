"""Small ASGI helpers for the collector: reading a bounded (maybe gzipped) body in bounded
time, the X-Forwarded-For (and -Proto, -Host) to believe, JSON answers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from krenalis.errors import RequestError
from krenalis.events import MAX_BODY_BYTES
from krenalis.events.ip import parse_address

__all__ = [
    "check_content_type",
    "error_body",
    "forwarded_for",
    "header",
    "key_from_authorization",
    "lifespan",
    "public_origin",
    "read_body",
    "send_bytes",
    "send_json",
]

Scope = dict[str, Any]

_encoder = msgspec.json.Encoder()

#: Seconds a request body may stop arriving before the request is refused (408).
BODY_IDLE_TIMEOUT = 30.0
#: Seconds the whole body may take, from the end of the headers (408 past it). The idle
#: timeout alone lets a client that sends a byte every 29 s hold a request for hours; 60 s
#: carries the 500 KiB limit at 8.5 KB/s, and SDKs send far less (gzipped).
BODY_DEADLINE = 60.0

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lower-case in ASGI)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def too_large() -> RequestError:
    return RequestError(
        f"request body is larger than {MAX_BODY_BYTES} bytes", status=413, code="PayloadTooLarge"
    )


async def read_body(scope: Scope, receive: Any, deadline: float = BODY_DEADLINE) -> bytes:
    """The request body, gunzipped if needed; at most MAX_BODY_BYTES after decompression.

    A gzip bomb is refused as soon as its output passes the limit, without inflating the rest.
    The bytes received are limited too (as Content-Length is), so a chunked body that inflates
    to little or nothing (empty gzip members or deflate blocks) cannot be streamed for ever.
    So is the time: the body must stop arriving for under BODY_IDLE_TIMEOUT seconds at a
    time and be complete within ``deadline`` seconds (408 otherwise).
    """
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large()
    encoding = (header(scope, b"content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise RequestError(
            f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding",
            status=415,
            code="UnsupportedMediaType",
        )
    inflater = _Gunzip() if encoding == "gzip" else None
    parts: list[bytes] = []
    size = 0
    received = 0
    more = True
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while more:
        idle_end = loop.time() + BODY_IDLE_TIMEOUT
        try:
            async with asyncio.timeout_at(min(idle_end, give_up)):
                message = await receive()
        except TimeoutError:
            raise _too_slow(deadline if give_up <= idle_end else None) from None
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > MAX_BODY_BYTES:
            raise too_large()
        if inflater is not None:
            chunk = inflater.feed(chunk, MAX_BODY_BYTES + 1 - size)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large()
        parts.append(chunk)
    if inflater is not None and not inflater.complete:
        raise _bad_gzip()
    return b"".join(parts)


def _too_slow(deadline: float | None) -> RequestError:
    """408 for a body that stopped arriving, or (with ``deadline``) took too long in all. The
    connection is closed: what the client still sends would otherwise be read as a request."""
    if deadline is None:
        reason = f"the request body stopped arriving for {BODY_IDLE_TIMEOUT:g} seconds"
    else:
        reason = f"the request body did not arrive within {deadline:g} seconds"
    return RequestError(
        reason, status=408, code="RequestTimeout", headers=[(b"connection", b"close")]
    )


def forwarded_for(scope: Scope, trusted: Sequence[_Network]) -> str | None:
    """The X-Forwarded-For address to take as the client's, or None to take the peer's.

    Only a peer in ``trusted`` (KRENALIS_TRUSTED_PROXIES) is believed; from anyone else the
    header is ignored, so a client cannot choose its own context.ip. Each proxy appends the
    address it saw, and what is left of it the client could have written: so the client is
    the rightmost address that is not a trusted proxy (every header line counts, in order).
    """
    if not trusted:
        return None
    peer = parse_address((scope.get("client") or ("", 0))[0])
    if peer is None or not _in(peer, trusted):
        return None
    items = [
        item.strip()
        for name, value in scope["headers"]
        if name == b"x-forwarded-for"
        for item in value.decode("latin-1").split(",")
    ]
    for item in reversed(items):
        address = parse_address(item)
        if address is None or not _in(address, trusted):
            return item  # unreadable: events/ip.py decides what an unreadable item means
    return items[0] if items else None


#: A Host header: a name or an IPv4 address, or an IPv6 address in brackets; maybe a port.
_HOST = re.compile(r"(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")


def public_origin(scope: Scope, trusted: Sequence[_Network]) -> tuple[str, str]:
    """(scheme, host[:port]) by which the client reached the collector, for URLs written into
    answers (analytics.js's settings).

    The connection's own scheme and Host header, unless the peer is a trusted proxy
    (KRENALIS_TRUSTED_PROXIES): then X-Forwarded-Proto and X-Forwarded-Host, when sent, say
    what the client used. Of a list, the last value counts: it is the nearest proxy's word, the
    only one known to come from a trusted peer. RequestError (400) when there is no usable host.
    """
    scheme = scope.get("scheme") or "http"
    host = header(scope, b"host")
    peer = parse_address((scope.get("client") or ("", 0))[0])
    if trusted and peer is not None and _in(peer, trusted):
        proto = _last_value(scope, b"x-forwarded-proto")
        if proto in ("http", "https"):
            scheme = proto
        host = _last_value(scope, b"x-forwarded-host") or host
    host = (host or "").strip().lower()
    if not _HOST.fullmatch(host):
        raise RequestError(
            "the request's Host header is missing or is not a host name with an optional port; "
            "send the collector's public host, such as Host: events.example.com"
        )
    return scheme, host


def _last_value(scope: Scope, name: bytes) -> str | None:
    values = [
        item.strip().lower()
        for key, value in scope["headers"]
        if key == name
        for item in value.decode("latin-1").split(",")
    ]
    return values[-1] if values and values[-1] else None


def _in(address: _Address, networks: Sequence[_Network]) -> bool:
    return any(address in network for network in networks)


def _bad_gzip() -> RequestError:
    return RequestError(
        "request body is not valid gzip data", status=415, code="UnsupportedMediaType"
    )


class _Gunzip:
    """Inflates a gzip body: one member or several in a row (RFC 1952), as Go's reader does.

    Never produces more than `room` bytes per call: past that the body is too large, and the
    rest of a gzip bomb is never inflated. Bytes after the last member that are not another
    member (garbage) make the body invalid instead of being silently ignored.
    """

    __slots__ = ("_inflater", "_members", "_between")

    def __init__(self) -> None:
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._members = 0  # members read to their end
        self._between = True  # no byte of the next member seen yet

    @property
    def complete(self) -> bool:
        return self._members > 0 and self._between

    def feed(self, chunk: bytes, room: int) -> bytes:
        out: list[bytes] = []
        while chunk:
            self._between = False
            try:
                data = self._inflater.decompress(chunk, room)
            except zlib.error:
                raise _bad_gzip() from None
            room -= len(data)
            if self._inflater.unconsumed_tail or room <= 0:  # more output than the limit allows
                raise too_large()
            out.append(data)
            chunk = b""
            if self._inflater.eof:
                self._members += 1
                self._between = True
                chunk = self._inflater.unused_data
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return b"".join(out)


async def send_json(send: Any, status: int, body: Any, headers: list | None = None) -> None:
    data = _encoder.encode(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def send_bytes(
    send: Any, status: int, body: bytes, headers: list, *, head: bool = False
) -> None:
    """An answer whose ``headers`` include its content type; ``head``: without the body."""
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [length, *headers]})
    await send({"type": "http.response.body", "body": b"" if head else body})


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


_BAD_AUTH = (
    'Authorization header is invalid; use "Authorization: Bearer <WRITE_KEY>" or HTTP Basic '
    "auth with the write key as user name and an empty password"
)


def check_content_type(value: str | None) -> None:
    """Refuse (415) a body that does not say it is JSON in UTF-8. Browsers send text/plain
    to avoid a CORS preflight; both carry JSON."""
    if value is None:
        return
    media, _, params = value.partition(";")
    if media.strip().lower() not in ("application/json", "text/plain", ""):
        raise RequestError(
            f"request's content type must be 'application/json' or 'text/plain', not {media.strip()!r}",
            status=415,
            code="UnsupportedMediaType",
        )
    for param in filter(None, (p.strip() for p in params.split(";"))):
        name, _, charset = param.partition("=")
        if name.strip().lower() != "charset":
            raise RequestError(
                f"request's content type has an unsupported parameter {name.strip()!r}; "
                "only charset=utf-8 is accepted",
                status=415,
                code="UnsupportedMediaType",
            )
        if charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise RequestError(
                "request's content type charset must be 'utf-8'",
                status=415,
                code="UnsupportedMediaType",
            )


def key_from_authorization(raw: str) -> str:
    """The write key in an Authorization header: Bearer, or Basic's user name."""
    scheme, _, value = raw.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RequestError(_BAD_AUTH, status=400, code="BadRequest") from None
        return decoded.partition(":")[0]
    raise RequestError(_BAD_AUTH, status=400, code="BadRequest")


async def lifespan(receive: Callable, send: Callable) -> None:
    """Answer an ASGI server's lifespan messages (there is nothing to start or stop)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
