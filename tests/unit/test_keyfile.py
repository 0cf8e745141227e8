"""Key files: round trips, encryption, strict parsing, permissions, and no secrets in errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from careledger.core.keys import KeyPair, b64url_decode, b64url_encode, verify_signature
from careledger.errors import ValidationError
from careledger.keyfile import (
    KEY_FILE_TYPE,
    KEY_FILE_VERSION,
    generate_keypair,
    read_key_file,
    write_key_file,
)

PASSPHRASE = "correct horse battery staple"
SEED = bytes(range(32))
PAIR = KeyPair.from_seed(SEED)
SECRETS = (SEED.hex(), b64url_encode(SEED), repr(SEED), PASSPHRASE)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _no_secrets(error: BaseException) -> None:
    text = f"{error!s} {error!r}"
    for secret in SECRETS:
        assert secret not in text
    # No chained exception either: a JSON or base64 error could carry the file's text.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.fixture(scope="module")
def encrypted_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Argon2id-encrypted file shared by the tests that only read it (the KDF is slow)."""
    path = tmp_path_factory.mktemp("keys") / "node.key"
    write_key_file(path, PAIR, name="node-1", passphrase=PASSPHRASE)
    return path


def _edit(path: Path, tmp_path: Path, change: Any) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    out = tmp_path / "edited.key"
    out.write_text(json.dumps(doc))
    return out


def test_generate_keypair_is_random_and_valid() -> None:
    a, b = generate_keypair(), generate_keypair()
    assert a.seed != b.seed
    assert a.public_key != b.public_key
    assert verify_signature(a.public_key, b"m", a.sign(b"m"))


def test_plain_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "plain.key"
    write_key_file(path, PAIR, name="alice")
    assert read_key_file(path) == ("alice", PAIR)
    doc = json.loads(path.read_text())
    assert doc == {
        "type": KEY_FILE_TYPE,
        "version": KEY_FILE_VERSION,
        "name": "alice",
        "public_key": PAIR.public_b64,
        "seed": b64url_encode(SEED),
    }
    assert _mode(path) == 0o600


def test_encrypted_roundtrip(encrypted_file: Path) -> None:
    assert read_key_file(encrypted_file, passphrase=PASSPHRASE) == ("node-1", PAIR)
    assert _mode(encrypted_file) == 0o600
    text = encrypted_file.read_text()
    assert b64url_encode(SEED) not in text
    assert SEED.hex() not in text
    doc = json.loads(text)
    assert set(doc) == {"type", "version", "name", "public_key", "kdf", "encrypted_seed"}
    assert doc["kdf"]["alg"] == "argon2id"
    assert len(b64url_decode(doc["kdf"]["salt"])) == 16
    assert len(b64url_decode(doc["encrypted_seed"])) == 24 + 32 + 16  # nonce, seed, MAC


def test_passphrase_is_nfc_normalised(tmp_path: Path) -> None:
    path = tmp_path / "nfc.key"
    write_key_file(path, PAIR, name="n", passphrase="caf\u00e9")
    assert read_key_file(path, passphrase="cafe\u0301")[1] == PAIR


def test_wrong_passphrase(encrypted_file: Path) -> None:
    with pytest.raises(ValidationError, match="wrong passphrase") as info:
        read_key_file(encrypted_file, passphrase=PASSPHRASE + "!")
    _no_secrets(info.value)


def test_missing_passphrase(encrypted_file: Path) -> None:
    with pytest.raises(ValidationError, match="passphrase is required") as info:
        read_key_file(encrypted_file)
    _no_secrets(info.value)


def test_passphrase_for_plain_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "plain.key"
    write_key_file(path, PAIR, name="alice")
    assert read_key_file(path, passphrase="anything") == ("alice", PAIR)


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_key_file(path, PAIR, name="first")
    other = KeyPair.from_seed(bytes(32))
    with pytest.raises(FileExistsError):
        write_key_file(path, other, name="second")
    assert read_key_file(path) == ("first", PAIR)
    write_key_file(path, other, name="second", overwrite=True)
    assert read_key_file(path) == ("second", other)
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]  # no temp files left


def test_write_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        write_key_file(tmp_path / "a.key", PAIR, name="")
    with pytest.raises(ValidationError):
        write_key_file(tmp_path / "b.key", PAIR, name="x", passphrase="")
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_key_file(tmp_path / "nope" / "a.key", PAIR, name="x")


def _plain_doc() -> dict[str, Any]:
    return {
        "type": KEY_FILE_TYPE,
        "version": 1,
        "name": "alice",
        "public_key": PAIR.public_b64,
        "seed": b64url_encode(SEED),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(type="other"), "not a key file"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(version=True), "version"),
        (lambda d: d.update(version="1"), "version"),
        (lambda d: d.update(name=""), "'name'"),
        (lambda d: d.update(name=7), "'name'"),
        (lambda d: d.pop("seed"), "fields"),
        (lambda d: d.update(extra=1), "fields"),
        (lambda d: d.update(seed=d["seed"] + "="), "'seed' is not base64url"),
        (lambda d: d.update(seed=b64url_encode(SEED[:31])), "wrong size"),
        (lambda d: d.update(public_key=KeyPair.from_seed(bytes(32)).public_b64), "does not match"),
        (lambda d: d.update(public_key=b64url_encode(b"short")), "does not match"),
        (lambda d: d.update(seed=b64url_encode(bytes(32))), "does not match"),
    ],
)
def test_malformed_plain_files(change: Any, message: str, tmp_path: Path) -> None:
    doc = _plain_doc()
    change(doc)
    path = tmp_path / "bad.key"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match=message) as info:
        read_key_file(path)
    _no_secrets(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'"string"',
        b"\xff\xfe",
        # A syntax error right after the seed: the decoder's message must not reach the caller.
        b'{"seed": "' + b64url_encode(SEED).encode() + b'" "name": 1}',
        b" " * 70_000,
    ],
)
def test_unreadable_files(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match="malformed key file") as info:
        read_key_file(path)
    _no_secrets(info.value)


def test_duplicate_fields_are_refused(tmp_path: Path) -> None:
    text = json.dumps(_plain_doc())[:-1] + ', "name": "mallory"}'
    path = tmp_path / "dup.key"
    path.write_text(text)
    with pytest.raises(ValidationError, match="duplicate"):
        read_key_file(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(public_key=KeyPair.from_seed(bytes(32)).public_b64), "does not match"),
        (lambda d: d["kdf"].update(alg="scrypt"), "unsupported 'kdf'"),
        (lambda d: d["kdf"].update(extra=1), "unsupported 'kdf'"),
        (lambda d: d.update(kdf="argon2id"), "unsupported 'kdf'"),
        (lambda d: d["kdf"].update(opslimit=0), "opslimit"),
        (lambda d: d["kdf"].update(opslimit=10**9), "opslimit"),
        (lambda d: d["kdf"].update(memlimit=2**40), "memlimit"),
        (lambda d: d["kdf"].update(memlimit=1.5), "memlimit"),
        (lambda d: d["kdf"].update(salt=b64url_encode(bytes(8))), "salt"),
        (lambda d: d["kdf"].update(salt=b64url_encode(bytes(16))), "wrong passphrase"),
        (lambda d: d["kdf"].update(opslimit=3), "wrong passphrase"),
        (lambda d: d.update(encrypted_seed=d["encrypted_seed"][:-4]), "wrong passphrase"),
        (lambda d: d.update(encrypted_seed="AAAA"), "wrong passphrase"),
        (lambda d: d.update(encrypted_seed="not base64!"), "not base64url"),
        (lambda d: d.update(seed=b64url_encode(SEED)), "fields"),
    ],
)
def test_tampered_encrypted_files(
    change: Any, message: str, encrypted_file: Path, tmp_path: Path
) -> None:
    path = _edit(encrypted_file, tmp_path, change)
    with pytest.raises(ValidationError, match=message) as info:
        read_key_file(path, passphrase=PASSPHRASE)
    _no_secrets(info.value)


def test_flipped_ciphertext_bit(encrypted_file: Path, tmp_path: Path) -> None:
    def flip(doc: dict[str, Any]) -> None:
        sealed = bytearray(b64url_decode(doc["encrypted_seed"]))
        sealed[30] ^= 1
        doc["encrypted_seed"] = b64url_encode(bytes(sealed))

    with pytest.raises(ValidationError, match="wrong passphrase or corrupted") as info:
        read_key_file(_edit(encrypted_file, tmp_path, flip), passphrase=PASSPHRASE)
    _no_secrets(info.value)


def test_renamed_encrypted_file_still_opens(encrypted_file: Path, tmp_path: Path) -> None:
    """The name is a label, not authenticated: documented, and pinned here."""
    path = _edit(encrypted_file, tmp_path, lambda d: d.update(name="renamed"))
    assert read_key_file(path, passphrase=PASSPHRASE) == ("renamed", PAIR)
