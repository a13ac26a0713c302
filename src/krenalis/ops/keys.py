"""NKey user credentials for NATS: generate a pair, derive the public key, store the seed.

The `nkeys` package can decode and sign but has no generator, so a pair is built from a fresh
PyNaCl Ed25519 signing key (the same thing `nk -gen user` does). The seed ("SU...") is the
secret Krenalis connects with; the public key ("U...") goes into the nats-server config.
Nothing here ever puts a seed into an exception message or a repr: they end up in logs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing
import nkeys

__all__ = [
    "UserKeyPair",
    "generate_user_keypair",
    "is_user_public_key",
    "public_key_from_seed",
    "write_secret_file",
    "write_seed_file",
]

_SECRET_MODE = 0o600


@dataclass(frozen=True)
class UserKeyPair:
    """A NATS user NKey: `seed` is secret ("SU..."), `public_key` is not ("U...")."""

    seed: str = field(repr=False)
    public_key: str

    def __repr__(self) -> str:
        # Keep the seed out of logs and tracebacks: show only that it is a user seed.
        return f"UserKeyPair(public_key={self.public_key!r}, seed='SU…(hidden)')"

    __str__ = __repr__


def generate_user_keypair() -> UserKeyPair:
    """Generate a new user NKey pair from 32 random bytes (Ed25519 via PyNaCl)."""
    raw = bytes(nacl.signing.SigningKey.generate())
    seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER).decode("ascii")
    return UserKeyPair(seed=seed, public_key=public_key_from_seed(seed))


def _b32_payload(text: str) -> bytes | None:
    """Base32-decode an NKey and verify its CRC16; return the bytes before the checksum."""
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 3:
        return None
    payload, crc = raw[:-2], raw[-2:]
    # nkeys.decode_seed does not check the checksum; we do, so a typo is caught here
    # instead of surfacing later as a confusing "Authorization Violation".
    return payload if nkeys.crc16_checksum(payload) == crc else None


def public_key_from_seed(seed: str) -> str:
    """Return the public key ("U...") of a user seed ("SU..."); ValueError otherwise.

    The error message never contains the seed itself.
    """
    text = seed.strip() if isinstance(seed, str) else ""
    if not text.startswith("SU"):
        raise ValueError("the value is not a user NKey seed (it must start with SU)")
    if _b32_payload(text) is None:
        raise ValueError(
            "the value is not a valid user NKey seed (bad encoding or checksum; "
            "copy the whole SU... line printed by `krenalis nats keygen`)"
        )
    try:
        pair = nkeys.from_seed(bytearray(text.encode("ascii")))
        return pair.public_key.decode("ascii")
    except (nkeys.NkeysError, ValueError, UnicodeError):
        raise ValueError("the value is not a valid user NKey seed") from None


def is_user_public_key(key: str) -> bool:
    """True if `key` is a well-formed user public NKey ("U...", 32-byte key, valid CRC)."""
    if not isinstance(key, str) or not key.startswith("U"):
        return False
    payload = _b32_payload(key)
    return payload is not None and len(payload) == 33 and payload[0] == nkeys.PREFIX_BYTE_USER


def _open_exclusive(path: Path) -> int:
    # O_EXCL makes creation atomic and refuses existing files and symlinks; the mode is set
    # at creation so the secret is never readable by others, not even for an instant.
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, _SECRET_MODE)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, _SECRET_MODE)  # a restrictive umask could have removed the owner's bits
    return fd


def _write_fd(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # a credential we reported as written must survive a crash


def write_secret_file(path: str | os.PathLike[str], text: str, *, force: bool = False) -> Path:
    """Write `text` to a new file readable only by its owner (mode 0600).

    Refuses to overwrite an existing file unless `force=True`; with force the old file is
    replaced atomically (temp file in the same directory, then rename).
    """
    target = Path(path)
    data = text.encode("utf-8")
    if not force:
        try:
            fd = _open_exclusive(target)
        except FileExistsError:
            raise FileExistsError(
                f"{target} already exists; refusing to overwrite it "
                "(remove it first, or use force=True / --force to replace it)"
            ) from None
        _write_fd(fd, data)
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        os.chmod(tmp, _SECRET_MODE)
        _write_fd(fd, data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def write_seed_file(path: str | os.PathLike[str], seed: str, *, force: bool = False) -> Path:
    """Store a user seed in `path` (mode 0600), usable as nats-py's `nkeys_seed=` file.

    The seed is validated first so a wrong value is never saved as a credential.
    """
    public_key_from_seed(seed)
    return write_secret_file(path, seed.strip() + "\n", force=force)
