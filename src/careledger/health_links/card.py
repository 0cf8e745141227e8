"""SMART Health Cards: signed, compressed FHIR bundles (HL7 SMART Health Cards and Links IG
1.0.0, "SMART Health Cards Framework").

A card is a compact JWS with header ``{"zip": "DEF", "alg": "ES256", "kid": <RFC 7638 SHA-256
thumbprint of the issuer key>}`` whose payload is the raw-DEFLATE (no zlib header) of the
minified JSON ``{"iss", "nbf", ["exp"], "vc": {"type": [...], "credentialSubject":
{"fhirVersion", "fhirBundle"}, ["rid"]}}``. Issuers publish their P-256 keys at
``<iss>/.well-known/jwks.json`` and, for revocation, ``<iss>/.well-known/crl/<kid>.json``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws as jose_jws
from joserfc.jwk import ECKey
from joserfc.registry import HeaderParameter

from careledger.core.canonical import canonical_bytes
from careledger.errors import ValidationError, VerificationError
from careledger.health_links.link import LOOPBACK_HOSTS

__all__ = [
    "FHIR_VERSION",
    "HEALTH_CARD_TYPE",
    "card_payload",
    "crl",
    "file_body",
    "is_revoked",
    "issuer_jwk",
    "minimise_bundle",
    "revocation_id",
    "sign_card",
    "verify_card",
]

HEALTH_CARD_TYPE = "https://smarthealth.cards#health-card"
FHIR_VERSION = "4.0.1"
MAX_RID_CHARS = 24
#: Bound on an inflated card payload, against decompression bombs; the IG's IPS example card
#: is 6 KB.
MAX_PAYLOAD_BYTES = 1024 * 1024
RID_BYTES = 8

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_RID = re.compile(r"[A-Za-z0-9_-]{1,24}")
_CRL_ENTRY = re.compile(r"([A-Za-z0-9_-]{1,24})(?:\.([0-9]+))?")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SECRET_MIN_BYTES = 32

# ``zip`` is a JWE header in the JOSE registries; SMART Health Cards put it on a JWS, so the
# registry must be told about it or joserfc refuses the header.
_JWS_REGISTRY = jose_jws.JWSRegistry(
    header_registry={"zip": HeaderParameter("Compression Algorithm", "str")},
    algorithms=["ES256"],
)


def _bad(message: str) -> ValidationError:
    return ValidationError(message, code="BAD_SHC")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_issuer(iss: object) -> str:
    if not isinstance(iss, str) or not iss.isascii() or any(c.isspace() for c in iss):
        raise _bad("iss must be an https URL")
    try:
        parts = urlsplit(iss)
    except ValueError:
        raise _bad("iss is not a valid URL") from None
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS  # development only
    if (parts.scheme != "https" and not loopback) or not parts.netloc:
        raise _bad("iss SHALL use the https scheme")
    if iss.endswith("/"):
        raise _bad("iss SHALL NOT end with '/' (keys are at iss + '/.well-known/jwks.json')")
    if parts.query or parts.fragment or "#" in iss or "?" in iss:
        raise _bad("iss must not have a query or fragment")
    return iss


def _check_seconds(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= 2**53 - 1:
        raise _bad(f"{name} must be whole seconds since the epoch")
    return value


def _check_rid(rid: object) -> str:
    if not isinstance(rid, str) or not _RID.fullmatch(rid):
        raise _bad(f"rid must be 1 to {MAX_RID_CHARS} characters of the base64url alphabet")
    return rid


def card_payload(
    iss: str,
    nbf: int,
    bundle: Mapping[str, Any],
    types: Sequence[str] = (),
    rid: str | None = None,
    *,
    exp: int | None = None,
) -> dict[str, Any]:
    """The JWT claims of a card. ``types`` are added after the required health-card type;
    ``exp`` is only for cards that must lapse (the spec's example: a visitor's pass). Cards for
    a QR should carry ``minimise_bundle(bundle)``."""
    _check_issuer(iss)
    _check_seconds(nbf, "nbf")
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise _bad("the card's content must be a FHIR Bundle")
    if isinstance(types, str):
        raise _bad("types is a list of credential type URIs, not one string")
    vc_types = [HEALTH_CARD_TYPE]
    for kind in types:
        if not isinstance(kind, str) or not kind or any(c.isspace() for c in kind):
            raise _bad("a credential type must be a URI")
        if kind not in vc_types:
            vc_types.append(kind)
    vc: dict[str, Any] = {
        "type": vc_types,
        "credentialSubject": {"fhirVersion": FHIR_VERSION, "fhirBundle": dict(bundle)},
    }
    if rid is not None:
        vc["rid"] = _check_rid(rid)
    payload: dict[str, Any] = {"iss": iss, "nbf": nbf}
    if exp is not None:
        if _check_seconds(exp, "exp") <= nbf:
            raise _bad("exp must be after nbf")
        payload["exp"] = exp
    payload["vc"] = vc
    return payload


# --- minimisation ("Payload content minified for QR codes") ---------------------------------


def _minimise_meta(resource: dict[str, Any]) -> None:
    meta = resource.pop("meta", None)
    if isinstance(meta, dict) and meta.get("security"):
        resource["meta"] = {"security": meta["security"]}


def _short_reference(
    reference: str, exact: Mapping[str, str], by_type_id: Mapping[str, str]
) -> str:
    if reference in exact:
        return exact[reference]
    plain = reference.split("/_history/", 1)[0]
    return by_type_id.get(plain, exact.get(plain, reference))


class _Minimiser:
    def __init__(self, exact: Mapping[str, str], by_type_id: Mapping[str, str]) -> None:
        self.exact = exact
        self.by_type_id = by_type_id

    def resource(self, resource: dict[str, Any], *, top: bool) -> None:
        # Contained resources keep their id: their "#id" references need it.
        if top:
            resource.pop("id", None)
        resource.pop("text", None)
        _minimise_meta(resource)
        for key, value in resource.items():
            if key == "contained" and isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        self.resource(item, top=False)
            elif key != "meta":
                self.element(value)

    def element(self, value: object) -> None:
        if isinstance(value, list):
            for item in value:
                self.element(item)
            return
        if not isinstance(value, dict):
            return
        if isinstance(value.get("resourceType"), str):
            self.resource(value, top=False)
            return
        codings = value.get("coding")
        if isinstance(codings, list):
            # A CodeableConcept: its text goes when codes say the same thing (the reference
            # generator's rule too); a text-only concept would otherwise become empty.
            value.pop("text", None)
            for coding in codings:
                if isinstance(coding, dict):
                    coding.pop("display", None)
        elif "system" in value and "code" in value:
            value.pop("display", None)  # a Coding outside a CodeableConcept
        reference = value.get("reference")
        if isinstance(reference, str):
            value["reference"] = _short_reference(reference, self.exact, self.by_type_id)
        for item in value.values():
            self.element(item)


def minimise_bundle(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``bundle`` minified as the spec requires of cards shown as QR codes: no
    ``Resource.id``, ``Resource.meta`` reduced to ``meta.security`` (or dropped), no
    ``DomainResource.text``, no ``CodeableConcept.text`` beside codings, no ``Coding.display``,
    ``fullUrl`` as ``resource:N`` and references to entries rewritten to those URIs."""
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise _bad("not a FHIR Bundle")
    out: dict[str, Any] = copy.deepcopy(dict(bundle))
    out.pop("id", None)
    _minimise_meta(out)
    out.pop("text", None)
    entries = out.get("entry", [])
    if not isinstance(entries, list):
        raise _bad("Bundle.entry must be a list")
    exact: dict[str, str] = {}
    by_type_id: dict[str, str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _bad("a Bundle entry must be an object")
        short = f"resource:{index}"
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            exact.setdefault(full_url, short)
            if not full_url.startswith("urn:") and full_url.count("/") >= 1:
                by_type_id.setdefault("/".join(full_url.rstrip("/").split("/")[-2:]), short)
        resource = entry.get("resource")
        if isinstance(resource, dict):
            kind, rid = resource.get("resourceType"), resource.get("id")
            if isinstance(kind, str) and isinstance(rid, str):
                by_type_id.setdefault(f"{kind}/{rid}", short)
    minimiser = _Minimiser(exact, by_type_id)
    for index, entry in enumerate(entries):
        entry["fullUrl"] = f"resource:{index}"
        resource = entry.get("resource")
        if isinstance(resource, dict):
            minimiser.resource(resource, top=True)
    return out


# --- keys and signatures --------------------------------------------------------------------


def issuer_jwk(
    public_key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
    *,
    crl_version: int | None = None,
) -> dict[str, Any]:
    """The issuer's public JWK as the spec requires it in ``jwks.json``: ``kty EC``, ``crv
    P-256``, ``use sig``, ``alg ES256``, ``kid`` its RFC 7638 thumbprint, never ``d``.
    ``crl_version`` is the CRL counter (``crlVersion``) for issuers that revoke by ``rid``."""
    if isinstance(public_key, ec.EllipticCurvePrivateKey):
        public_key = public_key.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise ValidationError("an issuer key is a P-256 EC key", code="BAD_SHC_KEY")
    key = ECKey.import_key(public_key)
    public = key.as_dict(private=False)
    jwk: dict[str, Any] = {
        "kty": "EC",
        "kid": key.thumbprint(),
        "use": "sig",
        "alg": "ES256",
        "crv": "P-256",
        "x": public["x"],
        "y": public["y"],
    }
    if crl_version is not None:
        if type(crl_version) is not int or crl_version < 1:
            raise ValidationError("crlVersion is a counter from 1", code="BAD_SHC_KEY")
        jwk["crlVersion"] = crl_version
    return jwk


def _private_key(private_jwk: Mapping[str, Any]) -> ECKey:
    if (
        not isinstance(private_jwk, Mapping)
        or private_jwk.get("kty") != "EC"
        or private_jwk.get("crv") != "P-256"
        or not isinstance(private_jwk.get("d"), str)
    ):
        raise ValidationError("the signing key must be a private P-256 EC JWK", code="BAD_SHC_KEY")
    members = {name: private_jwk[name] for name in ("kty", "crv", "x", "y", "d")}
    try:
        return ECKey.import_key(members)
    except Exception:
        # joserfc and cryptography refuse a bad point or scalar in several ways (ValueError,
        # their own errors); for the caller it is one thing.
        raise ValidationError(
            "the signing key is not a valid P-256 key", code="BAD_SHC_KEY"
        ) from None


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_PAYLOAD_BYTES)
    except zlib.error:
        raise VerificationError("the card payload is not raw DEFLATE", code="BAD_SHC") from None
    if inflater.unconsumed_tail:
        raise VerificationError(
            f"the card payload inflates beyond {MAX_PAYLOAD_BYTES} bytes", code="BAD_SHC"
        )
    if not inflater.eof or inflater.unused_data:
        raise VerificationError(
            "the card payload is truncated or has trailing bytes", code="BAD_SHC"
        )
    return out


def _check_claims(payload: object) -> dict[str, Any]:
    """The shape every card has, whoever issued it; ``nbf`` may have a fraction (the IG's own
    examples do)."""
    if not isinstance(payload, dict):
        raise _bad("card claims are a JSON object")
    if not isinstance(payload.get("iss"), str):
        raise _bad("card has no iss")
    for claim in ("nbf", "exp"):
        value = payload.get(claim)
        if claim == "exp" and value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise _bad(f"card {claim} must be seconds since the epoch")
    vc = payload.get("vc")
    if not isinstance(vc, dict):
        raise _bad("card has no vc claim")
    kinds = vc.get("type")
    if not isinstance(kinds, list) or HEALTH_CARD_TYPE not in kinds:
        raise _bad(f"vc.type must include {HEALTH_CARD_TYPE}")
    subject = vc.get("credentialSubject")
    if not isinstance(subject, dict) or not isinstance(subject.get("fhirVersion"), str):
        raise _bad("vc.credentialSubject.fhirVersion is missing")
    bundle = subject.get("fhirBundle")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise _bad("vc.credentialSubject.fhirBundle must be a FHIR Bundle")
    if "rid" in vc:
        _check_rid(vc["rid"])
    return payload


def sign_card(payload: Mapping[str, Any], private_jwk: Mapping[str, Any]) -> str:
    """The card as a compact JWS. The payload bytes are RFC 8785 canonical JSON (minified, as
    the spec requires, and the one encoding CareLedger signs), then raw DEFLATE.

    ES256 signatures are randomised by the crypto library, so two signatures of one card differ;
    both verify.
    """
    claims = _check_claims(dict(payload))
    key = _private_key(private_jwk)
    header = {"zip": "DEF", "alg": "ES256", "kid": key.thumbprint()}
    body = _deflate(canonical_bytes(claims))
    return jose_jws.serialize_compact(header, body, key, registry=_JWS_REGISTRY)


def _issuer_key(jwks: Mapping[str, Any], kid: str) -> ECKey:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise VerificationError("the issuer key set has no keys", code="SHC_UNKNOWN_KEY")
    for jwk in keys:
        if (
            isinstance(jwk, dict)
            and jwk.get("kid") == kid
            and jwk.get("kty") == "EC"
            and jwk.get("use") == "sig"
            and jwk.get("alg") == "ES256"
            and jwk.get("crv") == "P-256"
        ):
            # Only the public members: the spec forbids "d" in a published key, and x5c or
            # crlVersion play no part in the signature.
            try:
                key = ECKey.import_key({name: jwk[name] for name in ("kty", "crv", "x", "y")})
            except Exception:
                raise VerificationError(
                    "the issuer's key for this kid is malformed", code="SHC_UNKNOWN_KEY"
                ) from None
            if key.thumbprint() != kid:
                raise VerificationError(
                    "the issuer's kid is not the key's SHA-256 thumbprint", code="SHC_UNKNOWN_KEY"
                )
            return key
    raise VerificationError(
        "no ES256 signing key of the issuer has this kid", code="SHC_UNKNOWN_KEY"
    )


def verify_card(jws: str, jwks: Mapping[str, Any], *, now: int | None = None) -> dict[str, Any]:
    """The claims of a card whose signature verifies under the issuer's key set.

    Trusting the issuer (that ``jwks`` came from ``iss`` + ``/.well-known/jwks.json`` over
    TLS, or from a trust framework) and checking revocation (``is_revoked``) are the caller's
    part. ``now`` (epoch seconds) enables the ``exp`` check.
    """
    if not isinstance(jws, str):
        raise VerificationError("a card is a compact JWS string", code="BAD_SHC")
    token = jws.strip()
    if not _COMPACT_JWS.fullmatch(token):
        raise VerificationError("not a compact JWS", code="BAD_SHC")
    try:
        signed = jose_jws.extract_compact(token.encode("ascii"), registry=_JWS_REGISTRY)
    except Exception:
        raise VerificationError("not a compact JWS", code="BAD_SHC") from None
    header = signed.headers()
    if header.get("alg") != "ES256" or header.get("zip") != "DEF":
        raise VerificationError("a card's header must have alg ES256 and zip DEF", code="BAD_SHC")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _BASE64URL.fullmatch(kid):
        raise VerificationError("a card's header must name its key (kid)", code="BAD_SHC")
    key = _issuer_key(jwks, kid)
    try:
        valid = jose_jws.validate_compact(signed, key, registry=_JWS_REGISTRY)
    except Exception:
        valid = False
    if not valid:
        raise VerificationError("the card's signature does not verify", code="BAD_SHC_SIGNATURE")
    try:
        claims = orjson.loads(_inflate(signed.payload))
    except orjson.JSONDecodeError:
        raise VerificationError("the card payload is not JSON", code="BAD_SHC") from None
    try:
        _check_claims(claims)
    except ValidationError as exc:
        raise VerificationError(exc.message, code="BAD_SHC") from None
    if now is not None and "exp" in claims and claims["exp"] < now:
        raise VerificationError("the card has expired", code="SHC_EXPIRED")
    return dict(claims)


# --- revocation -----------------------------------------------------------------------------


def revocation_id(secret: str, kid: str, user_id: str) -> str:
    """The spec's recommended ``rid``: ``base64url(HMAC-SHA-256(secret || kid, user_id))``
    truncated to 64 bits (11 characters).

    ``secret`` is the issuer's revocation secret as text (base64url of at least 32 random
    bytes), and ``secret || kid`` joins the two texts. That is how the spec's reference
    generator (smart-on-fhir/health-cards ``generate-examples``) computes it, and the only
    reading that reproduces the rids in its published CRL; hashing the decoded secret bytes
    gives other values.
    """
    if not isinstance(secret, str) or not _BASE64URL.fullmatch(secret.rstrip("=")):
        raise ValidationError("the revocation secret is base64url text", code="BAD_SHC_KEY")
    stripped = secret.rstrip("=")
    if len(stripped) * 6 // 8 < _SECRET_MIN_BYTES:
        raise ValidationError(
            f"the revocation secret must carry at least {_SECRET_MIN_BYTES} random bytes",
            code="BAD_SHC_KEY",
        )
    if not isinstance(kid, str) or not _BASE64URL.fullmatch(kid):
        raise _bad("kid must be base64url")
    if not isinstance(user_id, str) or not user_id:
        raise _bad("user_id must be a non-empty string")
    mac = hmac.new((secret + kid).encode("utf-8"), user_id.encode("utf-8"), hashlib.sha256)
    return _b64url(mac.digest()[:RID_BYTES])


def crl(kid: str, ctr: int, rids: Iterable[str]) -> dict[str, Any]:
    """A Card Revocation List for one key, served at ``<iss>/.well-known/crl/<kid>.json``.
    ``ctr`` starts at 1 and grows with every change; the key's ``crlVersion`` in the JWKS must
    equal it. A rid may end in ``.<epoch seconds>``: cards with an earlier ``nbf`` are
    revoked."""
    if not isinstance(kid, str) or not _BASE64URL.fullmatch(kid):
        raise _bad("kid must be base64url")
    if type(ctr) is not int or ctr < 1:
        raise _bad("ctr is a counter from 1")
    if isinstance(rids, str):
        raise _bad("rids is a list of revocation ids, not one string")
    entries = list(rids)
    for entry in entries:
        if not isinstance(entry, str) or not _CRL_ENTRY.fullmatch(entry):
            raise _bad("a CRL entry is a rid, optionally followed by '.' and epoch seconds")
    return {"kid": kid, "method": "rid", "ctr": ctr, "rids": entries}


def is_revoked(claims: Mapping[str, Any], crl_body: Mapping[str, Any]) -> bool:
    """Whether the CRL of the card's key revokes the card: its ``rid`` is listed bare, or with a
    timestamp later than the card's ``nbf``. Cards without ``rid`` cannot be revoked this way."""
    vc = claims.get("vc")
    rid = vc.get("rid") if isinstance(vc, Mapping) else None
    if rid is None:
        return False
    if crl_body.get("method") != "rid" or not isinstance(crl_body.get("rids"), list):
        raise _bad("not a rid-method Card Revocation List")
    nbf = claims.get("nbf")
    for entry in crl_body["rids"]:
        match = _CRL_ENTRY.fullmatch(entry) if isinstance(entry, str) else None
        if match is None or match.group(1) != rid:
            continue
        stamp = match.group(2)
        if stamp is None:
            return True
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf < int(stamp):
            return True
    return False


def file_body(jws_list: Iterable[str]) -> dict[str, Any]:
    """The JSON of a ``.smart-health-card`` file (``application/smart-health-card``)."""
    if isinstance(jws_list, str):
        raise _bad("jws_list is a list of cards, not one string")
    cards = list(jws_list)
    if not cards:
        raise _bad("a .smart-health-card file holds at least one card")
    for card in cards:
        if not isinstance(card, str) or not _COMPACT_JWS.fullmatch(card):
            raise _bad("each card is a compact JWS")
    return {"verifiableCredential": cards}
