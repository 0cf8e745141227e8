"""Randomness, passed in to the services that mint secrets and ids (issue 14).

A service that mints tokens, challenges, codes or ids takes a ``Random`` and defaults to
``SYSTEM_RANDOM`` (the ``secrets`` module); a test may hand it a seeded one. ``token_hex`` and
``token_urlsafe`` are ``secrets``' encodings over any ``Random``.
"""

from __future__ import annotations

import base64
import secrets
from typing import Protocol


class Random(Protocol):
    """A source of unpredictable bytes. Production sources MUST be cryptographically secure."""

    def token_bytes(self, n: int) -> bytes: ...


class SystemRandom:
    """The operating system's CSPRNG, through ``secrets``."""

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)


SYSTEM_RANDOM: Random = SystemRandom()


def token_hex(random: Random, n: int) -> str:
    """``n`` random bytes as hex (``secrets.token_hex``)."""
    return random.token_bytes(n).hex()


def token_urlsafe(random: Random, n: int) -> str:
    """``n`` random bytes as unpadded base64url (``secrets.token_urlsafe``)."""
    return base64.urlsafe_b64encode(random.token_bytes(n)).rstrip(b"=").decode("ascii")


__all__ = ["SYSTEM_RANDOM", "Random", "SystemRandom", "token_hex", "token_urlsafe"]
