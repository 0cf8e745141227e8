"""A SMART Health Cards *verifier* written from the published specification alone.

Independent of CareLedger's own code: it uses only jwcrypto (JWS, JWK thumbprints, X.509 key
import), zlib, httpx and the standard library.

Normative source (quoted below as ``[SHC §heading]``): HL7 FHIR IG "SMART Health Cards and Links"
1.0.0 (STU1), page "SMART Health Cards Specification",
http://hl7.org/fhir/uv/smart-health-cards-and-links/STU1/cards-specification.html
(github.com/HL7/smart-health-cards-and-links, input/pagecontent/cards-specification.md, commit
a966d22c01b3e39bd9a22123d798049f22a73e28), which is the text of https://spec.smarthealth.cards/
(github.com/smart-on-fhir/health-cards, docs/index.md). Where the spec gives no verifier rule,
the checks of the SMART reference validator (github.com/smart-on-fhir/health-cards-dev-tools,
src/jws-compact.ts, src/qr.ts, src/crl-validator.ts, commit b9b961d9) are followed and marked
"dev-tools".

Every refusal raises :class:`ShcError` with a stable ``code`` so tests can assert *why*.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import zlib
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, TypeGuard
from urllib.parse import quote, urlsplit

import httpx
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

__all__ = [
    "HEALTH_CARD_TYPE",
    "MAX_CHUNK_JWS_LENGTH",
    "MAX_SINGLE_QR_JWS_LENGTH",
    "ShcError",
    "check_revocation",
    "decode_numeric",
    "encode_numeric",
    "fetch_jwks",
    "select_key",
    "verify_card",
    "verify_file",
    "verify_qr",
]

SHC_PREFIX = "shc:/"
HEALTH_CARD_TYPE = "https://smarthealth.cards#health-card"
# [SHC §Chunking Larger SMART Health Cards] "Any JWS longer than 1195 characters SHALL be split
# into 'chunks' of length 1191 or smaller" (chunking itself is deprecated since Dec 2022).
MAX_SINGLE_QR_JWS_LENGTH = 1195
MAX_CHUNK_JWS_LENGTH = 1191
# [SHC §Revocation] rid "SHALL use the base64url alphabet ... and be no longer than 24 characters"
MAX_RID_LENGTH = 24
MAX_INFLATED_BYTES = 8 * 1024 * 1024  # policy: a bound on DEFLATE output
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_NUMERIC_QR = re.compile(r"shc:/(?:([1-9][0-9]*)/([1-9][0-9]*)/)?([0-9]*)")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class ShcError(ValueError):
    """A card (or QR, key set, CRL) that a verifier must refuse. ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"[{code}] {message}")


def _b64url_decode(text: str, code: str, what: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ShcError(code, f"{what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ShcError(code, f"{what} is not base64url: {exc}") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        # Unused low bits set in the last character: another spelling of the same bytes, which
        # would let a one-character change to the signature go unnoticed.
        raise ShcError(code, f"{what} is not canonical base64url")
    return data


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------- numeric QR


def encode_numeric(jws_text: str) -> str:
    """The inverse of :func:`decode_numeric` for one chunk: ``Ord(c)-45`` as two digits."""
    return SHC_PREFIX + "".join(f"{ord(c) - 45:02d}" for c in jws_text)


def _digits_to_text(digits: str) -> str:
    if len(digits) % 2:
        raise ShcError("QR_ODD_DIGITS", "numeric QR payload has an odd number of digits")
    pairs = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    if pairs and max(pairs) > 77:
        # dev-tools: 77 = Ord('z') - 45, the largest value a base64url/compact-JWS char gives.
        raise ShcError("QR_DIGIT_PAIR", "a digit pair exceeds 77 (the encoding of 'z')")
    return "".join(chr(p + 45) for p in pairs)


def decode_numeric(qr_text: str | Sequence[str], *, allow_chunks: bool = True) -> str:
    """Decode ``shc:/<digits>`` (or the deprecated chunk set ``shc:/C/N/<digits>``) to a JWS.

    [SHC §Encoding QRs]: a byte-mode segment ``shc:/`` (plus "C/N/" only if more than one chunk is
    required), then a numeric segment in which each JWS character c is ``Ord(c)-45`` as two
    decimal digits. Chunks may arrive in any order ("Consumers of QR codes SHOULD allow for
    scanning the multiple QR codes in any order").
    """
    chunks = [qr_text] if isinstance(qr_text, str) else list(qr_text)
    if not chunks:
        raise ShcError("QR_EMPTY", "no QR content")
    count = len(chunks)
    if count > 1 and not allow_chunks:
        raise ShcError("QR_CHUNKING_DEPRECATED", "multi-chunk QR sets are deprecated")
    parts: dict[int, str] = {}
    for chunk in chunks:
        if not isinstance(chunk, str):
            raise ShcError("QR_HEADER", "QR content must be text")
        if chunk != chunk.strip():
            raise ShcError("QR_WHITESPACE", "numeric QR has leading or trailing whitespace")
        match = _NUMERIC_QR.fullmatch(chunk)
        if match is None:
            raise ShcError("QR_HEADER", "expected 'shc:/' followed by digits (or 'shc:/C/N/')")
        index_text, total_text, digits = match.groups()
        if not digits:
            raise ShcError("QR_EMPTY", "numeric QR has no digits")
        if count == 1 and index_text is not None:
            # "plus (only if more than one chunk is required ...)": a lone chunk has no ordinal.
            raise ShcError("QR_CHUNK_HEADER", "a single QR must not carry a C/N/ chunk header")
        if count > 1:
            if index_text is None or total_text is None:
                raise ShcError("QR_CHUNK_HEADER", "every chunk of a set needs a C/N/ header")
            index, total = int(index_text), int(total_text)
            if total != count:
                raise ShcError("QR_CHUNK_MISSING", f"chunk says N={total} but {count} were given")
            if not 1 <= index <= total:
                raise ShcError("QR_CHUNK_HEADER", f"chunk index {index} is outside 1..{total}")
            if index in parts:
                raise ShcError("QR_CHUNK_HEADER", f"two chunks have index {index}")
        else:
            index = 1
        text = _digits_to_text(digits)
        limit = MAX_CHUNK_JWS_LENGTH if count > 1 else MAX_SINGLE_QR_JWS_LENGTH
        if len(text) > limit:
            raise ShcError("QR_TOO_LONG", f"QR chunk holds {len(text)} JWS characters (> {limit})")
        parts[index] = text
    jws_text = "".join(parts[i] for i in range(1, count + 1))
    if count > 1 and len(jws_text) <= MAX_SINGLE_QR_JWS_LENGTH:
        raise ShcError(
            "QR_NEEDLESS_CHUNKS", f"a {len(jws_text)}-character JWS must not be split into chunks"
        )
    if not _COMPACT_JWS.fullmatch(jws_text):
        raise ShcError("JWS_FORMAT", "decoded QR content is not a compact JWS")
    return jws_text


# ------------------------------------------------------------------------------- issuer keys


def _check_issuer(iss: object, warnings: list[str]) -> str:
    """[SHC §Determining keys associated with an issuer] "The URL at <<iss>> SHALL use the https
    scheme and SHALL NOT include a trailing /". Policy: http is accepted on loopback only, for
    tests, and flagged."""
    if not isinstance(iss, str) or not iss:
        raise ShcError("ISS", "payload 'iss' must be a non-empty string")
    if iss.endswith("/"):
        raise ShcError("ISS", "'iss' SHALL NOT include a trailing '/'")
    parts = urlsplit(iss)
    if not parts.netloc or not parts.hostname:
        raise ShcError("ISS", f"'iss' is not an absolute URL: {iss!r}")
    if parts.scheme == "https":
        return iss
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        warnings.append(f"'iss' uses http on loopback (accepted for tests only): {iss}")
        return iss
    raise ShcError("ISS", f"'iss' SHALL use the https scheme: {iss!r}")


def _get_json(client: httpx.Client, url: str, code: str, what: str) -> Any:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise ShcError(code, f"cannot fetch {what} from {url}: {exc!r}") from exc
    if response.status_code != 200:
        raise ShcError(code, f"{what} at {url} answered HTTP {response.status_code}")
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShcError(code, f"{what} at {url} is not JSON: {exc}") from exc


def fetch_jwks(iss: str, client: httpx.Client) -> dict[str, Any]:
    """GET ``<<iss>>/.well-known/jwks.json`` ([SHC §Determining keys ...]). CORS is not checked:
    it matters to browsers only."""
    jwks = _get_json(client, iss + "/.well-known/jwks.json", "JWKS_FETCH", "issuer JWK set")
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ShcError("JWKS_FORMAT", "issuer JWK set must be an object with a 'keys' array")
    return jwks


def _thumbprint_key(entry: Mapping[str, Any]) -> jwk.JWK:
    try:
        return jwk.JWK(kty=entry["kty"], crv=entry["crv"], x=entry["x"], y=entry["y"])
    except (JWException, ValueError, KeyError, TypeError) as exc:
        raise ShcError(
            "KEY_INVALID", f"issuer key {entry.get('kid')!r} is not a P-256 key"
        ) from exc


def select_key(jwks: Mapping[str, Any], kid: str) -> tuple[dict[str, Any], jwk.JWK]:
    """Find the signing key ``kid`` and check it against [SHC §Determining keys ...]:

    "SHALL have kty EC, use sig, and alg ES256"; "SHALL have kid equal to the base64url-encoded
    SHA-256 JWK Thumbprint of the key"; "SHALL have crv P-256, and x, y"; "SHALL NOT have ... d";
    with x5c, "The public key listed in the first certificate in the x5c array SHALL match the
    public key specified by the crv, x, and y parameters".
    """
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ShcError("JWKS_FORMAT", "issuer JWK set must have a 'keys' array")
    candidates = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
    if not candidates:
        raise ShcError("KID_NOT_FOUND", f"issuer has no key with kid {kid!r}")
    problems: list[str] = []
    for entry in candidates:
        wrong = [
            f"{name}={entry.get(name)!r}"
            for name, want in (("kty", "EC"), ("use", "sig"), ("alg", "ES256"), ("crv", "P-256"))
            if entry.get(name) != want
        ]
        if wrong:
            problems.append(", ".join(wrong))
            continue
        if "d" in entry:
            raise ShcError("KEY_PRIVATE", f"issuer key {kid!r} publishes its private part 'd'")
        key = _thumbprint_key(entry)
        if key.thumbprint() != kid:
            raise ShcError(
                "KID_NOT_THUMBPRINT", f"kid {kid!r} is not the key's RFC 7638 thumbprint"
            )
        x5c = entry.get("x5c")
        if x5c is not None:
            _check_x5c_leaf(x5c, key, kid)
        return dict(entry), key
    raise ShcError("KEY_NOT_SMART", f"key {kid!r} is not an ES256 signing key: {problems}")


def _check_x5c_leaf(x5c: object, key: jwk.JWK, kid: str) -> None:
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise ShcError("KEY_X5C", f"key {kid!r} x5c must be a non-empty array of base64 strings")
    body = "\n".join(x5c[0][i : i + 64] for i in range(0, len(x5c[0]), 64))
    pem = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode("ascii")
    try:
        leaf = jwk.JWK.from_pem(pem)
    except (JWException, ValueError, TypeError) as exc:
        raise ShcError("KEY_X5C", f"key {kid!r} x5c[0] is not a certificate: {exc}") from exc
    if leaf.thumbprint() != key.thumbprint():
        raise ShcError("KEY_X5C", f"key {kid!r}: x5c[0] certifies a different public key")


# ------------------------------------------------------------------------------- revocation


def _split_rid_entry(entry: object) -> tuple[str, int | None]:
    """A CRL entry is a rid "plus an optional timestamp suffix consisting of . followed by a
    numerical timestamp" ([SHC §Revocation])."""
    if not isinstance(entry, str):
        raise ShcError("CRL_FORMAT", "CRL rids must be strings")
    rid, dot, stamp = entry.partition(".")
    if not _B64URL.fullmatch(rid) or len(rid) > MAX_RID_LENGTH:
        raise ShcError("CRL_FORMAT", f"CRL rid {rid!r} is not base64url of at most 24 characters")
    if not dot:
        return rid, None
    if not stamp.isdigit():
        raise ShcError("CRL_FORMAT", f"CRL rid timestamp {stamp!r} is not a number of seconds")
    return rid, int(stamp)


def check_revocation(
    *,
    rid: str | None,
    nbf: float,
    kid: str,
    crl_version: int,
    crl: Mapping[str, Any],
) -> None:
    """Refuse a card listed in the issuer's CRL ([SHC §Revocation]).

    Verifiers SHALL "Reject the Health Card if the calculated rid is contained in the CRL's rids
    array and (if a timestamp suffix is present) the Health Card's nbf value is before the
    timestamp." The CRL is ``{"kid", "method": "rid", "ctr", "rids"}``; ``ctr`` is what the key's
    ``crlVersion`` announces (a mismatch means a stale or wrong CRL: refused, dev-tools).
    """
    if not isinstance(crl, Mapping):
        raise ShcError("CRL_FORMAT", "CRL must be a JSON object")
    if crl.get("kid") != kid:
        raise ShcError("CRL_FORMAT", f"CRL kid {crl.get('kid')!r} is not the key's kid {kid!r}")
    if crl.get("method") != "rid":
        # Other methods belong to external revocation profiles this verifier does not know:
        # fail closed rather than accept a possibly revoked card.
        raise ShcError("CRL_METHOD", f"unsupported CRL method {crl.get('method')!r}")
    if crl.get("ctr") != crl_version:
        raise ShcError(
            "CRL_VERSION", f"CRL ctr {crl.get('ctr')!r} does not match crlVersion {crl_version}"
        )
    rids = crl.get("rids")
    if not isinstance(rids, list):
        raise ShcError("CRL_FORMAT", "CRL 'rids' must be an array")
    entries = [_split_rid_entry(entry) for entry in rids]
    if rid is None:
        return  # "Revocation of Health Cards without a rid field ... external mechanisms"
    for listed, stamp in entries:
        if listed == rid and (stamp is None or nbf < stamp):
            suffix = "" if stamp is None else f" (issued before {stamp})"
            raise ShcError("REVOKED", f"card rid {rid!r} is revoked by the issuer's CRL{suffix}")


def _crl_for(
    *,
    iss: str,
    kid: str,
    crl_version: int,
    client: httpx.Client | None,
    crls: Mapping[str, Any] | None,
    crl_cache: MutableMapping[tuple[str, str], tuple[int, Any]] | None,
) -> Any:
    # "Download the https://<<Issuer URL>>/.well-known/crl/<<kid>>.json file or use a cached
    # version if the counter value has not changed since the last retrieval"
    if crls is not None and kid in crls:
        return crls[kid]
    if crl_cache is not None:
        cached = crl_cache.get((iss, kid))
        if cached is not None and cached[0] == crl_version:
            return cached[1]
    if client is None:
        raise ShcError("CRL_FETCH", f"key {kid!r} has crlVersion but no CRL or client was given")
    crl = _get_json(client, f"{iss}/.well-known/crl/{quote(kid, safe='')}.json", "CRL_FETCH", "CRL")
    if crl_cache is not None and isinstance(crl, dict) and crl.get("ctr") == crl_version:
        crl_cache[(iss, kid)] = (crl_version, crl)
    return crl


# ------------------------------------------------------------------------------- the card


def _inflate_raw(data: bytes) -> bytes:
    """[SHC §Health Cards are Compact] "compressed with the DEFLATE (RFC1951) algorithm ...
    'raw' DEFLATE compression, omitting any zlib or gz headers"."""
    inflater = zlib.decompressobj(wbits=-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise ShcError("PAYLOAD_DEFLATE", f"payload is not raw DEFLATE: {exc}") from exc
    if inflater.unconsumed_tail:
        raise ShcError("PAYLOAD_DEFLATE", "inflated payload is implausibly large")
    if not inflater.eof or inflater.unused_data:
        raise ShcError("PAYLOAD_DEFLATE", "payload is not one complete raw DEFLATE stream")
    return out


def _decode_parts(jws_text: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header_b64, payload_b64, signature_b64 = jws_text.split(".")
    try:
        header = json.loads(_b64url_decode(header_b64, "JWS_HEADER", "JWS header"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShcError("JWS_HEADER", f"JWS header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ShcError("JWS_HEADER", "JWS header must be a JSON object")
    # [SHC §Health Cards are Compact] header includes alg "ES256", zip "DEF", kid.
    if header.get("alg") != "ES256":
        raise ShcError("HEADER_ALG", f"JWS alg must be 'ES256', not {header.get('alg')!r}")
    if header.get("zip") != "DEF":
        raise ShcError("HEADER_ZIP", f"JWS zip must be 'DEF', not {header.get('zip')!r}")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise ShcError("HEADER_KID", "JWS header has no 'kid'")
    if "crit" in header:
        raise ShcError("JWS_HEADER", "JWS header lists 'crit' extensions this verifier lacks")
    signature = _b64url_decode(signature_b64, "SIGNATURE_FORMAT", "JWS signature")
    if len(signature) != 64:
        # dev-tools: ES256 signatures are the 64-byte r||s form (RFC 7515 Appendix A.3), not DER.
        raise ShcError("SIGNATURE_FORMAT", f"signature is {len(signature)} bytes, not 64 (r||s)")
    inflated = _inflate_raw(_b64url_decode(payload_b64, "JWS_PAYLOAD", "JWS payload"))
    if inflated.startswith(b"\xef\xbb\xbf"):
        raise ShcError("PAYLOAD_BOM", "payload starts with a UTF-8 byte order mark")
    try:
        payload = json.loads(inflated.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShcError("PAYLOAD_JSON", f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ShcError("PAYLOAD_JSON", "payload must be a JSON object")
    return header, payload, inflated


def _check_claims(
    payload: Mapping[str, Any], *, now: float, leeway: float, warnings: list[str]
) -> dict[str, Any]:
    # [SHC §Health Cards are encoded as ... JWS]: "issuanceDate ... is represented by the
    # registered JWT nbf" (seconds since the epoch).
    nbf = payload.get("nbf")
    if not _is_number(nbf):
        raise ShcError("NBF", "payload 'nbf' must be a number of seconds")
    if nbf > now + leeway:
        raise ShcError("NBF", f"card is not valid before {nbf} (now {now:.0f})")
    exp = payload.get("exp")
    if exp is not None:
        # [SHC §Expiration of Health Cards] "Verifiers SHALL check the expiration, if present,
        # and reject SMART Health Cards with an exp value that is before the current ...
        # date-time."
        if not _is_number(exp):
            raise ShcError("EXP", "payload 'exp' must be a number of seconds")
        if exp < now - leeway:
            raise ShcError("EXP", f"card expired at {exp} (now {now:.0f})")
    vc = payload.get("vc")
    if not isinstance(vc, dict):
        raise ShcError("VC", "payload has no 'vc' object")
    types = vc.get("type")
    # "the https://smarthealth.cards#health-card SHALL be present"; other types are ignored.
    if not isinstance(types, list) or HEALTH_CARD_TYPE not in types:
        raise ShcError("VC_TYPE", f"vc.type must include {HEALTH_CARD_TYPE!r}")
    subject = vc.get("credentialSubject")
    if not isinstance(subject, dict):
        raise ShcError("VC_SUBJECT", "vc.credentialSubject must be an object")
    if not isinstance(subject.get("fhirVersion"), str) or not subject["fhirVersion"]:
        raise ShcError("VC_SUBJECT", "vc.credentialSubject.fhirVersion must be a string")
    bundle = subject.get("fhirBundle")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ShcError("VC_BUNDLE", "vc.credentialSubject.fhirBundle must be a FHIR Bundle")
    if not isinstance(bundle.get("type"), str):
        raise ShcError("VC_BUNDLE", "fhirBundle.type must be a string")
    if bundle["type"] != "collection":
        # Not an error: [SHC changelog, VCI 1.3.0] "any FHIR Bundle.type is allowed"; credential
        # modeling says "choose collection unless a more specific type applies (e.g. document)",
        # and the IG's own example-02 (IPS) is a "document" Bundle.
        warnings.append(f"fhirBundle.type is {bundle['type']!r}, not 'collection'")
    if "entry" in bundle and not isinstance(bundle["entry"], list):
        raise ShcError("VC_BUNDLE", "fhirBundle.entry must be an array")
    rid = vc.get("rid")
    if rid is not None and (
        not isinstance(rid, str) or not _B64URL.fullmatch(rid) or len(rid) > MAX_RID_LENGTH
    ):
        # "the identifier SHALL use the base64url alphabet ... and be no longer than 24 chars"
        raise ShcError("VC_RID", f"vc.rid {rid!r} is not base64url of at most 24 characters")
    return {"nbf": nbf, "exp": exp, "types": list(types), "rid": rid, "fhirBundle": bundle}


def verify_card(
    jws_text: str,
    *,
    client: httpx.Client | None = None,
    jwks: Mapping[str, Any] | None = None,
    trusted_issuers: set[str] | None = None,
    now: float | None = None,
    leeway: float = 0.0,
    crls: Mapping[str, Any] | None = None,
    crl_cache: MutableMapping[tuple[str, str], tuple[int, Any]] | None = None,
    max_jws_length: int | None = None,
) -> dict[str, Any]:
    """Verify one SMART Health Card JWS as [SHC] requires of a verifier; return what it says.

    ``jwks`` (the issuer's key set) avoids fetching ``<<iss>>/.well-known/jwks.json`` with
    ``client``. ``crls`` maps kid to a CRL document, else CRLs are fetched from
    ``<<iss>>/.well-known/crl/<<kid>>.json`` when the key has ``crlVersion``. ``max_jws_length``
    enforces a QR limit (``MAX_SINGLE_QR_JWS_LENGTH`` for a single QR); files have none.
    """
    if not isinstance(jws_text, str):
        raise ShcError("JWS_FORMAT", "a SMART Health Card is a compact JWS string")
    if jws_text != jws_text.strip():
        raise ShcError("JWS_WHITESPACE", "JWS has leading or trailing whitespace")
    if not _COMPACT_JWS.fullmatch(jws_text):
        raise ShcError("JWS_FORMAT", "not a compact JWS (three base64url parts)")
    if max_jws_length is not None and len(jws_text) > max_jws_length:
        raise ShcError("JWS_TOO_LONG", f"JWS has {len(jws_text)} characters (> {max_jws_length})")
    warnings: list[str] = []
    header, payload, inflated = _decode_parts(jws_text)
    kid: str = header["kid"]
    iss = _check_issuer(payload.get("iss"), warnings)
    if trusted_issuers is not None and iss not in trusted_issuers:
        raise ShcError("UNTRUSTED_ISSUER", f"issuer {iss!r} is not trusted")

    if jwks is None:
        if client is None:
            raise ShcError("JWKS_FETCH", "neither jwks nor an httpx client was given")
        jwks = fetch_jwks(iss, client)
    entry, key = select_key(jwks, kid)

    verifier = jws.JWS()
    try:
        verifier.deserialize(jws_text)
        verifier.verify(key, alg="ES256")
    except (JWException, ValueError, TypeError) as exc:
        raise ShcError("BAD_SIGNATURE", f"JWS signature does not verify: {exc!r}") from exc

    claims = _check_claims(
        payload, now=time.time() if now is None else now, leeway=leeway, warnings=warnings
    )

    crl_version = entry.get("crlVersion")
    revocation_checked = False
    if crl_version is not None:
        # "If the crlVersion is present in the Issuer's JWK for key <<kid>>, Verifiers SHALL ..."
        if not isinstance(crl_version, int) or isinstance(crl_version, bool):
            raise ShcError("KEY_INVALID", f"key {kid!r} crlVersion must be an integer")
        crl = _crl_for(
            iss=iss,
            kid=kid,
            crl_version=crl_version,
            client=client,
            crls=crls,
            crl_cache=crl_cache,
        )
        check_revocation(
            rid=claims["rid"], nbf=claims["nbf"], kid=kid, crl_version=crl_version, crl=crl
        )
        revocation_checked = True

    return {
        "header": header,
        "payload": payload,
        "payload_json": inflated.decode("utf-8"),
        "iss": iss,
        "kid": kid,
        "key": entry,
        "nbf": claims["nbf"],
        "exp": claims["exp"],
        "types": claims["types"],
        "rid": claims["rid"],
        "fhirVersion": payload["vc"]["credentialSubject"]["fhirVersion"],
        "fhirBundle": claims["fhirBundle"],
        "revocation_checked": revocation_checked,
        "warnings": warnings,
    }


def verify_qr(qr_text: str | Sequence[str], **kwargs: Any) -> dict[str, Any]:
    """Decode a numeric QR (or deprecated chunk set) and verify the card it carries."""
    return verify_card(decode_numeric(qr_text), **kwargs)


def verify_file(file_json: str | bytes | Mapping[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    """Verify a ``.smart-health-card`` file: "a JSON object with a verifiableCredential array
    containing one or more verifiable credential JWS strings" ([SHC §via File Download])."""
    if isinstance(file_json, str | bytes):
        try:
            document = json.loads(file_json)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ShcError("FILE_FORMAT", f"health card file is not JSON: {exc}") from exc
    else:
        document = file_json
    if not isinstance(document, Mapping):
        raise ShcError("FILE_FORMAT", "health card file must be a JSON object")
    credentials = document.get("verifiableCredential")
    if not isinstance(credentials, list) or not credentials:
        raise ShcError("FILE_FORMAT", "'verifiableCredential' must be a non-empty array")
    if not all(isinstance(c, str) for c in credentials):
        raise ShcError("FILE_FORMAT", "'verifiableCredential' entries must be JWS strings")
    return [verify_card(c, **kwargs) for c in credentials]
