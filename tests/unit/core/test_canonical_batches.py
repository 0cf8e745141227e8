"""The batch encoders (issue 20) must give exactly what their one-value definitions give.

``canonical_values`` walks the fast-path guard once for many values, ``canonical_writeset``
embeds values already encoded, ``canonical_items`` checks a list item by item: each is held to
``canonical_bytes``, ``writeset_bytes`` and ``is_canonical_json`` on arbitrary values, refusals
included.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.core.block import canonical_writeset, writeset_bytes
from careledger.core.canonical import (
    canonical_bytes,
    canonical_items,
    canonical_values,
    is_canonical_json,
)
from careledger.errors import ValidationError
from tests.unit.core.test_canonical import json_values, plain_values, texts


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), json_values, plain_values), max_size=8))
def test_canonical_values_are_canonical_bytes_of_each(values: list[Any]) -> None:
    try:
        expected: list[bytes | None] | str = [
            None if value is None else canonical_bytes(value) for value in values
        ]
    except ValidationError as refused:
        expected = refused.message
    try:
        got: list[bytes | None] | str = canonical_values(values)
    except ValidationError as refused:
        got = refused.message
    assert got == expected


def test_canonical_values_keep_deletes_as_none() -> None:
    value = {"b": [1, 2], "a": "x"}
    assert canonical_values([value, None, 3]) == [b'{"a":"x","b":[1,2]}', None, b"3"]
    assert value == {"b": [1, 2], "a": "x"}


def _rows(draw: Any) -> list[tuple[str, str, Any]]:
    names = st.one_of(st.sampled_from(["identity", "nonce", "audit"]), texts)
    pairs = draw(st.lists(st.tuples(names, names), max_size=6, unique=True))
    values = draw(st.lists(st.one_of(st.none(), plain_values, json_values), min_size=len(pairs)))
    return [(ns, key, value) for (ns, key), value in zip(pairs, values, strict=False)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_canonical_writeset_equals_writeset_bytes(data: st.DataObject) -> None:
    writes = _rows(data.draw)
    rows = sorted(writes, key=lambda w: (w[0], w[1]))
    try:
        expected = writeset_bytes(writes)
        encoded = [(ns, key, None if v is None else canonical_bytes(v)) for ns, key, v in rows]
    except ValidationError:
        return  # a value or a name RFC 8785 refuses: nothing to embed
    assert canonical_writeset(encoded) == expected


def test_canonical_writeset_refuses_what_the_reference_refuses() -> None:
    with pytest.raises(ValidationError):
        canonical_writeset([("ns", "bad\ud800", b"1")])
    assert canonical_writeset([]) == writeset_bytes([]) == b"[]"
    assert canonical_writeset([("a", "k", None)]) == writeset_bytes([("a", "k", None)])


def _candidates(items: list[Any]) -> list[bytes]:
    """Encodings of a list: the canonical one, orjson's, and damaged ones."""
    out = []
    for encode in (canonical_bytes, orjson.dumps):
        with contextlib.suppress(ValidationError, orjson.JSONEncodeError):
            out.append(encode(items))
    for raw in list(out):
        out += [raw.replace(b",", b", ", 1), raw.replace(b"1", b"1.0", 1), raw[:-1] + b" ]"]
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(json_values, plain_values), max_size=6))
def test_canonical_items_agree_with_is_canonical_json(items: list[Any]) -> None:
    for raw in _candidates(items):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        parts = canonical_items(raw, parsed)
        assert (parts is not None) == is_canonical_json(raw, parsed)
        if parts is not None:
            assert b"[" + b",".join(parts) + b"]" == raw
            for part, item in zip(parts, parsed, strict=True):
                assert is_canonical_json(part, item)


def test_canonical_items_cases() -> None:
    assert canonical_items(b'[1,"a",{"x":null}]', [1, "a", {"x": None}]) == [
        b"1",
        b'"a"',
        b'{"x":null}',
    ]
    assert canonical_items(b"[1.5,1e+21]", [1.5, 1e21]) == [b"1.5", b"1e+21"]  # the reference
    assert canonical_items(b"[1.0]", [1.0]) is None  # JCS writes 1
    assert canonical_items(b'[{"b":1,"a":2}]', [{"b": 1, "a": 2}]) is None  # keys unsorted
    assert canonical_items(b"[ 1]", [1]) is None
    assert canonical_items(b"{}", []) is None
