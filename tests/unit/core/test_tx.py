"""Transaction envelopes: decoding is strict, ids are stable, any mutation is caught."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.core.canonical import canonical_bytes, sha256_hex
from careledger.core.keys import KeyPair
from careledger.core.tx import check_signature, decode_envelope, make_body, sign_body
from careledger.errors import Rejected, ValidationError

KEY = KeyPair.from_seed(bytes(range(32)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def envelope(args: dict, nonce: int = 1) -> dict:
    body = make_body(
        chain="c.test",
        contract="identity",
        method="add_member",
        args=args,
        signer=KEY.public_b64,
        nonce=nonce,
        created="2026-11-24T00:00:00Z",
    )
    return sign_body(body, KEY)


@settings(max_examples=150, deadline=None)
@given(
    args=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    nonce=st.integers(1, 2**53 - 1),
)
def test_round_trip_and_id(args: dict, nonce: int) -> None:
    env = envelope(args, nonce)
    tx = decode_envelope(env)
    check_signature(tx)
    assert tx.tx_id == sha256_hex(canonical_bytes(env["body"]))
    assert tx.envelope_bytes() == canonical_bytes(env)
    assert decode_envelope(copy.deepcopy(env)).tx_id == tx.tx_id


@settings(max_examples=150, deadline=None)
@given(
    args=st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=5), data=st.data()
)
def test_any_change_to_the_body_breaks_the_signature(args: dict, data: st.DataObject) -> None:
    env = envelope(args)
    field = data.draw(st.sampled_from(["args", "nonce", "created", "method"]))
    mutated = copy.deepcopy(env)
    if field == "args":
        mutated["body"]["args"]["__extra__"] = data.draw(json_values)
    elif field == "nonce":
        mutated["body"]["nonce"] += 1
    elif field == "created":
        mutated["body"]["created"] += "x"
    else:
        mutated["body"]["method"] = "rotate_key"
    tx = decode_envelope(mutated)
    with pytest.raises(Rejected) as info:
        check_signature(tx)
    assert info.value.code == "BAD_SIGNATURE"


def test_floats_in_args_take_the_reference_encoder() -> None:
    tx = decode_envelope(envelope({"dose": 2.5, "big": 1e21}))
    assert b'"big":1e+21' in tx.signed_bytes
    check_signature(tx)


def test_unrepresentable_values_are_malformed() -> None:
    env = envelope({"n": 1})
    env["body"]["args"]["n"] = 2**60
    with pytest.raises(ValidationError) as info:
        decode_envelope(env)
    assert info.value.code == "MALFORMED_TX"
