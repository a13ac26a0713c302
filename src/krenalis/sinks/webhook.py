"""Deliver events to an HTTP endpoint: one POST per event, or one POST per batch.

Every request is a JSON ``POST`` with these headers:

- ``Content-Type: application/json`` and ``User-Agent: krenalis-events/<version>``.
- ``Idempotency-Key``: ``<connectionId>:<messageId>``, the event's source and its messageId.
  Receivers deduplicate with it: delivery is at-least-once, so the same event may arrive twice.
  The source is part of the key because each source chooses its messageIds (browser write keys
  are public), so two sources may send the same one; the connectionId is set by the collector,
  never by the client, and holds no ``:``, so the key splits at its first ``:``. Characters a
  header cannot carry (anything but visible ASCII) and ``%`` are percent-encoded (UTF-8), so
  ``urllib.parse.unquote`` gives the messageId back; ordinary ids (UUIDs) are sent as they are.
  In batch mode the key is the SHA-256 (hex) of the newline-joined keys of the events in the
  body, in their order.
- When the destination has a ``secret``, the three headers of Standard Webhooks
  (https://www.standardwebhooks.com/), which libraries in many languages verify:

  - ``webhook-id``: the request's ``Idempotency-Key`` (the SHA-256 of the body for an event
    without a messageId), so a retry carries the same id;
  - ``webhook-timestamp``: when this attempt was sent, in Unix seconds;
  - ``webhook-signature``: ``v1,<base64 of HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``,
    one per secret, separated by spaces (two while a secret is being replaced).

  A secret is written ``whsec_<base64 of the key>``, the key being 24 to 64 random bytes::

      python -c "import base64, secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())"

  Any other text is a key itself (its UTF-8 bytes), so that secrets written before signatures
  followed the standard keep working: such a receiver is given ``whsec_`` and the base64 of that
  text. ``secret`` may be a list: every secret signs, so that a receiver keeps verifying while
  it moves from the old secret to the new one. To verify, a receiver recomputes the HMAC over
  the raw body exactly as received, compares it in constant time with each ``v1`` signature,
  and refuses a timestamp more than five minutes from its own clock (replay protection);
  ``verify_signature`` does exactly that. (The earlier ``X-Krenalis-Signature`` header is no
  longer sent: no receiver outside this project used it, and one scheme that standard libraries
  verify is better than two to keep in step.)

Responses map to the three outcomes of ``krenalis.sinks.base`` (see ``classify``). Redirects are
not followed: a 3xx means the endpoint is misconfigured, which retrying does not fix.

Each body is the event as the stream stores it (compact JSON, never decoded and written back).

Within one ``write()`` call the events of one user (``krenalis.events.users.user_key``) are sent
one after the other; once one of them is not delivered, the user's later events are not sent
(they get ``Retry``), so a receiver never sees a user's events out of order. Different users are
sent concurrently, at most ``max_concurrency`` requests at a time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import re
import time
import urllib.request
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Annotated
from urllib.parse import SplitResult, quote, urlsplit

import aiohttp
import msgspec

from krenalis import __version__
from krenalis.sinks.base import DELIVERED, Delivered, Event, Outcome, Rejected, Retry, SinkOptions
from krenalis.workspace.values import Duration, Headers, HttpUrl, SecretStr

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookOptions",
    "WebhookSink",
    "classify",
    "sign",
    "signing_key",
    "verify_signature",
]

logger = logging.getLogger("krenalis.sinks.webhook")

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
#: How far from the receiver's clock a signed timestamp may be (the standard's five minutes).
TOLERANCE_SECONDS = 300
USER_AGENT = f"krenalis-events/{__version__}"
BLOCKED_REASON = "an earlier event of this user is not delivered yet"
# Enough of a response body to explain a rejection, without holding a huge body in memory.
BODY_PREFIX_BYTES = 4096
REASON_BODY_CHARS = 200
# What an Idempotency-Key carries as is: visible ASCII but "%", which starts an escape.
_KEY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


# --- Signatures (Standard Webhooks) -----------------------------------------------------------

# A timestamp is a few ASCII digits: int() alone would also take "١٢", "+5" or 5,000 digits.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 after ``whsec_``, or the UTF-8 bytes of any other
    text. Raises ValueError (never showing the secret) for a ``whsec_`` with no valid key."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError(f'a "{SECRET_PREFIX}" secret must go on with the base64 of its key')
    return key


def sign(
    secrets: str | Sequence[str], message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers of ``body``: ``webhook-id``, ``webhook-timestamp`` (now,
    unless ``timestamp``) and ``webhook-signature``, signed with each secret."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = _signed_content(message_id, t, body)
    signatures = " ".join(
        "v1," + base64.b64encode(_digest(key, signed)).decode() for key in _keys(secrets)
    )
    return {ID_HEADER: message_id, TIMESTAMP_HEADER: str(t), SIGNATURE_HEADER: signatures}


def verify_signature(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """Tell whether ``headers`` sign ``body`` with ``secret`` (or one of several), within
    ``tolerance`` seconds of now. Header names are matched in any case.

    Returns False, never raises, for anything a request may hold: missing, empty or malformed
    headers, unknown versions, bad base64, a body that is not the one signed. Raises ValueError
    only for a ``whsec_`` secret with no valid key (a mistake of the receiver's configuration).
    """
    keys = _keys(secret)
    message_id = _text_header(headers, ID_HEADER)
    timestamp = _text_header(headers, TIMESTAMP_HEADER)
    signatures = _text_header(headers, SIGNATURE_HEADER)
    if not (message_id and signatures and timestamp and _TIMESTAMP.fullmatch(timestamp)):
        return False
    if not abs(time.time() - int(timestamp)) <= tolerance:
        return False
    try:
        signed = _signed_content(message_id, int(timestamp), body)
    except UnicodeEncodeError:  # text no sender could have signed (a lone surrogate)
        return False
    expected = [_digest(key, signed) for key in keys]
    given = [g for g in map(_decoded, signatures.split(" ")) if g is not None]
    return any(hmac.compare_digest(e, g) for e in expected for g in given)


def _keys(secrets: str | Sequence[str]) -> list[bytes]:
    return [signing_key(s) for s in ([secrets] if isinstance(secrets, str) else secrets)]


def _signed_content(message_id: str, timestamp: int, body: bytes | str) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return f"{message_id}.{timestamp}.".encode() + raw


def _digest(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def _text_header(headers: Mapping[str, str], name: str) -> str | None:
    value = _header(headers, name)
    return value if isinstance(value, str) else None


def _decoded(item: str) -> bytes | None:
    """The digest of one ``v1,<base64>`` signature; None for another version or bad base64."""
    version, _, value = item.partition(",")
    if version != "v1":
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


# --- Classification ---------------------------------------------------------------------------


def classify(status: int, headers: Mapping[str, str], body: str = "") -> Outcome:
    """Map an HTTP response to an outcome.

    2xx: delivered. 408, 429 and 5xx except 501 and 505: retry, after ``Retry-After`` for 429
    and 503. 3xx, 501, 505 and other 4xx: rejected, since sending again would get the same
    answer. Codes outside 2xx-5xx are retried: they come from broken proxies, not the receiver.
    """
    if 200 <= status < 300:
        return DELIVERED
    text = body.strip()[:REASON_BODY_CHARS]
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status in (408, 429) or (500 <= status < 600 and status not in (501, 505)):
        after = _retry_after(headers) if status in (429, 503) else None
        return Retry(reason, after=after)
    if 300 <= status < 600:
        return Rejected(reason)
    return Retry(reason)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Parse ``Retry-After`` (delta seconds or an HTTP-date) into seconds from now."""
    value = _header(headers, "retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient with senders that omit it.
        return None
    return max(0.0, when.timestamp() - time.time())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None


# --- The sink ---------------------------------------------------------------------------------


class WebhookOptions(SinkOptions, tag="webhook"):
    """A ``type: webhook`` destination.

    ``url``: the http(s) endpoint; it may carry a query string (never logged). ``secret``: when
    set, every request is signed (Standard Webhooks, see the module); a list of secrets signs
    with each, for replacing one without a gap. ``headers``: extra headers for
    every request (for example an ``Authorization``). ``batch``: send each ``write()`` as one
    ``{"batch": [...]}`` request instead of one request per event; the response then applies to
    every event in it. ``timeout``: seconds a whole request may take, from connecting to the
    answer's status and headers (a receiver that drips its answer a byte at a time does not
    hold a batch for longer); the start of the body, which only explains a failure, is read in
    what is left of it. ``max_concurrency``: requests in flight at most, for this sink. ``rate_limit``:
    requests per second at most (bursts up to one second's worth), None for no limit.
    """

    url: HttpUrl
    secret: SecretStr | Annotated[list[SecretStr], msgspec.Meta(min_length=1)] | None = None
    headers: Headers = msgspec.field(default_factory=Headers)
    batch: bool = False
    timeout: Duration = Duration(10.0)
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8
    rate_limit: Annotated[float, msgspec.Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, secret in enumerate(self.secrets):
            try:
                signing_key(secret)
            except ValueError as exc:
                where = f"secret[{i}]" if isinstance(self.secret, list) else "secret"
                raise ValueError(f"{where}: {exc}") from None

    @property
    def secrets(self) -> list[str]:
        """The signing secrets, as a list (empty when requests are not signed)."""
        if self.secret is None:
            return []
        return [self.secret] if isinstance(self.secret, str) else list(self.secret)

    def build(self) -> WebhookSink:
        return WebhookSink(self)


class WebhookSink:
    """POST events as JSON to ``options.url`` (see :class:`WebhookOptions`).

    The HTTP client is aiohttp: measured side by side on this project's machine, httpx spent
    about 2 ms of CPU per request and aiohttp about 0.12 ms (bench/RESULTS.md, "Performance"),
    and one POST per event is this sink's default. Certificates are checked against the system's
    CAs (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` apply), and ``HTTP_PROXY``/``HTTPS_PROXY``/
    ``NO_PROXY`` are honoured, read once per sink (aiohttp's ``trust_env`` reads them, and
    ``~/.netrc``, at every request: most of a request's CPU here).

    :param session: an ``aiohttp.ClientSession`` to share; the sink then does not close it.
    """

    def __init__(
        self, options: WebhookOptions, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._url = options.url
        self._parts = urlsplit(options.url)
        self._deadline = float(options.timeout)
        self._secrets = options.secrets
        self._batch = options.batch
        self._headers = {**options.headers, "Content-Type": "application/json"}
        self._headers["User-Agent"] = USER_AGENT
        self._target = _target(self._parts)
        self._max_concurrency = options.max_concurrency
        self._semaphore = asyncio.Semaphore(options.max_concurrency)
        self._limiter = _TokenBucket(options.rate_limit) if options.rate_limit else None
        self._proxy = _env_proxy(self._parts)
        self._owns_session = session is None
        #: Made on first use: aiohttp wants a running event loop for it.
        self._session = session

    def __repr__(self) -> str:
        # The query string and the secret may hold credentials: keep them out of reprs.
        return f"WebhookSink({self._target!r}, batch={self._batch})"

    async def write(self, events: list[Event]) -> list[Outcome]:
        if not events:
            return []
        if self._batch:
            outcomes = await self._send_batch(events)
        else:
            outcomes = await self._send_per_user(events)
        _log_summary(self._target, outcomes)
        return outcomes

    async def healthcheck(self) -> None:
        """Raise ``ConnectionError`` unless the endpoint answers a ``HEAD`` (any status)."""
        try:
            async with asyncio.timeout(self._deadline):
                async with self._client().head(
                    self._url,
                    headers={"User-Agent": USER_AGENT},
                    allow_redirects=False,
                    proxy=self._proxy,
                ) as response:
                    # Not back to the pool: a receiver that wrongly answers HEAD with a body
                    # would leave it in the connection, in front of the next POST's answer.
                    response.close()
        except TimeoutError as exc:
            raise ConnectionError(f"no answer from {self._parts.hostname}") from exc
        except aiohttp.ClientResponseError:
            return  # it answered, if not by the book (a HEAD answered with a body): reachable
        except aiohttp.ClientError as exc:
            raise ConnectionError(_transport_reason(exc, self._parts)) from exc

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    @property
    def closed(self) -> bool:
        """Whether the sink's own HTTP session is closed (or was never opened)."""
        return self._session is None or self._session.closed

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_concurrency),
                timeout=aiohttp.ClientTimeout(total=None),  # the sink's own deadline applies
                auto_decompress=False,  # only the start of a body is read, as it came
            )
        return self._session

    # -- per-event mode --

    async def _send_per_user(self, events: list[Event]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(events)
        async with asyncio.TaskGroup() as group:
            for indexes in _group_by_user(events).values():
                group.create_task(self._send_user_events(events, indexes, outcomes))
        return [o if o is not None else Retry("the event was not sent") for o in outcomes]

    async def _send_user_events(
        self, events: list[Event], indexes: list[int], outcomes: list[Outcome | None]
    ) -> None:
        blocker: Outcome = DELIVERED
        for i in indexes:
            if not isinstance(blocker, Delivered):
                # Keep the user's order: nothing after a failed event may arrive before it.
                after = blocker.after if isinstance(blocker, Retry) else None
                outcomes[i] = Retry(BLOCKED_REASON, after=after)
                continue
            outcomes[i] = blocker = await self._send_one(events[i])

    async def _send_one(self, event: Event) -> Outcome:
        # The body is the event as stored: the collector's JSON, never decoded and written back.
        return await self._post(event.data, _idempotency_key(event))

    # -- batch mode --

    async def _send_batch(self, events: list[Event]) -> list[Outcome]:
        body = b'{"batch":[' + b",".join(e.data for e in events) + b"]}"
        sent = await self._post(body, _batch_key([_idempotency_key(e) or "" for e in events]))
        return [sent] * len(events)

    # -- one request --

    async def _post(self, body: bytes, idempotency_key: str | None) -> Outcome:
        async with self._semaphore:
            if self._limiter is not None:
                await self._limiter.acquire()
            headers = dict(self._headers)
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
            if self._secrets:
                # Signed at each attempt (a fresh timestamp), with an id every attempt shares.
                message_id = idempotency_key or hashlib.sha256(body).hexdigest()
                headers.update(sign(self._secrets, message_id, body))
            return await self._send(body, headers)

    async def _send(self, body: bytes, headers: dict[str, str]) -> Outcome:
        """One POST within the total deadline: a status by then, or Retry."""
        deadline = asyncio.get_running_loop().time() + self._deadline
        host = self._parts.hostname
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client().post(
                    self._url, data=body, headers=headers, allow_redirects=False, proxy=self._proxy
                )
        except TimeoutError:
            return Retry(f"Timeout: no answer from {host} within {self._deadline:g}s")
        except aiohttp.ClientError as exc:
            return Retry(_transport_reason(exc, self._parts))
        try:
            text = await _read_prefix(response, deadline)
        finally:
            response.release()  # a body not read to its end closes its connection
        return classify(response.status, response.headers, text)


class _TokenBucket:
    """At most ``rate`` acquisitions per second, with bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # The lock makes waiters queue up in order instead of all waking for one token.
        async with self._lock:
            while True:
                now = time.monotonic()
                elapsed = now - self._updated
                self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


# --- Helpers ----------------------------------------------------------------------------------


def _env_proxy(url: SplitResult) -> str | None:
    """The proxy the environment names for this URL (``HTTPS_PROXY``, ``HTTP_PROXY``), unless
    ``NO_PROXY`` leaves its host out."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme)
    if not proxy or urllib.request.proxy_bypass_environment(url.hostname or "", proxies):
        return None
    return proxy


def _target(url: SplitResult) -> str:
    """Name the endpoint in logs and reasons: host, port and path, never query or userinfo."""
    port = f":{url.port}" if url.port else ""
    return f"{url.hostname}{port}{url.path}"


def _transport_reason(exc: Exception, url: SplitResult) -> str:
    detail = str(exc)
    # Error texts may quote the URL; its query string and user info can hold a token.
    for secret in (url.query, url.password, url.username):
        if secret:
            detail = detail.replace(secret, "<hidden>")
    detail = f": {detail[:REASON_BODY_CHARS]}" if detail else ""
    return f"{type(exc).__name__} while sending to {url.hostname}{detail}"


def _group_by_user(events: list[Event]) -> dict[object, list[int]]:
    """Indexes of the events of each user, in batch order; events without a user stand alone."""
    groups: dict[object, list[int]] = {}
    for i, event in enumerate(events):
        groups.setdefault(event.user or i, []).append(i)
    return groups


def _idempotency_key(event: Event) -> str | None:
    """``<connectionId>:<messageId>``, percent-encoded where a header needs it; None without
    a messageId (the request then carries no key)."""
    if not event.message_id:
        return None
    return quote(f"{event.connection_id}:{event.message_id}", safe=_KEY_SAFE)


def _batch_key(keys: list[str]) -> str:
    """The key of a batch: SHA-256 of its events' keys, which hold no newline once encoded."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


async def _read_prefix(response: aiohttp.ClientResponse, deadline: float) -> str:
    """Read the start of the body until `deadline` (loop time); a large body is dropped with
    its connection.

    The body only explains failures: once the status arrived, an error or the deadline while
    reading the body must not turn a 2xx into a retry, so it yields what arrived by then.
    """
    data = b""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout_at(deadline):
            while len(data) < BODY_PREFIX_BYTES:
                chunk = await response.content.read(BODY_PREFIX_BYTES - len(data))
                if not chunk:
                    break
                data += chunk
    return data[:BODY_PREFIX_BYTES].decode("utf-8", errors="replace")


def _log_summary(target: str, outcomes: list[Outcome]) -> None:
    failures = [o for o in outcomes if not isinstance(o, Delivered)]
    fields: dict[str, object] = {"target": target, "events": len(outcomes)}
    if not failures:
        logger.debug("Webhook delivered every event of the batch.", extra=fields)
        return
    fields["retry"] = sum(isinstance(o, Retry) for o in failures)
    fields["rejected"] = sum(isinstance(o, Rejected) for o in failures)
    # The first failure that is not just a consequence of another one says what went wrong.
    fields["reason"] = next((o.reason for o in failures if o.reason != BLOCKED_REASON), "")
    logger.debug("Webhook did not deliver some events of the batch.", extra=fields)
