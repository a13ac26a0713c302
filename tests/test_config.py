"""Every settings rule, with the messages users see."""

from __future__ import annotations

import nacl.signing
import nkeys
import pytest

from krenalis.config import Secret, go_duration, load_settings, parse_duration
from krenalis.errors import ConfigError


def _seed(prefix: int) -> str:
    return nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), prefix).decode()


USER_SEED = _seed(nkeys.PREFIX_BYTE_USER)
ACCOUNT_SEED = _seed(nkeys.PREFIX_BYTE_ACCOUNT)


def load(**env: str):
    return load_settings(env, env_file=None)


def error_of(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(**env)
    return str(info.value)


def test_defaults():
    s = load()
    assert s.embedded_nats and s.nats_urls == ()
    assert (s.nats_replicas, s.nats_storage, s.nats_compression) == (1, "file", "none")
    assert s.nats_ack_wait == 30.0
    assert s.http_port == 2022 and s.http_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nats://127.0.0.1:4222", ("nats://127.0.0.1:4222",)),
        ("n1:4222", ("n1:4222",)),
        (
            "nats://nats-node-1:4222, nats://nats-node-2:4222, nats://nats-node-3:4222",
            ("nats://nats-node-1:4222", "nats://nats-node-2:4222", "nats://nats-node-3:4222"),
        ),
        ("tls://a:4222,,tls://b:4222", ("tls://a:4222", "tls://b:4222")),
        ("ws://a:8080,wss://b:443", ("ws://a:8080", "wss://b:443")),
    ],
)
def test_nats_url_accepted(raw, expected):
    assert load(KRENALIS_NATS_URL=raw).nats_urls == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "http://a:4222",
            "KRENALIS_NATS_URL scheme http is not allowed. Allowed schemes are nats, tls, ws, and wss",
        ),
        ("nats://a:99999", 'KRENALIS_NATS_URL contains an invalid URL: "nats://a:99999"'),
        ("a:notaport", 'KRENALIS_NATS_URL contains an invalid URL: "a:notaport"'),
        (
            "nats://a:4222,ws://b:80",
            "KRENALIS_NATS_URL contains both websocket and non-websocket URLs",
        ),
        (" , ,", "KRENALIS_NATS_URL does not contain URLs"),
    ],
)
def test_nats_url_rejected(raw, message):
    assert error_of(KRENALIS_NATS_URL=raw) == message


def test_auth_settings_and_secrets_masked():
    s = load(
        KRENALIS_NATS_NKEY=USER_SEED,
        KRENALIS_NATS_TOKEN="t0ken",
        KRENALIS_NATS_USER="alice",
        KRENALIS_NATS_PASSWORD="pw",
    )
    assert s.nats_nkey == Secret(USER_SEED) and s.nats_nkey.reveal() == USER_SEED
    assert s.nats_user == "alice" and s.nats_password.reveal() == "pw"
    text = repr(s)
    for secret in (USER_SEED, "t0ken", "'pw'"):
        assert secret not in text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("nats://alice:s3cr3t-pw@a:99999", '"nats://***@a:99999"'),
        ("tls://T0KEN-xyz@a:bad/x?y=z", '"tls://***@a:bad/x?y=z"'),
        ("alice:s3cr3t-pw@a:notaport", '"***@a:notaport"'),
        ("nats://u:p@ss@:4222", '"nats://***@:4222"'),  # an "@" inside the password
    ],
)
def test_a_rejected_url_never_shows_its_credentials(raw, shown):
    message = error_of(KRENALIS_NATS_URL=raw)
    assert message == f"KRENALIS_NATS_URL contains an invalid URL: {shown}"


def test_the_settings_repr_never_shows_a_url_credential():
    text = repr(load(KRENALIS_NATS_URL="nats://alice:s3cr3t-pw@a:4222,T0KEN-xyz@b:4222"))
    assert "s3cr3t-pw" not in text and "T0KEN-xyz" not in text


def test_tls_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not PEM")
    url = {"KRENALIS_NATS_URL": "tls://nats.example.com:4222"}
    s = load(**url, KRENALIS_NATS_TLS_SERVER_NAME="nats.internal")
    assert s.nats_tls and s.nats_tls_server_name == "nats.internal"
    assert load(KRENALIS_NATS_URL="tls://a:4222").nats_tls  # a tls:// URL requires TLS
    assert not load(KRENALIS_NATS_URL="nats://a:4222").nats_tls
    assert error_of(**url, KRENALIS_NATS_TLS_CA=str(tmp_path / "nope.pem")) == (
        f'KRENALIS_NATS_TLS_CA points to a non-existent file: "{tmp_path}/nope.pem"'
    )
    assert error_of(**url, KRENALIS_NATS_TLS_CA=str(ca)).startswith(
        f'KRENALIS_NATS_TLS_CA file "{ca}" holds no PEM certificate'
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KRENALIS_NATS_TLS_CERT": "client.pem"},
            "KRENALIS_NATS_TLS_CERT is set without KRENALIS_NATS_TLS_KEY: mutual TLS needs both "
            "the client certificate and its private key",
        ),
        (
            {"KRENALIS_NATS_TLS_KEY": "client-key.pem"},
            "KRENALIS_NATS_TLS_KEY is set without KRENALIS_NATS_TLS_CERT: mutual TLS needs both "
            "the client certificate and its private key",
        ),
        (
            {"KRENALIS_NATS_TLS_CERT": "nope.pem", "KRENALIS_NATS_TLS_KEY": "nope-key.pem"},
            'KRENALIS_NATS_TLS_CERT points to a non-existent file: "nope.pem"',
        ),
        (
            {"KRENALIS_NATS_TLS_SERVER_NAME": "https://nats.example.com"},
            "KRENALIS_NATS_TLS_SERVER_NAME must be the host name the NATS servers' certificates "
            'carry, such as nats.example.com, got "https://nats.example.com"',
        ),
        (
            {"KRENALIS_NATS_URL": "", "KRENALIS_NATS_TLS_SERVER_NAME": "nats.example.com"},
            "KRENALIS_NATS_TLS_SERVER_NAME is set but KRENALIS_NATS_URL is not: the embedded "
            "nats-server listens on loopback without TLS; set KRENALIS_NATS_URL to your TLS "
            "servers, or unset KRENALIS_NATS_TLS_SERVER_NAME",
        ),
        (
            {"KRENALIS_NATS_URL": "ws://a:8080", "KRENALIS_NATS_TLS_SERVER_NAME": "a"},
            "KRENALIS_NATS_TLS_SERVER_NAME is set but KRENALIS_NATS_URL has ws:// URLs, which "
            "never use TLS; write them wss://",
        ),
    ],
)
def test_tls_settings_rejected(env, message):
    assert error_of(**{"KRENALIS_NATS_URL": "tls://a:4222", **env}) == message


def test_password_without_user():
    assert error_of(KRENALIS_NATS_PASSWORD="pw") == (
        "KRENALIS_NATS_USER must be set if KRENALIS_NATS_PASSWORD is provided"
    )


@pytest.mark.parametrize(
    "seed",
    [
        "not-a-seed",
        USER_SEED[:-3],
        # An account seed (SA...) is a valid NKey but not a user one.
        ACCOUNT_SEED,
    ],
)
def test_nkey_must_be_a_user_seed(seed):
    message = error_of(KRENALIS_NATS_NKEY=seed)
    assert message.startswith("KRENALIS_NATS_NKEY value is not a user NKey")
    assert seed not in message


def test_creds_file(tmp_path):
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    assert load(KRENALIS_NATS_CREDS=str(creds)).nats_creds == creds
    missing = error_of(KRENALIS_NATS_CREDS=str(tmp_path / "nope.creds"))
    assert missing == f'KRENALIS_NATS_CREDS points to a non-existent file: "{tmp_path}/nope.creds"'
    both = error_of(KRENALIS_NATS_CREDS=str(creds), KRENALIS_NATS_NKEY=USER_SEED)
    assert "cannot be combined with KRENALIS_NATS_NKEY" in both


@pytest.mark.parametrize(
    ("raw", "value"), [("file", "file"), ("memory", "memory"), ("MEMORY", "memory")]
)
def test_storage(raw, value):
    assert load(KRENALIS_NATS_STORAGE=raw).nats_storage == value


def test_storage_rejected():
    assert error_of(KRENALIS_NATS_STORAGE="disk") == (
        'KRENALIS_NATS_STORAGE value "disk" is not supported; expected file or memory'
    )


@pytest.mark.parametrize(
    ("raw", "seconds"), [("", 30.0), ("1s", 1.0), ("2m30s", 150.0), ("1.5h", 5400.0)]
)
def test_ack_wait(raw, seconds):
    assert load(KRENALIS_NATS_ACK_WAIT=raw).nats_ack_wait == seconds


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "soon",
            'invalid duration value specified for KRENALIS_NATS_ACK_WAIT: time: invalid duration "soon"',
        ),
        ("999ms", "KRENALIS_NATS_ACK_WAIT must be at least 1s"),
        ("0s", "KRENALIS_NATS_ACK_WAIT must be at least 1s"),
        ("-1s", "KRENALIS_NATS_ACK_WAIT must be at least 1s"),
    ],
)
def test_ack_wait_rejected(raw, message):
    assert error_of(KRENALIS_NATS_ACK_WAIT=raw) == message


@pytest.mark.parametrize("raw", ["1", "2", "3", "4", "5"])
def test_replicas(raw):
    assert load(KRENALIS_NATS_REPLICAS=raw).nats_replicas == int(raw)


@pytest.mark.parametrize("raw", ["0", "6", "two", " 3"])
def test_replicas_rejected(raw):
    assert error_of(KRENALIS_NATS_REPLICAS=raw) == (
        f'KRENALIS_NATS_REPLICAS value "{raw}" is not supported; expected 1, 2, 3, 4, or 5'
    )


def test_compression():
    assert load(KRENALIS_NATS_COMPRESSION="s2").nats_compression == "s2"
    assert load(KRENALIS_NATS_COMPRESSION="S2").nats_compression == "s2"
    assert error_of(KRENALIS_NATS_COMPRESSION="gzip") == (
        'KRENALIS_NATS_COMPRESSION value "gzip" is not supported; expected s2'
    )
    assert error_of(KRENALIS_NATS_COMPRESSION="s2", KRENALIS_NATS_STORAGE="memory") == (
        "KRENALIS_NATS_COMPRESSION can be set only when using file storage"
    )


def test_other_settings_rejected():
    assert "KRENALIS_HTTP_PORT must be a valid port" in error_of(KRENALIS_HTTP_PORT="http")
    assert error_of(KRENALIS_PROMETHEUS_METRICS_ENABLED="yes") == (
        'KRENALIS_PROMETHEUS_METRICS_ENABLED must be a boolean: value "yes" is not a valid '
        "boolean value (expected true, false or empty string)"
    )
    assert "KRENALIS_HTTP_WORKERS must be between 1 and 64" in error_of(KRENALIS_HTTP_WORKERS="0")


def test_env_file_and_environment_precedence(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("KRENALIS_NATS_REPLICAS=3\nKRENALIS_NATS_STORAGE=memory\n")
    s = load_settings({"KRENALIS_NATS_STORAGE": "file"}, env_file=env_file)
    assert s.nats_replicas == 3  # from .env
    assert s.nats_storage == "file"  # the environment wins


def test_env_file_errors_name_the_variable(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("KRENALIS_NATS_REPLICAS=7\n")
    with pytest.raises(ConfigError, match="KRENALIS_NATS_REPLICAS"):
        load_settings({}, env_file=env_file)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("300ms", 0.3),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("-2s", -2.0),
        ("10us", 1e-5),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("4h", 14400.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("7d12h", 648000.0),
    ],  # fmt: skip
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "10", "s", "h", "1.2.3s", "--1s", "4 h", "1y", "1h 30m", 10]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_go_duration_has_no_days():
    assert go_duration("2m") == "2m"
    assert go_duration("2d") == "48h"
    assert go_duration("1d12h") == "36h"


def test_sync_interval():
    assert load().nats_sync_interval == "always"
    assert load(KRENALIS_NATS_SYNC_INTERVAL="1s").nats_sync_interval == "1s"
    assert load(KRENALIS_NATS_SYNC_INTERVAL="1d").nats_sync_interval == "24h"  # nats-server's form
    assert error_of(KRENALIS_NATS_SYNC_INTERVAL="sometimes") == (
        'KRENALIS_NATS_SYNC_INTERVAL value "sometimes" is not supported; expected always or a '
        "positive duration such as 1s or 2m"
    )
    assert "KRENALIS_NATS_SYNC_INTERVAL" in error_of(KRENALIS_NATS_SYNC_INTERVAL="0s")


def test_warehouse_dsn():
    dsn = "postgresql://u:secret-pw@db:5432/events"
    s = load(KRENALIS_WAREHOUSE_DSN=dsn)
    assert s.warehouse_dsn.reveal() == dsn and "secret-pw" not in repr(s)
    message = error_of(KRENALIS_WAREHOUSE_DSN="mysql://u:secret-pw@db/x")
    assert "KRENALIS_WAREHOUSE_DSN must be a PostgreSQL URL" in message
    assert "secret-pw" not in message
