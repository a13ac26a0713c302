"""Structured logging: one line per event worth knowing, `key=value` fields after the message."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["setup_logging"]

# Attributes every LogRecord has; anything else was passed with `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = " ".join(
            f"{k}={_value(v)}" for k, v in vars(record).items() if k not in _STANDARD
        )
        line = f"{when}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: "
        line += record.getMessage() + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _value(v: object) -> str:
    text = str(v)
    return f'"{text}"' if (" " in text or not text) else text


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup_logging(level: str = "INFO") -> None:
    handler = _Stderr()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nats-py logs every reconnect attempt with a traceback; our callbacks log them once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    # httpx logs every request at INFO: one line per webhook delivery is noise, not an event.
    logging.getLogger("httpx").setLevel(logging.WARNING)
