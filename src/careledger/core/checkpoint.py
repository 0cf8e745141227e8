"""C2SP signed notes, transparency-log checkpoints and verifier keys.

Three small text formats, byte-compatible with the Go reference implementation
(``golang.org/x/mod/sumdb/note``) and the C2SP specifications:

* ``c2sp.org/signed-note`` -- a text (the *body*) ending in a newline, a blank line, then one or
  more signature lines ``"\u2014 <key name> <base64(4-byte key ID || signature)>\\n"``. The
  signature covers the body bytes (UTF-8, final newline included, blank line excluded).
  Only Ed25519 (signature type ``0x01``) is implemented; signatures by other keys or other
  algorithms are carried along and ignored when verifying, as the spec requires.
* ``c2sp.org/tlog-checkpoint`` -- a note body of at least three non-empty lines: the log
  *origin*, the tree *size* in decimal without leading zeros, the base64 RFC 6962 *root hash*,
  then optional non-empty *extension* lines.
* verifier keys (``vkey``) -- ``<name>+<8 hex key ID>+<base64(0x01 || 32-byte public key)>``,
  the form ``note.NewVerifier`` accepts.

The Ed25519 key ID is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``.

Strictness beyond the Go implementation (so that one note has exactly one spelling and any
change to a note's bytes is detected): base64 must be canonical (padded, zero trailing bits);
a signature line from a known key is checked every time it occurs (Go checks only the first);
a known key's signature must be exactly 64 bytes. A note may hold at most ``MAX_SIGNATURES``
signature lines (Go's limit; the spec asks for at least 16) and ``MAX_NOTE_SIZE`` bytes.

Pure module: no I/O, no clock, no randomness. Malformed text raises
:class:`~careledger.errors.ValidationError`; signatures that do not verify, or too few of them,
raise :class:`~careledger.errors.VerificationError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import CryptoError

from careledger.errors import ValidationError, VerificationError

__all__ = [
    "ALG_ED25519",
    "HASH_SIZE",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "MAX_TREE_SIZE",
    "Checkpoint",
    "NoteSignature",
    "NoteVerifier",
    "SeedSigner",
    "SignedNote",
    "Signer",
    "add_signature",
    "format_checkpoint",
    "format_note",
    "format_vkey",
    "key_hash",
    "merge_notes",
    "note_signature_line",
    "parse_checkpoint",
    "parse_note",
    "parse_vkey",
    "sign_note",
    "verify_note",
]

ALG_ED25519 = 0x01  # c2sp.org/signed-note signature type for plain Ed25519
HASH_SIZE = 32  # RFC 6962 with SHA-256
MAX_SIGNATURES = 100  # golang.org/x/mod/sumdb/note rejects notes with more signature lines
MAX_NOTE_SIZE = 1 << 20  # bytes; our own cap (the spec says to cap signatures or size)
MAX_TREE_SIZE = (1 << 64) - 1  # tree sizes are uint64 in every implementation

_KEY_HASH_SIZE = 4
_PUBLIC_KEY_SIZE = 32
_SEED_SIZE = 32
_SIGNATURE_SIZE = 64
_SIG_PREFIX = "\u2014 "  # em dash, space

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than newline
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_TREE_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")


# --------------------------------------------------------------------------- signers


class Signer(Protocol):
    """Anything that signs with an Ed25519 key: a detached 64-byte signature of ``message``."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class SeedSigner:
    """A :class:`Signer` over a raw 32-byte Ed25519 seed (RFC 8032 private key)."""

    __slots__ = ("_secret", "public_key")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != _SEED_SIZE:
            raise ValidationError("an Ed25519 seed is 32 bytes", code="BAD_KEY")
        public_key, secret = crypto_sign_seed_keypair(seed)
        self.public_key: bytes = public_key
        self._secret = secret

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(message, self._secret)[:_SIGNATURE_SIZE]

    def __repr__(self) -> str:
        return f"SeedSigner(public_key={self.public_key.hex()})"


def _as_signer(signer: Signer | bytes) -> Signer:
    if isinstance(signer, bytes):
        return SeedSigner(signer)
    return signer


def _ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != _PUBLIC_KEY_SIZE or len(signature) != _SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except CryptoError:
        return False
    return True


# --------------------------------------------------------------------------- text helpers


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str, code: str) -> bytes:
    """Standard, padded, canonical base64 (re-encoding gives back ``text`` exactly)."""
    if not text or _BASE64.fullmatch(text) is None:
        raise ValidationError(f"{what} is not standard padded base64", code=code)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{what} is not standard padded base64", code=code) from None
    if _b64encode(raw) != text:
        raise ValidationError(f"{what} is not canonical base64", code=code)
    return raw


def _utf8(text: str, what: str, code: str) -> bytes:
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be text", code=code)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid UTF-8", code=code) from None
    if len(data) > MAX_NOTE_SIZE:
        raise ValidationError(f"{what} is larger than {MAX_NOTE_SIZE} bytes", code=code)
    if _CONTROL.search(text) is not None:
        raise ValidationError(f"{what} contains a control character", code=code)
    return data


def _body_bytes(body: str) -> bytes:
    """Check a note body (text ending in a newline) and answer the bytes that get signed."""
    data = _utf8(body, "note text", "BAD_NOTE")
    if not body.endswith("\n"):
        raise ValidationError("note text must end with a newline", code="BAD_NOTE")
    return data


def _is_valid_name(name: object) -> bool:
    if not isinstance(name, str) or not name or "+" in name:
        return False
    if any(ch.isspace() or ch < " " for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(name: str) -> None:
    if not _is_valid_name(name):
        raise ValidationError(
            "a key name must be non-empty UTF-8 without spaces, '+' or control characters",
            code="BAD_KEY_NAME",
        )


def _public_key(public_key: bytes) -> bytes:
    if not isinstance(public_key, bytes | bytearray | memoryview):
        raise ValidationError("an Ed25519 public key is 32 bytes", code="BAD_KEY")
    key = bytes(public_key)
    if len(key) != _PUBLIC_KEY_SIZE:
        raise ValidationError("an Ed25519 public key is 32 bytes", code="BAD_KEY")
    return key


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A c2sp.org/tlog-checkpoint body: the log's origin, tree size and RFC 6962 root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValidationError(
                "checkpoint size must be an integer in [0, 2**64)", code="BAD_CHECKPOINT"
            )
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise ValidationError(
                f"checkpoint root must be {HASH_SIZE} bytes", code="BAD_CHECKPOINT"
            )
        if type(self.extensions) is not tuple:
            raise ValidationError("checkpoint extensions must be a tuple", code="BAD_CHECKPOINT")
        for line in self.extensions:
            _check_line(line, "checkpoint extension line")


def _check_line(line: object, what: str) -> None:
    if not isinstance(line, str) or not line:
        raise ValidationError(f"{what} must be a non-empty string", code="BAD_CHECKPOINT")
    if "\n" in line:
        raise ValidationError(f"{what} must be a single line", code="BAD_CHECKPOINT")
    _utf8(line, what, "BAD_CHECKPOINT")


def format_checkpoint(cp: Checkpoint) -> str:
    """The note body of ``cp``: origin, size, base64 root, extension lines, each + newline."""
    lines = [cp.origin, str(cp.size), _b64encode(cp.root), *cp.extensions]
    return "".join(line + "\n" for line in lines)


def parse_checkpoint(body: str) -> Checkpoint:
    """Parse a checkpoint note body (as returned by :func:`verify_note`)."""
    _utf8(body, "checkpoint", "BAD_CHECKPOINT")
    if not body.endswith("\n"):
        raise ValidationError("checkpoint must end with a newline", code="BAD_CHECKPOINT")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise ValidationError("checkpoint needs origin, size and root lines", code="BAD_CHECKPOINT")
    if any(not line for line in lines):
        raise ValidationError("checkpoint lines must be non-empty", code="BAD_CHECKPOINT")
    origin, size_line, root_line, *extensions = lines
    if _TREE_SIZE.fullmatch(size_line) is None:
        raise ValidationError(
            "checkpoint size must be decimal without sign or leading zeros", code="BAD_CHECKPOINT"
        )
    size = int(size_line)
    if size > MAX_TREE_SIZE:
        raise ValidationError("checkpoint size does not fit in 64 bits", code="BAD_CHECKPOINT")
    root = _b64decode(root_line, "checkpoint root", "BAD_CHECKPOINT")
    return Checkpoint(origin=origin, size=size, root=root, extensions=tuple(extensions))


# --------------------------------------------------------------------------- verifier keys


def key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte Ed25519 key ID: ``SHA-256(name || 0x0A || 0x01 || public_key)[:4]``."""
    _check_name(name)
    key = _public_key(public_key)
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + key).digest()
    return digest[:_KEY_HASH_SIZE]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted Ed25519 note key. ``key_hash`` must be :func:`key_hash` of name and key."""

    name: str
    key_hash: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.public_key, bytes):
            raise ValidationError("an Ed25519 public key is 32 bytes", code="BAD_KEY")
        if self.key_hash != key_hash(self.name, self.public_key):
            raise ValidationError(
                "verifier key hash does not match its name and public key", code="BAD_VKEY"
            )


def format_vkey(name: str, public_key: bytes) -> str:
    """``<name>+<hex key ID>+<base64(0x01 || public key)>``, as Go's ``GenerateKey`` writes."""
    kh = key_hash(name, public_key)
    return f"{name}+{kh.hex()}+{_b64encode(bytes([ALG_ED25519]) + _public_key(public_key))}"


def parse_vkey(text: str) -> NoteVerifier:
    """Parse a verifier key, checking its key ID against the name and key it carries."""
    if not isinstance(text, str):
        raise ValidationError("a verifier key must be text", code="BAD_VKEY")
    name, sep1, rest = text.partition("+")
    hash16, sep2, key64 = rest.partition("+")
    if not sep1 or not sep2 or not _is_valid_name(name) or _HEX8.fullmatch(hash16) is None:
        raise ValidationError("malformed verifier key", code="BAD_VKEY")
    key = _b64decode(key64, "verifier key data", "BAD_VKEY")
    if key[0] != ALG_ED25519:
        raise ValidationError(f"unknown verifier key algorithm {key[0]}", code="BAD_VKEY")
    if len(key) != 1 + _PUBLIC_KEY_SIZE:
        raise ValidationError("an Ed25519 verifier key holds 32 bytes", code="BAD_VKEY")
    public_key = key[1:]
    kh = key_hash(name, public_key)
    if bytes.fromhex(hash16) != kh:
        raise ValidationError(
            "verifier key hash does not match its name and public key", code="BAD_VKEY"
        )
    return NoteVerifier(name=name, key_hash=kh, public_key=public_key)


# --------------------------------------------------------------------------- signed notes


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID and the signature bytes after it."""

    name: str
    key_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.key_hash, bytes) or len(self.key_hash) != _KEY_HASH_SIZE:
            raise ValidationError("a note key hash is 4 bytes", code="BAD_NOTE")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise ValidationError("a note signature must not be empty", code="BAD_NOTE")

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_hash + self.signature)}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed, *unverified* note: its body and its signature lines in order."""

    body: str
    signatures: tuple[NoteSignature, ...]


def format_note(note: SignedNote) -> str:
    """Render a note; ``format_note(parse_note(t)) == t`` for every note ``t`` that parses."""
    _body_bytes(note.body)
    if not note.signatures:
        raise ValidationError("a note needs at least one signature", code="BAD_NOTE")
    if len(note.signatures) > MAX_SIGNATURES:
        raise ValidationError(f"a note holds at most {MAX_SIGNATURES} signatures", code="BAD_NOTE")
    text = note.body + "\n" + "".join(sig.line() for sig in note.signatures)
    _utf8(text, "note", "BAD_NOTE")
    return text


def parse_note(text: str | bytes) -> SignedNote:
    """Split a signed note into body and signature lines without verifying anything."""
    if isinstance(text, bytes):
        if len(text) > MAX_NOTE_SIZE:
            raise ValidationError(f"note is larger than {MAX_NOTE_SIZE} bytes", code="BAD_NOTE")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("note is not valid UTF-8", code="BAD_NOTE") from None
    _utf8(text, "note", "BAD_NOTE")
    split = text.rfind("\n\n")
    if split < 0:
        raise ValidationError("note has no blank line before its signatures", code="BAD_NOTE")
    body, block = text[: split + 1], text[split + 2 :]
    if not block or not block.endswith("\n"):
        raise ValidationError("note signatures must end with a newline", code="BAD_NOTE")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ValidationError(f"a note holds at most {MAX_SIGNATURES} signatures", code="BAD_NOTE")
    return SignedNote(body=body, signatures=tuple(_parse_signature_line(ln) for ln in lines))


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX):
        raise ValidationError("a note signature line starts with an em dash", code="BAD_NOTE")
    name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not _is_valid_name(name):
        raise ValidationError("malformed note signature line", code="BAD_NOTE")
    raw = _b64decode(b64, "note signature", "BAD_NOTE")
    if len(raw) <= _KEY_HASH_SIZE:
        raise ValidationError("note signature is too short", code="BAD_NOTE")
    return NoteSignature(name=name, key_hash=raw[:_KEY_HASH_SIZE], signature=raw[_KEY_HASH_SIZE:])


def _sign(body: str, name: str, signer: Signer | bytes) -> NoteSignature:
    _check_name(name)
    message = _body_bytes(body)
    resolved = _as_signer(signer)
    public_key = _public_key(resolved.public_key)
    signature = bytes(resolved.sign(message))
    if not _ed25519_verify(public_key, message, signature):
        raise VerificationError(
            "the signer's signature does not verify under its public key", code="BAD_SIGNER"
        )
    return NoteSignature(name=name, key_hash=key_hash(name, public_key), signature=signature)


def note_signature_line(body: str, name: str, signer: Signer | bytes) -> str:
    """One ``"\u2014 <name> <base64>\\n"`` line signing ``body`` (a seed may stand for a signer)."""
    return _sign(body, name, signer).line()


def sign_note(body: str, name: str, signer: Signer | bytes) -> str:
    """The full note: ``body``, a blank line, and one signature line."""
    return format_note(SignedNote(body=body, signatures=(_sign(body, name, signer),)))


def _dedupe(signatures: Sequence[NoteSignature]) -> tuple[NoteSignature, ...]:
    """Keep the first line of each key (name, key ID); later lines by the same key are dropped."""
    seen: set[tuple[str, bytes]] = set()
    kept: list[NoteSignature] = []
    for sig in signatures:
        key = (sig.name, sig.key_hash)
        if key not in seen:
            seen.add(key)
            kept.append(sig)
    return tuple(kept)


def add_signature(note: str, name: str, signer: Signer | bytes) -> str:
    """Cosign: append a signature by ``signer`` to ``note``, replacing any line by that key.

    Like Go's ``note.Sign`` the new line goes last. Nothing is verified: check the note with
    :func:`verify_note` before cosigning it.
    """
    parsed = parse_note(note)
    new = _sign(parsed.body, name, signer)
    others = [s for s in parsed.signatures if (s.name, s.key_hash) != (new.name, new.key_hash)]
    return format_note(SignedNote(body=parsed.body, signatures=(*_dedupe(others), new)))


def merge_notes(a: str, b: str) -> str:
    """Union of two notes' signature lines over the same body, one line per key.

    ``a``'s lines come first and win when both notes hold a line by the same key. Nothing is
    verified; :func:`verify_note` the result.
    """
    pa, pb = parse_note(a), parse_note(b)
    if pa.body != pb.body:
        raise VerificationError("the notes sign different texts", code="NOTE_MISMATCH")
    merged = _dedupe((*pa.signatures, *pb.signatures))
    return format_note(SignedNote(body=pa.body, signatures=merged))


def verify_note(
    text: str | bytes, verifiers: Sequence[NoteVerifier], *, min_signatures: int = 1
) -> tuple[str, tuple[str, ...]]:
    """Verify ``text`` against trusted keys; answer its body and the names of the keys that signed.

    Signature lines by unknown keys (name and key ID not both matching a verifier) are ignored.
    Every line by a known key must verify, else :class:`VerificationError`. At least
    ``min_signatures`` distinct known keys must have signed, else :class:`VerificationError`.
    Names are listed once per key, in the order of the note's lines.
    """
    if type(min_signatures) is not int or min_signatures < 1:
        raise ValidationError("min_signatures must be a positive integer", code="BAD_ARGS")
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if not isinstance(v, NoteVerifier):
            raise ValidationError("verifiers must be NoteVerifier objects", code="BAD_ARGS")
        other = known.setdefault((v.name, v.key_hash), v)
        if other.public_key != v.public_key:
            raise ValidationError(
                f"two verifiers share the key {v.name}+{v.key_hash.hex()}", code="BAD_VKEY"
            )
    note = parse_note(text)
    message = note.body.encode("utf-8")
    verified: dict[tuple[str, bytes], str] = {}
    checked: set[tuple[str, bytes, bytes]] = set()
    for sig in note.signatures:
        key = (sig.name, sig.key_hash)
        verifier = known.get(key)
        if verifier is None or (*key, sig.signature) in checked:
            continue
        if not _ed25519_verify(verifier.public_key, message, sig.signature):
            raise VerificationError(
                f"invalid signature for key {sig.name}+{sig.key_hash.hex()}",
                code="BAD_NOTE_SIGNATURE",
            )
        checked.add((*key, sig.signature))
        verified.setdefault(key, verifier.name)
    if len(verified) < min_signatures:
        raise VerificationError(
            f"the note has {len(verified)} verified signature(s) by known keys, "
            f"{min_signatures} needed",
            code="NOTE_UNVERIFIED",
        )
    return note.body, tuple(verified.values())
