"""NKey generation, seed validation and the private seed file (no server needed)."""

from __future__ import annotations

import base64
import os
import stat

import nacl.signing
import nkeys
import pytest

from krenalis.ops.keys import (
    UserKeyPair,
    generate_user_keypair,
    is_user_public_key,
    public_key_from_seed,
    write_secret_file,
    write_seed_file,
)


def _raw_public_key(public_key: str) -> bytes:
    # Public NKey = base32(prefix byte + 32-byte Ed25519 key + CRC16).
    raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    assert raw[0] == nkeys.PREFIX_BYTE_USER
    return raw[1:33]


def test_generated_pair_decodes() -> None:
    pair = generate_user_keypair()
    assert pair.seed.startswith("SU") and len(pair.seed) == 58
    assert pair.public_key.startswith("U") and len(pair.public_key) == 56
    assert public_key_from_seed(pair.seed) == pair.public_key
    assert is_user_public_key(pair.public_key)
    prefix, raw = nkeys.decode_seed(bytearray(pair.seed.encode()))
    assert prefix == nkeys.PREFIX_BYTE_USER and len(raw) == 32


def test_pairs_are_random() -> None:
    assert generate_user_keypair().seed != generate_user_keypair().seed


def test_seed_signs_and_public_key_verifies() -> None:
    pair = generate_user_keypair()
    nonce = os.urandom(11)
    signer = nkeys.from_seed(bytearray(pair.seed.encode()))
    signature = signer.sign(nonce)
    assert signer.verify(nonce, signature)
    # Verify with the public key alone, as the server does.
    verify_key = nacl.signing.VerifyKey(_raw_public_key(pair.public_key))
    assert verify_key.verify(nonce, signature) == nonce
    with pytest.raises(nacl.exceptions.BadSignatureError):
        verify_key.verify(nonce + b"x", signature)


def test_repr_hides_seed() -> None:
    pair = generate_user_keypair()
    for text in (repr(pair), str(pair), f"{pair}", repr([pair])):
        assert pair.seed not in text
        assert pair.seed[2:12] not in text
        assert pair.public_key in text


def test_keypair_is_frozen() -> None:
    pair = generate_user_keypair()
    with pytest.raises(AttributeError):
        pair.seed = "x"  # type: ignore[misc]
    assert isinstance(pair, UserKeyPair)


def test_account_seed_rejected_without_echo() -> None:
    raw = bytes(nacl.signing.SigningKey.generate())
    account_seed = nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_ACCOUNT).decode()
    assert account_seed.startswith("SA")
    with pytest.raises(ValueError, match="must start with SU") as info:
        public_key_from_seed(account_seed)
    assert account_seed not in str(info.value)


@pytest.mark.parametrize("value", ["", "garbage", "UABC", None, 42])
def test_garbage_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="not a user NKey seed"):
        public_key_from_seed(value)  # type: ignore[arg-type]


def test_public_key_is_not_a_seed() -> None:
    pair = generate_user_keypair()
    with pytest.raises(ValueError, match="must start with SU"):
        public_key_from_seed(pair.public_key)


def test_corrupted_seed_rejected_without_echo() -> None:
    seed = generate_user_keypair().seed
    index = 20
    typo = seed[:index] + ("A" if seed[index] != "A" else "B") + seed[index + 1 :]
    with pytest.raises(ValueError, match="not a valid user NKey seed") as info:
        public_key_from_seed(typo)
    assert typo not in str(info.value) and seed not in str(info.value)
    with pytest.raises(ValueError):
        public_key_from_seed(seed[:-3])


def test_surrounding_whitespace_is_tolerated() -> None:
    pair = generate_user_keypair()
    assert public_key_from_seed(f"  {pair.seed}\n") == pair.public_key


def test_is_user_public_key() -> None:
    pair = generate_user_keypair()
    assert not is_user_public_key(pair.seed)
    assert not is_user_public_key("UD" + "A" * 54)
    assert not is_user_public_key(
        pair.public_key[:-1] + ("A" if pair.public_key[-1] != "A" else "B")
    )
    account = nkeys.from_seed(
        bytearray(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
    ).public_key.decode()
    assert account.startswith("A") and not is_user_public_key(account)


def test_seed_file_mode_0600_even_with_open_umask(tmp_path) -> None:
    pair = generate_user_keypair()
    path = tmp_path / "user.nk"
    old = os.umask(0)
    try:
        write_seed_file(path, pair.seed)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == pair.seed + "\n"
    assert public_key_from_seed(path.read_text()) == pair.public_key


def test_seed_file_refuses_overwrite(tmp_path) -> None:
    first, second = generate_user_keypair(), generate_user_keypair()
    path = tmp_path / "user.nk"
    write_seed_file(path, first.seed)
    with pytest.raises(FileExistsError, match="already exists") as info:
        write_seed_file(path, second.seed)
    assert second.seed not in str(info.value)
    assert path.read_text().strip() == first.seed


def test_seed_file_force_replaces_atomically(tmp_path) -> None:
    first = generate_user_keypair()
    path = tmp_path / "user.nk"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    write_seed_file(path, first.seed, force=True)
    assert path.read_text().strip() == first.seed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["user.nk"]  # no temp file left behind


def test_invalid_seed_is_not_written(tmp_path) -> None:
    path = tmp_path / "user.nk"
    with pytest.raises(ValueError):
        write_seed_file(path, "SAnot-a-user-seed")
    assert not path.exists()


def test_symlink_is_not_followed(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "user.nk"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_secret_file(link, "secret")
    assert not target.exists()
