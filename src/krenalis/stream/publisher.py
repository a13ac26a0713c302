"""Publishing events into EVENTS: one copy per pipeline, every PubAck awaited.

Each copy carries `Nats-Msg-Id: <messageId>/<pipeline>`, so a client that retries a request
within the stream's duplicate window does not create a second copy, and our own retries during
a cluster leader election are safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, TooManyStalledMsgsError

from krenalis.stream.backoff import Backoff
from krenalis.stream.layout import STREAM, subject

__all__ = ["OutMessage", "PublishError", "Publisher", "copy_for", "message_id"]

log = logging.getLogger("krenalis.stream")


class PublishError(RuntimeError):
    """Some copies could not be stored within the publish deadline; nothing is promised."""


@dataclass(frozen=True, slots=True)
class OutMessage:
    subject: str
    data: bytes
    msg_id: str


def message_id(event_message_id: str, pipeline: str) -> str:
    return f"{event_message_id}/{pipeline}"


def copy_for(pipeline: str, shard: int, data: bytes, event_message_id: str) -> OutMessage:
    return OutMessage(subject(pipeline, shard), data, message_id(event_message_id, pipeline))


class Publisher:
    """Publish batches of messages and return only when every one is stored.

    `timeout` bounds one attempt's wait for PubAcks; failed copies are published again with
    the same id, with backoff, until `deadline` seconds have passed since the call began.
    """

    def __init__(self, js: JetStreamContext, *, timeout: float = 5.0, deadline: float = 10.0):
        self.js = js
        self.timeout = timeout
        self.deadline = deadline

    async def publish(self, messages: list[OutMessage]) -> list[PubAck]:
        """Store every message; raise PublishError if some are still unstored at the deadline."""
        give_up = time.monotonic() + self.deadline
        acks: dict[int, PubAck] = {}
        pending = list(range(len(messages)))
        backoff = Backoff(base=0.1, cap=2.0)
        last_error = ""
        while pending:
            await backoff.wait()
            failed, last_error = await self._attempt(messages, pending, acks)
            if failed and time.monotonic() >= give_up:
                raise PublishError(
                    f"{len(failed)} of {len(messages)} event copies were not stored in the "
                    f"{STREAM} stream within {self.deadline:g}s: {last_error}"
                )
            if failed and failed != pending:
                backoff.reset()
            pending = failed
        return [acks[i] for i in range(len(messages))]

    async def _attempt(
        self, messages: list[OutMessage], indexes: list[int], acks: dict[int, PubAck]
    ) -> tuple[list[int], str]:
        futures: dict[int, asyncio.Future[PubAck]] = {}
        failed: list[int] = []
        error = ""
        for i in indexes:
            msg = messages[i]
            try:
                futures[i] = await self.js.publish_async(
                    msg.subject, msg.data, wait_stall=self.timeout,
                    headers={"Nats-Msg-Id": msg.msg_id},
                )  # fmt: skip
            except (TooManyStalledMsgsError, ConnectionClosedError, OSError) as exc:
                failed.append(i)
                error = _describe(exc)
        if futures:
            await asyncio.wait(futures.values(), timeout=self.timeout)
        for i, fut in futures.items():
            if not fut.done():
                # Cancelling releases the client's in-flight slot; a late PubAck is ignored.
                fut.cancel()
                failed.append(i)
                error = f"no PubAck within {self.timeout:g}s"
            elif fut.exception() is not None:
                failed.append(i)
                error = _describe(fut.exception())
            else:
                acks[i] = fut.result()
        if failed:
            log.debug("Publish attempt incomplete; retrying.", extra={"failed": len(failed)})
        return sorted(failed), error


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, APIError):
        return f"{exc.description} (code {exc.err_code})"
    return str(exc) or type(exc).__name__
