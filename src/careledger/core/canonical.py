"""Canonical JSON (RFC 8785, JCS): the only encoder of bytes that are hashed or signed.

Every node must turn the same value into the same bytes, or hashes and signatures stop
agreeing. ``rfc8785.dumps`` is the reference; this module may only be faster, never different.

Fast path: ``orjson`` with sorted keys, used only when the output is provably identical to JCS,
which holds when the value is built solely from exact ``dict``/``list``/``tuple``/``str``/``int``/
``bool``/``None`` and

* there are no floats (orjson's float format is not ECMAScript's, and it writes NaN as ``null``);
* every int is in rfc8785's domain ``[-(2**53 - 1), 2**53 - 1]`` (orjson would write any 64-bit
  integer, rfc8785 refuses them);
* every key is a ``str`` inside the BMP: orjson sorts by code point, JCS by UTF-16 code units,
  and the two orders agree for BMP strings only;
* no subclasses (``IntEnum``, ``str`` enums, ``OrderedDict``...): orjson and rfc8785 treat them
  differently, so they take the reference path.

String escaping needs no guard: orjson and JCS escape exactly ``"``, ``\\`` and U+0000..U+001F
(short forms ``\\b \\t \\n \\f \\r``, otherwise lowercase ``\\u00xx``) and nothing else (U+007F,
U+2028/U+2029 and non-BMP text are written raw in UTF-8); this is checked for every code point in
the tests. Lone surrogates make orjson raise, and the value then goes to rfc8785, which refuses it.
Anything else goes to rfc8785, whose refusals become ``ValidationError``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import orjson
import rfc8785

from careledger.errors import ValidationError

__all__ = [
    "canonical_bytes",
    "canonical_hash_hex",
    "canonical_items",
    "canonical_values",
    "sha256",
    "sha256_hex",
]

#: rfc8785's integer domain (integers exactly representable as IEEE-754 doubles, I-JSON).
MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -MAX_SAFE_INTEGER

# Containers nested deeper than this take the reference path; this also ends the guard walk on
# cyclic values (orjson itself gives up at 255).
_FAST_MAX_DEPTH = 128
_BMP_MAX = "\uffff"
_SORT_KEYS = orjson.OPT_SORT_KEYS


def _fast_path_ok(value: object, depth: int = 0) -> bool:
    """Whether orjson's output for ``value`` is guaranteed to equal the JCS bytes."""
    kind = type(value)
    if kind is dict:
        if depth > _FAST_MAX_DEPTH:
            return False
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str or (not key.isascii() and max(key) > _BMP_MAX):
                return False
            item_kind = type(item)
            if item_kind is str or item_kind is bool or item is None:
                continue
            if item_kind is int:
                if not MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    return False
            elif not _fast_path_ok(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        if depth > _FAST_MAX_DEPTH:
            return False
        for item in value:  # type: ignore[attr-defined]
            item_kind = type(item)
            if item_kind is str or item_kind is bool or item is None:
                continue
            if item_kind is int:
                if not MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                    return False
            elif not _fast_path_ok(item, depth + 1):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER  # type: ignore[operator]
    return False


def _reference_bytes(value: object) -> bytes:
    """rfc8785, with its refusals turned into ``ValidationError`` that never echo the input."""
    try:
        return rfc8785.dumps(value)  # type: ignore[arg-type]
    except rfc8785.IntegerDomainError:
        raise ValidationError(
            "integer outside the JSON safe range [-(2**53-1), 2**53-1]; encode it as a string"
        ) from None
    except rfc8785.FloatDomainError:
        raise ValidationError("NaN and Infinity are not representable in JSON") from None
    except rfc8785.CanonicalizationError as exc:
        # rfc8785's own messages name only types, never values.
        raise ValidationError(f"value cannot be canonicalized: {exc}") from None
    except UnicodeError:
        # Lone surrogates in an object key (rfc8785 sorts keys by their UTF-16 encoding).
        raise ValidationError(
            "value cannot be canonicalized: input contains non-UTF-8 codepoints"
        ) from None
    except RecursionError:
        raise ValidationError("value is nested too deeply or is cyclic") from None


def canonical_bytes(value: object) -> bytes:
    """RFC 8785 bytes of ``value``: what gets hashed and signed, identical on every node."""
    if _fast_path_ok(value):
        try:
            return _kept(orjson.dumps(value, option=_SORT_KEYS))
        except orjson.JSONEncodeError:
            pass  # lone surrogate or too deep: let the reference decide (and explain)
    return _reference_bytes(value)


def _kept(raw: bytes) -> bytes:
    """``raw`` copied into a buffer of its own size, for a result the caller keeps.

    orjson writes into an oversized buffer and shrinks it in place. Kept, such results leave
    the allocator's free memory in pieces too small for the next buffer, so each further call
    takes fresh memory: a page fault (about 2 µs, ten times the encoding of a small value)
    and a resident set that grows by a page every few results. An exact copy costs about
    0.1 µs, frees the big buffer at once, and the next call reuses it.
    """
    return bytes(memoryview(raw))


def canonical_values(values: Sequence[object]) -> list[bytes | None]:
    """``canonical_bytes`` of each value, None kept as None (a deleted key in a write-set).

    The fast-path guard walks all the values in one call rather than one call per value; the
    bytes are the same as ``canonical_bytes`` gives for each (any value the guard cannot vouch
    for, and any that orjson refuses, takes ``canonical_bytes`` and so the reference).
    """
    if not _fast_path_ok(values):
        return [None if value is None else canonical_bytes(value) for value in values]
    out: list[bytes | None] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        try:
            out.append(_kept(orjson.dumps(value, option=_SORT_KEYS)))
        except orjson.JSONEncodeError:
            out.append(canonical_bytes(value))
    return out


# A float token that orjson writes follows ":", "," or "[" and has a fraction or an exponent;
# a byte >= 0xF0 starts a character outside the BMP. Text inside strings may also match, which
# only costs the slow path.
_FLOAT_TOKEN = re.compile(rb"[:,\[]-?[0-9]+[.eE]")
_NON_BMP = re.compile(rb"[\xf0-\xf4]")
_STRICT = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def is_canonical_json(raw: bytes, value: object) -> bool:
    """Whether ``raw`` is exactly the RFC 8785 encoding of ``value`` (parsed from JSON, or
    written by a contract).

    For checking stored bytes quickly (``careledger verify``): values parsed from JSON hold only
    dict, list, str, int, float, bool and None, never NaN, so orjson's output equals JCS unless a
    float, an int beyond 2**53 or a character outside the BMP is involved. Those cases, detected
    on the bytes, take the reference encoder.
    """
    plain = raw[:1] not in (b"", b"-") and not raw[:1].isdigit()
    if plain and (raw.isascii() or not _NON_BMP.search(raw)) and not _FLOAT_TOKEN.search(raw):
        try:
            if orjson.dumps(value, option=_STRICT) == raw:
                return True
        except orjson.JSONEncodeError:
            pass
        # not equal: perhaps only because ``value`` holds an integral float (a contract wrote
        # 90.0, which RFC 8785 writes as 90): the reference encoder decides
    try:
        return canonical_bytes(_as_json_numbers(value)) == raw
    except ValidationError:
        return False


def canonical_items(raw: bytes, items: Sequence[object]) -> list[bytes] | None:
    """The RFC 8785 bytes of each of ``items`` if ``raw`` is exactly the encoding of the list
    (the verdict of ``is_canonical_json(raw, list(items))``), else None.

    The encoding of a list is its items' encodings joined by commas in brackets, so checking the
    join checks the list, and a caller who needs each item's bytes (``careledger verify`` keeps
    each state value's) gets them without encoding anything twice.
    """
    plain = raw[:1] == b"[" and (raw.isascii() or not _NON_BMP.search(raw))
    if plain and not _FLOAT_TOKEN.search(raw):
        try:
            parts = [_kept(orjson.dumps(item, option=_STRICT)) for item in items]
        except orjson.JSONEncodeError:
            pass
        else:
            if _joined(parts) == raw:
                return parts
    try:
        parts = [canonical_bytes(_as_json_numbers(item)) for item in items]
    except ValidationError:
        return None
    return parts if _joined(parts) == raw else None


def _joined(parts: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


def _as_json_numbers(value: object) -> object:
    """JSON numbers are doubles to JCS: a parsed integer beyond 2**53 is the double it denotes."""
    if type(value) is int and not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return float(value)
    if type(value) is dict:
        return {k: _as_json_numbers(v) for k, v in value.items()}
    if type(value) is list:
        return [_as_json_numbers(v) for v in value]
    return value


def sha256(data: bytes) -> bytes:
    """SHA-256 digest; one name so every hash in the ledger is visibly the same function."""
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256, the textual form used in ids and documents."""
    return hashlib.sha256(data).hexdigest()


def canonical_hash_hex(value: object) -> str:
    """Hex SHA-256 of the canonical bytes: the content id of a JSON value."""
    return hashlib.sha256(canonical_bytes(value)).hexdigest()
