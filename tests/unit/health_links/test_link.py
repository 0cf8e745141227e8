"""SMART Health Link payloads and URIs: the spec's published links, round trips, refusals."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.errors import ValidationError
from careledger.health_links.link import (
    MAX_LABEL_CHARS,
    MAX_URL_CHARS,
    LinkPayload,
    key_bytes,
    new_key,
    parse_uri,
    to_uri,
)
from tests.support.vectors import load_json

SPEC = load_json("shl", "links-specification-examples.json")
KEY = new_key(bytes(range(32)))
URL = "https://shl.example.org/manifests/I91rhba3VsuGXGchcnr6VHlQFKxfE28kuZ0ssbEuxno/manifest.json"


def from_spec_json(body: dict[str, Any]) -> LinkPayload:
    return LinkPayload(
        url=body["url"], key=body["key"], flags=body.get("flag", ""), label=body.get("label")
    )


def encode(body: object) -> str:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return "shlink:/" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- the spec's own examples -----------------------------------------------------------------


def test_spec_example_link_is_reproduced_byte_for_byte() -> None:
    example = SPEC["link"]
    payload = from_spec_json(example["payload"])
    assert to_uri(payload) == example["shlinkBare"]
    assert to_uri(payload, viewer=example["viewer"]) == example["shlink"]
    assert example["shlinkBare"] == "shlink:/" + example["encodedPayload"]


@pytest.mark.parametrize(
    "name", ["IPS_IG-bundle-01-shl-details.json", "CARIN_INS_CD-bundle-01-shl-details.json"]
)
def test_ig_demo_links(name: str) -> None:
    details = load_json("shl", name)
    body = details.get("shlinkJsonPayload", details)
    payload = from_spec_json(body)
    assert payload.long_term and payload.direct_file and not payload.requires_passcode
    if "shlink" in details:
        # The IG's file swaps the two names: "shlink" holds the bare form.
        bare = details["shlink"]
        assert to_uri(payload) == bare
        assert (
            to_uri(payload, viewer="https://viewer.tcpdev.org/shlink.html") == details["shlinkBare"]
        )
        assert parse_uri(details["shlinkBare"]) == payload


def test_spec_example_parses_in_both_forms() -> None:
    example = SPEC["link"]
    expected = from_spec_json(example["payload"])
    assert parse_uri(example["shlinkBare"]) == expected
    assert parse_uri(example["shlink"]) == expected
    assert expected.requires_passcode and expected.long_term and not expected.direct_file


def test_ig_minimal_payload_example() -> None:
    body = load_json("shl", "shl-payload-2.json")
    assert parse_uri(encode(body)) == from_spec_json(body)


# --- keys ---------------------------------------------------------------------------------------


def test_new_key_is_43_base64url_characters_of_the_32_bytes() -> None:
    random32 = bytes(range(200, 232))
    key = new_key(random32)
    assert len(key) == 43
    assert key_bytes(key) == random32


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_new_key_wants_exactly_32_bytes(size: int) -> None:
    with pytest.raises(ValidationError) as err:
        new_key(bytes(size))
    assert err.value.code == "BAD_SHLINK"


@pytest.mark.parametrize(
    "key",
    [
        KEY[:-1],  # 42 characters
        KEY + "A",  # 44 characters
        "+" + KEY[1:],  # standard base64, not base64url
        KEY[:-1] + "B",  # last character carries bits beyond 256: not canonical
        KEY[:-1] + "=",
    ],
)
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError) as err:
        LinkPayload(url=URL, key=key)
    assert err.value.code == "BAD_SHLINK"


# --- payload rules ------------------------------------------------------------------------------


def test_defaults_and_minimal_uri() -> None:
    payload = LinkPayload(URL, KEY)
    assert (payload.exp, payload.flags, payload.label, payload.version) == (None, "", None, 1)
    body = json.loads(base64.urlsafe_b64decode(to_uri(payload)[8:] + "=="))
    assert body == {"url": URL, "key": KEY}


def test_all_fields_in_spec_order() -> None:
    payload = LinkPayload(URL, KEY, exp=1767225600, flags="LP", label="Labs")
    raw = base64.urlsafe_b64decode(to_uri(payload)[8:] + "==")
    assert list(json.loads(raw)) == ["url", "flag", "key", "exp", "label"]
    assert b" " not in raw.replace(b"Labs", b"")  # minified


def test_url_limit_is_128_characters() -> None:
    base = "https://x.example/"
    LinkPayload(base + "a" * (MAX_URL_CHARS - len(base)), KEY)
    with pytest.raises(ValidationError, match="at most 128"):
        LinkPayload(base + "a" * (MAX_URL_CHARS + 1 - len(base)), KEY)


@pytest.mark.parametrize(
    "url",
    [
        "http://shl.example.org/m",
        "ftp://shl.example.org/m",
        "/relative/manifest",
        "https:///no-host",
        "https://shl.example.org/with space",
        "https://[::1/broken",
        "",
    ],
)
def test_url_must_be_https(url: str) -> None:
    with pytest.raises(ValidationError) as err:
        LinkPayload(url, KEY)
    assert err.value.code == "BAD_SHLINK"


def test_http_is_allowed_on_loopback_for_development() -> None:
    LinkPayload("http://localhost:8000/shl/m", KEY)
    LinkPayload("http://127.0.0.1/shl/m", KEY)


def test_label_limit_is_80_characters() -> None:
    LinkPayload(URL, KEY, label="é" * MAX_LABEL_CHARS)
    with pytest.raises(ValidationError, match="at most 80"):
        LinkPayload(URL, KEY, label="x" * (MAX_LABEL_CHARS + 1))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("PU", "SHALL NOT be combined"),
        ("UP", "alphabetical"),
        ("LL", "unique"),
        ("l", "upper-case"),
        ("L P", "upper-case"),
    ],
)
def test_flag_rules(flags: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LinkPayload(URL, KEY, flags=flags)


@pytest.mark.parametrize("flags", ["", "L", "P", "U", "LP", "LU"])
def test_valid_flag_sets(flags: str) -> None:
    payload = LinkPayload(URL, KEY, flags=flags)
    assert parse_uri(to_uri(payload)) == payload


@pytest.mark.parametrize("exp", [-1, 1.5, True, 2**53])
def test_exp_is_whole_epoch_seconds(exp: Any) -> None:
    with pytest.raises(ValidationError, match="exp"):
        LinkPayload(URL, KEY, exp=exp)


def test_unknown_flags_are_kept_when_read_but_never_issued() -> None:
    parsed = parse_uri(encode({"url": URL, "key": KEY, "flag": "LX"}))
    assert parsed.flags == "LX" and parsed.long_term
    with pytest.raises(ValidationError, match="not defined"):
        to_uri(parsed)


def test_only_version_1_is_issued_but_newer_versions_are_read() -> None:
    parsed = parse_uri(encode({"url": URL, "key": KEY, "v": 2}))
    assert parsed.version == 2
    with pytest.raises(ValidationError, match="version 1"):
        to_uri(parsed)
    assert parse_uri(encode({"url": URL, "key": KEY, "v": 1})).version == 1


# --- viewers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "viewer", ["https://viewer.example/", "https://viewer.example/#", "https://viewer.example/app"]
)
def test_viewer_prefix_ends_in_hash(viewer: str) -> None:
    uri = to_uri(LinkPayload(URL, KEY), viewer=viewer)
    prefix = viewer.rstrip("#") + "#shlink:/"
    assert uri.startswith(prefix)
    assert uri[len(prefix) - len("shlink:/") :] == to_uri(LinkPayload(URL, KEY))
    assert parse_uri(uri) == LinkPayload(URL, KEY)


@pytest.mark.parametrize(
    "viewer", ["https://viewer.example/#/route#", "viewer.example", "http://viewer.example/"]
)
def test_bad_viewers_are_refused(viewer: str) -> None:
    with pytest.raises(ValidationError):
        to_uri(LinkPayload(URL, KEY), viewer=viewer)


# --- parsing refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://example.org/page", "not a SMART Health Link"),
        ("shc:/5676", "not a SMART Health Link"),
        ("javascript:alert(1)#shlink:/eyJ9", "viewer URL"),
        ("shlink:/!!!", "base64url"),
        ("shlink:/" + "A" * 5, "base64url"),
        (encode(b"not json"), "not JSON"),
        (encode([1, 2]), "not a JSON object"),
        (encode({"key": KEY}), "no url"),
        (encode({"url": URL}), "no key"),
        (encode({"url": URL, "key": KEY, "flag": 1}), "flag"),
        (encode({"url": URL, "key": KEY, "label": 5}), "label"),
        (encode({"url": URL, "key": KEY, "v": "1"}), "v must be"),
        (encode({"url": URL, "key": KEY, "exp": "1767225600000"}), "exp"),
        (encode({"url": URL, "key": KEY, "flag": "PU"}), "SHALL NOT"),
        ("shlink:/" + "A" * 9000, "longer than"),
    ],
)
def test_malformed_links_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        parse_uri(text)
    assert err.value.code == "BAD_SHLINK"


def test_receivers_ignore_unknown_properties_and_unsorted_flags() -> None:
    body = {"url": URL, "key": KEY, "flag": "PL", "_ext": {"a": 1}, "extension": [1]}
    assert parse_uri(encode(body)) == LinkPayload(URL, KEY, flags="LP")


def test_fractional_exp_from_javascript_senders_is_floored() -> None:
    assert parse_uri(encode({"url": URL, "key": KEY, "exp": 1767225600.9})).exp == 1767225600


def test_whitespace_and_scheme_case_are_tolerated() -> None:
    uri = to_uri(LinkPayload(URL, KEY))
    assert parse_uri(f"  {uri}\n") == LinkPayload(URL, KEY)
    assert parse_uri("SHLINK:/" + uri[8:]) == LinkPayload(URL, KEY)


# --- properties ---------------------------------------------------------------------------------

_PATH = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/.~", max_size=80
)
_PAYLOADS = st.builds(
    LinkPayload,
    url=_PATH.map(lambda path: "https://shl.example.org/" + path),
    key=st.binary(min_size=32, max_size=32).map(new_key),
    exp=st.none() | st.integers(min_value=0, max_value=2**53 - 1),
    flags=st.sampled_from(["", "L", "P", "U", "LP", "LU"]),
    label=st.none() | st.text(max_size=MAX_LABEL_CHARS),
)


@given(_PAYLOADS, st.sampled_from([None, "https://viewer.example/", "https://v.example/app#"]))
def test_round_trip(payload: LinkPayload, viewer: str | None) -> None:
    uri = to_uri(payload, viewer=viewer)
    assert parse_uri(uri) == payload
    assert uri.isascii() and " " not in uri


@given(st.binary(max_size=200))
def test_arbitrary_payload_bytes_never_crash(raw: bytes) -> None:
    text = "shlink:/" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    code = None
    try:
        parse_uri(text)
    except ValidationError as err:
        code = err.code
    assert code in (None, "BAD_SHLINK")


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    code = None
    try:
        parse_uri(text)
    except ValidationError as err:
        code = err.code
    assert code in (None, "BAD_SHLINK")
