"""SMART Health Link payloads and their ``shlink:/`` URIs.

Rules from the SMART Health Links specification (HL7 SMART Health Cards and Links IG 1.0.0,
"Construct a SMART Health Link Payload"): ``url`` (the manifest URL, at most 128 characters) and
``key`` (43 base64url characters, 32 random bytes) are required; ``exp`` (epoch seconds), ``flag``
(single letters in alphabetical order: L long-term, P passcode, U direct file; U never with P),
``label`` (at most 80 characters) and ``v`` (protocol version, 1 when absent) are optional. The
URI is ``shlink:/`` + base64url (no padding) of the minified JSON, optionally behind a viewer URL
ending in ``#``. Receivers ignore properties and flags they do not know.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from careledger.errors import ValidationError

__all__ = [
    "KEY_BYTES",
    "MAX_LABEL_CHARS",
    "MAX_URL_CHARS",
    "SCHEME",
    "LinkPayload",
    "key_bytes",
    "new_key",
    "parse_uri",
    "to_uri",
]

SCHEME = "shlink:/"
KEY_BYTES = 32
KEY_CHARS = 43
MAX_URL_CHARS = 128
MAX_LABEL_CHARS = 80
#: The flags of protocol version 1; others are kept when parsing (receivers ignore them) but
#: never issued.
ISSUED_FLAGS = frozenset("LPU")
# A payload is a few hundred characters; this only stops absurd input before it is decoded.
MAX_URI_CHARS = 8192
# Epoch seconds are 64-bit in the spec; JSON only carries integers up to 2**53 - 1 exactly.
_MAX_EXP = 2**53 - 1

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_FLAGS = re.compile(r"[A-Z]*")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _bad(message: str) -> ValidationError:
    return ValidationError(message, code="BAD_SHLINK")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    """Decodes unpadded base64url strictly: standard base64 (``+`` ``/``) is not accepted."""
    text = text.rstrip("=")
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key(random32: bytes) -> str:
    """The ``key`` of a new link, from 32 bytes the caller drew from a CSPRNG."""
    if not isinstance(random32, bytes) or len(random32) != KEY_BYTES:
        raise _bad(f"a link key is made from exactly {KEY_BYTES} random bytes")
    return _b64url(random32)


def key_bytes(key: str) -> bytes:
    """The 32 AES-256 key bytes behind a link's ``key``.

    Only the canonical 43-character spelling is accepted, so one key has one text and a link
    compares equal to itself after a round trip.
    """
    if not isinstance(key, str) or len(key) != KEY_CHARS:
        raise _bad(f"key must be {KEY_CHARS} base64url characters (32 bytes)")
    try:
        raw = _unb64url(key)
    except (ValueError, binascii.Error):
        raise _bad("key is not base64url") from None
    if _b64url(raw) != key:
        raise _bad("key is not the canonical base64url spelling of 32 bytes")
    return raw


def _check_https_url(url: object, what: str) -> str:
    """An absolute https URL (http only for a loopback host, for development)."""
    if not isinstance(url, str) or not url:
        raise _bad(f"{what} must be a URL")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise _bad(f"{what} must be printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise _bad(f"{what} is not a valid URL") from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return url
    raise _bad(f"{what} must be an absolute https URL")


def _check_flags(flags: object) -> str:
    if not isinstance(flags, str) or not _FLAGS.fullmatch(flags):
        raise _bad("flag must be upper-case letters")
    if list(flags) != sorted(set(flags)):
        raise _bad("flag letters must be unique and in alphabetical order")
    if "P" in flags and "U" in flags:
        raise _bad("flag U (direct file) SHALL NOT be combined with P (passcode)")
    return flags


@dataclass(frozen=True)
class LinkPayload:
    """The JSON payload of a SMART Health Link. ``flags`` is the spec's ``flag`` property and
    ``version`` its ``v``.

    The manifest URL must carry at least 256 bits of entropy (the spec suggests a 43-character
    random path segment); that cannot be checked here and is the caller's duty.
    """

    url: str
    key: str
    exp: int | None = None
    flags: str = ""
    label: str | None = None
    version: int = 1

    def __post_init__(self) -> None:
        _check_https_url(self.url, "url")
        if len(self.url) > MAX_URL_CHARS:
            raise _bad(
                f"url is {len(self.url)} characters; the spec allows at most {MAX_URL_CHARS}"
            )
        key_bytes(self.key)
        if self.exp is not None and (type(self.exp) is not int or not 0 <= self.exp <= _MAX_EXP):
            raise _bad("exp must be a whole number of seconds since the epoch")
        _check_flags(self.flags)
        if self.label is not None:
            if not isinstance(self.label, str):
                raise _bad("label must be a string")
            if len(self.label) > MAX_LABEL_CHARS:
                raise _bad(
                    f"label is {len(self.label)} characters; the spec allows at most "
                    f"{MAX_LABEL_CHARS}"
                )
        if type(self.version) is not int or self.version < 1:
            raise _bad("v must be a positive integer")

    @property
    def long_term(self) -> bool:
        return "L" in self.flags

    @property
    def requires_passcode(self) -> bool:
        return "P" in self.flags

    @property
    def direct_file(self) -> bool:
        """U: ``url`` serves the one encrypted file by GET, with no manifest."""
        return "U" in self.flags


def _payload_json(payload: LinkPayload) -> dict[str, Any]:
    # The order of the spec's own examples (url, flag, key, label), so that they are reproduced
    # byte for byte; ``v`` is left out at its default, as the spec allows and its examples do.
    body: dict[str, Any] = {"url": payload.url}
    if payload.flags:
        body["flag"] = payload.flags
    body["key"] = payload.key
    if payload.exp is not None:
        body["exp"] = payload.exp
    if payload.label is not None:
        body["label"] = payload.label
    if payload.version != 1:
        body["v"] = payload.version
    return body


def _viewer_prefix(viewer: str) -> str:
    base = viewer[:-1] if isinstance(viewer, str) and viewer.endswith("#") else viewer
    _check_https_url(base, "viewer")
    if "#" in base:
        raise _bad("viewer URL must not have a fragment of its own: the link goes there")
    return base + "#"


def to_uri(payload: LinkPayload, viewer: str | None = None) -> str:
    """``shlink:/…``, or ``<viewer>#shlink:/…`` so that a browser opens the link in a viewer
    without sending the payload (a fragment) to the viewer's server."""
    unknown = set(payload.flags) - ISSUED_FLAGS
    if unknown:
        raise _bad(f"flag {''.join(sorted(unknown))} is not defined by SMART Health Links v1")
    if payload.version != 1:
        raise _bad("only version 1 links can be issued")
    bare = SCHEME + _b64url(orjson.dumps(_payload_json(payload)))
    return bare if viewer is None else _viewer_prefix(viewer) + bare


def _encoded_part(text: str) -> str:
    if text[: len(SCHEME)].lower() == SCHEME:
        return text[len(SCHEME) :]
    at = text.lower().find("#" + SCHEME)
    if at < 0:
        raise _bad("not a SMART Health Link: expected shlink:/… or a viewer URL with #shlink:/…")
    try:
        viewer_scheme = urlsplit(text[:at]).scheme
    except ValueError:
        viewer_scheme = ""
    if viewer_scheme not in ("http", "https"):
        raise _bad("the text before #shlink:/ is not a viewer URL")
    return text[at + 1 + len(SCHEME) :]


def _exp_from_json(exp: object) -> int | None:
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise _bad("exp must be a number of seconds since the epoch")
    # Senders in JavaScript may write fractional seconds; exp is only a staleness hint.
    return math.floor(exp)


def parse_uri(text: str) -> LinkPayload:
    """The payload of a bare or viewer-prefixed link. Unknown properties and flags are ignored
    or kept as the spec requires of receivers; a ``version`` above 1 is returned for the caller
    to refuse (the spec says not to fetch a manifest of a version one does not support)."""
    if not isinstance(text, str):
        raise _bad("a SMART Health Link is text")
    text = text.strip()
    if len(text) > MAX_URI_CHARS:
        raise _bad(f"link is longer than {MAX_URI_CHARS} characters")
    encoded = _encoded_part(text)
    try:
        raw = _unb64url(encoded)
    except (ValueError, binascii.Error):
        raise _bad("the link payload is not base64url") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("the link payload is not JSON") from None
    if not isinstance(body, dict):
        raise _bad("the link payload is not a JSON object")
    url, key = body.get("url"), body.get("key")
    if not isinstance(url, str):
        raise _bad("the link payload has no url")
    if not isinstance(key, str):
        raise _bad("the link payload has no key")
    flag = body.get("flag", "")
    if not isinstance(flag, str):
        raise _bad("flag must be a string")
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        raise _bad("label must be a string")
    version = body.get("v", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad("v must be an integer")
    return LinkPayload(
        url=url,
        key=key,
        exp=_exp_from_json(body.get("exp")),
        # Order is normalised: the spec asks senders for alphabetical order, and a receiver
        # gains nothing by refusing "PL".
        flags="".join(sorted(flag)),
        label=label,
        version=version,
    )
