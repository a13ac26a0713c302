"""Publishing events into EVENTS: one copy per pipeline, every PubAck awaited.

Each copy carries `Nats-Msg-Id: <messageId>/<pipeline>`, so a client that retries a request
within the stream's duplicate window does not create a second copy, and our own retries during
a cluster leader election are safe.

PubAcks come back on one wildcard inbox of ours (what nats-py's publish_async does, without its
per-message semaphore task, which cost about half of the publishing CPU: see bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from krenalis.backoff import Backoff
from krenalis.errors import PublishError
from krenalis.stream.client import publish_many
from krenalis.stream.layout import subject

__all__ = ["OutMessage", "Publisher", "copy_for", "header_safe", "message_id"]

log = logging.getLogger("krenalis.stream")

#: Copies in flight per publisher before a publish waits for acks (nats-py's default is 4000).
MAX_IN_FLIGHT = 4096
#: The server's limit of messages in one atomic batch.
MAX_BATCH = 1000
#: Fewer copies than this (in one stream) go one by one: an atomic batch saves fsyncs, but a
#: stream commits only about 400 batches a second against about 5,000 copies one by one
#: (measured: bench/RESULTS.md, section 4), so lone batches of under about 13 copies lose. 10:
#: a request of 10 events has 10 copies for each stream, and under load a group of a single
#: such request sent one by one cost serve a fifth of its rate (bench/MEASURED.md, "The
#: archive in a stream of its own").
MIN_ATOMIC = 10
#: Batches of grouped requests in flight per publisher. While they are, the requests that come
#: meanwhile wait and go together in the next one: a stream commits a few hundred batches a
#: second whatever their size (bench/RESULTS.md, section 4), so under load a few large batches
#: store far more than one per request ("group commit", as databases do with their log).
GROUPS_IN_FLIGHT = 4


class OutMessage(NamedTuple):
    """One message to store: ``ttl`` (whole seconds) makes the stream remove it by itself
    then (an archive copy); 0: kept until removed. A named tuple: the collector makes two per
    event, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) showed
    in its profile."""

    subject: str
    data: bytes
    msg_id: str
    ttl: int = 0


def message_id(event_message_id: str, pipeline: str) -> str:
    """The copy's Nats-Msg-Id: see :func:`header_safe`."""
    return f"{header_safe(event_message_id)}/{pipeline}"


def header_safe(event_message_id: str) -> str:
    """A messageId as it may go into a Nats-Msg-Id. nats-py trims header values and turns
    CR/LF into spaces, so an id with spaces or control characters is hashed: distinct ids must
    never be merged. (Every whitespace character but the ASCII space is unprintable.)"""
    if event_message_id.isprintable() and " " not in event_message_id:
        return event_message_id
    digest = hashlib.sha256(event_message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"


def batch_commands(messages: list[OutMessage], batch_id: str) -> list[bytes]:
    """The HPUB commands (no reply subject) of an atomic batch's messages but its commit, as
    nats-py's publish would write them with the headers ``Nats-Msg-Id``, ``Nats-Batch-Id``,
    ``Nats-Batch-Sequence`` (from 1) and, for a message with a ttl, ``Nats-TTL``.

    Written straight as bytes: nats-py checks each header name with a regular expression and
    builds each command on its own (about 9 us per message with these four headers); a dict of
    headers per message joined as text cost 2.6 us, this 1.4 (``python -m bench.micro commands``).
    The names are ours and the values hold no line break (:func:`header_safe`)."""
    start = b"NATS/1.0\r\nNats-Msg-Id: "
    middle = b"\r\nNats-Batch-Id: %s\r\nNats-Batch-Sequence: " % batch_id.encode()
    commands = []
    for number, msg in enumerate(messages, 1):
        ttl = b"Nats-TTL: %d\r\n" % msg.ttl if msg.ttl else b""
        head = b"%s%s%s%d\r\n%s\r\n" % (start, msg.msg_id.encode(), middle, number, ttl)
        size = len(head) + len(msg.data)
        commands.append(
            b"HPUB %s  %d %d\r\n%s%s\r\n" % (msg.subject.encode(), len(head), size, head, msg.data)
        )
    return commands


def copy_for(pipeline: str, shard: int, data: bytes, event_message_id: str) -> OutMessage:
    return OutMessage(subject(pipeline, shard), data, message_id(event_message_id, pipeline))


class _AckReply(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool | None = None
    count: int | None = None  # messages of an atomic batch
    error: dict | None = None


_decode_ack = msgspec.json.Decoder(_AckReply).decode


class _AckInbox:
    """Futures for PubAcks, resolved by replies on `<inbox>.<token>`."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = ""
        self.pending: dict[str, asyncio.Future[PubAck]] = {}
        self.tokens = itertools.count()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def start(self) -> None:
        if not self.prefix:
            self.prefix = self.nc.new_inbox() + "."
            await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    async def send(
        self, msg: OutMessage, batch_headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        await self.slots.acquire()
        token = str(next(self.tokens))
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._release(token))
        self.pending[token] = future
        try:
            headers = {"Nats-Msg-Id": msg.msg_id}
            if msg.ttl:
                headers["Nats-TTL"] = str(msg.ttl)
            if batch_headers:
                headers.update(batch_headers)
            await self.nc.publish(msg.subject, msg.data, reply=self.prefix + token, headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    def _release(self, token: str) -> None:
        self.pending.pop(token, None)
        self.slots.release()

    async def _on_reply(self, reply: Msg) -> None:
        future = self.pending.get(reply.subject[len(self.prefix) :])
        if future is None or future.done():
            return
        if reply.headers and reply.headers.get("Status") == "503":
            future.set_exception(NoStreamResponseError())
            return
        try:
            ack = _decode_ack(reply.data)
        except msgspec.DecodeError as exc:
            future.set_exception(APIError(description=f"invalid PubAck: {exc}"))
            return
        if ack.error is not None:
            future.set_exception(_api_error(ack.error))
        else:
            future.set_result(
                PubAck(
                    stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate, batch_size=ack.count
                )
            )


class Publisher:
    """Publish batches of messages and return only when every one is stored.

    `timeout` bounds one attempt's wait for PubAcks; failed copies are published again with
    the same id, with backoff, until `deadline` seconds have passed since the call began.
    """

    def __init__(
        self,
        nc: Client,
        *,
        timeout: float = 5.0,
        deadline: float = 10.0,
        alive: Callable[[], bool] | None = None,
        atomic: bool = True,
    ) -> None:
        self.nc = nc
        self.inbox = _AckInbox(nc)
        # With any sync interval: with `sync_interval: 2m` too, `serve` accepted 9-11k events/s
        # grouped in atomic batches against 5.5k copy by copy (the collector's CPU per copy).
        self.atomic = atomic
        self.timeout = timeout
        self.deadline = deadline
        # False once NATS has been gone for a while: stop retrying and let the caller answer 503.
        self.alive = alive or (lambda: True)
        # Group commit: requests waiting for the next group, and the groups in flight.
        self._waiting: deque[_Request] = deque()
        self._group_slots = asyncio.Semaphore(GROUPS_IN_FLIGHT)
        self._grouping: asyncio.Task[None] | None = None
        self._groups: set[asyncio.Task[None]] = set()

    async def publish(self, *parts: list[OutMessage]) -> list[PubAck]:
        """Store every message of every part; their acks in order; raise PublishError if some
        are still unstored at the deadline. Each part's messages go to one stream (an atomic
        batch cannot span two): the collector's pipelines' copies, and its archive's.

        With `atomic`, the copies go as JetStream atomic batches first, with those of the
        requests published at the same time (see GROUPS_IN_FLIGHT; ADR-50: stored at once, one
        fsync and one PubAck per batch: 4x the throughput of a server with
        `sync_interval: always`): a group sends one batch per part, at once, so each stream
        stores its own in parallel and a request waits for one group. A part of a group with
        under MIN_ATOMIC copies goes one by one. A batch is refused whole if one id is a
        duplicate (a client retrying a request), and may fail during a leader election: then
        its messages go one by one, where each duplicate is dropped alone and each failure is
        retried with the same id.
        """
        await self.inbox.start()
        if not self.atomic:
            return await self._one_by_one([m for part in parts for m in part])
        if sum(map(len, parts)) <= MAX_BATCH:
            return await self._grouped(parts)
        chunks = [part[i : i + MAX_BATCH] for part in parts for i in range(0, len(part), MAX_BATCH)]
        results = await asyncio.gather(*(self._grouped((chunk,)) for chunk in chunks))
        return [ack for acks in results for ack in acks]

    async def _grouped(self, parts: tuple[list[OutMessage], ...]) -> list[PubAck]:
        """Store the parts in the next group's batches (see GROUPS_IN_FLIGHT)."""
        future: asyncio.Future[list[PubAck]] = asyncio.get_running_loop().create_future()
        self._waiting.append((parts, sum(map(len, parts)), future))
        if self._grouping is None or self._grouping.done():
            self._grouping = asyncio.create_task(self._send_groups(), name="publish-groups")
        return await future

    async def _send_groups(self) -> None:
        while self._waiting:
            await self._group_slots.acquire()
            group: list[_Request] = []
            size = 0
            while self._waiting and size + self._waiting[0][1] <= MAX_BATCH:
                request = self._waiting.popleft()
                group.append(request)
                size += request[1]
            task = asyncio.create_task(self._send_group(group))
            self._groups.add(task)
            task.add_done_callback(self._groups.discard)

    async def _send_group(self, group: list[_Request]) -> None:
        """The group's batches, one per part, at once; each request's acks to its future."""
        try:
            width = max(len(parts) for parts, _, _ in group)
            stored = await asyncio.gather(*(self._send_part(group, k) for k in range(width)))
            for i, (_, _, future) in enumerate(group):
                _settle(future, _joined([part[i] for part in stored]))
        except BaseException as exc:
            for _, _, future in group:
                _settle(future, exc)
            raise
        finally:
            self._group_slots.release()

    async def _send_part(self, group: list[_Request], k: int) -> list[list[PubAck] | BaseException]:
        """Part `k` of each request of the group: one atomic batch, or, when it has too few
        copies or is refused (a duplicate id of a client's retry, an election), each request's
        copies one by one, as a request alone would."""
        requests = [parts[k] if k < len(parts) else [] for parts, _, _ in group]
        messages = [m for request in requests for m in request]
        if not messages:  # no archive copy (archive: 0), or no pipeline takes the events
            return [[] for _ in requests]
        if len(messages) >= MIN_ATOMIC:
            try:
                commit = await self._atomic(messages)
            except (NatsError, TimeoutError, ConnectionError) as exc:
                log.debug("Atomic batch refused; publishing one by one.",
                          extra={"error": _describe(exc)})  # fmt: skip
            else:
                seq = commit.seq - len(messages) + 1
                acks: list[list[PubAck] | BaseException] = []
                for request in requests:
                    acks.append(
                        [PubAck(stream=commit.stream, seq=seq + i) for i in range(len(request))]
                    )
                    seq += len(request)
                return acks
        return await asyncio.gather(
            *(self._one_by_one(request) for request in requests), return_exceptions=True
        )

    async def _atomic(self, messages: list[OutMessage]) -> PubAck:
        batch_id = uuid.uuid4().hex
        last = len(messages)
        if any(len(msg.data) > self.nc.max_payload for msg in messages):
            raise MaxPayloadError
        # One write for the batch: nats-py's publish per message was most of its cost.
        await publish_many(self.nc, batch_commands(messages[:-1], batch_id))
        commit = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(last)}
        commit["Nats-Batch-Commit"] = "1"
        future = await self.inbox.send(messages[-1], commit)
        try:
            ack = await asyncio.wait_for(future, self.timeout)
        finally:
            future.cancel()
        if ack.batch_size != last:
            raise APIError(description=f"atomic batch stored {ack.batch_size} of {last} messages")
        return ack

    async def _one_by_one(self, messages: list[OutMessage]) -> list[PubAck]:
        give_up = time.monotonic() + self.deadline
        acks: dict[int, PubAck] = {}
        pending = list(range(len(messages)))
        backoff = Backoff(base=0.1, cap=2.0)
        while pending:
            await backoff.wait()
            failed, last_error = await self._attempt(messages, pending, acks)
            if failed and (time.monotonic() >= give_up or not self.alive()):
                raise PublishError(
                    f"{len(failed)} of {len(messages)} event copies were not stored in "
                    f"JetStream: {last_error}"
                )
            if failed and len(failed) < len(pending):
                backoff.reset()  # progress: the server is back, retry the rest at once
            pending = failed
        return [acks[i] for i in range(len(messages))]

    async def _attempt(
        self, messages: list[OutMessage], indexes: list[int], acks: dict[int, PubAck]
    ) -> tuple[list[int], str]:
        futures: dict[int, asyncio.Future[PubAck]] = {}
        failed: list[int] = []
        error = ""
        for i in indexes:
            try:
                futures[i] = await self.inbox.send(messages[i])
            except Exception as exc:  # closed or broken connection: retried like a lost ack
                failed.append(i)
                error = _describe(exc)
        if futures:
            await asyncio.wait(futures.values(), timeout=self.timeout)
        for i, future in futures.items():
            if not future.done():
                future.cancel()  # frees its slot; a late PubAck is ignored
                failed.append(i)
                error = f"no PubAck within {self.timeout:g}s"
            elif future.exception() is not None:
                failed.append(i)
                error = _describe(future.exception())
            else:
                acks[i] = future.result()
        return sorted(failed), error


def _joined(outcomes: list[list[PubAck] | BaseException]) -> list[PubAck] | BaseException:
    """A request's acks, its parts' laid end to end, or the first part's error."""
    acks: list[PubAck] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            return outcome
        acks += outcome
    return acks


#: A request waiting for its group: its parts, their copies, and its future.
_Request = tuple[tuple[list[OutMessage], ...], int, asyncio.Future[list[PubAck]]]


def _settle(future: asyncio.Future[list[PubAck]], result: list[PubAck] | BaseException) -> None:
    """Give a waiting request its acks or its error (unless it stopped waiting)."""
    if future.done():
        return
    if isinstance(result, asyncio.CancelledError):
        future.cancel()
    elif isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _api_error(error: dict) -> APIError:
    """The typed error of an error PubAck (nats-py's from_error raises it rather than return)."""
    try:
        APIError.from_error(error)
    except APIError as exc:
        return exc
    return APIError(description=str(error))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, APIError) and exc.description:
        return f"{exc.description} (code {exc.err_code})"
    if isinstance(exc, NoStreamResponseError):
        return "no response from the stream (no JetStream server or leader available)"
    return str(exc) or type(exc).__name__
