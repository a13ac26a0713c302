r"""Structured logging: one line per event worth knowing, `key=value` fields after the message.

Values come from outside (a response body, an error text, a client's header), so they are
written so that they cannot break the line: a value with a space, a quote or a character that
is not printable is quoted, with the escapes ``\\``, ``\"``, ``\n``, ``\r``, ``\t``, ``\xNN``
and ``\uNNNN`` (terminal escape sequences included). A value can then neither end the line nor
forge another field. Messages get the same escapes for what is not printable, without quotes.
A traceback (a bug) still follows on its own lines.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["one_line", "setup_logging"]

# Attributes every LogRecord has; anything else was passed with `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = " ".join(f"{k}={_value(v)}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{when}.{int(record.msecs):03d}Z {record.levelname:<7} {record.name}: "
        line += one_line(record.getMessage()) + (f" {fields}" if fields else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _value(v: object) -> str:
    """A field's value as written in the line: bare when that is unambiguous, else quoted."""
    text = str(v)
    if text and text.isprintable() and " " not in text and '"' not in text:
        return text
    return '"' + "".join(map(_escaped, text)) + '"'


def one_line(text: str) -> str:
    """``text`` with its line breaks, terminal escape sequences and other unprintable
    characters escaped, and nothing else: for messages and for text shown on a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():  # the space included
        return char
    code = ord(char)  # C0/C1 controls, DEL, line separators, bidi overrides...
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
