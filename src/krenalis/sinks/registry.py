"""Every destination type a workspace file may name, and the options class that declares it.

Adding a sink: a module with its options (a :class:`~krenalis.sinks.base.SinkOptions`
subclass tagged with the type) and its sink, plus one line here. The workspace loader reads
this mapping each time it parses a file.
"""

from __future__ import annotations

from krenalis.sinks.base import SinkOptions
from krenalis.sinks.file import FileOptions
from krenalis.sinks.webhook import WebhookOptions

__all__ = ["SINKS"]

#: Destination ``type`` -> its options class.
SINKS: dict[str, type[SinkOptions]] = {
    "webhook": WebhookOptions,
    "file": FileOptions,
}
