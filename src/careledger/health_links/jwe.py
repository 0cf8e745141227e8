"""The encrypted files behind a SMART Health Link.

SHL spec, "Encrypting and Decrypting Files": JWE compact serialisation with ``alg: dir``,
``enc: A256GCM`` and a ``cty`` header naming the plaintext's content type; an optional
``zip: DEF`` header means the plaintext was compressed with raw DEFLATE (RFC 1951) before
encryption. Every file of a link is encrypted with the link's one key, so each encryption needs
a fresh 96-bit IV: the caller passes one drawn from a CSPRNG, or leaves ``iv`` out and joserfc
draws it.
"""

from __future__ import annotations

from joserfc import jwe
from joserfc.jwa import DeflateZipModel, GCMEncModel, JWEEncModel, JWEZipModel
from joserfc.jwk import OctKey

from careledger.errors import ValidationError, VerificationError
from careledger.health_links.link import key_bytes

__all__ = ["IV_BYTES", "MAX_CIPHERTEXT_BYTES", "MAX_PLAINTEXT_BYTES", "decrypt", "encrypt"]

IV_BYTES = 12
#: joserfc refuses JWEs above 64 KiB of ciphertext by default, which the IG's own IPS example
#: (81 KB) exceeds; SHL files are whole FHIR bundles.
MAX_CIPHERTEXT_BYTES = 16 * 1024 * 1024
#: Bound on a ``zip: DEF`` file after inflating, against decompression bombs.
MAX_PLAINTEXT_BYTES = 16 * 1024 * 1024

_ALGORITHMS = ["dir", "A256GCM", "DEF"]


class _BoundedDeflate(DeflateZipModel):
    MAX_SIZE = MAX_PLAINTEXT_BYTES


class _GivenIV(GCMEncModel):
    """A256GCM whose IV is the caller's, so that encryption is a function of its inputs."""

    def __init__(self, iv: bytes) -> None:
        super().__init__(256)
        self._iv = iv

    def generate_iv(self) -> bytes:
        return self._iv


class _Registry(jwe.JWERegistry):
    max_ciphertext_length = MAX_CIPHERTEXT_BYTES

    def __init__(self, iv: bytes | None = None) -> None:
        super().__init__(algorithms=_ALGORITHMS)
        self._iv = iv

    def get_enc(self, name: str) -> JWEEncModel:
        model = super().get_enc(name)
        return model if self._iv is None else _GivenIV(self._iv)

    def get_zip(self, name: str) -> JWEZipModel:
        super().get_zip(name)
        return _BOUNDED_DEFLATE


_BOUNDED_DEFLATE = _BoundedDeflate()


def _check_content_type(content_type: object) -> str:
    if (
        not isinstance(content_type, str)
        or not content_type
        or not content_type.isascii()
        or not content_type.isprintable()
    ):
        raise ValidationError("content type must be printable ASCII", code="BAD_JWE")
    return content_type


def encrypt(
    plaintext: bytes,
    key_b64url: str,
    content_type: str,
    *,
    iv: bytes | None = None,
    compress: bool = False,
) -> str:
    """Compact JWE of ``plaintext`` under a link's key, e.g. ``application/smart-health-card``
    or ``application/fhir+json`` as ``content_type``.

    ``iv`` MUST never repeat under one key (AES-GCM loses confidentiality and integrity when it
    does); without it joserfc draws one from the OS.
    """
    if not isinstance(plaintext, bytes):
        raise ValidationError("plaintext must be bytes", code="BAD_JWE")
    key = key_bytes(key_b64url)
    protected = {"alg": "dir", "enc": "A256GCM", "cty": _check_content_type(content_type)}
    if compress:
        protected["zip"] = "DEF"
    if iv is not None and (not isinstance(iv, bytes) or len(iv) != IV_BYTES):
        raise ValidationError(f"iv must be {IV_BYTES} bytes", code="BAD_JWE")
    return jwe.encrypt_compact(protected, plaintext, OctKey.import_key(key), registry=_Registry(iv))


def decrypt(token: str, key_b64url: str) -> tuple[bytes, str]:
    """The plaintext and content type (``cty``) of a file of a link.

    The content type is empty when the sender left ``cty`` out (the IG's own IPS demo file
    does); the manifest's ``contentType`` says the same thing.
    """
    key = key_bytes(key_b64url)
    if not isinstance(token, str):
        raise ValidationError("a JWE is text", code="BAD_JWE")
    try:
        found = jwe.decrypt_compact(token.strip(), OctKey.import_key(key), registry=_Registry())
    except Exception:
        # Untrusted input: joserfc reports a wrong key or a changed byte as DecodeError, but a
        # malformed token may surface as ValueError, binascii.Error, zlib.error or KeyError.
        # All of them mean the same thing to the caller, and none may leak as a 500.
        raise VerificationError(
            "the file does not decrypt with this link's key (wrong key, altered or malformed)",
            code="BAD_JWE",
        ) from None
    content_type = found.protected.get("cty", "")
    if found.plaintext is None:
        raise VerificationError("the file decrypted to nothing", code="BAD_JWE")
    return found.plaintext, content_type if isinstance(content_type, str) else ""
