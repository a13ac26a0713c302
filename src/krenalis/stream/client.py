"""nats-py's Client with a faster parser for message headers, and a faster way to publish many
messages at once; nothing else changes.

Every message a worker fetches carries headers (`Nats-Msg-Id`, and for atomic batches
`Nats-Batch-Id` and `Nats-Batch-Sequence`). nats-py 2.16 checks each header name for whitespace
one character at a time in a generator, which cost about 10 % of a warehouse worker's CPU
(bench/RESULTS.md). This parser gives the same result (tests/stream/test_client.py compares
them on generated header blocks); if nats-py renames the method, the override is simply unused.

Fetching, nats-py's pull `fetch` takes each message of a batch with `Subscription.next_msg`,
which makes a uuid, a task and a `wait_for` timer per message even when the message is already
queued: :func:`lean_next_msg` takes a queued message at once and leaves the waiting to nats-py
(bench/RESULTS.md, "Performance"). It also marks the subscription lean: the stream's messages
it receives are queued without their headers parsed into a dict (two coroutines and a dict per
message; a worker reads no header). Status messages (``NATS/1.0 404``..., no payload), which
nats-py's fetch reads, still go nats-py's way.

Publishing, nats-py checks each header name with a regular expression, builds each command on
its own and asks its flusher for a flush per message: about 9 us per message with the four
headers of an atomic batch's copies, against under 2 us for the commands of
:func:`krenalis.stream.publisher.batch_commands` sent by one :func:`publish_many` per batch
(bench/RESULTS.md, "Archive").
"""

from __future__ import annotations

import asyncio
import json
import time

from nats import errors
from nats.aio.client import Client as _NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StatusCode
from nats.js.client import JetStreamContext
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

__all__ = ["Client", "lean_fetch", "lean_next_msg", "publish_many"]

_CRLF = b"\r\n"


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """`Name: Value` lines -> dict, as nats-py's `Client._parse_header_lines`."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key.split() != [key]:  # whitespace inside a name: not a header
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


#: Where a status message's headers have a space: ``NATS/1.0 404``.
_STATUS_AT = len(b"NATS/1.0")
_SPACE = ord(" ")


#: Operations of one line, handed to nats-py's parser as they are.
_ONE_LINE_OPS = (b"PING", b"PONG", b"+OK", b"-ERR", b"INFO")


class _Parser(Parser):
    """nats-py's protocol parser, faster for messages (MSG, HMSG): each message is read at its
    position in the received bytes, where nats-py's matches two regular expressions, keeps the
    arguments in a dict, copies header and payload twice and deletes each message from the front
    of its buffer. A one-line operation (PING, INFO, -ERR...) is handed to nats-py's parser on its
    own; anything else (a malformed message) with all that follows, so that nats-py's parser
    finds what is wrong. A message not received whole waits for the next bytes.
    tests/stream/test_client.py checks that both parsers make the same calls, however the bytes
    are split."""

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        if self.state != AWAITING_CONTROL_LINE:  # in the middle of a message of nats-py's parser
            await super().parse()
        while self.buf and self.state == AWAITING_CONTROL_LINE:
            # A reset while a call is awaited (a reconnection) gives the parser a new buffer:
            # what is left of this one belongs to the old connection and is dropped.
            buffer = self.buf
            received = bytes(buffer)
            pos, waiting = await self._messages(received, buffer)
            if self.buf is not buffer:
                return
            del buffer[:pos]
            if waiting:
                return  # the rest has not arrived yet
            if not received.startswith(_ONE_LINE_OPS, pos):
                await super().parse()  # not a message we can read: nats-py's parser decides
                return
            line = received.index(_CRLF, pos) + 2 - pos
            one, rest = buffer[:line], buffer[line:]
            self.buf = one
            await super().parse()
            if self.buf is not one:
                return
            one.extend(rest)

    async def _messages(self, received: bytes, buffer: bytearray) -> tuple[int, bool]:
        """Hand over each whole, well-formed message from the start of `received`; return where
        what is left starts, and whether it is only waiting for more bytes."""
        pos, size = 0, len(received)
        process, take = self.nc._process_msg, self.nc._take_lean
        while pos < size:
            end = received.find(_CRLF, pos)
            if end < 0:
                return pos, True
            if received.startswith(b"HMSG ", pos):
                args = received[pos + 5 : end].split()
                if not (
                    len(args) in (4, 5)
                    and args[1].isdigit()
                    and args[-2].isdigit()
                    and args[-1].isdigit()
                ):
                    return pos, False
                header_size, total = int(args[-2]), int(args[-1])
                has_reply = len(args) == 5
            elif received.startswith(b"MSG ", pos):
                args = received[pos + 4 : end].split()
                if not (len(args) in (3, 4) and args[1].isdigit() and args[-1].isdigit()):
                    return pos, False
                header_size, total = 0, int(args[-1])
                has_reply = len(args) == 4
            else:
                return pos, False
            start = end + 2
            if start + total + 2 > size:
                return pos, True
            header = received[start : start + header_size] if header_size else None
            payload = received[start + header_size : start + total]
            pos = start + total + 2
            sid, reply = int(args[1]), args[2] if has_reply else b""
            # A stream message for a lean subscription is queued without a coroutine.
            if not take(sid, args[0], reply, payload, header):
                await process(sid, args[0], reply, payload, header)
                if self.buf is not buffer:
                    return pos, True
        return pos, True


class Client(_NatsClient):
    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._ps = _Parser(self)
        #: Subscriptions whose messages are queued without their headers (:func:`lean_next_msg`).
        self.lean_sids: set[int] = set()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        if not self._take_lean(sid, subject, reply, data, headers):
            # Anything unusual (a status, a limit reached): nats-py's way, errors included.
            await super()._process_msg(sid, subject, reply, data, headers)

    def _take_lean(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> bool:
        """Queue a stream message of a lean subscription; False for anything else."""
        sub = self._subs.get(sid) if sid in self.lean_sids else None
        if (
            sub is None
            or not data
            or (headers and headers[_STATUS_AT] == _SPACE)
            or sub._max_msgs > 0
            or sub._pending_queue.full()
            or 0 < sub._pending_bytes_limit <= sub._pending_size + len(data)
        ):
            return False
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        sub._received += 1
        sub._pending_size += len(data)
        sub._pending_queue.put_nowait(_StreamMsg(self, subject.decode(), reply.decode(), data, sid))
        return True

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self.lean_sids.discard(sid)  # a worker made again subscribes anew: forget the old one
        super()._remove_sub(sid, max_msgs)


class _StreamMsg(Msg):
    """A nats-py `Msg` made with only what a lean subscription's message has; the other fields
    (headers, metadata, acked) keep Msg's defaults. Half the time of Msg's own ``__init__``."""

    def __init__(self, client: _NatsClient, subject: str, reply: str, data: bytes, sid: int):
        self._client = client
        self.subject = subject
        self.reply = reply
        self.data = data
        self._sid = sid


def _pop(sub: Subscription) -> Msg:
    """The next queued message, with the bookkeeping nats-py's `next_msg` does."""
    queue = sub._pending_queue
    msg = queue.get_nowait()
    sub._pending_size -= len(msg.data)
    queue.task_done()
    return msg


def lean_next_msg(sub: Subscription) -> Subscription:
    """Make `sub.next_msg` return a message already queued without a task or a timer, as
    nats-py's does after its wait (the same bookkeeping); an empty queue, a closed connection
    or a callback subscription go to nats-py's own `next_msg`. On our :class:`Client`, the
    subscription's messages also come without their headers."""
    slow = sub.next_msg
    queue = sub._pending_queue
    if sub._cb is not None:
        return sub
    if isinstance(sub._conn, Client):
        sub._conn.lean_sids.add(sub._id)

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        if queue.empty() or sub._conn.is_closed:
            return await slow(timeout)
        return _pop(sub)

    sub.next_msg = next_msg  # type: ignore[method-assign]
    return sub


async def lean_fetch(
    psub: JetStreamContext.PullSubscription, batch: int, timeout: float
) -> list[Msg]:
    """``psub.fetch(batch, timeout)`` for a subscription made lean (:func:`lean_next_msg`): the
    same pull requests and the same answers to the server's statuses, but the messages already
    queued are taken in one loop, where nats-py's fetch awaits ``next_msg``, checks the status
    and reads the clock for each (about 2 us per message of a worker's CPU).

    The busy path is this one: what is queued, then a `no_wait` request for the rest and what
    it brings. When that request brings no message (an idle stream: a status, a heartbeat),
    what time is left goes to nats-py's fetch, which waits as it always does."""
    sub = psub._sub
    if batch < 2 or sub is None or sub._conn.is_closed or timeout <= 0:
        return await psub.fetch(batch, timeout)
    started = time.monotonic()
    msgs: list[Msg] = []
    # Statuses queued before this request answered an earlier one: dropped, as nats-py does.
    needed, _ = _take_queued(sub, msgs, batch, stale=True)
    if not needed:
        return msgs
    request: dict[str, int | bool] = {"batch": needed, "no_wait": True}
    if not msgs:  # nats-py's choice: with expires, the server waits instead (see its fetch)
        request["expires"] = int(timeout * 1_000_000_000) - 100_000
    await psub._nc.publish(psub._nms, json.dumps(request).encode(), psub._deliver)
    await asyncio.sleep(0)
    try:
        first = await sub.next_msg(timeout)
    except TimeoutError:
        if msgs:
            return msgs
        raise
    if _answer(first) == _MESSAGE:
        msgs.append(first)
        await _take_rest(sub, msgs, needed - 1, started + timeout)
    if msgs:
        return msgs
    left = timeout - (time.monotonic() - started)
    if left <= 0:
        raise errors.TimeoutError
    return await psub.fetch(needed, left)


_MESSAGE, _SKIP, _END = 0, 1, 2


def _answer(msg: Msg) -> int:
    """What a message answering our request is: a stream message, a status to skip (a
    heartbeat, a conflict), or the end of what this request brings (no messages, request
    timeout). Any other status raises as nats-py's fetch raises it."""
    if msg.headers is None:
        return _MESSAGE
    status = JetStreamContext.is_status_msg(msg)
    if not status:
        return _MESSAGE
    if status in (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT):
        return _END
    if status != StatusCode.CONTROL_MESSAGE:
        JetStreamContext._is_processable_msg(status, msg)  # raises for what is not temporary
    return _SKIP


def _take_queued(sub: Subscription, msgs: list[Msg], needed: int, stale: bool) -> tuple[int, bool]:
    """Move queued messages to `msgs` until `needed` are taken or the queue is empty; return
    how many are still needed and whether a status ended the request (never when `stale`:
    statuses then are dropped)."""
    queue = sub._pending_queue
    while needed and queue.qsize():
        msg = _pop(sub)
        if msg.headers is None:  # a lean subscription's stream message: no call to classify it
            answer = _MESSAGE
        elif stale and JetStreamContext.is_status_msg(msg):
            answer = _SKIP
        else:
            answer = _answer(msg)
        if answer == _MESSAGE:
            msgs.append(msg)
            needed -= 1
        elif answer == _END:
            return needed, True
    return needed, False


async def _take_rest(sub: Subscription, msgs: list[Msg], needed: int, deadline: float) -> None:
    """Take up to `needed` more messages for the request until its end or the `deadline`: all
    that is queued at once, then a wait for the next bytes to arrive."""
    while needed:
        needed, ended = _take_queued(sub, msgs, needed, stale=False)
        left = deadline - time.monotonic()
        if ended or not needed or left <= 0:
            return
        try:
            msg = await sub.next_msg(left)
        except TimeoutError:
            return
        answer = _answer(msg)
        if answer == _END:
            return
        if answer == _MESSAGE:
            msgs.append(msg)
            needed -= 1


async def publish_many(nc: _NatsClient, commands: list[bytes]) -> None:
    """Send commands (``batch_commands``) in one write to the client's buffer and one flush,
    with the checks nats-py's publish makes (closed, draining, buffer full while away)."""
    if nc.is_closed:
        raise errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise errors.ConnectionDrainingError
    data = b"".join(commands)
    limit = nc._max_pending_size
    if not nc.is_connected and (limit <= 0 or len(data) + nc._pending_data_size > limit):
        raise errors.OutboundBufferLimitError
    nc.stats["out_msgs"] += len(commands)
    nc.stats["out_bytes"] += len(data)
    await nc._send_command(data)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
