"""Small ASGI helpers for the collector: reading a bounded (maybe gzipped) body, JSON answers."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import msgspec

from krenalis.errors import RequestError
from krenalis.events import MAX_BODY_BYTES

__all__ = ["error_body", "header", "read_body", "send_json"]

Scope = dict[str, Any]

_encoder = msgspec.json.Encoder()

#: Seconds a request body may stop arriving before the request is refused (408).
BODY_IDLE_TIMEOUT = 30.0


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


async def read_body(scope: Scope, receive: Any) -> bytes:
    """The request body, gunzipped if needed; at most MAX_BODY_BYTES after decompression.

    A gzip bomb is refused as soon as its output passes the limit, without inflating the rest.
    The bytes received are limited too (as Content-Length is), so a chunked body that inflates
    to little or nothing (empty gzip members or deflate blocks) cannot be streamed for ever.
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
    while more:
        try:
            async with asyncio.timeout(BODY_IDLE_TIMEOUT):
                message = await receive()
        except TimeoutError:
            raise RequestError(
                f"the request body stopped arriving for {BODY_IDLE_TIMEOUT:g} seconds",
                status=408,
                code="RequestTimeout",
            ) from None
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


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
