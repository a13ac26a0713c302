"""The collector: Segment-compatible HTTP ingestion that answers only after events are stored.

Endpoints (POST):
- Krenalis form: /v1/events (a batch envelope, a bare array or a single event) and
  /v1/events/{track|page|screen|identify|group|alias};
- Segment form: /v1/batch and /v1/{track|page|screen|identify|group|alias}, and the short
  paths analytics.js posts to: /v1/b (batch) and /v1/{t|p|s|i|g|a};
- RudderStack's beacon: /beacon/v1/batch?writeKey=KEY (navigator.sendBeacon sends no header).
For browsers and emails (GET, see :mod:`krenalis.collector.web`): analytics.js, its chunks and
its settings, RudderStack's /sourceConfig/, and the pixel /v1/pixel/{type}?data=<base64 JSON>.
Plus GET /health and CORS preflight on every path (see :mod:`krenalis.collector.cors`).
/metrics is not here: :class:`MetricsApp` serves it on its own address (KRENALIS_METRICS_ADDR),
so that the public ingestion port does not show traffic and pipeline names to anyone.

A 200 means every copy of every valid event (one per pipeline that takes it in EVENTS, one for
its source's archive in EVENTS_ARCHIVE: see :mod:`krenalis.collector.copies`) is stored. Invalid
events inside a valid request are listed in the answer, not stored. While someone runs
`krenalis tail`, each request is also told to it (:mod:`krenalis.collector.tail`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from krenalis import metrics
from krenalis.collector import web
from krenalis.collector.copies import Copies, make_copies
from krenalis.collector.cors import PREFLIGHT, CorsPolicy, refused
from krenalis.collector.http import (
    BODY_DEADLINE,
    check_content_type,
    error_body,
    forwarded_for,
    header,
    key_from_authorization,
    lifespan,
    public_origin,
    read_body,
    send_bytes,
    send_json,
)
from krenalis.collector.metrics_app import MetricsApp
from krenalis.collector.tail import CollectorTail
from krenalis.errors import PublishError, RequestError
from krenalis.events import EVENT_TYPES, build_events, parse_request
from krenalis.pipelines.routing import Router
from krenalis.stream.connection import NatsConnection
from krenalis.stream.publisher import Publisher
from krenalis.workspace.model import Source, Workspace

__all__ = ["Collector", "MetricsApp"]

log = logging.getLogger("krenalis.collector")

#: analytics.js posts each call to {apiHost}/<first letter of its type>, and batches to /b.
_SHORT = {t[0]: t for t in EVENT_TYPES}
_TYPED = (
    {f"/v1/{t}": t for t in EVENT_TYPES}
    | {f"/v1/events/{t}": t for t in EVENT_TYPES}
    | {f"/v1/{letter}": t for letter, t in _SHORT.items()}
)
_BEACON = "/beacon/v1/batch"
_GENERIC = ("/v1/events", "/v1/batch", "/v1/b", _BEACON)
_PIXELS = {f"{web.PIXEL_PREFIX}{t}": t for t in EVENT_TYPES}
_NO_STORE = [(b"cache-control", b"no-store, max-age=0")]
_JSON = (b"content-type", b"application/json")
_SCRIPT = (b"content-type", b"text/javascript; charset=utf-8")
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_ANY_ORIGIN = (b"access-control-allow-origin", b"*")
#: A bundle's name holds its content's hash: it never changes under the same name.
_IMMUTABLE = (b"cache-control", b"public, max-age=31536000, immutable")
_SHORT_CACHE = (b"cache-control", b"public, max-age=300")
#: Settings name the host the request came by, so no shared cache may keep them.
_PRIVATE_CACHE = (b"cache-control", b"private, max-age=60")
_encode = msgspec.json.Encoder().encode
#: Where a request's source is noted once known, for a tail told of its refusal.
_SOURCE_KEY = "krenalis.source"


class Collector:
    """The ASGI application. `set_workspace` swaps sources and routes live (reloads)."""

    #: Seconds a request's whole body may take to arrive (408 past it).
    body_deadline: float = BODY_DEADLINE

    def __init__(self, conn: NatsConnection, workspace: Workspace, revision: int = 0) -> None:
        self.conn = conn
        #: Requests publishing now, by the workspace revision that routed them.
        self._in_flight: Counter[int] = Counter()
        self.publisher = Publisher(
            conn.nc,
            alive=lambda: conn.down_for() < 1.0,
        )
        self.settings = conn.settings
        self.tail = CollectorTail()
        self.set_workspace(workspace, revision)

    def set_workspace(self, workspace: Workspace, revision: int = 0) -> None:
        self.workspace = workspace
        self.revision = revision
        self.router = Router(workspace)
        self.cors = CorsPolicy(workspace)
        self._filtered_reported = dict.fromkeys(self.router.filtered, 0)

    @property
    def routing_revision(self) -> int:
        """The oldest workspace revision a request still publishing was routed by (the current
        one when none is): a pipeline's consumer may go once every collector is past the
        revision that removed it."""
        return min((r for r, n in self._in_flight.items() if n), default=self.revision)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        origin = header(scope, b"origin")
        cors = self.cors.headers(origin)
        if method == "OPTIONS":
            await self._preflight(send, origin, cors)
        elif path == "/health" and method in ("GET", "HEAD"):
            await self._health(send)
        elif path in _TYPED or path in _GENERIC or path in _PIXELS:
            await self._ingest(scope, receive, send, origin, cors)
        elif method in ("GET", "HEAD"):
            await self._web(scope, send, path, origin, cors)
        else:
            body = error_body("NotFound", f"no endpoint at {path}")
            await send_json(send, 404, body, cors)

    async def _preflight(self, send: Callable, origin: str | None, cors: list | None) -> None:
        """A browser asking whether a page may POST here: the source is not known yet (no
        write key), so the answer is the workspace's (see krenalis.collector.cors)."""
        if cors is None:
            exc = refused(origin or "")
            await send_json(send, exc.status, error_body(exc.code, exc.message), exc.headers)
            return
        await _empty(send, 204, cors + PREFLIGHT)

    async def _health(self, send: Callable) -> None:
        usable = self.conn.usable
        body = {
            "status": "ok" if usable else "unavailable",
            "stream": usable,
            "revision": self.revision,
        }
        await send_json(send, 200 if usable else 503, body)

    async def _ingest(
        self, scope: dict, receive: Callable, send: Callable, origin: str | None, cors: list | None
    ) -> None:
        started = time.perf_counter()
        headers = _NO_STORE
        pixel = _pixel_type(scope)
        try:
            if pixel is not None:
                if scope["method"] != "GET":
                    raise _wrong_method("GET")
                status, body = await self._store(scope, web.pixel_body(scope), None, origin, pixel)
            elif scope["method"] != "POST":
                raise _wrong_method("POST")
            else:
                status, body = await self._handle(scope, receive, origin)
        except RequestError as exc:
            status, body = exc.status, error_body(exc.code, exc.message)
            headers = headers + exc.headers
            if status == 403:  # an origin its source refuses: no CORS answer for that page
                cors = None
            if self.tail.interest.active:
                source = scope.get(_SOURCE_KEY)
                await self.tail.refused(source, scope["path"], status, exc.code, exc.message)
        except ConnectionResetError:
            return  # the client went away; nothing to answer
        metrics.REQUESTS.labels(str(status)).inc()
        metrics.REQUEST_LATENCY.observe(time.perf_counter() - started)
        if pixel is not None and status == 200:  # an email's <img>: the image, not JSON
            await send_bytes(send, 200, web.GIF, [(b"content-type", b"image/gif"), *headers])
            return
        await send_json(send, status, body, (cors or []) + headers)

    async def _handle(self, scope: dict, receive: Callable, origin: str | None) -> tuple[int, dict]:
        check_content_type(header(scope, b"content-type"))
        source = self._source_from_header(scope)
        if source is not None:  # refused before its body is read
            scope[_SOURCE_KEY] = source.id
            self.cors.check(source, origin)
        body = await read_body(scope, receive, self.body_deadline)
        return await self._store(scope, body, source, origin, _event_type(scope))

    async def _store(
        self,
        scope: dict,
        body: bytes,
        source: Source | None,
        origin: str | None,
        event_type: str | None,
    ) -> tuple[int, dict]:
        """Parse, authenticate, validate, publish: the answer once every copy is stored."""
        received_at = datetime.now(UTC)
        request = parse_request(body, event_type=event_type)
        # Who sent it is settled before the work of validating every event.
        if source is None:
            source = self._source_from_body(request.write_key or _query_key(scope))
            scope[_SOURCE_KEY] = source.id
            self.cors.check(source, origin)
        decoded = build_events(
            request,
            source_id=source.id,
            received_at=received_at,
            remote_ip=(scope.get("client") or ("127.0.0.1", 0))[0],
            forwarded_for=forwarded_for(scope, self.settings.trusted_proxies),
        )
        if not await self.conn.wait_usable():
            raise _unavailable("the event stream (NATS) is not reachable right now")
        copies = await self._publish(source, decoded.events, self.tail.wants(source.id))
        if copies.routed is not None:
            await self.tail.request(source.id, scope["path"], copies.routed, decoded.rejected,
                                    request.items, self.router.pipelines_of(source.id))  # fmt: skip
        return 200, _answer(source, decoded, copies.pipeline_copies)

    def _source_from_header(self, scope: dict) -> Source | None:
        raw = header(scope, b"authorization")
        if raw is None:
            return None
        key = key_from_authorization(raw)
        source = self.workspace.source_by_write_key(key)
        if source is None:
            raise RequestError(
                "the write key in the Authorization header is not valid",
                status=401,
                code="Unauthorized",
            )
        return source

    def _source_from_body(self, write_key: str | None) -> Source:
        if not write_key:
            raise RequestError(
                'write key is missing: send it as "Authorization: Bearer <WRITE_KEY>", as HTTP '
                'Basic user name, or as "writeKey" in the body',
                status=401,
                code="Unauthorized",
            )
        source = self.workspace.source_by_write_key(write_key)
        if source is None:
            raise RequestError(
                "the write key in the request body does not exist", status=401, code="Unauthorized"
            )
        return source

    async def _publish(self, source: Source, events: list[dict], tailing: bool) -> Copies:
        revision = self.revision  # the router below is this revision's: no await in between
        self._in_flight[revision] += 1
        try:
            copies = make_copies(self.router, source, events, tailing)
            if copies.messages or copies.archived:
                # Two parts of one publish: their atomic batches go to the two streams at once.
                await self.publisher.publish(copies.messages, copies.archived)
        except PublishError as exc:
            log.warning("Events not stored; answering 503.", extra={"error": str(exc)})
            raise _unavailable(str(exc)) from None
        finally:
            self._in_flight[revision] -= 1
        for pipeline, count in copies.per_pipeline.items():
            metrics.PUBLISHED.labels(pipeline).inc(count)
        self._report_filtered()
        return copies

    def _report_filtered(self) -> None:
        """Move the router's filtered-out counts into the Prometheus counter."""
        reported = self._filtered_reported
        for pipeline, count in self.router.filtered.items():
            if count != reported[pipeline]:
                metrics.FILTERED.labels(pipeline).inc(count - reported[pipeline])
                reported[pipeline] = count

    async def _web(
        self, scope: dict, send: Callable, path: str, origin: str | None, cors: list | None
    ) -> None:
        """GET for browsers: analytics.js, its chunks, its settings, RudderStack's config."""
        head = scope["method"] == "HEAD"
        try:
            status, body, headers = self._web_answer(scope, path, origin, cors)
        except RequestError as exc:
            body = _encode(error_body(exc.code, exc.message))
            status, headers = exc.status, [_JSON, *_NO_STORE, *exc.headers]
            if exc.status != 403:  # an origin its source refuses gets no CORS answer
                headers += cors or []
        await send_bytes(send, status, body, headers, head=head)

    def _web_answer(
        self, scope: dict, path: str, origin: str | None, cors: list | None
    ) -> tuple[int, bytes, list]:
        if (key := web.script_key(path)) is not None:
            self._known_source(key)
            script = web.assets().script_for(key)
            return 200, script, [_SCRIPT, _NOSNIFF, _SHORT_CACHE, _ANY_ORIGIN]
        if (name := web.bundle_name(path)) is not None:
            bundle = web.assets().bundles.get(name)
            if bundle is None:
                raise _not_found()
            return 200, bundle, [_SCRIPT, _NOSNIFF, _IMMUTABLE, _ANY_ORIGIN]
        if (key := web.settings_key(path)) is not None:
            source = self._known_source(key)
            self.cors.check(source, origin)
            scheme, host = public_origin(scope, self.settings.trusted_proxies)
            settings = web.segment_settings(source.write_key, scheme, host)
            return 200, _encode(settings), [_JSON, _PRIVATE_CACHE, *(cors or [])]
        if path == web.SOURCE_CONFIG:
            source = self._source_from_header(scope) or self._source_from_body(
                web.query_value(scope, "writeKey")
            )
            self.cors.check(source, origin)
            config = web.rudderstack_config(source)
            return 200, _encode(config), [_JSON, _PRIVATE_CACHE, *(cors or [])]
        raise RequestError(f"no endpoint at {path}", status=404, code="NotFound")

    def _known_source(self, write_key: str) -> Source:
        """The source of a write key in a URL; 404 saying nothing about keys otherwise."""
        source = self.workspace.source_by_write_key(write_key)
        if source is None:
            raise _not_found()
        return source


def _event_type(scope: dict) -> str | None:
    return _TYPED.get(scope["path"].rstrip("/"))


def _pixel_type(scope: dict) -> str | None:
    return _PIXELS.get(scope["path"].rstrip("/"))


def _query_key(scope: dict) -> str | None:
    """RudderStack's beacon puts the write key in the URL: sendBeacon cannot send a header."""
    if scope["path"].rstrip("/") != _BEACON:
        return None
    return web.query_value(scope, "writeKey")


def _wrong_method(allowed: str) -> RequestError:
    return RequestError(
        f"use {allowed}",
        status=405,
        code="MethodNotAllowed",
        headers=[(b"allow", f"{allowed}, OPTIONS".encode())],
    )


def _not_found() -> RequestError:
    return RequestError("not found", status=404, code="NotFound")


def _unavailable(message: str) -> RequestError:
    return RequestError(
        message, status=503, code="ServiceUnavailable", headers=[(b"retry-after", b"2")]
    )


def _answer(source: Source, decoded: Any, stored: int) -> dict[str, Any]:
    metrics.RECEIVED.labels(source.id).inc(len(decoded.events))
    answer: dict[str, Any] = {"success": True, "accepted": len(decoded.events), "stored": stored}
    if decoded.rejected:
        metrics.REJECTED.labels(source.id).inc(len(decoded.rejected))
        answer["rejected"] = [{"index": r.index, "reason": r.reason} for r in decoded.rejected]
    return answer


async def _empty(send: Callable, status: int, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
