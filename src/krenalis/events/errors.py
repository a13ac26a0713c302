"""Errors raised while decoding events.

Exception
 ├── RequestError    the whole request is refused (the collector answers with its status)
 └── EventError      one event of a request is rejected (internal; becomes a Rejection)
ValueError
 └── InvalidEvent    bytes read back from the stream are not a valid event
"""

from __future__ import annotations

__all__ = ["EventError", "InvalidEvent", "RequestError"]


class RequestError(Exception):
    """A request-level problem: the whole request is refused."""

    def __init__(self, message: str, *, status: int = 400, code: str = "BadRequest") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"RequestError(status={self.status}, code={self.code!r}, message={self.message!r})"


class EventError(Exception):
    """One event is invalid; the message is the rejection reason reported to the client."""


class InvalidEvent(ValueError):
    """Bytes read from the stream do not hold a valid event (the consumer terminates them)."""
