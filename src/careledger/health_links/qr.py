"""QR codes for SMART Health Cards and SMART Health Links, drawn as SVG.

Cards (SHC spec, "Health Cards as QR Codes" and "Encoding QRs"): one QR of at most version 22
holding two segments, the bytes ``shc:/`` and then the JWS in numeric mode, each character
``c`` written as the two digits of ``ord(c) - 45``. At error correction L that fits a JWS of
1195 characters, the spec's limit for one code; multi-QR chunking (``shc:/1/2/…``) is
deprecated and not produced or read here. Links (SHL spec, "Sharing User transmits a SMART
Health Link"): the ``shlink:/`` URI in byte mode at error correction M.
"""

from __future__ import annotations

import io
import re
from typing import Any

import segno
from segno import consts

from careledger.errors import ValidationError

__all__ = [
    "MAX_SHC_JWS_CHARS",
    "MAX_SHC_QR_VERSION",
    "SHC_PREFIX",
    "parse_shc_numeric",
    "qr_svg",
    "shc_numeric",
]

SHC_PREFIX = "shc:/"
MAX_SHC_QR_VERSION = 22
#: The longest JWS that fits one version 22 QR at error correction L next to the ``shc:/``
#: segment (health-cards FAQ/qr.md: (8048 - 76) * 3 / 20).
MAX_SHC_JWS_CHARS = 1195
# '-' (45) is the lowest character of a compact JWS, 'z' (122) the highest.
_OFFSET = ord("-")
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_DIGIT_PAIRS = re.compile(r"(?:[0-9]{2})+")
_CHUNKED = re.compile(r"[0-9]+/[0-9]+/")
# Width the drawing aims at: a version 22 card code is then 4 px a module, readable on screen.
_TARGET_PIXELS = 440
_QUIET_ZONE = 4


def _bad(message: str, code: str = "BAD_SHC") -> ValidationError:
    return ValidationError(message, code=code)


def shc_numeric(jws: str) -> str:
    """``shc:/`` followed by the numeric encoding of a card's compact JWS."""
    if not isinstance(jws, str) or not _JWS.fullmatch(jws):
        raise _bad("not a compact JWS")
    return SHC_PREFIX + "".join(f"{ord(char) - _OFFSET:02d}" for char in jws)


def parse_shc_numeric(text: str) -> str:
    """The compact JWS behind scanned ``shc:/…`` text."""
    if not isinstance(text, str):
        raise _bad("a scanned card is text")
    text = text.strip()
    if text[: len(SHC_PREFIX)].lower() != SHC_PREFIX:
        raise _bad("not a SMART Health Card QR: expected shc:/ followed by digits")
    digits = text[len(SHC_PREFIX) :]
    if _CHUNKED.match(digits):
        raise _bad(
            "this is one part of a multi-QR card; chunking is deprecated and not supported",
            code="SHC_CHUNKED",
        )
    if not _DIGIT_PAIRS.fullmatch(digits):
        raise _bad("a card QR holds an even number of digits after shc:/")
    jws = "".join(chr(int(digits[at : at + 2]) + _OFFSET) for at in range(0, len(digits), 2))
    if not _JWS.fullmatch(jws):
        raise _bad("the digits do not spell a compact JWS")
    return jws


def _card_qr(text: str) -> segno.QRCode:
    jws = parse_shc_numeric(text)
    if len(jws) > MAX_SHC_JWS_CHARS:
        raise _bad(
            f"the card is {len(jws)} characters; one QR holds at most {MAX_SHC_JWS_CHARS} "
            "(share it as a file or through a SMART Health Link)",
            code="SHC_TOO_LARGE",
        )
    # segno's stub types content as one str, but it takes (content, mode) segments.
    segments: Any = [
        (SHC_PREFIX, consts.MODE_BYTE),
        (shc_numeric(jws)[len(SHC_PREFIX) :], consts.MODE_NUMERIC),
    ]
    # Exactly L, as the spec's size budget and its reference generator use; segno would
    # otherwise raise the level when the version has room.
    qr = segno.make_qr(segments, error="L", boost_error=False)
    if int(qr.version) > MAX_SHC_QR_VERSION:
        raise _bad("the card does not fit a version 22 QR", code="SHC_TOO_LARGE")
    return qr


def qr_svg(data: str, *, numeric_shc: bool = False, title: str | None = None) -> str:
    """An SVG drawing of a QR code: with ``numeric_shc`` a card given as ``shc:/…`` digits
    (from ``shc_numeric``), otherwise a link (``shlink:/…``, or a viewer URL) in byte mode at
    error correction M. ``title`` (the SVG's accessible name) defaults to what the code is."""
    if numeric_shc:
        qr = _card_qr(data)
        title = "SMART Health Card" if title is None else title
    else:
        if not isinstance(data, str) or not data:
            raise _bad("nothing to encode", code="BAD_SHLINK")
        if data[: len(SHC_PREFIX)].lower() == SHC_PREFIX:
            raise _bad("a card QR needs numeric_shc=True (two segments, numeric mode)")
        qr = segno.make_qr(data, mode="byte", error="M", boost_error=False)
        title = "SMART Health Link" if title is None else title
    modules = int(qr.symbol_size(border=_QUIET_ZONE)[0])
    out = io.BytesIO()
    qr.save(
        out,
        kind="svg",
        scale=max(2, _TARGET_PIXELS // modules),
        border=_QUIET_ZONE,
        title=title,
        # A white ground: on a dark page a transparent one leaves dark modules on dark.
        dark="#000",
        light="#fff",
        xmldecl=False,
    )
    return out.getvalue().decode("utf-8")
