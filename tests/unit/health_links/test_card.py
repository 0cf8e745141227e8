"""SMART Health Cards: the spec's example cards verify; ours are signed as the spec requires and
verify with an independent JOSE library; minimisation, revocation ids and CRLs match the
reference generator's published output."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from careledger.errors import ValidationError, VerificationError
from careledger.health_links.card import (
    HEALTH_CARD_TYPE,
    card_payload,
    crl,
    file_body,
    is_revoked,
    issuer_jwk,
    minimise_bundle,
    revocation_id,
    sign_card,
    verify_card,
)
from tests.support.vectors import load_json, vector_path

JWKS = load_json("shc", "issuer-jwks.json")
CRL = load_json("shc", "crl-3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s.json")
SECRET = load_json("shc", "issuer.hmac.private.json")["secret"]
SPEC_KID = "3Kfdg-XwP-7gXyywtUfUADwBumDOPKMQx-iELL11W9s"
EXAMPLES = ["00", "01", "02", "03"]
ISS = "https://issuer.example.org/shc"

# A fixed issuer key, so the tests are repeatable.
PRIVATE = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"careledger test issuer").digest()) % (2**255), ec.SECP256R1()
)
PRIVATE_JWK: dict[str, Any] = dict(ECKey.import_key(PRIVATE).as_dict(private=True))
PUBLIC_JWK = issuer_jwk(PRIVATE.public_key())
OUR_JWKS = {"keys": [PUBLIC_JWK]}


def jws_text(example: str) -> str:
    return vector_path("shc", f"example-{example}-d-jws.txt").read_text()


def parts(token: str) -> tuple[dict[str, Any], bytes, bytes]:
    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    head, body, signature = token.split(".")
    return json.loads(unb64(head)), unb64(body), unb64(signature)


def bundle() -> dict[str, Any]:
    return minimise_bundle(load_json("shc", "example-00-a-fhirBundle.json"))


# --- the spec's examples ------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_spec_example_cards_verify(example: str) -> None:
    claims = verify_card(jws_text(example), JWKS)
    assert claims["iss"] == "https://spec.smarthealth.cards/examples/issuer"
    assert HEALTH_CARD_TYPE in claims["vc"]["type"]
    assert claims["vc"]["credentialSubject"]["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize("example", ["00", "03"])
def test_spec_example_claims_equal_the_published_payload(example: str) -> None:
    published = load_json("shc", f"example-{example}-c-jws-payload-minified.json")
    assert verify_card(jws_text(example), JWKS) == published


def test_spec_example_file_holds_example_card() -> None:
    file = load_json("shc", "example-00-e-file.smart-health-card")
    assert file == file_body([jws_text("00")])


def test_spec_jwks_kids_are_thumbprints_and_issuer_jwk_reproduces_them() -> None:
    for published in JWKS["keys"]:
        public = ECKey.import_key({k: published[k] for k in ("kty", "crv", "x", "y")})
        ours = issuer_jwk(public.public_key)
        assert ours["kid"] == published["kid"]
        assert {k: published[k] for k in ours} == ours


def test_minimise_bundle_reproduces_the_spec_example() -> None:
    published = load_json("shc", "example-00-c-jws-payload-minified.json")
    assert bundle() == published["vc"]["credentialSubject"]["fhirBundle"]


@pytest.mark.parametrize(
    ("example", "user"), [("00", "userid-00"), ("02", "userid-02"), ("03", "userid-03")]
)
def test_revocation_id_reproduces_the_reference_generator(example: str, user: str) -> None:
    assert verify_card(jws_text(example), JWKS)["vc"]["rid"] == revocation_id(
        SECRET, SPEC_KID, user
    )


def test_revocation_id_reproduces_the_published_crl() -> None:
    users = ["userid-03", "fake-userid-1", "fake-userid-2", "fake-userid-3"]
    rids = [entry.split(".")[0] for entry in CRL["rids"]]
    assert rids == [revocation_id(SECRET, SPEC_KID, user) for user in users]
    assert crl(CRL["kid"], CRL["ctr"], CRL["rids"]) == CRL


def test_spec_example_3_is_not_revoked_by_a_crl_entry_older_than_the_card() -> None:
    # The CRL revokes userid-03's cards issued before 1664492124 (2022-09-29); the published
    # card was re-issued in 2024, so by the spec's rule it stands.
    claims = verify_card(jws_text("03"), JWKS)
    assert claims["nbf"] > 1664492124
    assert not is_revoked(claims, CRL)
    older = {**claims, "nbf": 1664492123}
    assert is_revoked(older, CRL)


# --- issuing ------------------------------------------------------------------------------------


def test_card_payload_shape() -> None:
    payload = card_payload(
        ISS, 1_700_000_000, bundle(), ["https://smarthealth.cards#immunization"], rid="AbC_-1"
    )
    assert payload == {
        "iss": ISS,
        "nbf": 1_700_000_000,
        "vc": {
            "type": [HEALTH_CARD_TYPE, "https://smarthealth.cards#immunization"],
            "credentialSubject": {"fhirVersion": "4.0.1", "fhirBundle": bundle()},
            "rid": "AbC_-1",
        },
    }
    with_exp = card_payload(ISS, 1_700_000_000, bundle(), [HEALTH_CARD_TYPE], exp=1_800_000_000)
    assert with_exp["exp"] == 1_800_000_000 and with_exp["vc"]["type"] == [HEALTH_CARD_TYPE]


@pytest.mark.parametrize(
    "iss",
    [
        "http://issuer.example.org",
        "https://issuer.example.org/",
        "https://issuer.example.org?x=1",
        "issuer.example.org",
        "https://",
        "https://issuer.example.org/a b",
    ],
)
def test_issuer_must_be_https_without_trailing_slash(iss: str) -> None:
    with pytest.raises(ValidationError) as err:
        card_payload(iss, 1, bundle())
    assert err.value.code == "BAD_SHC"


def test_a_loopback_issuer_may_use_http_for_development() -> None:
    assert card_payload("http://127.0.0.1:8000/shc/org", 1, bundle())["iss"].startswith("http:")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nbf": 1.5}, "nbf"),
        ({"nbf": -1}, "nbf"),
        ({"rid": "x" * 25}, "rid"),
        ({"rid": "no spaces"}, "rid"),
        ({"exp": 1}, "after nbf"),
        ({"types": "https://smarthealth.cards#immunization"}, "not one string"),
        ({"bundle": {"resourceType": "Patient"}}, "Bundle"),
    ],
)
def test_card_payload_refusals(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"iss": ISS, "nbf": 1_700_000_000, "bundle": bundle()}
    arguments.update(changes)
    with pytest.raises(ValidationError, match=message):
        card_payload(**arguments)


def test_sign_card_header_and_compressed_payload() -> None:
    payload = card_payload(ISS, 1_700_000_000, bundle(), rid="r1")
    token = sign_card(payload, PRIVATE_JWK)
    head, body, signature = parts(token)
    assert head == {"zip": "DEF", "alg": "ES256", "kid": PUBLIC_JWK["kid"]}
    assert len(signature) == 64  # ES256: r || s, not DER
    minified = zlib.decompress(body, -15)  # raw DEFLATE, no zlib header
    assert json.loads(minified) == payload
    assert b": " not in minified and b", " not in minified
    assert verify_card(token, OUR_JWKS) == payload


def test_a_minimised_card_fits_one_qr() -> None:
    token = sign_card(card_payload(ISS, 1_700_000_000, bundle()), PRIVATE_JWK)
    assert len(token) <= 1195


def test_issuer_jwk_has_exactly_the_required_members() -> None:
    assert set(PUBLIC_JWK) == {"kty", "kid", "use", "alg", "crv", "x", "y"}
    assert PUBLIC_JWK["kty"] == "EC" and PUBLIC_JWK["crv"] == "P-256"
    assert (PUBLIC_JWK["use"], PUBLIC_JWK["alg"]) == ("sig", "ES256")
    assert issuer_jwk(PRIVATE) == PUBLIC_JWK  # a private key yields its public half, never d
    assert issuer_jwk(PRIVATE, crl_version=3)["crlVersion"] == 3
    # RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    members = {k: PUBLIC_JWK[k] for k in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest()
    assert PUBLIC_JWK["kid"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_issuer_jwk_refuses_other_curves() -> None:
    with pytest.raises(ValidationError):
        issuer_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ValidationError):
        issuer_jwk(PRIVATE, crl_version=0)


def test_sign_card_refuses_a_public_or_foreign_key() -> None:
    payload = card_payload(ISS, 1, bundle())
    for key in (PUBLIC_JWK, {**PRIVATE_JWK, "crv": "P-384"}, {**PRIVATE_JWK, "d": "AAAA"}):
        with pytest.raises(ValidationError) as err:
            sign_card(payload, key)
        assert err.value.code == "BAD_SHC_KEY"


def test_jwcrypto_verifies_our_card() -> None:
    token = sign_card(card_payload(ISS, 1_700_000_000, bundle()), PRIVATE_JWK)
    signed = jwcrypto_jws.JWS()
    signed.deserialize(token)
    signed.verify(jwcrypto_jwk.JWK(**PUBLIC_JWK), alg="ES256")
    assert json.loads(zlib.decompress(signed.payload, -15))["iss"] == ISS


# --- verification refusals ----------------------------------------------------------------------


def resign(header: dict[str, Any], body: bytes) -> str:
    """A card signed by our key over arbitrary header and body, as an attacker could make."""
    signer = jwcrypto_jws.JWS(body)
    signer.add_signature(jwcrypto_jwk.JWK(**PRIVATE_JWK), alg="ES256", protected=json.dumps(header))
    return str(signer.serialize(compact=True))


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def test_tampered_payload_is_refused() -> None:
    head, _, signature = jws_text("00").split(".")
    other = parts(jws_text("03"))[1]
    forged = ".".join([head, base64.urlsafe_b64encode(other).rstrip(b"=").decode(), signature])
    with pytest.raises(VerificationError) as err:
        verify_card(forged, JWKS)
    assert err.value.code == "BAD_SHC_SIGNATURE"


def test_signature_of_another_key_is_refused() -> None:
    head, body, _ = jws_text("00").split(".")
    ours = sign_card(card_payload(ISS, 1, bundle()), PRIVATE_JWK).split(".")[2]
    with pytest.raises(VerificationError) as err:
        verify_card(".".join([head, body, ours]), JWKS)
    assert err.value.code == "BAD_SHC_SIGNATURE"


def test_unknown_kid_is_refused() -> None:
    with pytest.raises(VerificationError) as err:
        verify_card(jws_text("00"), OUR_JWKS)
    assert err.value.code == "SHC_UNKNOWN_KEY"


def test_a_jwks_whose_kid_is_not_the_thumbprint_is_refused() -> None:
    token = sign_card(card_payload(ISS, 1, bundle()), PRIVATE_JWK)
    other = issuer_jwk(ec.derive_private_key(7, ec.SECP256R1()))
    lying = {"keys": [{**other, "kid": PUBLIC_JWK["kid"]}]}
    with pytest.raises(VerificationError, match="thumbprint") as err:
        verify_card(token, lying)
    assert err.value.code == "SHC_UNKNOWN_KEY"


def test_keys_not_marked_for_es256_signing_are_not_used() -> None:
    token = sign_card(card_payload(ISS, 1, bundle()), PRIVATE_JWK)
    for change in ({"use": "enc"}, {"alg": "ES384"}):
        with pytest.raises(VerificationError) as err:
            verify_card(token, {"keys": [{**PUBLIC_JWK, **change}]})
        assert err.value.code == "SHC_UNKNOWN_KEY"


@pytest.mark.parametrize(
    ("header", "body", "code"),
    [
        ({"alg": "ES256", "kid": "K"}, raw_deflate(b"{}"), "BAD_SHC"),  # no zip
        ({"alg": "ES256", "zip": "DEF", "kid": "K"}, b"not deflate at all \xff", "BAD_SHC"),
        ({"alg": "ES256", "zip": "DEF", "kid": "K"}, raw_deflate(b"not json"), "BAD_SHC"),
        ({"alg": "ES256", "zip": "DEF", "kid": "K"}, raw_deflate(b'{"iss":"x"}'), "BAD_SHC"),
        ({"alg": "ES256", "zip": "DEF", "kid": "K"}, raw_deflate(b"{}") + b"junk", "BAD_SHC"),
        ({"alg": "ES256", "zip": "DEF", "kid": "K"}, raw_deflate(b"{}")[:-2], "BAD_SHC"),
    ],
)
def test_malformed_cards_signed_by_a_known_key_are_refused(
    header: dict[str, Any], body: bytes, code: str
) -> None:
    header = {**header, "kid": PUBLIC_JWK["kid"]}
    with pytest.raises(VerificationError) as err:
        verify_card(resign(header, body), OUR_JWKS)
    assert err.value.code == code


def test_decompression_bomb_is_refused() -> None:
    header = {"alg": "ES256", "zip": "DEF", "kid": PUBLIC_JWK["kid"]}
    with pytest.raises(VerificationError, match="inflates beyond"):
        verify_card(resign(header, raw_deflate(b" " * (2 * 1024 * 1024))), OUR_JWKS)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "x.y.z", "eyJ9.e30.AAAA"])
def test_non_jws_input_is_refused(token: str) -> None:
    with pytest.raises(VerificationError) as err:
        verify_card(token, JWKS)
    assert err.value.code in {"BAD_SHC", "SHC_UNKNOWN_KEY"}


def test_expiry_is_checked_when_now_is_given() -> None:
    claims = verify_card(jws_text("03"), JWKS)
    assert verify_card(jws_text("03"), JWKS, now=int(claims["exp"]) - 1) == claims
    with pytest.raises(VerificationError) as err:
        verify_card(jws_text("03"), JWKS, now=int(claims["exp"]) + 1)
    assert err.value.code == "SHC_EXPIRED"


def test_verify_tolerates_surrounding_whitespace() -> None:
    assert verify_card(jws_text("00") + "\n", JWKS) == verify_card(jws_text("00"), JWKS)


# --- minimisation rules -------------------------------------------------------------------------


def test_minimisation_rules_one_by_one() -> None:
    source = {
        "resourceType": "Bundle",
        "id": "b1",
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
        "type": "collection",
        "entry": [
            {
                "fullUrl": "https://ehr.example/fhir/Patient/p1",
                "resource": {
                    "resourceType": "Patient",
                    "id": "p1",
                    "meta": {"versionId": "3", "security": [{"system": "s", "code": "R"}]},
                    "text": {"status": "generated", "div": "<div>John</div>"},
                    "name": [{"family": "Doe", "text": "John Doe"}],
                },
            },
            {
                "fullUrl": "urn:uuid:0b1c5f8e-2a4e-4a55-9f35-0e8e0c9a1d77",
                "resource": {
                    "resourceType": "Immunization",
                    "id": "i1",
                    "meta": {"profile": ["http://example.org/p"]},
                    "vaccineCode": {
                        "text": "COVID-19 vaccine",
                        "coding": [
                            {
                                "system": "http://hl7.org/fhir/sid/cvx",
                                "code": "207",
                                "display": "Moderna",
                            }
                        ],
                    },
                    "patient": {"reference": "Patient/p1"},
                    "performer": [
                        {"actor": {"reference": "https://ehr.example/fhir/Patient/p1/_history/2"}}
                    ],
                    "note": [{"text": "Annotation text stays"}],
                    "route": {"text": "text-only concept stays"},
                    "site": {"coding": [{"code": "LA", "display": "left arm"}]},
                    "contained": [
                        {"resourceType": "Organization", "id": "o1", "text": {"div": "x"}}
                    ],
                    "manufacturer": {"reference": "#o1"},
                    "location": {"reference": "Location/elsewhere"},
                },
            },
            {
                "fullUrl": "https://ehr.example/fhir/Observation/o9",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o9",
                    "subject": {"reference": "urn:uuid:0b1c5f8e-2a4e-4a55-9f35-0e8e0c9a1d77"},
                    "valueCoding": {
                        "system": "http://snomed.info/sct",
                        "code": "1",
                        "display": "d",
                    },
                    "valueQuantity": {
                        "value": 1,
                        "system": "http://unitsofmeasure.org",
                        "code": "mg",
                    },
                },
            },
        ],
    }
    original = copy.deepcopy(source)
    out = minimise_bundle(source)
    assert source == original  # a copy; the input is untouched
    assert "id" not in out and "meta" not in out
    patient, immunization, observation = (entry["resource"] for entry in out["entry"])
    assert [entry["fullUrl"] for entry in out["entry"]] == [
        "resource:0",
        "resource:1",
        "resource:2",
    ]
    assert patient == {
        "resourceType": "Patient",
        "meta": {"security": [{"system": "s", "code": "R"}]},
        "name": [{"family": "Doe", "text": "John Doe"}],  # HumanName.text is not a concept's
    }
    assert "meta" not in immunization and "id" not in immunization
    assert immunization["vaccineCode"] == {
        "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "207"}]
    }
    assert immunization["patient"] == {"reference": "resource:0"}
    assert immunization["performer"][0]["actor"] == {"reference": "resource:0"}
    assert immunization["note"] == [{"text": "Annotation text stays"}]
    assert immunization["route"] == {"text": "text-only concept stays"}
    assert immunization["site"] == {"coding": [{"code": "LA"}]}
    assert immunization["contained"] == [{"resourceType": "Organization", "id": "o1"}]
    assert immunization["manufacturer"] == {"reference": "#o1"}
    assert immunization["location"] == {"reference": "Location/elsewhere"}
    assert observation["subject"] == {"reference": "resource:1"}
    assert observation["valueCoding"] == {"system": "http://snomed.info/sct", "code": "1"}
    assert observation["valueQuantity"]["code"] == "mg"
    assert minimise_bundle(out) == out  # idempotent


def test_minimise_refuses_non_bundles() -> None:
    with pytest.raises(ValidationError):
        minimise_bundle({"resourceType": "Patient"})
    with pytest.raises(ValidationError):
        minimise_bundle({"resourceType": "Bundle", "entry": {}})


# --- revocation ---------------------------------------------------------------------------------


def test_revocation_id_shape_and_inputs() -> None:
    rid = revocation_id(SECRET, SPEC_KID, "patient-42")
    assert len(rid) == 11 and rid == revocation_id(SECRET, SPEC_KID, "patient-42")
    assert rid != revocation_id(SECRET, PUBLIC_JWK["kid"], "patient-42")  # per key
    with pytest.raises(ValidationError):
        revocation_id("tooShortSecret", SPEC_KID, "patient-42")
    with pytest.raises(ValidationError):
        revocation_id(SECRET, SPEC_KID, "")


def test_crl_refusals() -> None:
    assert crl(SPEC_KID, 1, []) == {"kid": SPEC_KID, "method": "rid", "ctr": 1, "rids": []}
    for args in (
        (SPEC_KID, 0, []),
        (SPEC_KID, 1, ["x" * 25]),
        (SPEC_KID, 1, ["abc.12x"]),
        (SPEC_KID, 1, "abc"),
    ):
        with pytest.raises(ValidationError):
            crl(*args)


def test_is_revoked_rules() -> None:
    claims = card_payload(ISS, 1000, bundle(), rid="abc")
    assert is_revoked(claims, crl(SPEC_KID, 1, ["abc"]))
    assert is_revoked(claims, crl(SPEC_KID, 2, ["zzz", "abc.1001"]))
    assert not is_revoked(claims, crl(SPEC_KID, 2, ["abc.1000"]))  # issued at, not before
    assert not is_revoked(claims, crl(SPEC_KID, 1, ["abcd", "ab"]))
    assert not is_revoked(card_payload(ISS, 1000, bundle()), crl(SPEC_KID, 1, ["abc"]))
    with pytest.raises(ValidationError):
        is_revoked(claims, {"kid": SPEC_KID, "method": "other", "ctr": 1, "rids": []})


def test_file_body_refusals() -> None:
    with pytest.raises(ValidationError):
        file_body([])
    with pytest.raises(ValidationError):
        file_body(jws_text("00"))
    with pytest.raises(ValidationError):
        file_body(["not a jws"])
