"""Settings: read once at start-up from the environment and a `.env` file, validated, typed.

The environment wins over `.env`. Every problem stops start-up with one line naming the
variable, the bad value (never for secrets) and what is accepted. The KRENALIS_NATS_* rules
and messages are those of Krenalis's Go implementation (github.com/krenalis/krenalis), so a
`.env` gets the same answer from either. Nothing else in the package reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nkeys
from dotenv import dotenv_values

from krenalis.errors import ConfigError

__all__ = ["CHILD_MARKER", "Secret", "Settings", "go_duration", "load_settings", "parse_duration"]

MIN_ACK_WAIT = 1.0
DEFAULT_ACK_WAIT = 30.0
URL_SCHEMES = ("nats", "tls", "ws", "wss")
DEFAULT_METRICS_ADDR = ("127.0.0.1", 9464)
#: Set by `serve` in its children's environment (to the child's PID file).
CHILD_MARKER = "KRENALIS_CHILD"


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    """Every setting of a Krenalis process. Build it with `load_settings()`."""

    #: NATS server URLs; empty means "start the embedded nats-server". Not in the repr: a URL
    #: may hold a user:password@ or a token@.
    nats_urls: tuple[str, ...] = field(default=(), repr=False)
    nats_nkey: Secret | None = None
    nats_token: Secret | None = None
    nats_user: str = ""
    nats_password: Secret | None = None
    nats_creds: Path | None = None
    #: TLS to NATS: the CA that signs the servers' certificates (None: the system's CAs), the
    #: client certificate and its key for mutual TLS, and the name the servers' certificates
    #: carry when it is not the URLs' host.
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    nats_tls_server_name: str = ""
    nats_replicas: int = 1
    nats_storage: str = "file"
    nats_compression: str = "none"
    nats_ack_wait: float = DEFAULT_ACK_WAIT
    nats_duplicate_window: float = 120.0
    #: The embedded server's fsync policy: "always" (fsync before every PubAck) or a duration.
    nats_sync_interval: str = "always"
    #: Overrides the workspace file's `warehouse.dsn` (keeps the password out of the file).
    warehouse_dsn: Secret | None = None
    data_dir: Path = Path("data")
    workspace_path: Path = Path("krenalis.yaml")
    #: Whether the operator named the workspace file (KRENALIS_WORKSPACE or --workspace): a
    #: process applies a local file only then, or as serve with its embedded NATS.
    workspace_named: bool = False
    #: Where the file paths of transform steps (``transforms.py:enrich``, a GeoIP database)
    #: start in the processes that run them; None: the workspace file's directory.
    transforms_dir: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 2022
    http_workers: int = 1
    #: Connections (and requests in progress) one collector process takes at once; a request
    #: past it is answered 503, which Segment SDKs retry.
    http_max_connections: int = 1000
    #: Peers whose X-Forwarded-For is believed (load balancers, reverse proxies); from anyone
    #: else the connection's own address is the client's.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    metrics_enabled: bool = False
    #: Where /metrics is served (never on the ingestion port): loopback unless told otherwise.
    metrics_addr: tuple[str, int] = DEFAULT_METRICS_ADDR
    #: Where the processes of one `serve` share their metrics (Prometheus multiprocess mode).
    metrics_dir: Path | None = None
    log_level: str = "INFO"
    #: A child process of `serve` (a collector or the worker process), which `serve` started.
    child: bool = False
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def code_dir(self) -> Path:
        """Where a transform step's file paths start: KRENALIS_TRANSFORMS_DIR, else the
        directory of the workspace file (./krenalis.yaml by default: the working directory)."""
        return self.transforms_dir or self.workspace_path.parent

    @property
    def embedded_nats(self) -> bool:
        return not self.nats_urls

    @property
    def nats_tls(self) -> bool:
        """Whether every NATS connection must use TLS: a TLS setting, or a tls:// URL."""
        configured = self.nats_tls_ca or self.nats_tls_cert or self.nats_tls_server_name
        return bool(configured) or any(u.startswith("tls://") for u in self.nats_urls)


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read the settings; raise ConfigError for the first bad value."""
    env = _merged_env(environ, env_file)
    storage = _storage(env)
    nats_urls = _nats_urls(env.get("KRENALIS_NATS_URL", ""))
    tls_cert, tls_key = _tls_client(env)
    _check_tls_urls(env, nats_urls)
    return Settings(
        nats_urls=nats_urls,
        nats_nkey=_nkey(env.get("KRENALIS_NATS_NKEY", "")),
        nats_token=_secret(env.get("KRENALIS_NATS_TOKEN", "")),
        nats_user=env.get("KRENALIS_NATS_USER", ""),
        nats_password=_password(env),
        nats_creds=_creds(env.get("KRENALIS_NATS_CREDS", ""), env),
        nats_tls_ca=_tls_ca(env.get("KRENALIS_NATS_TLS_CA", "")),
        nats_tls_cert=tls_cert,
        nats_tls_key=tls_key,
        nats_tls_server_name=_tls_server_name(env.get("KRENALIS_NATS_TLS_SERVER_NAME", "")),
        nats_replicas=_replicas(env.get("KRENALIS_NATS_REPLICAS", "")),
        nats_storage=storage,
        nats_compression=_compression(env.get("KRENALIS_NATS_COMPRESSION", ""), storage),
        nats_ack_wait=_ack_wait(env.get("KRENALIS_NATS_ACK_WAIT", "")),
        nats_duplicate_window=_dup_window(env.get("KRENALIS_NATS_DUPLICATE_WINDOW", "")),
        nats_sync_interval=_sync_interval(env.get("KRENALIS_NATS_SYNC_INTERVAL", "")),
        warehouse_dsn=_dsn(env.get("KRENALIS_WAREHOUSE_DSN", "")),
        data_dir=Path(env.get("KRENALIS_DATA_DIR", "") or "data"),
        workspace_path=Path(env.get("KRENALIS_WORKSPACE", "") or "krenalis.yaml"),
        workspace_named=bool(env.get("KRENALIS_WORKSPACE", "")),
        transforms_dir=Path(env.get("KRENALIS_TRANSFORMS_DIR", "") or ".")
        if env.get("KRENALIS_TRANSFORMS_DIR")
        else None,
        http_host=env.get("KRENALIS_HTTP_HOST", "") or "127.0.0.1",
        http_port=_port(env.get("KRENALIS_HTTP_PORT", "")),
        http_workers=_int_range(env, "KRENALIS_HTTP_WORKERS", 1, 1, 64),
        http_max_connections=_int_range(env, "KRENALIS_HTTP_MAX_CONNECTIONS", 1000, 1, 100_000),
        trusted_proxies=_trusted_proxies(env.get("KRENALIS_TRUSTED_PROXIES", "")),
        metrics_enabled=_bool(env, "KRENALIS_PROMETHEUS_METRICS_ENABLED"),
        metrics_addr=_metrics_addr(env.get("KRENALIS_METRICS_ADDR", "")),
        metrics_dir=Path(env["PROMETHEUS_MULTIPROC_DIR"])
        if env.get("PROMETHEUS_MULTIPROC_DIR")
        else None,
        log_level=_log_level(env.get("KRENALIS_LOG_LEVEL", "")),
        child=bool(env.get(CHILD_MARKER)),
        extra={k: v for k, v in env.items() if k.startswith("KRENALIS_")},
    )


def _merged_env(environ: Mapping[str, str] | None, env_file: str | Path | None) -> dict[str, str]:
    merged: dict[str, str] = {}
    if env_file is not None:
        path = Path(env_file)
        if path.exists():
            try:
                values = dotenv_values(path)
            except OSError as exc:
                raise ConfigError(f'cannot read the "{path.resolve()}" file: {exc}') from exc
            merged.update({k: v for k, v in values.items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


def _nats_urls(raw: str) -> tuple[str, ...]:
    if not raw.strip():
        return ()
    urls = []
    for item in (part.strip() for part in raw.split(",")):
        if item:
            urls.append(_nats_url(item))
    if not urls:
        raise ConfigError("KRENALIS_NATS_URL does not contain URLs")
    ws = {urlsplit(u).scheme in ("ws", "wss") for u in urls if "://" in u}
    if len(ws) > 1:
        raise ConfigError("KRENALIS_NATS_URL contains both websocket and non-websocket URLs")
    return tuple(urls)


def _nats_url(item: str) -> str:
    candidate = item if "://" in item else "nats://" + item
    try:
        parts = urlsplit(candidate)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f'KRENALIS_NATS_URL contains an invalid URL: "{_masked(item)}"') from None
    if "://" in item and parts.scheme not in URL_SCHEMES:
        raise ConfigError(
            f"KRENALIS_NATS_URL scheme {parts.scheme} is not allowed. "
            "Allowed schemes are nats, tls, ws, and wss"
        )
    if not parts.hostname:
        raise ConfigError(f'KRENALIS_NATS_URL contains an invalid URL: "{_masked(item)}"')
    return item


def _masked(url: str) -> str:
    """`url` fit for an error message: its user:password@ (or token@) part becomes ***@."""
    scheme, sep, rest = url.rpartition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    _, at, host = rest[:end].rpartition("@")
    return f"{scheme}{sep}{'***' + at if at else ''}{host}{rest[end:]}"


def _nkey(raw: str) -> Secret | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        pair = nkeys.from_seed(bytearray(raw.encode()))
        public = pair.public_key.decode()
    except Exception:  # nkeys raises several error types for malformed seeds
        raise ConfigError(
            "KRENALIS_NATS_NKEY value is not a user NKey (expected a seed starting with SU)"
        ) from None
    if not raw.startswith("SU") or not public.startswith("U"):
        raise ConfigError(
            "KRENALIS_NATS_NKEY value is not a user NKey (expected a seed starting with SU)"
        )
    return Secret(raw)


def _secret(raw: str) -> Secret | None:
    return Secret(raw) if raw else None


def _password(env: Mapping[str, str]) -> Secret | None:
    password = env.get("KRENALIS_NATS_PASSWORD", "")
    if password and not env.get("KRENALIS_NATS_USER", ""):
        raise ConfigError("KRENALIS_NATS_USER must be set if KRENALIS_NATS_PASSWORD is provided")
    return _secret(password)


def _creds(raw: str, env: Mapping[str, str]) -> Path | None:
    if not raw:
        return None
    if env.get("KRENALIS_NATS_NKEY", ""):
        raise ConfigError(
            "KRENALIS_NATS_CREDS cannot be combined with KRENALIS_NATS_NKEY: "
            "a .creds file already holds the NKey seed; set only one of them"
        )
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f'KRENALIS_NATS_CREDS points to a non-existent file: "{raw}"')
    return path


def _tls_ca(raw: str) -> Path | None:
    if not raw:
        return None
    path = _tls_file("KRENALIS_NATS_TLS_CA", raw)
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ConfigError(
            f'KRENALIS_NATS_TLS_CA file "{raw}" holds no PEM certificate; expected the '
            "certificate of the CA that signs the NATS servers' certificates"
        ) from None
    return path


def _tls_client(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    """The client certificate and key of mutual TLS: both or neither, and a matching pair."""
    cert, key = env.get("KRENALIS_NATS_TLS_CERT", ""), env.get("KRENALIS_NATS_TLS_KEY", "")
    if not cert and not key:
        return None, None
    if not key or not cert:
        given, missing = ("CERT", "KEY") if cert else ("KEY", "CERT")
        raise ConfigError(
            f"KRENALIS_NATS_TLS_{given} is set without KRENALIS_NATS_TLS_{missing}: mutual TLS "
            "needs both the client certificate and its private key"
        )
    cert_path = _tls_file("KRENALIS_NATS_TLS_CERT", cert)
    key_path = _tls_file("KRENALIS_NATS_TLS_KEY", key)
    _check_key_pair(cert_path, key_path)
    return cert_path, key_path


def _check_key_pair(cert: Path, key: Path) -> None:
    def no_passphrase() -> str:
        # Without this, OpenSSL would prompt on the terminal, or block a service for ever.
        raise ConfigError(
            f'KRENALIS_NATS_TLS_KEY file "{key}" is encrypted and krenalis cannot ask for its '
            "passphrase; store the key unencrypted, readable only by this service's user"
        )

    try:
        ssl.create_default_context().load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigError(
            "KRENALIS_NATS_TLS_CERT and KRENALIS_NATS_TLS_KEY are not a PEM certificate and its "
            f"private key ({exc.reason or 'unreadable'})"
        ) from None


def _tls_file(name: str, raw: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f'{name} points to a non-existent file: "{raw}"')
    return path


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _tls_server_name(raw: str) -> str:
    if not raw:
        return ""
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        if not _HOST_NAME.fullmatch(raw):
            raise ConfigError(
                "KRENALIS_NATS_TLS_SERVER_NAME must be the host name the NATS servers' "
                f'certificates carry, such as nats.example.com, got "{raw}"'
            ) from None
    return raw


_TLS_SETTINGS = (
    "KRENALIS_NATS_TLS_CA",
    "KRENALIS_NATS_TLS_CERT",
    "KRENALIS_NATS_TLS_KEY",
    "KRENALIS_NATS_TLS_SERVER_NAME",
)


def _check_tls_urls(env: Mapping[str, str], urls: tuple[str, ...]) -> None:
    """TLS settings need servers that can use TLS: not the embedded one, not ws://."""
    name = next((n for n in _TLS_SETTINGS if env.get(n, "")), None)
    if name is None:
        return
    if not urls:
        raise ConfigError(
            f"{name} is set but KRENALIS_NATS_URL is not: the embedded nats-server listens on "
            "loopback without TLS; set KRENALIS_NATS_URL to your TLS servers, or unset " + name
        )
    if any(u.startswith("ws://") for u in urls):
        raise ConfigError(
            f"{name} is set but KRENALIS_NATS_URL has ws:// URLs, which never use TLS; "
            "write them wss://"
        )


def _replicas(raw: str) -> int:
    if raw == "":
        return 1
    if raw not in ("1", "2", "3", "4", "5"):
        raise ConfigError(
            f'KRENALIS_NATS_REPLICAS value "{raw}" is not supported; expected 1, 2, 3, 4, or 5'
        )
    return int(raw)


def _storage(env: Mapping[str, str]) -> str:
    raw = env.get("KRENALIS_NATS_STORAGE", "")
    value = raw.lower() or "file"
    if value not in ("file", "memory"):
        raise ConfigError(
            f'KRENALIS_NATS_STORAGE value "{raw}" is not supported; expected file or memory'
        )
    return value


def _compression(raw: str, storage: str) -> str:
    if raw == "":
        return "none"
    if raw.lower() != "s2":
        raise ConfigError(f'KRENALIS_NATS_COMPRESSION value "{raw}" is not supported; expected s2')
    if storage != "file":
        raise ConfigError("KRENALIS_NATS_COMPRESSION can be set only when using file storage")
    return "s2"


def _ack_wait(raw: str) -> float:
    if raw == "":
        return DEFAULT_ACK_WAIT
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(
            f"invalid duration value specified for KRENALIS_NATS_ACK_WAIT: {exc}"
        ) from None
    if seconds < MIN_ACK_WAIT:
        raise ConfigError("KRENALIS_NATS_ACK_WAIT must be at least 1s")
    return seconds


def _dup_window(raw: str) -> float:
    if raw == "":
        return 120.0
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(
            f"invalid duration value specified for KRENALIS_NATS_DUPLICATE_WINDOW: {exc}"
        ) from None
    if seconds < 0.1:
        raise ConfigError("KRENALIS_NATS_DUPLICATE_WINDOW must be at least 100ms")
    return seconds


def _sync_interval(raw: str) -> str:
    if raw in ("", "always"):
        return "always"
    try:
        seconds = parse_duration(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(
            f'KRENALIS_NATS_SYNC_INTERVAL value "{raw}" is not supported; expected always or a '
            "positive duration such as 1s or 2m"
        )
    return go_duration(raw)


def _dsn(raw: str) -> Secret | None:
    if not raw:
        return None
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "KRENALIS_WAREHOUSE_DSN must be a PostgreSQL URL such as "
            "postgresql://user:password@host:5432/db"
        )
    return Secret(raw)


def _port(raw: str) -> int:
    if raw == "":
        return 2022
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f'KRENALIS_HTTP_PORT must be a valid port (1-65535), got "{raw}"')
    return int(raw)


def _trusted_proxies(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            # Not strict: "10.1.2.3/8" means 10.0.0.0/8; a bare address is one host.
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f'KRENALIS_TRUSTED_PROXIES contains "{item}", which is not an IP address or '
                "network; expected a comma-separated list such as 10.0.0.0/8, 192.168.1.7"
            ) from None
    return tuple(networks)


def _metrics_addr(raw: str) -> tuple[str, int]:
    if raw == "":
        return DEFAULT_METRICS_ADDR
    host, _, port = raw.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    # An IPv6 address needs its brackets, or its last group would read as the port.
    unclear = (":" in host and not bracketed) or any(c.isspace() or c in "[]/" for c in host)
    if not host or unclear or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(
            "KRENALIS_METRICS_ADDR must be host:port, such as 127.0.0.1:9464, [::1]:9464 or "
            f'0.0.0.0:9464 (every interface), got "{raw}"'
        )
    return host, int(port)


def _int_range(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f'{name} must be an integer, got "{raw}"') from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "")
    if raw not in ("", "true", "false"):
        raise ConfigError(
            f'{name} must be a boolean: value "{raw}" is not a valid boolean value '
            "(expected true, false or empty string)"
        )
    return raw == "true"


def _log_level(raw: str) -> str:
    value = raw.upper() or "INFO"
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f'KRENALIS_LOG_LEVEL value "{raw}" is not supported; expected debug, info, warning or error'
        )
    return value


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "d": 86400.0,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """Seconds in a duration: Go's syntax ("300ms", "2m30s", "1.5h", "0", "-2s") plus days
    ("7d"). The one grammar of every duration: settings, the workspace, nats-server options.
    Raises ValueError naming the text when it is not one."""
    raw = text
    if not isinstance(text, str):
        raise ValueError(f"time: invalid duration {text!r}")
    sign = 1.0
    if text[:1] in "+-" and text:
        sign, text = (-1.0 if text[0] == "-" else 1.0), text[1:]
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f'time: invalid duration "{raw}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError(f'time: invalid duration "{raw}"')
    return sign * total


def go_duration(text: str) -> str:
    """A valid duration written so that Go's time.ParseDuration, which has no days, reads it
    (nats-server's configuration): "7d" becomes "168h"; anything else is kept as written."""
    seconds = parse_duration(text)
    return f"{seconds / 3600:g}h" if "d" in text else text
