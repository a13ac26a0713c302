"""The one small contract every sink (warehouse, webhook, file, ...) implements.

A sink receives a batch of events (:class:`krenalis.events.StoredEvent`: the bytes the collector
published, and the decoded object as ``fields``) and answers, per event, one of three outcomes.
The worker turns outcomes into NATS acks: a sink knows nothing about NATS.

- ``Delivered``: committed (transaction committed, 2xx received, file fsynced) -> ack.
- ``Retry``: a transient failure (connection lost, timeout, 408/429/5xx) -> try again later,
  after ``after`` seconds if the sink knows (``Retry-After``), else the worker's backoff.
- ``Rejected``: a permanent failure (constraint violation, other 4xx) -> dead letter.

Each sink declares its options beside it, as a :class:`SinkOptions` subclass tagged with the
destination ``type`` it serves, and lists it in :data:`krenalis.sinks.registry.SINKS`; the
workspace file is checked against those declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import msgspec
from msgspec import inspect as mi

from krenalis.events.wire import StoredEvent, read_event
from krenalis.workspace.values import Duration, dec_hook, describe, is_secret, redacted

__all__ = [
    "DELIVERED",
    "Delivered",
    "Event",
    "Outcome",
    "Rejected",
    "Retry",
    "Sink",
    "SinkOptions",
    "reader_of",
]

Event = StoredEvent


@dataclass(frozen=True, slots=True)
class Delivered:
    """The sink committed the event."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: the event should be tried again."""

    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A permanent failure: trying again would not help."""

    reason: str


Outcome = Delivered | Retry | Rejected

DELIVERED = Delivered()


class Sink(Protocol):
    """Where a pipeline's events end up.

    A sink may also have a ``read_event(data) -> Event`` method: the worker then reads each
    fetched message with it instead of :func:`krenalis.events.read_event`, whose checks and
    errors it must keep (:func:`reader_of`). The warehouse's makes each row in the same pass.
    """

    async def write(self, events: list[Event]) -> list[Outcome]:
        """Write a batch; return one outcome per event, in the same order.

        Raising an exception means "every event of the batch: Retry(str(exc))".
        """
        ...

    async def healthcheck(self) -> None:
        """Raise if the sink cannot work right now (for status and start-up checks)."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


def reader_of(sink: Sink) -> Callable[[bytes], Event]:
    """How the worker reads messages for `sink`: its own ``read_event``, or the common one."""
    reader: Callable[[bytes], Event] = getattr(sink, "read_event", read_event)
    return reader


class SinkOptions(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"
):
    """What every destination has, whatever its ``type``.

    A sink subclasses it with ``tag="<type>"``, declares its own options as fields (bounds as
    ``Annotated[..., msgspec.Meta(...)]``, checked values as types of
    :mod:`krenalis.workspace.values`) and implements :meth:`build`. ``retry_window`` (seconds)
    is None when the file leaves it to the pipeline or the default.
    """

    retry_window: Duration | None = None

    @property
    def type(self) -> str:
        """The destination type: the class's tag."""
        return str(self.__struct_config__.tag)

    def __post_init__(self) -> None:
        # Options made in Python skip the workspace loader: hold them to the same declaration
        # (for the loader's options this finds nothing, every field being checked already).
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            try:
                msgspec.convert(value, field.type, dec_hook=dec_hook)
            except msgspec.ValidationError:
                declared = _field_types(type(self))[field.name]
                got = "" if is_secret(declared) else f", got {value!r}"
                raise ValueError(f"{field.name} must be {describe(declared)}{got}") from None

    def build(self) -> Sink:
        """A new sink delivering to this destination."""
        raise NotImplementedError

    def __repr__(self) -> str:
        # Secrets (webhook secrets, header values, URLs with tokens) never reach a log line.
        fields = _field_types(type(self))
        shown = ", ".join(
            f"{name}={redacted(t, getattr(self, name))!r}" for name, t in fields.items()
        )
        return f"{type(self).__name__}({shown})"


@cache
def _field_types(cls: type[SinkOptions]) -> dict[str, mi.Type]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {field.name: field.type for field in info.fields}
