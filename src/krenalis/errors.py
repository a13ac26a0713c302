"""Every error Krenalis raises on purpose, in one tree.

Each message is written for the person who has to act on it: it names the thing that is wrong
and what would be right, and never holds a secret (a write key, a password, an NKey seed).

KrenalisError
 ├── ConfigError              a KRENALIS_* setting is missing or wrong: start-up stops
 │    └── ServerConfigError   nats-server refused a configuration file we wrote
 ├── WorkspaceError           the workspace file: "file:line: reason"
 │    └── FilterError         a filter or consent rule that cannot be built
 ├── TransformLoadError       a pipeline's steps cannot be loaded (a function, a database)
 ├── WorkspaceChangeError     a workspace change that cannot be stored as asked
 │    └── RevisionConflict    another change was stored since this one read the workspace
 ├── RequestError             an HTTP request refused as a whole (status, code, message)
 ├── EventError               one event of a request rejected; the rest goes on
 │    └── InvalidEvent        bytes read back from the stream are not a valid event
 ├── StreamError              NATS and JetStream
 │    ├── NatsAuthError       the server refused the credentials
 │    ├── ServerTooOldError   the server is older than MIN_SERVER_VERSION
 │    ├── PublishError        copies not stored within the publish deadline
 │    └── ReplayTaken         another process took over a replay (its checkpoint moved)
 ├── SinkError                a warehouse, webhook or file sink
 │    └── InvalidRow          an event that cannot become a warehouse row
 ├── EmbeddedServerError      a bundled server (nats-server, PostgreSQL) cannot run
 │    ├── NatsServerNotFound  the nats-server binary is missing from the environment
 │    ├── NatsServerError     nats-server did not start
 │    └── EmbeddedPostgresError  the embedded PostgreSQL did not start
 └── CommandError             an operator command's expected failure, with its exit code
"""

from __future__ import annotations

__all__ = [
    "CommandError",
    "ConfigError",
    "EmbeddedPostgresError",
    "EmbeddedServerError",
    "EventError",
    "FilterError",
    "InvalidEvent",
    "InvalidRow",
    "KrenalisError",
    "NatsAuthError",
    "NatsServerError",
    "NatsServerNotFound",
    "PublishError",
    "RequestError",
    "ReplayTaken",
    "RevisionConflict",
    "ServerConfigError",
    "ServerTooOldError",
    "SinkError",
    "StreamError",
    "TransformLoadError",
    "WorkspaceChangeError",
    "WorkspaceError",
]


class KrenalisError(Exception):
    """The base of every error Krenalis raises on purpose."""


class ConfigError(KrenalisError, ValueError):
    """A setting is missing or wrong; the message names the variable and what is accepted."""


class ServerConfigError(ConfigError):
    """nats-server rejected a configuration (its own message is included)."""


class WorkspaceError(KrenalisError):
    """A workspace that cannot be used: ``file:line: reason``, or ``file: reason`` when the
    file itself cannot be read."""

    def __init__(self, filename: str, line: int | None, reason: str) -> None:
        super().__init__(f"{filename}:{line}: {reason}" if line else f"{filename}: {reason}")
        self.filename = filename
        self.line = line
        self.reason = reason


class TransformLoadError(KrenalisError):
    """A pipeline's transform steps cannot be loaded: ``step`` (a
    :class:`~krenalis.transforms.spec.Step`, None when no one step is at fault) and why."""

    def __init__(self, step: object, reason: str) -> None:
        where = f"transform[{step.index}] ({step.spec.label}): " if step is not None else ""  # type: ignore[attr-defined]
        super().__init__(where + reason)
        self.step = step
        self.reason = reason


class FilterError(KrenalisError, ValueError):
    """A filter or consent rule that cannot be built.

    ``obj`` is the offending part of the parsed input and ``key`` the key at fault in it, when
    known, so that the workspace loader, which holds line numbers, can point at them.
    """

    def __init__(self, message: str, obj: object = None, key: str | None = None) -> None:
        super().__init__(message)
        self.obj = obj
        self.key = key


class WorkspaceChangeError(KrenalisError):
    """A valid workspace that cannot be stored as asked: it would drop pending events, or the
    stored workspace changed meanwhile. The message says what to do."""


class RevisionConflict(WorkspaceChangeError):
    """Another change was stored since this one read the workspace (compare-and-set failed)."""


class RequestError(KrenalisError):
    """A request refused as a whole, answered as ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str = "BadRequest",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []

    def __repr__(self) -> str:
        return f"RequestError(status={self.status}, code={self.code!r}, message={self.message!r})"


class EventError(KrenalisError):
    """One event is invalid; the message is the rejection reason reported to the client."""


class InvalidEvent(EventError, ValueError):
    """Bytes read from the stream do not hold a valid event (the worker dead-letters them)."""


class StreamError(KrenalisError):
    """NATS or JetStream did not do what the event stream needs."""


class NatsAuthError(StreamError, ConnectionError):
    """The server refused our credentials."""


class ServerTooOldError(StreamError):
    """The server is older than the version the event stream requires."""


class PublishError(StreamError):
    """Some copies could not be stored within the publish deadline; nothing is promised."""


class ReplayTaken(StreamError):
    """Another process wrote a replay's record since this one read it (compare-and-set
    failed): that process goes on with the replay, this one stops."""


class SinkError(KrenalisError):
    """A sink cannot take an event or a batch."""


class InvalidRow(SinkError, ValueError):
    """An event that cannot be turned into a warehouse row (the sink rejects it alone)."""


class EmbeddedServerError(KrenalisError):
    """A bundled server (nats-server, PostgreSQL) cannot be started or used."""


class NatsServerNotFound(EmbeddedServerError, FileNotFoundError):
    """The bundled nats-server binary is missing from this Python environment."""


class NatsServerError(EmbeddedServerError):
    """The nats-server process could not be started."""


class EmbeddedPostgresError(EmbeddedServerError):
    """The embedded PostgreSQL could not be set up or started."""


class CommandError(KrenalisError):
    """An expected failure of an operator command: one line saying what to do, and the exit
    code (1, or 2 for a usage mistake)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
