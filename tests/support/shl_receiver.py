"""A SMART Health Links *receiver* written from the published specification alone.

It is deliberately independent of CareLedger's own SHL code: it imports nothing from
``careledger`` and uses only jwcrypto (JWE), httpx and the standard library, so that integration
tests can drive our server the way a third-party receiving application would.

Normative sources (quoted below as ``[IG §heading]`` and ``[SHL §heading]``):

* [IG]  HL7 FHIR IG "SMART Health Cards and Links" 1.0.0 (STU1), page "SMART Health Links
  Specification": http://hl7.org/fhir/uv/smart-health-cards-and-links/STU1/links-specification.html
  (source: github.com/HL7/smart-health-cards-and-links, input/pagecontent/links-specification.md,
  commit a966d22c01b3e39bd9a22123d798049f22a73e28), and its logical models ShlPayload / ShlManifest
  (input/fsh/shl-payload.fsh, input/fsh/shl-manifest.fsh).
* [SHL] The SMART Health Links protocol page, https://docs.smarthealthit.org/smart-health-links/spec
  (source: github.com/smart-on-fhir/smart-health-links, docs/spec.md, commit f687f5e9ff9f).

The two texts agree on everything used here; the IG adds the manifest's optional ``list`` and the
per-file ``lastUpdated`` / ``status`` / ``fhirVersion`` properties.

Where the specification says only what a *sharing* application SHALL do (e.g. "the manifest URL
SHALL NOT exceed 128 characters"), this receiver checks it too when ``strict=True`` (the default),
because its purpose is to find our server's deviations. Those checks are marked "sharer SHALL".
Checks that are local policy rather than specification are marked "policy".
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import httpx
from jwcrypto import jwe, jwk
from jwcrypto.common import JWException

__all__ = [
    "CONTENT_TYPES",
    "FILE_STATUSES",
    "LOCATION_MAX_AGE_S",
    "Manifest",
    "Received",
    "ShlDecryptError",
    "ShlError",
    "ShlLinkError",
    "ShlPoller",
    "ShlProtocolError",
    "ShlTooEarly",
    "ShlUnsupportedVersion",
    "decrypt_file",
    "fetch_manifest",
    "flags_of",
    "manifest_request_body",
    "open_link",
    "parse_content",
    "parse_shlink",
    "split_viewer",
    "url_has_256_bit_token",
]

SHLINK_PREFIX = "shlink:/"
# [IG §files array] contentType: "One of the following values"
CONTENT_TYPES = frozenset(
    {"application/smart-health-card", "application/smart-api-access", "application/fhir+json"}
)
# [IG §files array] status: "finalized"|"can-change"|"no-longer-valid"
FILE_STATUSES = frozenset({"finalized", "can-change", "no-longer-valid"})
# [IG §.files.location links] "SHALL NOT attempt to dereference a manifest's .files.location link
# more than one hour after requesting the manifest"
LOCATION_MAX_AGE_S = 3600.0
# [IG §Construct a SMART Health Link Payload] v: "MAY be omitted when the default value (1) applies"
SUPPORTED_VERSION = 1
MAX_LABEL_LENGTH = 80  # [IG §Construct ...] label: "String no longer than 80 characters"
MAX_URL_LENGTH = 128  # [IG §Establish a ... Manifest URL] "SHALL NOT exceed 128 characters"
KNOWN_FLAGS = frozenset("LPU")  # [IG §Construct ...] flag: L, P, U

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_B64URL_OR_EMPTY = re.compile(r"[A-Za-z0-9_-]*")
_KEY = re.compile(r"[A-Za-z0-9_-]{43}")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


# --------------------------------------------------------------------------------------- errors


class ShlProtocolError(Exception):
    """The link, the server's response or a file breaks a rule of the specification."""


class ShlLinkError(ShlProtocolError, ValueError):
    """A SMART Health Link (``shlink:/...``) that is malformed per [IG §Construct ... Payload]."""


class ShlUnsupportedVersion(ShlLinkError):
    """``v`` is newer than this receiver supports: it "SHOULD NOT proceed with a manifest request"
    ([IG §Design Note: Protocol Versioning])."""


class ShlDecryptError(ShlProtocolError):
    """A file that is not a JWE per [IG §Encrypting and Decrypting Files], or does not decrypt."""


class ShlError(Exception):
    """The server answered with an HTTP error status.

    ``body`` is the parsed JSON body when the body is JSON, else the text. The spec prescribes:
    404 when the link "is no longer active", 401 with ``{"remainingAttempts": n}`` for an invalid
    passcode, 429 with ``Retry-After`` when polled too often ([IG §SMART Health Link Manifest
    Request], [IG §Polling manifest for changes]).
    """

    def __init__(
        self,
        status: int,
        body: Any,
        *,
        url: str = "",
        headers: Mapping[str, str] | None = None,
        violations: tuple[str, ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.url = url
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.violations = violations
        super().__init__(f"HTTP {status} from {url or 'SHL server'}: {body!r}")

    @property
    def remaining_attempts(self) -> int | None:
        if isinstance(self.body, dict):
            value = self.body.get("remainingAttempts")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def retry_after(self) -> float | None:
        return _parse_retry_after(self.headers.get("retry-after"))


class ShlTooEarly(Exception):
    """A poll attempted before the server's ``Retry-After`` has elapsed ([IG §Polling ...]:
    after a 429 the client SHALL wait; after a 200 it SHOULD wait)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(f"must wait {wait_s:.1f}s more before polling the manifest again")


# -------------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Received:
    """One decrypted file of a SMART Health Link."""

    content_type: str
    content: dict[str, Any]
    header: dict[str, Any]  # the JWE protected header
    source: str  # "embedded" | "location" | "direct" (U flag)
    entry: dict[str, Any] | None = None  # the manifest's files[] entry; None for U links
    location: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A validated manifest response ([IG §SMART Health Link Manifest File])."""

    files: list[dict[str, Any]]
    list_resource: dict[str, Any] | None
    retry_after: float | None  # from the Retry-After header of the 200 response, if any
    fetched_at: float  # the receiver's monotonic clock when the manifest was requested
    raw: dict[str, Any]
    warnings: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------- helpers


def _b64url_decode(text: str, what: str, error: type[Exception]) -> bytes:
    if not _B64URL_OR_EMPTY.fullmatch(text) or len(text) % 4 == 1:
        raise error(f"{what} is not base64url (RFC 4648 §5, unpadded)")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} is not base64url: {exc}") from exc
    if _b64url_encode(data) != text:
        # Unused low bits set in the last character: another spelling of the same bytes.
        raise error(f"{what} is not canonical base64url")
    return data


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_url(url: object, what: str, *, strict: bool, warnings: list[str]) -> str:
    """An absolute http(s) URL. Policy: https, or http only on loopback (test servers)."""
    if not isinstance(url, str) or not url:
        raise ShlProtocolError(f"{what} must be a non-empty string")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or not parts.hostname:
        raise ShlProtocolError(f"{what} is not an absolute http(s) URL: {url!r}")
    if parts.scheme == "http":
        if parts.hostname in _LOOPBACK_HOSTS:
            warnings.append(f"{what} uses http on loopback (accepted for tests only): {url}")
        elif strict:
            raise ShlProtocolError(f"{what} must use https: {url!r}")
        else:
            warnings.append(f"{what} does not use https: {url}")
    return url


def _media_type(response: httpx.Response) -> str:
    media: str = response.headers.get("content-type", "")
    return media.split(";", 1)[0].strip().lower()


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` is delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _http_error(response: httpx.Response, *, manifest: bool, strict: bool) -> Exception:
    """Build the ShlError for a non-200 answer; in strict mode a malformed one is a violation."""
    body = _body_of(response)
    violations: list[str] = []
    if manifest and response.status_code == 401:
        # [IG §Manifest Request] "The error response for an invalid Passcode SHALL use the 401
        # HTTP status code and the response body SHALL be a JSON payload with remainingAttempts"
        remaining = body.get("remainingAttempts") if isinstance(body, dict) else None
        if not (_is_int(remaining) and remaining >= 0):
            violations.append("401 body is not JSON with a non-negative integer remainingAttempts")
    if response.status_code == 429 and response.headers.get("retry-after") is None:
        # [IG §Polling] "the server MAY respond with HTTP status 429 Too Many Requests and a
        # Retry-After header indicating the minimum time that a client SHALL wait"
        violations.append("429 without a Retry-After header")
    error = ShlError(
        response.status_code,
        body,
        url=str(response.request.url),
        headers=dict(response.headers),
        violations=tuple(violations),
    )
    if strict and violations:
        protocol = ShlProtocolError(f"{error}: " + "; ".join(violations))
        protocol.__cause__ = error
        return protocol
    return error


# -------------------------------------------------------------------------------- the link


def split_viewer(text: str) -> tuple[str | None, str]:
    """Split ``https://viewer.example/#shlink:/...`` into (viewer URL ending in ``#``, shlink).

    [IG §Construct ...] the payload is "Optionally prefixed with a viewer URL that ends with #".
    """
    if not isinstance(text, str):
        raise ShlLinkError("a SMART Health Link is a string")
    if text.startswith(SHLINK_PREFIX):
        return None, text
    index = text.find("#" + SHLINK_PREFIX)
    if index < 0:
        raise ShlLinkError("not a SMART Health Link: expected 'shlink:/' or '<viewer>#shlink:/'")
    viewer = text[: index + 1]
    parts = urlsplit(viewer)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ShlLinkError(f"viewer prefix is not an http(s) URL: {viewer!r}")
    return viewer, text[index + 1 :]


def url_has_256_bit_token(url: str) -> bool:
    """Heuristic for "The manifest URL SHALL include at least 256 bits of entropy" (sharer SHALL,
    [IG §Establish a ... Manifest URL]): a run of 43+ base64url characters, the suggested
    encoding of 32 random bytes (the dev-tools validator's check). Not applied by parse_shlink,
    because the IG's own U-link examples point at plain file names; for asserting on our server's
    links."""
    return re.search(r"[A-Za-z0-9_-]{43,}", url) is not None


def flags_of(payload: Mapping[str, Any]) -> frozenset[str]:
    flag = payload.get("flag", "")
    return frozenset(flag) if isinstance(flag, str) else frozenset()


def parse_shlink(text: str, *, strict: bool = True) -> dict[str, Any]:
    """Decode and validate a SMART Health Link; returns its JSON payload (unknown keys kept).

    Rules ([IG §Construct a SMART Health Link Payload] unless noted):

    * ``shlink:/`` + base64url of the minified JSON object, optionally after ``<viewer>#``;
    * ``url`` 1..1 (strict: at most 128 characters — sharer SHALL);
    * ``key`` 1..1, "43 characters, consisting of 32 random bytes base64urlencoded";
    * ``exp`` 0..1 number (epoch seconds, "parsed into 64-bit numeric types");
    * ``flag`` 0..1 "single-character flags in alphabetical order"; ``U`` "SHALL NOT be used in
      combination with ``P``"; unrecognised flags are ignored ("SHL Receiver Application SHALL
      ignore flag values they don't recognize");
    * ``label`` 0..1 "no longer than 80 characters";
    * ``v`` 0..1 integer, default 1; unknown properties are ignored ("SHALL ignore properties
      they don't recognize", [IG §Extensions]).
    """
    _viewer, bare = split_viewer(text)
    body = bare[len(SHLINK_PREFIX) :]
    if not _B64URL.fullmatch(body):
        raise ShlLinkError("the payload after 'shlink:/' must be base64url (no padding)")
    raw = _b64url_decode(body, "SHL payload", ShlLinkError)
    try:
        decoded = raw.decode("utf-8")
        payload = json.loads(decoded)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShlLinkError(f"SHL payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ShlLinkError("SHL payload must be a JSON object")
    if strict:
        minified = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        if minified != decoded:
            # "The JSON Payload is then: Minified; Base64urlencoded; ..." (sharer SHALL)
            raise ShlLinkError("SHL payload JSON is not minified")

    url = payload.get("url")
    if not isinstance(url, str) or not url:
        raise ShlLinkError("'url' is required and must be a string")
    try:
        _check_url(url, "'url'", strict=strict, warnings=[])
    except ShlProtocolError as exc:
        raise ShlLinkError(str(exc)) from exc
    if strict and len(url) > MAX_URL_LENGTH:
        raise ShlLinkError(f"'url' is longer than {MAX_URL_LENGTH} characters")

    key = payload.get("key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ShlLinkError("'key' must be 43 base64url characters")
    key_bytes = _b64url_decode(key, "'key'", ShlLinkError)
    if len(key_bytes) != 32 or _b64url_encode(key_bytes) != key:
        raise ShlLinkError("'key' must be the canonical base64url encoding of 32 bytes")

    if "exp" in payload:
        exp = payload["exp"]
        if not _is_number(exp) or not (0 <= exp < 2**63):
            raise ShlLinkError("'exp' must be a number of epoch seconds")

    if "flag" in payload:
        flag = payload["flag"]
        if not isinstance(flag, str):
            raise ShlLinkError("'flag' must be a string")
        if strict:
            if not all("A" <= c <= "Z" for c in flag):
                raise ShlLinkError("'flag' must consist of single-character (A-Z) flags")
            if list(flag) != sorted(set(flag)):
                raise ShlLinkError("'flag' must list each flag once, in alphabetical order")
        if "U" in flag and "P" in flag:
            raise ShlLinkError("flag 'U' SHALL NOT be used in combination with 'P'")

    if "label" in payload:
        label = payload["label"]
        if not isinstance(label, str) or len(label) > MAX_LABEL_LENGTH:
            raise ShlLinkError(f"'label' must be a string of at most {MAX_LABEL_LENGTH} characters")

    if "v" in payload:
        version = payload["v"]
        if not _is_int(version) or version < 1:
            raise ShlLinkError("'v' must be a positive integer")
    return payload


# ------------------------------------------------------------------------------- decryption


def decrypt_file(
    token: str,
    key: str,
    *,
    expected_content_type: str | None = None,
    require_cty: bool = True,
) -> tuple[dict[str, Any], bytes]:
    """Decrypt one SHL file; returns (protected header, plaintext).

    [IG §Encrypting and Decrypting Files]: compact JWE with ``"alg": "dir"``, ``"enc": "A256GCM"``
    and "a ``cty`` header indicating the content type of the payload"; "MAY include a ``zip``
    header with the value ``DEF``" meaning raw DEFLATE (RFC 1951) before encryption.
    ``cty`` must equal the manifest's ``contentType`` when both are known. Every part must be
    canonical base64url, so that no two spellings of one JWE are accepted.

    jwcrypto refuses ``zip: DEF`` ciphertexts whose compressed size exceeds
    ``jwcrypto.jwe.default_max_compressed_size`` (256 KiB); that surfaces as ShlDecryptError.
    """
    if not isinstance(token, str):
        raise ShlDecryptError("an encrypted file must be a JWE compact serialization string")
    parts = token.split(".")
    if len(parts) != 5 or not all(_B64URL_OR_EMPTY.fullmatch(p) for p in parts):
        raise ShlDecryptError("not a JWE compact serialization (five base64url parts)")
    protected, encrypted_key, iv, ciphertext, tag = parts
    if not protected or not iv or not tag:
        raise ShlDecryptError("JWE is missing its header, IV or tag")
    for part, name in ((iv, "IV"), (ciphertext, "ciphertext"), (tag, "tag")):
        _b64url_decode(part, f"JWE {name}", ShlDecryptError)
    try:
        header = json.loads(_b64url_decode(protected, "JWE header", ShlDecryptError))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShlDecryptError(f"JWE protected header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ShlDecryptError("JWE protected header must be a JSON object")
    if header.get("alg") != "dir":
        raise ShlDecryptError(f"JWE alg must be 'dir', not {header.get('alg')!r}")
    if header.get("enc") != "A256GCM":
        raise ShlDecryptError(f"JWE enc must be 'A256GCM', not {header.get('enc')!r}")
    if encrypted_key:
        raise ShlDecryptError("a 'dir' JWE must have an empty encrypted-key part (RFC 7516)")
    if "zip" in header and header["zip"] != "DEF":
        raise ShlDecryptError(f"JWE zip may only be 'DEF', not {header['zip']!r}")
    cty = header.get("cty")
    if cty is None:
        if require_cty:
            raise ShlDecryptError("JWE has no 'cty' header")
    elif not isinstance(cty, str):
        raise ShlDecryptError("JWE 'cty' must be a string")
    elif expected_content_type is not None and cty != expected_content_type:
        raise ShlDecryptError(
            f"JWE cty {cty!r} does not match the manifest contentType {expected_content_type!r}"
        )
    key_bytes = _b64url_decode(key, "SHL key", ShlDecryptError)
    if len(key_bytes) != 32:
        raise ShlDecryptError("the SHL key must be 32 bytes")
    decrypter = jwe.JWE(algs=["dir", "A256GCM"])
    try:
        decrypter.deserialize(token, key=jwk.JWK(kty="oct", k=key))
    except (JWException, ValueError, TypeError) as exc:
        raise ShlDecryptError(f"JWE does not decrypt with the link's key: {exc!r}") from exc
    plaintext = decrypter.payload
    if not isinstance(plaintext, bytes):
        raise ShlDecryptError("JWE produced no plaintext")
    return header, plaintext


def _sniff_content_type(content: Mapping[str, Any]) -> str | None:
    """Not in the spec: used only when a U-link file lacks ``cty`` and strict is off."""
    if "verifiableCredential" in content:
        return "application/smart-health-card"
    if "resourceType" in content:
        return "application/fhir+json"
    if "access_token" in content:
        return "application/smart-api-access"
    return None


def parse_content(content_type: str, plaintext: bytes) -> dict[str, Any]:
    """Parse and shape-check a decrypted file by content type ([IG §Pre-protocol step ...])."""
    try:
        content = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShlProtocolError(f"{content_type} file is not UTF-8 JSON: {exc}") from exc
    if not isinstance(content, dict):
        raise ShlProtocolError(f"{content_type} file must be a JSON object")
    if content_type == "application/smart-health-card":
        # "a JSON file with a .verifiableCredential array containing SMART Health Card JWS
        # strings" (SMART Health Cards §via File Download)
        vcs = content.get("verifiableCredential")
        if not isinstance(vcs, list) or not vcs:
            raise ShlProtocolError("smart-health-card file needs a non-empty verifiableCredential")
        for vc in vcs:
            if not isinstance(vc, str) or len(vc.split(".")) != 3:
                raise ShlProtocolError("verifiableCredential entries must be compact JWS strings")
    elif content_type == "application/fhir+json":
        # "a JSON file containing any FHIR resource"
        if not isinstance(content.get("resourceType"), str):
            raise ShlProtocolError("fhir+json file is not a FHIR resource (no resourceType)")
    elif content_type == "application/smart-api-access":
        # "a JSON file with a SMART Access Token Response" plus "aud" (required) and "query"
        # (optional array of strings). SMART App Launch token response: access_token, token_type
        # ("Bearer") and scope are required.
        for name in ("access_token", "token_type", "scope", "aud"):
            if not isinstance(content.get(name), str) or not content[name]:
                raise ShlProtocolError(f"smart-api-access file needs a string {name!r}")
        if content["token_type"].lower() != "bearer":
            raise ShlProtocolError("smart-api-access token_type must be 'Bearer'")
        query = content.get("query")
        if query is not None and not (
            isinstance(query, list) and all(isinstance(q, str) for q in query)
        ):
            raise ShlProtocolError("smart-api-access 'query' must be an array of strings")
    else:
        raise ShlProtocolError(f"unknown content type {content_type!r}")
    return content


# -------------------------------------------------------------------------- manifest request


def manifest_request_body(
    recipient: str, passcode: str | None = None, embedded_length_max: int | None = None
) -> dict[str, Any]:
    """[IG §SMART Health Link Manifest Request] body: recipient 1..1, passcode 0..1,
    embeddedLengthMax 0..1 (integer)."""
    if not isinstance(recipient, str) or not recipient:
        raise ValueError("recipient is required: a string describing the recipient")
    body: dict[str, Any] = {"recipient": recipient}
    if passcode is not None:
        body["passcode"] = passcode
    if embedded_length_max is not None:
        if not _is_int(embedded_length_max) or embedded_length_max < 0:
            raise ValueError("embeddedLengthMax must be a non-negative integer")
        body["embeddedLengthMax"] = embedded_length_max
    return body


def _validate_manifest(
    raw: Any, *, embedded_length_max: int | None, strict: bool, warnings: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    if not isinstance(raw, dict):
        raise ShlProtocolError("manifest must be a JSON object")
    files = raw.get("files")
    if not isinstance(files, list):
        raise ShlProtocolError("manifest must have a 'files' array")
    list_resource = raw.get("list")
    if list_resource is not None and not (
        isinstance(list_resource, dict) and list_resource.get("resourceType") == "List"
    ):
        # [IG §list property] "contains a FHIR List resource"
        raise ShlProtocolError("manifest 'list' must be a FHIR List resource")
    for index, entry in enumerate(files):
        what = f"files[{index}]"
        if not isinstance(entry, dict):
            raise ShlProtocolError(f"{what} must be a JSON object")
        content_type = entry.get("contentType")
        if content_type not in CONTENT_TYPES:
            raise ShlProtocolError(f"{what}.contentType {content_type!r} is not one of the three")
        location, embedded = entry.get("location"), entry.get("embedded")
        if location is None and embedded is None:
            # "* Either location or embedded must be present"
            raise ShlProtocolError(f"{what} has neither 'location' nor 'embedded'")
        if location is not None:
            _check_url(location, f"{what}.location", strict=strict, warnings=warnings)
        if embedded is not None:
            if not isinstance(embedded, str):
                raise ShlProtocolError(f"{what}.embedded must be a JWE string")
            if embedded_length_max is not None and len(embedded) > embedded_length_max:
                # [IG §.files.embedded content] "the server SHALL NOT return embedded payload
                # longer than the client-designated maximum"
                raise ShlProtocolError(
                    f"{what}.embedded is {len(embedded)} characters, over embeddedLengthMax "
                    f"{embedded_length_max}"
                )
        if "lastUpdated" in entry:
            stamp = entry["lastUpdated"]
            try:
                if not isinstance(stamp, str):
                    raise TypeError
                datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except (TypeError, ValueError) as exc:
                raise ShlProtocolError(f"{what}.lastUpdated is not an ISO 8601 timestamp") from exc
        if "status" in entry and entry["status"] not in FILE_STATUSES:
            raise ShlProtocolError(f"{what}.status {entry['status']!r} is not one of the three")
        if "fhirVersion" in entry and not isinstance(entry["fhirVersion"], str):
            raise ShlProtocolError(f"{what}.fhirVersion must be a string")
    return files, list_resource


def fetch_manifest(
    payload: Mapping[str, Any],
    *,
    recipient: str,
    client: httpx.Client,
    passcode: str | None = None,
    embedded_length_max: int | None = None,
    strict: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Manifest:
    """POST the manifest request ([IG §SMART Health Link Manifest Request]) and validate it."""
    if "U" in flags_of(payload):
        # [IG §Direct File Request] "When the U flag is present, the ... Receiving Application
        # SHALL NOT make a request for the manifest."
        raise ShlProtocolError("a U-flag link has no manifest")
    body = manifest_request_body(recipient, passcode, embedded_length_max)
    # The one-hour limit on location links runs "after requesting the manifest".
    requested_at = clock()
    response = client.post(
        payload["url"],
        content=json.dumps(body).encode("utf-8"),
        headers={"content-type": "application/json"},
    )
    if response.status_code != 200:
        raise _http_error(response, manifest=True, strict=strict)
    warnings: list[str] = []
    if _media_type(response) != "application/json":
        # [IG §Manifest File] "SHALL return a SMART Health Link Manifest File with
        # content-type: application/json"
        message = f"manifest content-type is {response.headers.get('content-type')!r}"
        if strict:
            raise ShlProtocolError(message)
        warnings.append(message)
    try:
        raw = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShlProtocolError(f"manifest is not JSON: {exc}") from exc
    files, list_resource = _validate_manifest(
        raw, embedded_length_max=embedded_length_max, strict=strict, warnings=warnings
    )
    return Manifest(
        files=files,
        list_resource=list_resource,
        retry_after=_parse_retry_after(response.headers.get("retry-after")),
        fetched_at=requested_at,
        raw=raw,
        warnings=tuple(warnings),
    )


class _LocationUnusable(Exception):
    """A location link is past its hour or was refused: re-fetch the manifest."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(str(cause))


def _fetch_location(
    url: str, *, client: httpx.Client, manifest: Manifest, strict: bool, clock: Callable[[], float]
) -> tuple[str, list[str]]:
    warnings: list[str] = []
    if clock() - manifest.fetched_at > LOCATION_MAX_AGE_S:
        raise _LocationUnusable(
            ShlProtocolError("location link is more than an hour old: re-fetch the manifest")
        )
    response = client.get(url)
    if response.status_code != 200:
        raise _LocationUnusable(_http_error(response, manifest=False, strict=strict))
    if _media_type(response) != "application/jose":
        # [IG §.files.location links] "SHALL respond to the GET requests for .files.location
        # URLs with: content-type: application/jose"
        message = f"location content-type is {response.headers.get('content-type')!r}"
        if strict:
            raise ShlProtocolError(message)
        warnings.append(message)
    text = response.text
    return (text if strict else text.strip()), warnings


def _receive_entry(
    entry: dict[str, Any],
    *,
    key: str,
    client: httpx.Client,
    manifest: Manifest,
    strict: bool,
    clock: Callable[[], float],
) -> Received:
    content_type: str = entry["contentType"]
    warnings: list[str] = []
    if entry.get("embedded") is not None:
        # [IG §.files.embedded content] "If present, the embedded value SHALL be up-to-date as of
        # the time the manifest is requested" — so it is used in preference to location.
        token, source, location = entry["embedded"], "embedded", None
    else:
        location = entry["location"]
        token, warnings = _fetch_location(
            location, client=client, manifest=manifest, strict=strict, clock=clock
        )
        source = "location"
    header, plaintext = decrypt_file(
        token, key, expected_content_type=content_type, require_cty=strict
    )
    if header.get("cty") is None:
        warnings.append("JWE has no cty header")
    content = parse_content(content_type, plaintext)
    return Received(
        content_type=content_type,
        content=content,
        header=header,
        source=source,
        entry=entry,
        location=location,
        warnings=tuple(warnings),
    )


def _receive_direct(
    payload: Mapping[str, Any], *, recipient: str, client: httpx.Client, strict: bool
) -> Received:
    """[IG §Direct File Request (with U Flag)]: GET url with query parameter recipient."""
    if not isinstance(recipient, str) or not recipient:
        raise ValueError("recipient is required: a string describing the recipient")
    response = client.get(payload["url"], params={"recipient": recipient})
    if response.status_code != 200:
        raise _http_error(response, manifest=False, strict=strict)
    warnings: list[str] = []
    if _media_type(response) != "application/jose":
        # Not stated for U links (only for .files.location); noted, not enforced.
        warnings.append(f"direct file content-type is {response.headers.get('content-type')!r}")
    text = response.text if strict else response.text.strip()
    header, plaintext = decrypt_file(text, payload["key"], require_cty=strict)
    content_type = header.get("cty")
    if not isinstance(content_type, str):
        try:
            content = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ShlProtocolError(f"U-link file is not UTF-8 JSON: {exc}") from exc
        sniffed = _sniff_content_type(content) if isinstance(content, dict) else None
        if sniffed is None:
            raise ShlProtocolError("U-link file has no cty and its content type is unknown")
        warnings.append(f"no cty header; content type inferred as {sniffed}")
        content_type = sniffed
    if content_type not in CONTENT_TYPES:
        raise ShlProtocolError(f"U-link file cty {content_type!r} is not one of the three")
    return Received(
        content_type=content_type,
        content=parse_content(content_type, plaintext),
        header=header,
        source="direct",
        warnings=tuple(warnings),
    )


def _open(
    payload: Mapping[str, Any],
    *,
    recipient: str,
    client: httpx.Client,
    passcode: str | None,
    embedded_length_max: int | None,
    strict: bool,
    manifest_refetches: int,
    clock: Callable[[], float],
) -> tuple[Manifest | None, list[Received]]:
    if "U" in flags_of(payload):
        return None, [_receive_direct(payload, recipient=recipient, client=client, strict=strict)]
    attempts = manifest_refetches + 1
    while True:
        attempts -= 1
        manifest = fetch_manifest(
            payload,
            recipient=recipient,
            client=client,
            passcode=passcode,
            embedded_length_max=embedded_length_max,
            strict=strict,
            clock=clock,
        )
        try:
            received = [
                _receive_entry(
                    entry,
                    key=payload["key"],
                    client=client,
                    manifest=manifest,
                    strict=strict,
                    clock=clock,
                )
                for entry in manifest.files
            ]
        except _LocationUnusable as unusable:
            # [IG §.files.location links] the receiver "SHALL be capable of re-fetching the
            # manifest to obtain fresh location links in the event that they have expired or
            # been consumed".
            if attempts > 0:
                continue
            raise unusable.cause from None
        return manifest, received


def open_link(
    shlink_text: str,
    *,
    recipient: str,
    client: httpx.Client,
    passcode: str | None = None,
    embedded_length_max: int | None = None,
    now: float | None = None,
    strict: bool = True,
    refuse_expired: bool = False,
    allow_missing_passcode: bool = False,
    allow_newer_version: bool = False,
    manifest_refetches: int = 1,
    clock: Callable[[], float] = time.monotonic,
) -> list[Received]:
    """Resolve a SMART Health Link and return its decrypted files.

    [IG §SMART Health Links Receiving Application processes a SMART Health Link]: decode the
    payload; with ``U`` GET ``url?recipient=`` directly, else POST the manifest request; decrypt
    and process the files.

    * ``exp`` is only "a hint to help the ... Receiving Application determine if this QR is
      stale": the spec does not tell receivers to refuse, so by default the request is still
      made (the server answers 404 for an inactive link). ``refuse_expired=True`` opts in.
    * ``P``: the passcode "SHALL be populated"; omitting it raises ``ValueError`` unless
      ``allow_missing_passcode`` (to test the server's answer to a missing passcode).
    * ``v`` newer than 1: "SHOULD NOT proceed with a manifest request" unless
      ``allow_newer_version``.

    HTTP errors raise :class:`ShlError` (``.status``, ``.body``, ``.remaining_attempts``,
    ``.retry_after``); spec violations raise :class:`ShlProtocolError`.
    """
    payload = parse_shlink(shlink_text, strict=strict)
    version = payload.get("v", SUPPORTED_VERSION)
    if version > SUPPORTED_VERSION and not allow_newer_version:
        raise ShlUnsupportedVersion(f"SHL protocol version {version} is newer than 1")
    if refuse_expired and "exp" in payload:
        current = time.time() if now is None else now
        if payload["exp"] <= current:
            raise ShlLinkError("the link's exp has passed")
    if "P" in flags_of(payload) and passcode is None and not allow_missing_passcode:
        raise ValueError("this link has the P flag: a passcode SHALL be supplied")
    _manifest, received = _open(
        payload,
        recipient=recipient,
        client=client,
        passcode=passcode,
        embedded_length_max=embedded_length_max,
        strict=strict,
        manifest_refetches=manifest_refetches,
        clock=clock,
    )
    return received


@dataclass
class ShlPoller:
    """Re-fetches a long-term (``L``) link while honouring the server's ``Retry-After``.

    [IG §Polling manifest for changes]: "When the original QR includes the L flag for long-term
    use, the client MAY periodically poll for changes in the manifest. The server MAY provide a
    Retry-After header on successful manifest responses, indicating the minimum time that the
    client SHOULD wait before its next polling request. If manifest requests are issued too
    frequently, the server MAY respond with HTTP status 429 Too Many Requests and a Retry-After
    header indicating the minimum time that a client SHALL wait before re-issuing a manifest
    request."
    """

    shlink_text: str
    recipient: str
    client: httpx.Client
    passcode: str | None = None
    embedded_length_max: int | None = None
    strict: bool = True
    clock: Callable[[], float] = time.monotonic
    not_before: float = 0.0
    last_manifest: Manifest | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.payload = parse_shlink(self.shlink_text, strict=self.strict)
        if "L" not in flags_of(self.payload):
            raise ShlLinkError("only links with the L flag are meant to be polled")

    def poll(self) -> list[Received]:
        started = self.clock()
        if started < self.not_before:
            raise ShlTooEarly(self.not_before - started)
        try:
            manifest, received = _open(
                self.payload,
                recipient=self.recipient,
                client=self.client,
                passcode=self.passcode,
                embedded_length_max=self.embedded_length_max,
                strict=self.strict,
                manifest_refetches=1,
                clock=self.clock,
            )
        except ShlError as error:
            if error.status == 429 and error.retry_after is not None:
                self.not_before = self.clock() + error.retry_after
            raise
        self.last_manifest = manifest
        if manifest is not None and manifest.retry_after is not None:
            self.not_before = manifest.fetched_at + manifest.retry_after
        return received
