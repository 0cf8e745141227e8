"""Ed25519 key files: generation (the one place that draws key randomness) and storage.

A key file is small JSON, written atomically with mode 0600::

    {"type": "careledger-ed25519-key", "version": 1, "name": "...",
     "public_key": "<b64url>", "seed": "<b64url>"}

or, with a passphrase, ``"seed"`` is replaced by::

    "kdf": {"alg": "argon2id", "opslimit": 2, "memlimit": 67108864, "salt": "<b64url 16 bytes>"},
    "encrypted_seed": "<b64url: 24-byte nonce || XSalsa20-Poly1305(seed)>"

The key is Argon2id(passphrase as NFC UTF-8, salt) and the box is PyNaCl's ``SecretBox``. The
``public_key`` is always re-derived from the seed and compared, which catches tampering with it;
``name`` is a label and is not authenticated. A passphrase given for an unencrypted file is
ignored (a node may have one in its environment for every key). Errors are ``ValidationError``
with fixed messages: they never contain the seed, the passphrase or the file's content.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret

from careledger.core.keys import SEED_SIZE, KeyPair, b64url_decode, b64url_encode
from careledger.errors import ValidationError

__all__ = [
    "KEY_FILE_TYPE",
    "KEY_FILE_VERSION",
    "generate_keypair",
    "read_key_file",
    "write_key_file",
]

KEY_FILE_TYPE = "careledger-ed25519-key"
KEY_FILE_VERSION = 1

#: Limits used when writing: libsodium's "interactive" profile (~64 MiB, well under a second).
KDF_OPSLIMIT = argon2id.OPSLIMIT_INTERACTIVE
KDF_MEMLIMIT = argon2id.MEMLIMIT_INTERACTIVE
# Limits accepted when reading, so a hostile file cannot ask for unbounded time or memory.
_MAX_OPSLIMIT = argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE
_MAX_FILE_BYTES = 64 * 1024

_PLAIN_FIELDS = frozenset({"type", "version", "name", "public_key", "seed"})
_ENCRYPTED_FIELDS = frozenset({"type", "version", "name", "public_key", "kdf", "encrypted_seed"})
_KDF_FIELDS = frozenset({"alg", "opslimit", "memlimit", "salt"})


def generate_keypair() -> KeyPair:
    """A fresh key pair from the OS CSPRNG."""
    return KeyPair.from_seed(os.urandom(SEED_SIZE))


def _box_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    """Argon2id key for the seed box; NFC so the same typed passphrase works on every system."""
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, secret, salt, opslimit=opslimit, memlimit=memlimit
    )


def _document(keypair: KeyPair, name: str, passphrase: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": KEY_FILE_TYPE,
        "version": KEY_FILE_VERSION,
        "name": name,
        "public_key": keypair.public_b64,
    }
    if passphrase is None:
        doc["seed"] = b64url_encode(keypair.seed)
        return doc
    salt = os.urandom(argon2id.SALTBYTES)
    nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_box_key(passphrase, salt, KDF_OPSLIMIT, KDF_MEMLIMIT))
    doc["kdf"] = {
        "alg": "argon2id",
        "opslimit": KDF_OPSLIMIT,
        "memlimit": KDF_MEMLIMIT,
        "salt": b64url_encode(salt),
    }
    doc["encrypted_seed"] = b64url_encode(bytes(box.encrypt(keypair.seed, nonce)))
    return doc


def write_key_file(
    path: Path,
    keypair: KeyPair,
    *,
    name: str,
    passphrase: str | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``keypair`` atomically (temp file, fsync, rename) with mode 0600.

    Refuses to replace an existing file unless ``overwrite``: losing a key cannot be undone.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError("key name must be a non-empty string")
    if passphrase is not None and not passphrase:
        raise ValidationError("passphrase must not be empty (use None for an unencrypted file)")
    path = Path(path)
    data = (json.dumps(_document(keypair, name, passphrase), indent=2) + "\n").encode("utf-8")
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and fails if the path exists
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort where directories cannot be opened."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - platform dependent
        pass
    finally:
        os.close(dir_fd)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValidationError("malformed key file: duplicate field")
    return doc


def _reject_constant(_: str) -> Any:
    raise ValidationError("malformed key file: NaN/Infinity")


def _load(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        raw = handle.read(_MAX_FILE_BYTES + 1)
    if len(raw) > _MAX_FILE_BYTES:
        raise ValidationError("malformed key file: too large")
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError):
        # The decoder's message can quote the document, which holds the seed: say nothing more.
        raise ValidationError("malformed key file: not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise ValidationError("malformed key file: not a JSON object")
    return doc


def _text(doc: dict[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"malformed key file: {field!r} must be a non-empty string")
    return value


def _bytes(doc: dict[str, Any], field: str) -> bytes:
    try:
        return b64url_decode(_text(doc, field))
    except ValidationError:
        raise ValidationError(f"malformed key file: {field!r} is not base64url") from None


def _int(doc: dict[str, Any], field: str, low: int, high: int) -> int:
    value = doc.get(field)
    if type(value) is not int or not low <= value <= high:
        raise ValidationError(f"malformed key file: kdf {field!r} must be an integer in range")
    return value


def _decrypt_seed(doc: dict[str, Any], passphrase: str | None) -> bytes:
    if passphrase is None:
        raise ValidationError("key file is encrypted: a passphrase is required")
    kdf = doc["kdf"]
    if not isinstance(kdf, dict) or set(kdf) != _KDF_FIELDS or kdf.get("alg") != "argon2id":
        raise ValidationError("malformed key file: unsupported 'kdf'")
    opslimit = _int(kdf, "opslimit", argon2id.OPSLIMIT_MIN, _MAX_OPSLIMIT)
    memlimit = _int(kdf, "memlimit", argon2id.MEMLIMIT_MIN, _MAX_MEMLIMIT)
    salt = _bytes(kdf, "salt")
    if len(salt) != argon2id.SALTBYTES:
        raise ValidationError("malformed key file: kdf 'salt' has the wrong size")
    sealed = _bytes(doc, "encrypted_seed")
    box = nacl.secret.SecretBox(_box_key(passphrase, salt, opslimit, memlimit))
    try:
        seed = box.decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise ValidationError("wrong passphrase or corrupted key file") from None
    return bytes(seed)


def read_key_file(path: Path, *, passphrase: str | None = None) -> tuple[str, KeyPair]:
    """``(name, keypair)`` from a key file, after checking the public key against the seed."""
    doc = _load(Path(path))
    if doc.get("type") != KEY_FILE_TYPE:
        raise ValidationError(f"not a key file: 'type' must be {KEY_FILE_TYPE!r}")
    version = doc.get("version")
    if type(version) is not int or version != KEY_FILE_VERSION:
        raise ValidationError(f"unsupported key file version (expected {KEY_FILE_VERSION})")
    fields = set(doc)
    if fields == _PLAIN_FIELDS:
        seed = _bytes(doc, "seed")
    elif fields == _ENCRYPTED_FIELDS:
        seed = _decrypt_seed(doc, passphrase)
    else:
        raise ValidationError("malformed key file: unexpected or missing fields")
    name = _text(doc, "name")
    public_key = _bytes(doc, "public_key")
    if len(seed) != SEED_SIZE:
        raise ValidationError("malformed key file: the seed has the wrong size")
    try:
        keypair = KeyPair(seed=seed, public_key=public_key)
    except ValidationError:
        raise ValidationError("key file public key does not match its seed") from None
    return name, keypair
