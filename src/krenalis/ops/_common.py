"""What the operator commands share: finding NATS, connecting, quiet logs, the stored
workspace, a filter given on the command line, small formatters."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from krenalis.config import Settings
from krenalis.errors import (
    CommandError,
    FilterError,
    NatsAuthError,
    NatsServerError,
    ServerTooOldError,
    WorkspaceError,
)
from krenalis.pipelines.filters import Filter, parse_filter
from krenalis.runtime.nats_server import local_port, read_local_seed, with_local_credentials
from krenalis.stream.connection import NatsConnection
from krenalis.stream.layout import DLQ_PREFIX, DLQ_STREAM
from krenalis.workspace._yaml import YamlError, load_yaml
from krenalis.workspace.load import parse_workspace
from krenalis.workspace.model import Workspace
from krenalis.workspace.store import WorkspaceStore

__all__ = [
    "CONNECT_TIMEOUT",
    "check_pipeline_id",
    "connected",
    "dead_letter_counts",
    "human_bytes",
    "nats_urls",
    "quiet_logs",
    "read_filter",
    "storage_of",
    "stored_workspace",
]

#: Seconds an operator command waits for NATS before saying it is unreachable.
CONNECT_TIMEOUT = 5.0

_NO_URL = (
    "KRENALIS_NATS_URL is not set and no embedded nats-server of `krenalis serve` is running "
    "({port_file} {state}); start `krenalis serve`, or set KRENALIS_NATS_URL=nats://HOST:4222 "
    "in the environment or in .env"
)


def nats_urls(settings: Settings) -> tuple[str, ...]:
    """KRENALIS_NATS_URL, else the embedded server of a running `krenalis serve`."""
    if settings.nats_urls:
        return settings.nats_urls
    store = settings.data_dir / "nats"  # where `krenalis serve` runs its embedded server
    port_file = store / "port"
    port = local_port(store)
    if port is None:
        raise CommandError(_NO_URL.format(port_file=port_file, state="not found"), 2)
    if not _accepting(port):
        state = f"says port {port}, where nothing listens"
        raise CommandError(_NO_URL.format(port_file=port_file, state=state), 1)
    return (f"nats://127.0.0.1:{port}",)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def connected(
    settings: Settings, urls: tuple[str, ...], timeout: float = CONNECT_TIMEOUT
) -> AsyncIterator[NatsConnection]:
    """A connection for one command, with every connect failure turned into an CommandError.

    Without KRENALIS_NATS_URL, `urls` is the embedded server of `krenalis serve` (`nats_urls`),
    which admits only the key serve keeps in the data directory: the command uses that key.
    """
    if not settings.nats_urls:
        settings = _embedded_credentials(settings, urls)
    conn = NatsConnection(settings, urls, name="krenalis-ops")
    try:
        await conn.connect(timeout=timeout)
    except TimeoutError:
        # NatsConnection keeps the client's last error (e.g. "Connect call failed") privately.
        last = conn.last_error
        raise CommandError(
            f"cannot connect to NATS at {conn.servers} within {timeout:g}s"
            + (f" ({last})" if last else "")
            + "; is nats-server running and reachable? Check KRENALIS_NATS_URL"
        ) from None
    except (NatsAuthError, ServerTooOldError) as exc:
        with contextlib.suppress(Exception):
            await conn.nc.close()
        raise CommandError(str(exc)) from None
    try:
        yield conn
    finally:
        await conn.close()


def _embedded_credentials(settings: Settings, urls: tuple[str, ...]) -> Settings:
    try:
        seed = read_local_seed(settings.data_dir / "nats")
    except NatsServerError as exc:
        raise CommandError(str(exc)) from None
    return with_local_credentials(settings, urls[0], seed)


@contextlib.contextmanager
def quiet_logs(level: str) -> Iterator[None]:
    """Keep INFO/WARNING lines (connects, retries, HTTP requests) out of a command's output.

    The command reports what matters itself; KRENALIS_LOG_LEVEL=debug shows everything.
    """
    if level == "DEBUG":
        yield
        return
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(previous)


def check_pipeline_id(pipeline: str | None) -> str | None:
    """Pipeline ids are letters, digits, "-" and "_"; anything else would be a NATS wildcard."""
    if pipeline is not None and (
        not pipeline or not all(c.isascii() and (c.isalnum() or c in "-_") for c in pipeline)
    ):
        raise CommandError(
            f"{pipeline!r} is not a pipeline id (letters, digits, '-' and '_' only)", 2
        )
    return pipeline


def storage_of(config: StreamConfig) -> str:
    """ "file" or "memory"; nats-py leaves the enum as a plain string in server answers."""
    storage = config.storage or "file"
    return str(getattr(storage, "value", storage))


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


async def dead_letter_counts(js: JetStreamContext) -> dict[str, int]:
    """Dead letters per pipeline, counted by the server (one request, no message read)."""
    try:
        info = await js.stream_info(DLQ_STREAM, subjects_filter=f"{DLQ_PREFIX}.>")
    except NotFoundError:
        return {}
    prefix = DLQ_PREFIX + "."
    return {subj.removeprefix(prefix): n for subj, n in (info.state.subjects or {}).items()}


def read_filter(value: str, option: str = "--filter") -> tuple[str, Filter]:
    """A filter given on the command line, in the workspace's syntax (YAML or JSON), or the
    file holding it: its text and the filter."""
    text = value
    path = Path(value)
    if "\n" not in value and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{option}: cannot read {value}: {exc}", 2) from None
    try:
        return text, parse_filter(load_yaml(text, {}, set()), option)
    except YamlError as exc:
        raise CommandError(f"{option}: line {exc.line}: {exc.reason}", 2) from None
    except FilterError as exc:
        raise CommandError(f"{exc} (for example {option} '{{all: [{{field: type, op: is, "
                           "value: track}]}')", 2) from None  # fmt: skip


async def stored_workspace(js: JetStreamContext, settings: Settings) -> Workspace:
    """The workspace stored in NATS, read as written (this process need not have its
    secrets); CommandError if there is none."""
    revision = await (await WorkspaceStore(js, settings).open()).current()
    if revision is None:
        raise CommandError("no workspace is stored in NATS yet: `krenalis workspace apply FILE`")
    try:
        return parse_workspace(revision.text, f"workspace revision {revision.number}", unset=set())
    except WorkspaceError as exc:
        raise CommandError(f"the stored workspace cannot be read here: {exc}") from None
