"""Ed25519 key pairs, signatures and their strict base64url text form."""

from __future__ import annotations

import base64
import hashlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.core.keys import (
    KEY_ID_LENGTH,
    PUBLIC_KEY_SIZE,
    SEED_SIZE,
    SIGNATURE_SIZE,
    KeyPair,
    b64url_decode,
    b64url_encode,
    decode_public_key,
    decode_signature,
    key_id,
    require_signature,
    verify_signature,
)
from careledger.errors import ValidationError, VerificationError

# RFC 8032 §7.1 TEST 1 and TEST 2.
SEED_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PK_1 = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
SIG_1 = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
SEED_2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
PK_2 = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
SIG_2 = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_sizes() -> None:
    assert (PUBLIC_KEY_SIZE, SIGNATURE_SIZE, SEED_SIZE, KEY_ID_LENGTH) == (32, 64, 32, 22)


def test_rfc8032_vectors() -> None:
    pair = KeyPair.from_seed(SEED_1)
    assert pair.public_key == PK_1
    assert pair.sign(b"") == SIG_1
    assert verify_signature(PK_1, b"", SIG_1)
    pair2 = KeyPair.from_seed(SEED_2)
    assert pair2.public_key == PK_2
    assert pair2.sign(b"\x72") == SIG_2
    require_signature(PK_2, b"\x72", SIG_2)


def test_sign_is_deterministic_and_verifies() -> None:
    pair = KeyPair.from_seed(bytes(range(32)))
    msg = b"careledger" * 100
    assert pair.sign(msg) == pair.sign(msg)
    assert len(pair.sign(msg)) == SIGNATURE_SIZE
    assert verify_signature(pair.public_key, msg, pair.sign(msg))
    assert not verify_signature(pair.public_key, msg + b"!", pair.sign(msg))
    assert not verify_signature(PK_1, msg, pair.sign(msg))


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (PK_1, SIG_1[:63]),
        (PK_1, SIG_1 + b"\x00"),
        (PK_1[:31], SIG_1),
        (PK_1 + b"\x00", SIG_1),
        (b"", b""),
        (PK_1, bytes(64)),
        (bytes(32), SIG_1),
        (b"\xff" * 32, SIG_1),
    ],
)
def test_bad_input_is_false_not_an_exception(public_key: bytes, signature: bytes) -> None:
    assert verify_signature(public_key, b"", signature) is False
    with pytest.raises(VerificationError):
        require_signature(public_key, b"", signature)


def test_keypair_checks_its_parts() -> None:
    assert KeyPair(seed=SEED_1, public_key=PK_1) == KeyPair.from_seed(SEED_1)
    with pytest.raises(ValidationError, match="does not match"):
        KeyPair(seed=SEED_1, public_key=PK_2)
    with pytest.raises(ValidationError, match="seed must be 32 bytes"):
        KeyPair.from_seed(SEED_1[:31])
    with pytest.raises(ValidationError, match="seed must be 32 bytes"):
        KeyPair(seed=SEED_1 + b"\x00", public_key=PK_1)
    with pytest.raises(ValidationError, match="public key must be 32 bytes"):
        KeyPair(seed=SEED_1, public_key=PK_1[:16])


def test_keypair_is_frozen() -> None:
    pair = KeyPair.from_seed(SEED_1)
    with pytest.raises(AttributeError):
        pair.seed = SEED_2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(pair)) == pair


def test_repr_does_not_leak_the_seed() -> None:
    pair = KeyPair.from_seed(SEED_1)
    for text in (repr(pair), str(pair), f"{pair}", repr([pair])):
        assert SEED_1.hex() not in text
        assert b64url_encode(SEED_1) not in text
        assert repr(SEED_1) not in text
        assert pair.public_b64 in text


def test_public_b64_and_key_id() -> None:
    pair = KeyPair.from_seed(SEED_1)
    # RFC 8037 §A.2 ("x" of the same key, in JWK).
    assert pair.public_b64 == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert decode_public_key(pair.public_b64) == PK_1
    expected = base64.urlsafe_b64encode(hashlib.sha256(PK_1).digest()[:16]).rstrip(b"=").decode()
    assert key_id(PK_1) == pair.key_id == expected
    assert len(key_id(PK_1)) == KEY_ID_LENGTH
    assert key_id(PK_1) != key_id(PK_2)
    with pytest.raises(ValidationError):
        key_id(PK_1[:31])


def test_decode_signature() -> None:
    assert decode_signature(b64url_encode(SIG_1)) == SIG_1
    with pytest.raises(ValidationError, match="signature must be 64 bytes"):
        decode_signature(b64url_encode(SIG_1[:63]))
    with pytest.raises(ValidationError, match="public key must be 32 bytes"):
        decode_public_key(b64url_encode(SIG_1))


# --- base64url ----------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.binary(max_size=80))
def test_b64url_roundtrip(data: bytes) -> None:
    text = b64url_encode(data)
    assert not set(text) & set("=+/")
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    ("text", "data"),
    [("", b""), ("Zg", b"f"), ("Zm8", b"fo"), ("Zm9v", b"foo"), ("-_8", b"\xfb\xff")],
)
def test_b64url_known(text: str, data: bytes) -> None:
    assert b64url_encode(data) == text
    assert b64url_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "Zg==",  # padding
        "Zm8=",
        "Zg=",
        "+/8",  # standard alphabet
        "Zm 9v",  # whitespace
        "Zm9v\n",
        " Zm9v",
        "Z",  # impossible length
        "Zm9vY",
        "Zh",  # non-zero trailing bits ("Zg" is the canonical form of b"f")
        "Zm9",  # ("Zm8" is canonical for b"fo")
        "Zm9v!",
        "Zm9v\u0661",  # non-ASCII digit
        "\uff5a\uff47",  # full-width letters
    ],
)
def test_b64url_strictness(text: str) -> None:
    with pytest.raises(ValidationError):
        b64url_decode(text)


def test_b64url_rejects_non_text() -> None:
    with pytest.raises(ValidationError):
        b64url_decode(b"Zm9v")  # type: ignore[arg-type]
