"""RFC 8785 vectors from the JCS co-author's repository, through ``canonical_bytes``.

Inputs are parsed with the stdlib ``json`` (which keeps floats as floats), so both the fast path
(integers-only documents) and the reference path (floats, non-BMP keys) are exercised.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import rfc8785

from careledger.core.canonical import canonical_bytes
from tests.support.vectors import vector_path

CASES = ("arrays", "french", "structures", "unicode", "values", "weird")


def _expected_from_hex(name: str) -> bytes:
    text = vector_path("json-canonicalization", "outhex", f"{name}.txt").read_text("ascii")
    return bytes.fromhex("".join(text.split()))


@pytest.mark.parametrize("name", CASES)
def test_input_canonicalises_to_output(name: str) -> None:
    value = json.loads(vector_path("json-canonicalization", "input", f"{name}.json").read_bytes())
    expected = vector_path("json-canonicalization", "output", f"{name}.json").read_bytes()
    assert expected == _expected_from_hex(name)  # the two published forms agree
    assert canonical_bytes(value) == expected


@pytest.mark.parametrize("name", CASES)
def test_output_is_a_fixed_point(name: str) -> None:
    expected = vector_path("json-canonicalization", "output", f"{name}.json").read_bytes()
    assert canonical_bytes(json.loads(expected)) == expected


def _es6_lines() -> list[tuple[str, str]]:
    """``(IEEE-754 bits as hex, expected ES6 text)`` per line."""
    text = vector_path("json-canonicalization", "es6testfile-10k.txt").read_text("ascii")
    lines = []
    for line in text.splitlines():
        bits, _, expected = line.partition(",")
        lines.append((bits, expected))
    return lines


def test_es6_number_serialisation() -> None:
    lines = _es6_lines()
    assert len(lines) == 10_000
    failures = []
    checked = 0
    for bits, expected in lines:
        number = struct.unpack(">d", bytes.fromhex(bits.rjust(16, "0")))[0]
        if not math.isfinite(number):  # not in this file, but JCS refuses them anyway
            continue
        checked += 1
        got = canonical_bytes(number)
        if got != expected.encode("ascii") or canonical_bytes([number]) != b"[" + got + b"]":
            failures.append((bits, expected, got))
    assert checked == 10_000
    assert failures == []


def test_es6_lines_agree_with_reference() -> None:
    """Guards the vector file itself: the independent reference agrees on a sample."""
    for bits, expected in _es6_lines()[::97]:
        number = struct.unpack(">d", bytes.fromhex(bits.rjust(16, "0")))[0]
        assert rfc8785.dumps(number) == expected.encode("ascii")
