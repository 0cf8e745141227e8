"""Encrypted SHL files: the spec's JWEs decrypt; ours are dir/A256GCM with cty; tampering and
wrong keys fail as BAD_JWE; a second JOSE implementation (jwcrypto) agrees."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from careledger.errors import ValidationError, VerificationError
from careledger.health_links.jwe import decrypt, encrypt
from careledger.health_links.link import new_key
from tests.support.vectors import load_json, vector_path

SPEC = load_json("shl", "links-specification-examples.json")
SPEC_KEY = SPEC["encryption"]["key"]
KEY = new_key(bytes(range(32)))
OTHER_KEY = new_key(bytes(range(1, 33)))
IV = bytes(range(12))


def segments(token: str) -> list[str]:
    parts = token.split(".")
    assert len(parts) == 5
    return parts


def header(token: str) -> dict[str, str]:
    raw = segments(token)[0]
    return dict(json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))))


def test_spec_example_decrypts_to_a_health_card_file() -> None:
    plaintext, content_type = decrypt(SPEC["encryption"]["jwe"], SPEC_KEY)
    assert content_type == SPEC["encryption"]["contentType"] == "application/smart-health-card"
    cards = json.loads(plaintext)["verifiableCredential"]
    assert len(cards) == 1 and cards[0].startswith("eyJ6aXAiOiJERUYi")


def test_ig_ips_demo_file_decrypts_to_the_published_bundle() -> None:
    token = vector_path("shl", "IPS_IG-bundle-01-enc.txt").read_text()
    plaintext, content_type = decrypt(token, SPEC_KEY)
    assert plaintext == vector_path("shl", "IPS_IG-bundle-01.json").read_bytes()
    # This demo file has no cty header (the spec requires one); the manifest names the type.
    assert content_type == ""


def test_encrypt_writes_the_spec_header() -> None:
    token = encrypt(b"{}", KEY, "application/fhir+json", iv=IV)
    assert header(token) == {"alg": "dir", "enc": "A256GCM", "cty": "application/fhir+json"}
    encrypted_key, iv = segments(token)[1:3]
    assert encrypted_key == ""  # alg dir: no wrapped key
    assert base64.urlsafe_b64decode(iv + "=") == IV


def test_given_iv_makes_encryption_a_function_of_its_inputs() -> None:
    one = encrypt(b"same", KEY, "application/fhir+json", iv=IV)
    assert one == encrypt(b"same", KEY, "application/fhir+json", iv=IV)
    assert one != encrypt(b"same", KEY, "application/fhir+json", iv=bytes(12))


def test_without_iv_every_encryption_differs() -> None:
    tokens = {encrypt(b"same", KEY, "application/fhir+json") for _ in range(8)}
    assert len(tokens) == 8
    assert {decrypt(token, KEY)[0] for token in tokens} == {b"same"}


def test_compression_is_raw_deflate_and_marked_zip_def() -> None:
    plaintext = json.dumps({"resourceType": "Bundle", "entry": [{}] * 500}).encode()
    packed = encrypt(plaintext, KEY, "application/fhir+json", iv=IV, compress=True)
    plain = encrypt(plaintext, KEY, "application/fhir+json", iv=IV)
    assert header(packed)["zip"] == "DEF"
    assert len(packed) < len(plain) / 5
    assert decrypt(packed, KEY) == (plaintext, "application/fhir+json")


@pytest.mark.parametrize("compress", [False, True])
def test_jwcrypto_reads_what_we_write(compress: bool) -> None:
    plaintext = b'{"verifiableCredential": []}'
    token = encrypt(plaintext, KEY, "application/smart-health-card", iv=IV, compress=compress)
    key = jwcrypto_jwk.JWK(kty="oct", k=KEY)
    message = jwcrypto_jwe.JWE()
    message.deserialize(token, key=key)
    assert message.payload == plaintext
    assert json.loads(message.objects["protected"])["cty"] == "application/smart-health-card"


def test_we_read_what_jwcrypto_writes_with_raw_deflate() -> None:
    plaintext = b"x" * 1000
    protected = {"alg": "dir", "enc": "A256GCM", "cty": "application/fhir+json", "zip": "DEF"}
    message = jwcrypto_jwe.JWE(plaintext, json.dumps(protected))
    message.add_recipient(jwcrypto_jwk.JWK(kty="oct", k=KEY))
    assert decrypt(message.serialize(compact=True), KEY) == (plaintext, "application/fhir+json")


# --- refusals -----------------------------------------------------------------------------------


def flip(segment: str) -> str:
    return ("A" if segment[0] != "A" else "B") + segment[1:]


@pytest.mark.parametrize("index", [0, 2, 3, 4], ids=["header", "iv", "ciphertext", "tag"])
def test_any_altered_segment_is_refused(index: int) -> None:
    parts = segments(encrypt(b"secret health data", KEY, "application/fhir+json", iv=IV))
    parts[index] = flip(parts[index])
    with pytest.raises(VerificationError) as err:
        decrypt(".".join(parts), KEY)
    assert err.value.code == "BAD_JWE"


def test_changed_content_type_is_refused() -> None:
    parts = segments(encrypt(b"{}", KEY, "application/fhir+json", iv=IV))
    forged = {"alg": "dir", "enc": "A256GCM", "cty": "application/smart-health-card"}
    parts[0] = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(VerificationError, match="does not decrypt"):
        decrypt(".".join(parts), KEY)


def test_wrong_key_is_refused() -> None:
    token = encrypt(b"secret", KEY, "application/fhir+json", iv=IV)
    with pytest.raises(VerificationError) as err:
        decrypt(token, OTHER_KEY)
    assert err.value.code == "BAD_JWE"
    with pytest.raises(VerificationError):
        decrypt(SPEC["encryption"]["jwe"], KEY)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a jwe",
        "a.b.c",
        "eyJhbGciOiJkaXIifQ....",
        # a JWS (three segments), not a JWE
        vector_path("shc", "example-00-d-jws.txt").read_text(),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(VerificationError) as err:
        decrypt(token, KEY)
    assert err.value.code == "BAD_JWE"


def test_other_algorithms_are_refused() -> None:
    key = jwcrypto_jwk.JWK(kty="oct", k=KEY)
    protected = {"alg": "A256KW", "enc": "A256GCM", "cty": "application/fhir+json"}
    message = jwcrypto_jwe.JWE(b"{}", json.dumps(protected))
    message.add_recipient(key)
    with pytest.raises(VerificationError):
        decrypt(message.serialize(compact=True), KEY)


def test_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from careledger.health_links import jwe as module

    monkeypatch.setattr(module._BoundedDeflate, "MAX_SIZE", 1000)
    bomb = encrypt(b"\0" * 5000, KEY, "application/fhir+json", iv=IV, compress=True)
    with pytest.raises(VerificationError):
        decrypt(bomb, KEY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iv": bytes(16)}, "iv must be 12 bytes"),
        ({"iv": "0" * 12}, "iv must be 12 bytes"),
    ],
)
def test_bad_iv_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        encrypt(b"{}", KEY, "application/fhir+json", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("content_type", ["", "application/fhir+json\n", "tipo/é"])
def test_bad_content_type_is_refused(content_type: str) -> None:
    with pytest.raises(ValidationError):
        encrypt(b"{}", KEY, content_type)


def test_bad_key_is_refused() -> None:
    with pytest.raises(ValidationError) as err:
        encrypt(b"{}", KEY[:-2], "application/fhir+json")
    assert err.value.code == "BAD_SHLINK"


@settings(max_examples=50)
@given(st.binary(max_size=2048), st.booleans(), st.binary(min_size=12, max_size=12))
def test_round_trip(plaintext: bytes, compress: bool, iv: bytes) -> None:
    token = encrypt(plaintext, KEY, "application/fhir+json", iv=iv, compress=compress)
    assert decrypt(token, KEY) == (plaintext, "application/fhir+json")
