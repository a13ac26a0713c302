"""The request-level part of a body: the write key, a connection id, a batch's shared context
and its sentAt (the envelope of a batch, or the authentication keys of a single event)."""

from __future__ import annotations

from datetime import datetime

from krenalis.errors import EventError, RequestError

from .context import decode_context
from .timestamps import parse_timestamp

__all__ = ["BATCH_NOT_ARRAY", "Envelope"]

BATCH_NOT_ARRAY = "property 'batch' is not a valid array"
_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


class Envelope:
    """The request-level properties of an object body (batch envelope or single event)."""

    __slots__ = ("batch", "context", "sent_at", "write_key", "connection_id")

    def __init__(self, body: dict, *, auth_only: bool) -> None:
        self.batch = None
        self.context = None
        self.sent_at = None
        self.write_key = _write_key(body)
        self.connection_id = _connection_id(body)
        if auth_only:  # a typed endpoint's body is the event: only the keys that authenticate it
            return
        if "batch" in body:
            self.batch = body["batch"]
            if type(self.batch) is not list:
                raise RequestError(BATCH_NOT_ARRAY)
        context = body.get("context")
        if "context" in body and type(context) is not dict:
            raise RequestError("property 'context' is not a valid object")
        if self.batch is not None and context is not None:
            try:
                self.context = decode_context(context)
            except EventError as exc:
                raise RequestError(str(exc)) from None
        if "sentAt" in body:
            self.sent_at = _sent_at(body["sentAt"])


def _write_key(body: dict) -> str | None:
    if "writeKey" not in body:
        return None
    key = body["writeKey"]
    if type(key) is not str:
        raise RequestError("property 'writeKey' is not a valid string")
    if not key:
        raise RequestError("property 'writeKey' cannot be empty")
    return key


def _connection_id(body: dict) -> str | None:
    if "connectionId" not in body:
        return None
    value = body["connectionId"]
    if type(value) is not str:
        raise RequestError("property 'connectionId' is not a string")
    if len(value) != 12 or not _BASE58.issuperset(value):
        raise RequestError("property 'connectionId' is not a valid connection identifier")
    return value


def _sent_at(value: object) -> datetime:
    if type(value) is not str:
        raise RequestError("property 'sentAt' is not a valid string")
    try:
        return parse_timestamp(value, "sentAt")
    except ValueError as exc:
        raise RequestError(str(exc)) from None
