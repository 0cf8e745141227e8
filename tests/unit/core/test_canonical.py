"""``canonical_bytes`` must equal ``rfc8785.dumps`` byte for byte, or refuse what it refuses."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import hashlib
import math
import uuid
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.core.canonical import (
    MAX_SAFE_INTEGER,
    _fast_path_ok,
    canonical_bytes,
    canonical_hash_hex,
    is_canonical_json,
    sha256,
    sha256_hex,
)
from careledger.errors import ValidationError

MAX = 2**53 - 1


def reference(value: Any) -> bytes | None:
    """rfc8785's answer, or None when it refuses the value."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeError, RecursionError):
        return None


def ours(value: Any) -> bytes | None:
    try:
        return canonical_bytes(value)
    except ValidationError:
        return None


# --- differential (hypothesis) ------------------------------------------------------------------

# Characters where JCS is easy to get wrong: escapes, controls, DEL, line separators, the top of
# the BMP (UTF-16 and code-point order disagree there), non-BMP and lone surrogates.
TRICKY = 'aAzé\x00\x01\x08\t\n\x0c\r\x1f\x7f"\\/\u2028\u2029\ue000\uffff\ufb33\U0001f600\U00010000'
_chars = st.one_of(
    st.sampled_from(TRICKY),
    st.characters(),  # any code point except surrogates
    st.characters(min_codepoint=0x10000),
)
texts = st.one_of(
    st.text(_chars, max_size=8),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=4),  # with surrogates
)
ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(-MAX - 3, -MAX + 3),
    st.integers(MAX - 3, MAX + 3),
    st.sampled_from([0, -1, 1, 2**63 - 1, 2**63, -(2**63), 2**64, -(2**64)]),
)
floats = st.one_of(st.floats(), st.sampled_from([-0.0, 0.0, 1.0, 1e21, 1e-7, 5e-324]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(texts, children, max_size=5),
    ),
    max_leaves=25,
)
# Values that usually pass the fast-path guard, so that path is well exercised.
plain_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-MAX, MAX), st.text(_chars, max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(_chars, max_size=6), children)
    ),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_equals_rfc8785_on_any_value(value: Any) -> None:
    assert ours(value) == reference(value)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_fast_path_output_equals_rfc8785(value: Any) -> None:
    """Whenever the guard admits a value, orjson's own bytes (not the fallback) must be JCS."""
    expected = reference(value)
    if _fast_path_ok(value):
        try:
            fast = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            fast = None  # only lone surrogates, which rfc8785 refuses too
        assert fast == expected
    assert ours(value) == expected


# --- targeted cases -----------------------------------------------------------------------------


def test_simple_document() -> None:
    value: Any = {"b": [1, "x", None, True, False], "a": {"z": -5, "é": "\u2028"}, "": 0}
    assert _fast_path_ok(value)
    assert canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical_bytes(value) == (
        b'{"":0,"a":{"z":-5,"\xc3\xa9":"\xe2\x80\xa8"},"b":[1,"x",null,true,false]}'
    )


def test_every_code_point_is_escaped_like_jcs() -> None:
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert _fast_path_ok(everything)
    assert canonical_bytes(everything) == rfc8785.dumps(everything)
    for c in range(0x20):
        assert canonical_bytes(chr(c)) == rfc8785.dumps(chr(c))


def test_every_bmp_key_sorts_like_jcs() -> None:
    keys = {chr(c): c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF}
    assert _fast_path_ok(keys)
    assert canonical_bytes(keys) == rfc8785.dumps(keys)


def test_non_bmp_keys_sort_by_utf16_units() -> None:
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert not _fast_path_ok(value)  # orjson would put U+E000 before U+1F600
    assert canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical_bytes(value) == '{"a":3,"\U0001f600":2,"\ue000":1}'.encode()


def test_non_bmp_values_take_the_fast_path() -> None:
    value = {"emoji": "\U0001f600", "list": ["\U00010000"]}
    assert _fast_path_ok(value)
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("n", [0, 1, -1, MAX, -MAX, 2**31, 2**32 + 1, 10**15])
def test_integers_in_domain(n: int) -> None:
    assert MAX_SAFE_INTEGER == MAX
    assert _fast_path_ok(n)
    assert _fast_path_ok([n])
    assert _fast_path_ok({"n": n})
    assert canonical_bytes({"n": n}) == f'{{"n":{n}}}'.encode()


@pytest.mark.parametrize("n", [MAX + 1, -MAX - 1, 2**63, 2**64, -(2**64), 10**30])
def test_integers_out_of_domain_are_refused(n: int) -> None:
    assert not _fast_path_ok({"n": n})
    with pytest.raises(ValidationError, match="safe range") as info:
        canonical_bytes({"n": n})
    assert str(n) not in str(info.value)  # messages never echo data


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-0.0, b"0"), (0.0, b"0"), (1.0, b"1"), (1e21, b"1e+21"), (1e-7, b"1e-7"), (0.5, b"0.5")],
)
def test_floats_take_the_reference_path(value: float, expected: bytes) -> None:
    assert not _fast_path_ok(value)
    assert canonical_bytes(value) == expected
    assert canonical_bytes([value]) == b"[" + expected + b"]"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_nan_and_infinity_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError, match="NaN and Infinity"):
        canonical_bytes(value)


def test_booleans_are_not_integers() -> None:
    assert canonical_bytes([True, False, 1, 0]) == b"[true,false,1,0]"
    with pytest.raises(ValidationError, match="keys must be strings"):
        canonical_bytes({True: 1})


@pytest.mark.parametrize("value", ["\ud800", ["a\udfffb"], {"k": "\udc00"}, {"\ud800": 1}])
def test_lone_surrogates_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError, match="non-UTF-8"):
        canonical_bytes(value)


@pytest.mark.parametrize("key", [1, None, 1.5, (1, 2), b"k"])
def test_non_string_keys_are_refused(key: Any) -> None:
    with pytest.raises(ValidationError, match="keys must be strings"):
        canonical_bytes({key: 1, "a": 2})


@dataclasses.dataclass
class _Record:
    a: int


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        b"bytes",
        bytearray(b"x"),
        decimal.Decimal("1.5"),
        datetime.date(2020, 1, 1),  # orjson would write these four; JCS has no such types
        uuid.UUID(int=1),
        _Record(1),
        {"nested": object()},
    ],
)
def test_unsupported_types_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError, match="unsupported type"):
        canonical_bytes(value)


class _Colour(enum.StrEnum):
    RED = "red"


class _Level(enum.IntEnum):
    HIGH = 3


class _MyDict(dict):  # type: ignore[type-arg]
    pass


_Pair = collections.namedtuple("_Pair", "a b")


@pytest.mark.parametrize(
    "value",
    [
        _Colour.RED,
        {"c": _Colour.RED},
        _Level.HIGH,
        [_Level.HIGH],
        collections.OrderedDict([("b", 1), ("a", 2)]),
        _MyDict(b=1, a=2),
        _Pair(1, 2),
        (1, (2, "x")),
    ],
)
def test_subclasses_and_tuples_match_rfc8785(value: Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


def test_deep_nesting_beyond_the_guard_still_matches() -> None:
    value: Any = 1
    for _ in range(300):  # deeper than orjson's limit of 255, well inside Python's stack
        value = {"a": [value]}
    assert not _fast_path_ok(value)
    assert canonical_bytes(value) == rfc8785.dumps(value)


def test_cycles_are_refused_not_hung() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValidationError, match="nested too deeply or is cyclic"):
        canonical_bytes(loop)


def test_hashes() -> None:
    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert sha256_hex(b"") == hashlib.sha256(b"").hexdigest()
    assert canonical_hash_hex({"b": 1, "a": [2]}) == sha256_hex(b'{"a":[2],"b":1}')


def _parsed(raw: bytes) -> Any:
    return orjson.loads(raw)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_is_canonical_json_accepts_exactly_the_jcs_bytes(value: Any) -> None:
    """The byte-level check used by verify agrees with the reference, for values parsed from JSON."""
    expected = reference(value)
    if expected is None:
        return
    parsed = _parsed(expected)
    assert is_canonical_json(expected, parsed)
    # orjson's unsorted or float-formatted bytes are canonical only when they equal JCS.
    try:
        other = orjson.dumps(parsed)
    except orjson.JSONEncodeError:
        return
    assert is_canonical_json(other, parsed) == (other == expected)
    spaced = expected.replace(b",", b", ", 1)
    if spaced != expected and _parsed(spaced) == parsed:  # the comma was a separator
        assert not is_canonical_json(spaced, parsed)


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        (b'{"a":1,"b":2}', True),
        (b'{"b":2,"a":1}', False),
        (b'{"a":1.0}', False),  # JCS writes 1
        (b'{"a":1}', True),
        (b'{"a":1e+21}', True),
        (b'{"a":1e21}', False),
        (b'{"\xf0\x9f\x98\x80":1,"\xef\xbf\xbd":2}', True),  # UTF-16 order: surrogates first
        (b'{"\xef\xbf\xbd":2,"\xf0\x9f\x98\x80":1}', False),
        (b"[9007199254740993]", False),  # beyond 2**53
        (b'"\\u00e9"', False),  # JCS writes the character itself
    ],
)
def test_is_canonical_json_cases(raw: bytes, ok: bool) -> None:
    assert is_canonical_json(raw, _parsed(raw)) is ok


def test_a_contract_written_integral_float_matches_its_canonical_bytes() -> None:
    from careledger.core.canonical import is_canonical_json

    value = {"rules": [{"value": 90.0, "n": 1}]}
    raw = canonical_bytes(value)
    assert raw == b'{"rules":[{"n":1,"value":90}]}'
    assert is_canonical_json(raw, value)
    assert not is_canonical_json(raw, {"rules": [{"value": 91.0, "n": 1}]})
